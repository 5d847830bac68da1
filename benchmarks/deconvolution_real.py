"""Deconvolution on real data: before/after figures from a finished workflow run.

    PYTHONPATH=scripts python benchmarks/deconvolution_real.py RESULTS_DIR [--pictures DIR]

RESULTS_DIR is a run's ``results/`` folder (e.g. of ``snakemake --configfile
tests/configs/jupiter-tensorez.yaml``). For every target with a ``deconvolved.fits``:

* planetary targets: the band powers of :func:`astroflow.planetary.detail_measures` for the
  lucky stack, the wavelet-sharpened stack and the multi-frame deconvolution, and, where a
  compact source lies outside the planet's disc (a Jupiter moon), its FWHM in each;
* stacks (deep-sky) and images: median star FWHM, aperture-flux ratio after/before and ringing
  (:func:`astroflow.deconvolve.star_metrics`) of the stars SEP detects at 20 sigma in the stack.

``--pictures`` writes side-by-side PNGs (before | after, same display levels). Prints markdown.
Not run by the tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy import ndimage

from astroflow.deepsky.quality import detect_stars
from astroflow.io.fits import read_image
from astroflow.planetary.passes import detail_measures
from astroflow.restoration.deconvolve import star_metrics


def luminance(image):
    return image.mean(axis=2) if image.ndim == 3 else image


def moon_position(stack):
    """(x, y) of the brightest compact source outside the planet's disc, or None."""
    lum = luminance(stack).astype(np.float64)
    sky = np.median(lum)
    disc = lum > sky + 0.05 * (lum.max() - sky)
    labels, n = ndimage.label(disc)
    if n == 0:
        return None
    sizes = ndimage.sum(disc, labels, range(1, n + 1))
    planet = labels == (1 + int(np.argmax(sizes)))
    away = ndimage.binary_dilation(planet, iterations=8) | ~np.isfinite(lum)
    masked = np.where(away, sky, lum)
    masked[:8], masked[-8:], masked[:, :8], masked[:, -8:] = sky, sky, sky, sky
    y, x = np.unravel_index(int(np.argmax(masked)), masked.shape)
    noise = 1.4826 * np.median(np.abs(lum[~away] - np.median(lum[~away])))
    if masked[y, x] - sky < 10 * max(noise, 1e-9):
        return None
    return float(x), float(y)


def display(image, levels):
    lo, hi = levels
    data = np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo), 0, 1)
    return np.round(255 * data).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--pictures", type=Path, default=None)
    args = parser.parse_args()
    for target_dir in sorted(p.parent for p in args.results.glob("*/deconvolved.fits")):
        name = target_dir.name
        before_path = target_dir / ("stack.fits" if (target_dir / "stack.fits").exists() else "image.fits")
        before, _ = read_image(before_path)
        after, _ = read_image(target_dir / "deconvolved.fits")
        print(f"\n### {name}\n")
        if (target_dir / "sharpened.fits").exists():
            sharpened, _ = read_image(target_dir / "sharpened.fits")
            images = {"lucky stack": before, "sharpened (wavelets)": sharpened,
                      "multi-frame deconvolution": after}
            table = detail_measures(images)
            moon = moon_position(before)
            if moon is not None:
                table["moon_fwhm_px"] = [
                    float(star_metrics(im, [moon], radius=5.0)["fwhm"].iloc[0]) for im in images.values()
                ]
                print(f"moon at x={moon[0]:.0f}, y={moon[1]:.0f}")
            print(table.to_markdown(index=False, floatfmt=".3g"))
            levels = np.nanpercentile(luminance(before), [0.5, 99.99])
            tiles = [display(im, levels) for im in images.values()]
        else:
            crop = np.s_[64:-64, 64:-64] if min(before.shape[:2]) > 256 else np.s_[:, :]
            stars = detect_stars(before[crop], threshold_sigma=20.0, max_stars=60)[["x", "y"]].to_numpy()
            m0, m1 = star_metrics(before[crop], stars), star_metrics(after[crop], stars)
            print(f"{len(stars)} stars: FWHM {m0['fwhm'].median():.2f} -> {m1['fwhm'].median():.2f} px; "
                  f"flux ratio {np.median(m1['flux'] / m0['flux']):.3f}; ringing "
                  f"{m0['ringing'].median():.4f} -> {m1['ringing'].median():.4f}")
            sky = np.nanmedian(before)
            levels = (sky - 3 * np.nanstd(before[crop][before[crop] < np.nanpercentile(before[crop], 90)]),
                      np.nanpercentile(before, 99.9))
            tiles = [display(luminance(before), levels), display(luminance(after), levels)]
        if args.pictures:
            args.pictures.mkdir(parents=True, exist_ok=True)
            iio.imwrite(args.pictures / f"{name}.png", np.hstack(tiles))


if __name__ == "__main__":
    main()
