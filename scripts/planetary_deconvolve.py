"""Entry script of rule planetary_deconvolve: frames + lucky stack -> deconvolved.{fits,tif,png}, _f32.tif.

Multi-frame blind deconvolution (:func:`astroflow.mfbd.multiframe_deconvolve`) on a GPU when
torch sees one, else on the CPU; loss per iteration to the log and to mfbd_history.csv.
"""

import os

# OpenMP threads that spin while they wait slow torch down many times over when another job
# shares the cores (measured: 0.41 against 14.5 iterations/s of the multi-frame deconvolution on
# 2 busy cores); passive waiting costs nothing on an idle machine. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import logging

import cv2
import pandas as pd
import torch

from astroflow.io.atomic import atomic_write
from astroflow.io.export import linear_png_levels, save_linear_png, save_tiff16, save_tiff32
from astroflow.io.fits import derived_header, read_image, write_image, write_planes
from astroflow.io.framestore import FrameStore
from astroflow.restoration.mfbd import multiframe_deconvolve
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
torch.set_num_threads(snakemake.threads)
with open(snakemake.input.index) as handle:
    index = json.load(handle)
shape = tuple(index["shape"])
stack, header = read_image(snakemake.input.stack)
init = stack
if stack.shape[:2] != shape[1:3]:
    # A drizzled stack: the frames are at the camera's sampling, so the latent image is too.
    log.warning(
        "stack %s is %dx%d (drizzle %s) but the frames are %dx%d: the initial image is resampled "
        "to the frames' sampling",
        snakemake.input.stack,
        stack.shape[0],
        stack.shape[1],
        header.get("DRIZZLE", "?"),
        shape[1],
        shape[2],
    )
    init = cv2.resize(stack, (shape[2], shape[1]), interpolation=cv2.INTER_AREA)
patch = p.patch
if patch == "auto":
    patch = 256 if index.get("mode") == "surface" else 0
every = max(1, p.epochs * max(1, -(-shape[0] // p.batch)) // 20)


def progress(record):
    if record["iteration"] % every == 0 or record["iteration"] == 1:
        log.info(
            "patch %d epoch %d iteration %d: loss %.5g (data %.5g, TV %.5g), %.1f s",
            record.get("patch", 0),
            record["epoch"],
            record["iteration"],
            record["loss"],
            record["data_loss"],
            record["tv"],
            record["seconds"],
        )


log.info(
    "%d frames of %s px, batch %d, %d epochs, PSF %d px, patch %s, device %s",
    shape[0],
    "x".join(map(str, shape[1:])),
    p.batch,
    p.epochs,
    p.psf_size,
    patch or "none",
    "cuda" if torch.cuda.is_available() else "cpu",
)
with FrameStore.open(snakemake.input.frames, shape) as frames:
    latent, info = multiframe_deconvolve(
        frames,
        init,
        psf_size=p.psf_size,
        epochs=p.epochs,
        batch=p.batch,
        lr=p.lr,
        psf_lr=p.psf_lr,
        psf_steps=p.psf_steps,
        tv_weight=p.tv_weight,
        patch=patch,
        overlap=p.overlap,
        seed=p.seed,
        progress=progress,
    )
log.info(
    "%d iterations in %.1f s on %s (%.2f iterations/s)",
    info["iterations"],
    info["seconds"],
    info["device"],
    info["iterations_per_second"],
)
history = [
    f"astroflow planetary_deconvolve: multi-frame blind deconvolution of {shape[0]} frames, "
    f"{p.epochs} epochs, batch {p.batch}, PSF {p.psf_size} px, TV {p.tv_weight}, patch {patch}",
    "astroflow planetary_deconvolve: initialised from the lucky stack",
]
out_header = derived_header(header, history)
# The latent image is fitted to the chosen frames, at their sampling, not to those of the lucky
# stack at its drizzle.
out_header["NCOMBINE"] = shape[0]
out_header.remove("DRIZZLE", ignore_missing=True)
out_header["MFBDDEV"] = info["device"]
write_image(snakemake.output.fits, latent, out_header)
save_tiff16(snakemake.output.tif, latent, description="astroflow multi-frame deconvolved")
save_tiff32(snakemake.output.tif32, latent, description="astroflow multi-frame deconvolved")
psf_note = "one PSF per frame (sum 1), frames in the order of mfbd_frames.json"
write_planes(snakemake.output.psfs, info["psfs"], history=[f"astroflow planetary_deconvolve: {psf_note}"])
atomic_write(snakemake.output.history, lambda tmp: pd.DataFrame(info["history"]).to_csv(tmp, index=False))
# The stack's display levels, so that stack.png and deconvolved.png compare.
save_linear_png(snakemake.output.png, latent, levels=linear_png_levels(init))
logging.shutdown()
