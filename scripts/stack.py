"""Entry script of rule stack: registered lights -> stack.{fits,tif,png} and the rejection map."""

import numpy as np
import pandas as pd

from astroflow.export import save_map_png, save_preview_png, save_tiff16
from astroflow.fitsio import read_header, write_image
from astroflow.logs import setup_logging
from astroflow.stack import combine, stack_header

log = setup_logging(snakemake.log[0])
p = snakemake.params
registration = pd.read_csv(snakemake.input.registration)
used = registration["status"] == "used"
paths = [f for f, ok in zip(snakemake.input.frames, used) if ok]
weights = registration.loc[used, "weight"].to_numpy(dtype=float)
log.info("stacking %d of %d lights with %s", len(paths), len(registration), p.method)
result = combine(
    paths,
    method=p.method,
    kappa_low=p.kappa_low,
    kappa_high=p.kappa_high,
    max_iters=p.max_iters,
    weights=weights,
    normalize=p.normalize,
    memory_mb=p.memory_mb,
)
header = stack_header([read_header(path) for path in paths], result, method=p.method)
write_image(snakemake.output.fits, result.image, header)
write_image(snakemake.output.rejection, result.rejected.astype(np.float32), {"BUNIT": "frames"})
save_tiff16(snakemake.output.tif, result.image, description="astroflow stack")
save_preview_png(snakemake.output.png, result.image, **p.preview)
rejected = result.rejected.sum(axis=2) if result.rejected.ndim == 3 else result.rejected
save_map_png(snakemake.output.rejection_png, rejected)
log.info("%.4f%% of samples rejected", 100 * rejected.sum() / max(1, rejected.size * len(paths)))
