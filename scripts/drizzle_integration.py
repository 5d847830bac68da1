"""Entry script of rule drizzle: calibrated lights + registration.csv + rejection stack -> drizzle.*

(Not named drizzle.py: Snakemake puts this folder first on sys.path, where it would hide the
drizzle package.)
"""

from pathlib import Path

import pandas as pd

from astroflow.deepsky.drizzle_stack import bayer_pattern, drizzle_frames, frame_pixmap
from astroflow.io.export import save_preview_png, save_tiff16, save_tiff32
from astroflow.io.fits import combined_header, is_rejected, read_header, read_image, write_image
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
registration = pd.read_csv(snakemake.input.registration)
paths = {Path(path).stem: path for path in snakemake.input.lights}
# rule drizzle_filter passes the lights of one filter: drizzle those only
used = registration[(registration["status"] == "used") & registration["frame"].isin(list(paths))]
stack, _ = read_image(snakemake.input.stack)
rejection = p.outliers["enabled"]


def frames():
    """The used lights one at a time, with their pixmaps and weights."""
    for _, row in used.iterrows():
        path = paths[row["frame"]]
        header = read_header(path)
        # calibrate_light writes a placeholder for a mono light where Bayer drizzle wants a mosaic
        data, header = (None, header) if is_rejected(header) else read_image(path)
        pattern = bayer_pattern(data, header, path) if p.bayer else None
        yield {
            "name": row["frame"],
            "data": data,
            "pixmap": frame_pixmap(row, data.shape),
            "weight": float(row["weight"]),
            "pattern": pattern,
        }


log.info(
    "drizzling %d lights: scale %d, pixfrac %g, kernel %s%s, outliers %s",
    len(used), p.scale, p.pixfrac, p.kernel, ", Bayer drizzle" if p.bayer else "",
    "masked against the blotted stack" if rejection else "kept",
)
result = drizzle_frames(
    frames(),
    stack.shape[:2],
    scale=p.scale,
    pixfrac=p.pixfrac,
    kernel=p.kernel,
    stack=stack if rejection else None,
    sigma=p.outliers["sigma"],
    deriv_scale=p.outliers["deriv_scale"],
    grow_px=p.outliers["grow_px"],
)
for entry in result.frames:
    log.info("%s: offset %s ADU, noise %s ADU, %d outlier pixels", entry["frame"],
             [round(v, 2) for v in entry["offset"]], [round(v, 2) for v in entry["noise"]], entry["rejected"])
history = [
    f"astroflow drizzle: scale {p.scale}, pixfrac {p.pixfrac}, kernel {p.kernel}"
    + (", Bayer drizzle of the CFA mosaics" if p.bayer else ""),
    f"astroflow drizzle: outliers {p.outliers}",
    f"astroflow drizzle: frames {', '.join(used['frame'])}",
]
header = combined_header([read_header(paths[f]) for f in used["frame"]], history)
header.pop("BAYERPAT", None)  # the result is RGB
header["DRIZSCAL"] = (p.scale, "drizzle output pixels per reference pixel")
header["DRIZPIXF"] = (p.pixfrac, "drizzle drop size (fraction of an input pixel)")
header["DRIZKERN"] = (p.kernel, "drizzle kernel")
header["DRIZBAYR"] = (bool(p.bayer), "Bayer drizzle of the undebayered CFA mosaics")
write_image(snakemake.output.fits, result.image, header)
write_image(snakemake.output.weight, result.weight, {"BUNIT": "drizzle weight", "DRIZSCAL": p.scale})
save_tiff16(snakemake.output.tif, result.image, description="astroflow drizzle")
save_tiff32(snakemake.output.tif32, result.image, description="astroflow drizzle")
save_preview_png(snakemake.output.png, result.image, **p.preview)
covered = (result.weight > 0).mean()
log.info("drizzle %s written; %.1f%% of output pixels covered", result.image.shape, 100 * covered)
