"""Entry script of rule starless: a stack or image -> starless and stars, each .fits, .tif, _f32.tif, .png."""

import os

# OpenMP threads that spin while they wait slow torch down many times over when another job
# shares the cores (measured: 0.41 against 14.5 iterations/s of the multi-frame deconvolution on
# 2 busy cores); passive waiting costs nothing on an idle machine. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from PIL import Image

from astroflow.io.export import save_linear_png, save_tiff16, save_tiff32
from astroflow.io.fits import derived_header, read_image, write_image
from astroflow.restoration.starless import classical_star_removal, remove_stars
from astroflow.restoration.starmetrics import crop_windows, measurement_pair, star_removal_measures
from astroflow.restoration.starnet import load_starless, predictor
from astroflow.stretch import auto_stretch
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import comparison_crops

log = setup_logging(snakemake.log[0])
p = snakemake.params
torch.set_num_threads(snakemake.threads)
image, header = read_image(snakemake.input.image)
encoding = header.get("AFENCODE", "linear")
bits = int(header.get("AFBITS", 32))
shape = "x".join(map(str, image.shape))
if p.method == "classical":
    log.info("classical star removal (%s); %s image %s", p.classical, encoding, shape)

    def predict(display):
        return classical_star_removal(display, **p.classical)[0]

    history = [f"astroflow starless: classical (SEP, ellipses, Telea inpainting {p.classical}), {encoding} data"]
else:
    model, meta = load_starless(snakemake.input.weights)
    log.info(
        "weights %s (%s profile, val PSNR %s dB); %s image %s",
        snakemake.input.weights,
        meta.get("profile", "?"),
        meta.get("val_psnr", "?"),
        encoding,
        shape,
    )
    predict = predictor(model, tile=p.tile, overlap=p.overlap, batch=p.batch, profiles=p.subtract_profiles,
                        spikes=p.subtract_spikes, residuals=p.inpaint_residuals)
    cleanup = (
        (", star profiles subtracted" if p.subtract_profiles else "")
        + (", spikes subtracted" if p.subtract_spikes else "")
        + (", residual stars inpainted" if p.inpaint_residuals else "")
    )
    history = [f"astroflow starless: weights {snakemake.input.weights}{cleanup}, {encoding} data"]
result = remove_stars(image, predict, encoding=encoding, target_background=p.target_background)
write_image(snakemake.output.fits, result.starless, derived_header(header, history))
recombine = "starless + stars" if encoding == "linear" else "1 - (1 - starless)(1 - stars)"
stars_header = derived_header(header, history + [f"input = {recombine}"])
write_image(snakemake.output.stars_fits, result.stars, stars_header)
out = snakemake.output
for data, tif, tif32, name in (
    (result.starless, out.tif, out.tif32, "starless"),
    (result.stars, out.stars_tif, out.stars_tif32, "stars"),
):
    save_tiff16(tif, data, description=f"astroflow {name}", encoding=encoding)
    save_tiff32(tif32, data, description=f"astroflow {name}", encoding=encoding)
if encoding == "linear":
    # One stretch, the input's, for both previews, so that they compare.
    stretch = auto_stretch(image, target_background=p.preview["target_background"],
                           shadows_clip=p.preview["shadows_clip"], linked=p.preview["linked"])
    save_linear_png(snakemake.output.png, stretch.apply(result.starless), levels=(0.0, 1.0))
    save_linear_png(snakemake.output.stars_png, stretch.apply(result.stars + np.nanmin(image)), levels=(0.0, 1.0))
else:
    save_linear_png(snakemake.output.png, result.starless, levels=(0.0, 1.0), bits=bits)
    save_linear_png(snakemake.output.stars_png, result.stars, levels=(0.0, 1.0), bits=bits)
log.info("%d NaN pixels kept as NaN", result.n_nan)

# What a user checks first, with the measures that need no truth (astroflow.restoration.starmetrics):
# crops of the brightest stars, the most crowded field and the most nebulosity, input | starless.
finite = np.nan_to_num(image, nan=float(np.nanmedian(image)))
starless_finite = np.where(np.isnan(result.starless), finite, result.starless)
before, after = measurement_pair(finite, starless_finite, encoding=encoding)
size = int(min(128, *before.shape[:2]))
rows = [
    comparison_crops({f"input ({kind})": before, "starless": after}, centre, size, restretch=encoding == "linear")
    for kind, centre in crop_windows(before, size).items()
]
spacer = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
Image.fromarray(np.concatenate(sum(([r, spacer] for r in rows), [])[:-1], axis=0)).save(snakemake.output.crops)
measures = star_removal_measures(finite, starless_finite, encoding=encoding)
log.info(
    "measures without truth (display domain, noise sigmas): %s",
    ", ".join(f"{k} {v:.3g}" for k, v in measures.items() if isinstance(v, (int, float))),
)
