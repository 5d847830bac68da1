"""Entry script of rule stack: registered lights -> stack.{fits,tif,png}, stack_f32.tif, rejection map."""

from pathlib import Path

import pandas as pd

from astroflow.deepsky.stack import combine
from astroflow.io.export import save_map_png, save_preview_png, save_tiff16, save_tiff32
from astroflow.io.fits import combined_header, read_header, write_image
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
registration = pd.read_csv(snakemake.input.registration)
paths = {Path(path).stem: path for path in snakemake.input.frames}
# rule stack_filter passes the lights of one filter: stack those only
registration = registration[registration["frame"].isin(paths)].copy()
registration["path"] = registration["frame"].map(paths)
# The reference frame first: frames are normalised to the first one.
used = registration[registration["status"] == "used"].sort_values("reference", ascending=False)
log.info("stacking %d of %d lights with %s", len(used), len(registration), p.method)
result = combine(
    list(used["path"]),
    method=p.method,
    sigma_low=p.sigma_low,
    sigma_high=p.sigma_high,
    max_iters=p.max_iters,
    weights=used["weight"].to_numpy(dtype=float),
    normalize=p.normalize,
    memory_mb=p.memory_mb,
)
history = [
    f"astroflow stack: {p.method}, sigma clip {p.sigma_low}/{p.sigma_high}, normalize {p.normalize}",
    f"astroflow stack: frames {', '.join(used['frame'])}",
]
header = combined_header([read_header(path) for path in used["path"]], history)
write_image(snakemake.output.fits, result.image, header)
write_image(snakemake.output.rejection, result.rejected, {"BUNIT": "frames"})
save_tiff16(snakemake.output.tif, result.image, description="astroflow stack")
save_tiff32(snakemake.output.tif32, result.image, description="astroflow stack")
save_preview_png(snakemake.output.png, result.image, **p.preview)
rejected = result.rejected.sum(axis=2) if result.rejected.ndim == 3 else result.rejected
save_map_png(snakemake.output.rejection_png, rejected)
log.info("%.4f%% of samples rejected", 100 * rejected.sum() / max(1, result.ncombine_map.sum()))
