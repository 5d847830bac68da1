"""Entry script of rule planetary_analyse: pass 1, object and quality of every frame."""

from astroflow.deepsky.screening import duplicate_sources
from astroflow.io.atomic import atomic_write
from astroflow.io.fits import read_image
from astroflow.io.sequence import open_sequence
from astroflow.planetary.passes import analyse_sequence
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.provenance import sha256_file

log = setup_logging(snakemake.log[0])
p = snakemake.params
sequence = open_sequence(
    list(snakemake.input.frames),
    memory_mb=snakemake.params.memory_mb,
    decode_timeout_s=snakemake.params.decode_timeout_s,
)
log.info(
    "%s: %d frames of %s, %d-bit, %s",
    sequence.source,
    len(sequence),
    "x".join(map(str, sequence.shape)),
    sequence.bit_depth,
    sequence.colour,
)
dark_path = getattr(snakemake.input, "dark", None)
dark = read_image(dark_path)[0] if dark_path else None
table = analyse_sequence(
    sequence, dark=dark, min_snr=p.min_snr, threshold=p.threshold, edge_margin=p.edge_margin
)
digests = {source: sha256_file(source) for source in table["source"].unique()}
table.insert(3, "sha256", table["source"].map(digests))
# the same frame file twice under two names (a folder of frames) would count twice in the stack
for source, original in duplicate_sources(table["source"], digests).items():
    mine = (table["source"] == source) & (table["status"] != "rejected")
    table.loc[mine, ["status", "reason"]] = ["rejected", f"duplicate of {original} (same content)"]
atomic_write(snakemake.output[0], lambda tmp: table.to_csv(tmp, index=False))
rejected = table[table["status"] == "rejected"]
log.info("%d frames, %d rejected", len(table), len(rejected))
for _, row in rejected.iterrows():
    log.warning("frame %s rejected: %s", row["frame"], row["reason"])
