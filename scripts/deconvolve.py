"""Entry script of rule deconvolve: a stack or image -> deconvolved.{fits,tif,png}, deconvolved_f32.tif,
its PSF and history.

Regularised Richardson-Lucy with a PSF estimated from the image's own stars
(:func:`astroflow.deconvolve.deconvolve_image`); a Moffat PSF of ``fallback_fwhm`` with a
warning in the log when the image has too few usable stars.
"""

import logging
import warnings

import numpy as np
import pandas as pd

from astroflow.io.atomic import atomic_write
from astroflow.io.export import save_linear_png, save_tiff16, save_tiff32
from astroflow.io.fits import derived_header, read_image, write_image
from astroflow.restoration.deconvolve import NoStarsForPSF, deconvolve_image
from astroflow.stretch import auto_stretch
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
image, header = read_image(snakemake.input.image)
encoding = header.get("AFENCODE", "linear")
bits = int(header.get("AFBITS", 32))
if encoding != "linear":
    log.warning(
        "%s is display-encoded (%s): Richardson-Lucy assumes linear data, so the result is an "
        "approximation; give a linear image (encoding: linear) for a true deconvolution",
        snakemake.input.image,
        encoding,
    )
grid = tuple(int(g) for g in p.grid)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", NoStarsForPSF)
    result, info = deconvolve_image(
        image,
        iterations=p.iterations,
        tv_weight=p.tv_weight,
        grid=None if grid == (1, 1) else grid,
        protect_stars=p.protect_stars,
        stop_tol=p.stop_tol,
        psf_size=p.psf_size,
        psf_max_stars=p.psf_max_stars,
        psf_threshold_sigma=p.psf_threshold_sigma,
        fallback_fwhm=p.fallback_fwhm,
    )
for w in caught:
    log.warning("%s: %s", snakemake.input.image, w.message)
psf_info = info["psf_info"]
log.info(
    "PSF: %s from %s stars, FWHM %.2f px",
    psf_info.get("method"),
    psf_info.get("n_stars", 0),
    float(psf_info.get("fwhm", np.nan)),
)
rls = info["rl"] if isinstance(info["rl"], list) else [info["rl"]]
rows = []
for cell, rl in enumerate(rls):
    chi2 = rl.get("chi2") or []
    for k, change in enumerate(rl["history"]):
        rows.append(
            {
                "method": "richardson-lucy",
                "cell": cell,
                "iteration": k + 1,
                "relative_change": change,
                "chi2": chi2[k] if k < len(chi2) else np.nan,
            }
        )
    log.info("cell %d: %d iterations, stopped by %s", cell, rl["iterations_run"], rl["stopped"])
history = [
    f"astroflow deconvolve: Richardson-Lucy, TV {p.tv_weight}, at most {p.iterations} iterations, "
    f"PSF {psf_info.get('method')} ({psf_info.get('n_stars', 0)} stars), grid {list(grid)}",
]
out_header = derived_header(header, history)
out_header["PSFFWHM"] = round(float(psf_info.get("fwhm", np.nan)), 3)
write_image(snakemake.output.fits, result, out_header)
write_image(snakemake.output.psf, info["psf"], {"PSFMETH": str(psf_info.get("method"))}, history)
atomic_write(snakemake.output.history, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
save_tiff16(snakemake.output.tif, result, description="astroflow deconvolved", encoding=encoding)
save_tiff32(snakemake.output.tif32, result, description="astroflow deconvolved", encoding=encoding)
if encoding == "linear":
    # The input's stretch for both, so that stack.png and deconvolved.png compare.
    stretch = auto_stretch(image, target_background=p.preview["target_background"],
                           shadows_clip=p.preview["shadows_clip"], linked=p.preview["linked"])
    save_linear_png(snakemake.output.png, stretch.apply(result), levels=(0.0, 1.0))
else:
    save_linear_png(snakemake.output.png, result, levels=(0.0, 1.0), bits=bits)
logging.shutdown()
