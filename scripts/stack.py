"""Entry script of rule stack: registered lights -> stack.{fits,tif,png}, stack_f32.tif, rejection maps."""

from pathlib import Path

import pandas as pd

from astroflow.deepsky.frames import lights_to_stack
from astroflow.deepsky.stack import combine
from astroflow.io.export import save_map_png, save_preview_png, save_tiff16, save_tiff32
from astroflow.io.fits import combined_header, read_header, write_image
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
out = snakemake.output
registration = pd.read_csv(snakemake.input.registration)
paths = {Path(path).stem: path for path in snakemake.input.frames}
# rule stack_filter passes the lights of one filter: stack those only
where = f"target '{snakemake.wildcards.target}'"
if "filter" in snakemake.wildcards.keys():
    where += f", filter {snakemake.wildcards.filter}"
used = lights_to_stack(registration, paths, where=where)
registration = registration[registration["frame"].isin(paths)]
log.info("stacking %d of %d lights with %s", len(used), len(registration), p.method)
result = combine(
    list(used["path"]),
    method=p.method,
    sigma_low=p.sigma_low,
    sigma_high=p.sigma_high,
    max_iters=p.max_iters,
    percentile_low=p.percentile_low,
    percentile_high=p.percentile_high,
    gesd_outliers=p.gesd_outliers,
    gesd_alpha=p.gesd_alpha,
    weights=used["weight"].to_numpy(dtype=float),
    normalize=p.normalize,
    memory_mb=p.memory_mb,
    threads=snakemake.threads,
)
history = [
    f"astroflow stack: {p.method}, sigma clip {p.sigma_low}/{p.sigma_high}, "
    f"percentile {p.percentile_low}/{p.percentile_high}, "
    f"GESD {p.gesd_outliers}/{p.gesd_alpha}, normalize {p.normalize}",
    f"astroflow stack: frames {', '.join(used['frame'])}",
]
header = combined_header([read_header(path) for path in used["path"]], history)
write_image(out.fits, result.image, header)
maps = {
    "rejection": (result.rejected, "frames rejected"),
    "rejection_low": (result.rejected_low, "frames rejected low"),
    "rejection_high": (result.rejected_high, "frames rejected high"),
}
for name, (counts, what) in maps.items():
    write_image(out[name], counts, {"BUNIT": "frames", "COMMENT": what})
    # Colour maps are shown summed over the channels.
    save_map_png(out[f"{name}_png"], counts.sum(axis=2) if counts.ndim == 3 else counts)
save_tiff16(out.tif, result.image, description="astroflow stack")
save_tiff32(out.tif32, result.image, description="astroflow stack")
save_preview_png(out.png, result.image, **p.preview)
samples = max(1, int(result.ncombine_map.sum()) + int(result.rejected.sum()))
log.info(
    "%.4f%% of samples rejected (%.4f%% low, %.4f%% high)",
    100 * result.rejected.sum() / samples,
    100 * result.rejected_low.sum() / samples,
    100 * result.rejected_high.sum() / samples,
)
