"""Entry script of rule planetary_deconvolve_frames: the sharpest frames, aligned, in one file."""

import pandas as pd

from astroflow.io.fits import read_header, read_image
from astroflow.io.sequence import open_sequence
from astroflow.planetary.passes import deconvolution_frames, write_aligned_frames, write_frames_index
from astroflow.workflow.logs import setup_logging

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
header = read_header(snakemake.input.reference)
size = (int(header["WINH"]), int(header["WINW"]))
chosen = deconvolution_frames(table, keep_percent=p.keep_percent, max_frames=p.max_frames)
log.info(
    "%d of %d frames (best %.0f%%, at most %s) take part, window %dx%d px",
    len(chosen),
    len(table),
    p.keep_percent,
    p.max_frames or "no limit",
    size[0],
    size[1],
)
description = write_aligned_frames(sequence, chosen, size, snakemake.output.frames, dark=dark)
description["mode"] = str(header.get("WINMODE", "planet"))
write_frames_index(snakemake.output.index, description)
