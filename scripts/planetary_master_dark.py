"""Entry script of rule planetary_master_dark: dark video or frames -> masters/dark.fits (mean)."""

from astroflow.io.fits import write_image
from astroflow.io.sequence import open_sequence
from astroflow.planetary.passes import master_dark
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
sequence = open_sequence(
    list(snakemake.input),
    memory_mb=snakemake.params.memory_mb,
    decode_timeout_s=snakemake.params.decode_timeout_s,
)
dark, n = master_dark(sequence)
log.info("master dark: mean of %d of %d frames of %s", n, len(sequence), sequence.source)
write_image(
    snakemake.output[0],
    dark,
    {"IMAGETYP": "Master Dark", "NCOMBINE": n},
    [f"astroflow planetary_master_dark: mean of {n} frames of {sequence.source}"],
)
