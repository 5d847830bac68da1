"""Entry script of rule warp: one calibrated light resampled onto the reference frame."""

from pathlib import Path

import cv2
import pandas as pd

from astroflow.deepsky.register import pixel_map, transform_matrix, warp
from astroflow.io.fits import REASON_KEY, is_rejected, read_header, read_image, write_image, write_rejected
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
# OpenCV takes every core unless told: keep to what the rule declared
cv2.setNumThreads(snakemake.threads)
frame = Path(snakemake.input.light).stem
row = pd.read_csv(snakemake.input.registration).set_index("frame").loc[frame]
header = read_header(snakemake.input.light)
if is_rejected(header) or row["status"] != "used":
    reason = header.get(REASON_KEY) if is_rejected(header) else row["reason"]
    write_rejected(snakemake.output[0], reason, header)
    log.warning("%s not warped: %s", frame, reason)
else:
    image, header = read_image(snakemake.input.light)
    # The distortion model needs its per-pixel map; the matrix models warp directly.
    distorted = isinstance(row.get("tps"), str) and row["tps"] != ""
    registered = warp(
        image,
        transform_matrix(row),
        image.shape[:2],
        interpolation=snakemake.params.interpolation,
        coordinates=pixel_map(row, image.shape[:2]) if distorted else None,
    )
    model = row.get("model", "similarity")
    history = [
        f"astroflow warp: onto the reference frame, {model}, {snakemake.params.interpolation}"
    ]
    write_image(snakemake.output[0], registered, header, history)
    log.info("%s warped (dx %.2f, dy %.2f px, %.4f deg)", frame, row.dx, row.dy, row.rotation_deg)
