"""Entry script of rule planetary_stack: pass 3, alignment points stacked from their best frames."""

import numpy as np
import pandas as pd

from astroflow.io.atomic import atomic_write
from astroflow.io.export import save_linear_png, save_tiff16, save_tiff32
from astroflow.io.fits import fits_text, iso_date, read_image, write_image
from astroflow.io.sequence import open_sequence
from astroflow.planetary.passes import stack_sequence
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import alignment_points_plot

log = setup_logging(snakemake.log[0])
p = snakemake.params
sequence = open_sequence(
    list(snakemake.input.frames),
    memory_mb=snakemake.params.memory_mb,
    decode_timeout_s=snakemake.params.decode_timeout_s,
)
dark_path = getattr(snakemake.input, "dark", None)
dark = read_image(dark_path)[0] if dark_path else None
table = pd.read_csv(snakemake.input.table, keep_default_na=False, na_values=[""])
reference, _ = read_image(snakemake.input.reference)
points = pd.read_csv(snakemake.input.points)[["y", "x"]].to_numpy(dtype=int)
ap_quality = np.load(snakemake.input.ap_quality)
image, coverage, usage, stats = stack_sequence(
    sequence,
    table,
    reference,
    points,
    ap_quality,
    ap_size=p.ap_size,
    dark=dark,
    keep_percent=p.keep_percent,
    keep_count=p.keep_count,
    search=p.ap_search,
    sigma_low=p.sigma_low,
    sigma_high=p.sigma_high,
    max_iters=p.max_iters,
    drizzle=p.drizzle,
    pixfrac=p.pixfrac,
    workdir=snakemake.resources.tmpdir,
)
log.info(
    "%d frames per alignment point; %.3f%% of samples clipped; %d of %d local shifts refused",
    stats["n_keep"],
    100 * stats["rejected_fraction"],
    stats["local_fallbacks"],
    stats["local_measured"],
)
history = [
    f"astroflow planetary_stack: best {stats['n_keep']} frames at each of {len(points)} "
    f"alignment points of {p.ap_size} px, sigma clip {p.sigma_low}/{p.sigma_high}, "
    f"drizzle {p.drizzle}",
    f"astroflow planetary_stack: source {sequence.source}",
]
header = {"NCOMBINE": stats["n_keep"], "DRIZZLE": p.drizzle, "BUNIT": "ADU"}
# The frames stacked at one alignment point or more, or in the fill, span the observation.
used = usage.loc[(usage["ap_count"] > 0) | usage["in_fill"], "index"]
times = table.loc[table["index"].isin(used), "timestamp"].dropna()
stamps = sorted(filter(None, map(iso_date, times)))
if stamps:
    # Video and SER frames record no exposure time: the span ends with the last frame's start.
    header["DATE-OBS"], header["DATE-END"] = stamps[0], stamps[-1]
# Only SER files name the camera and telescope (in Latin-1 text; FITS strings are ASCII).
for key, field in (("INSTRUME", "instrument"), ("TELESCOP", "telescope")):
    if getattr(sequence, "metadata", {}).get(field):
        header[key] = fits_text(sequence.metadata[field])
write_image(snakemake.output.fits, image, header, history)
save_tiff16(snakemake.output.tif, image, description="astroflow lucky-imaging stack")
save_tiff32(snakemake.output.tif32, image, description="astroflow lucky-imaging stack")
save_linear_png(snakemake.output.png, image)
atomic_write(snakemake.output.usage, lambda tmp: usage.to_csv(tmp, index=False))
figure = alignment_points_plot(reference, points, p.ap_size, title=snakemake.wildcards.target)
atomic_write(snakemake.output.points_png, lambda tmp: figure.savefig(tmp, dpi=100))
