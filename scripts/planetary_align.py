"""Entry script of rule planetary_align: pass 2, reference, global alignment, alignment points."""

import numpy as np
import pandas as pd

from astroflow.io.atomic import atomic_write
from astroflow.io.fits import read_image, write_image
from astroflow.io.sequence import open_sequence
from astroflow.planetary.passes import align_sequence, plan_window
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
analysis = pd.read_csv(snakemake.input.analysis, keep_default_na=False, na_values=[""])
table, mode, size = plan_window(analysis, sequence.shape[:2], mode=p.object, padding=p.padding)
log.info("%s mode, window %dx%d px", mode, size[0], size[1])
table, reference, points, ap_quality = align_sequence(
    sequence,
    table,
    size,
    dark=dark,
    reference_percent=p.reference_percent,
    ap_size=p.ap_size,
    ap_min_brightness=p.ap_min_brightness,
    ap_min_structure=p.ap_min_structure,
)
atomic_write(snakemake.output.table, lambda tmp: table.to_csv(tmp, index=False))
write_image(
    snakemake.output.reference,
    reference,
    {"WINMODE": mode, "WINH": size[0], "WINW": size[1]},
    ["astroflow planetary_align: reference = mean of the best frames, aligned on the best"],
)
points_table = pd.DataFrame({"y": points[:, 0], "x": points[:, 1], "size": p.ap_size})
atomic_write(snakemake.output.points, lambda tmp: points_table.to_csv(tmp, index=False))
atomic_write(snakemake.output.ap_quality, lambda tmp: np.save(tmp, ap_quality))
ok = table["status"] == "ok"
log.info(
    "%d frames aligned; global shift RMS %.2f px; %d alignment points",
    int(ok.sum()),
    float(np.sqrt((table.loc[ok, ["shift_y", "shift_x"]] ** 2).sum(axis=1).mean())),
    len(points),
)
