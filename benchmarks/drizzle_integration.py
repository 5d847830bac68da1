"""Deep-sky drizzle (rule ``drizzle``) against plain interpolation, on undersampled dithered frames.

What it measures, with the library's own functions:

* **resolution and flux against truth**: held-out star fields (seeds 100-102, none used by the
  tests) from :func:`astroflow.simulation.dither.dithered_frames`: 256 x 256 px, 60 Moffat stars
  (beta 4) of FWHM 1.2 px (undersampled), flux 2e4-2e5 ADU, sky 100 ADU, Gaussian noise 3 ADU,
  ``--frames`` frames dithered by random sub-pixel shifts (plus whole pixels) and rotations of up
  to 0.5 degrees. Each frame is drizzled with its true transform
  (:func:`astroflow.deepsky.drizzle_stack.drizzle_frames`) onto a 2x or 3x grid, for several
  kernels and pixfracs; plain interpolation is each frame warped onto the reference
  (:func:`astroflow.deepsky.register.warp`, the rule warp's function: Lanczos-4, bicubic or
  bilinear), the frames averaged, and the mean upsampled with the same kind of kernel
  (:func:`astroflow.deepsky.drizzle.upsample`). Per method: the median star FWHM (Moffat fit of
  :func:`astroflow.deepsky.quality.detect_stars`, in input pixels) against the truth (the
  noise-free field rendered on the same fine grid and measured the same way), the encircled
  energy within 1 input px over that within 5 px (sharpness of the core, against the truth's),
  the undershoot (most negative pixel, sky removed, over the brightest: the ringing of
  interpolation kernels with negative lobes; the noise alone gives about -0.001),
  and the star flux (SEP aperture of 5 input px at the true positions, sky removed) over the
  true flux: median and scatter (standard deviation), all over the isolated stars (no other star
  within 8 px) and, for the FWHM, the detections within 0.5 px of one (``n_fwhm``);
* **runtime per frame** on this machine: one 2048 x 2048 frame, mono, RGB and CFA (Bayer
  drizzle), scale 2, pixfrac 0.9, square kernel, with outlier rejection against a stack
  (pixmap, blot of the stack, outlier mask and the drizzle itself), median of ``--repeat`` runs.

Writes ``drizzle.csv`` and ``drizzle.md`` to ``--out`` and prints the markdown tables::

    .venv/bin/python benchmarks/drizzle_integration.py --out /tmp/drizzle-bench

(Not named drizzle.py: Python puts the script's folder first on sys.path, where that name would
hide the drizzle package.)

Not run by the tests (about two minutes on two cores).
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import sep

from astroflow.deepsky.drizzle import upsample
from astroflow.deepsky.drizzle_stack import affine_pixmap, drizzle_frames
from astroflow.deepsky.quality import detect_stars
from astroflow.deepsky.register import warp
from astroflow.simulation.dither import dithered_frames

SEEDS = (100, 101, 102)
SHAPE = (256, 256)
DRIZZLES = [
    (2, "square", 1.0), (2, "square", 0.7), (2, "square", 0.5), (2, "turbo", 0.7),
    (2, "point", 1.0), (2, "gaussian", 0.7), (2, "lanczos3", 1.0),
    (3, "square", 1.0), (3, "square", 0.7), (3, "square", 0.5),
]
INTERPOLATIONS = [("lanczos4", "lanczos"), ("cubic", "cubic"), ("linear", "linear")]


def isolated(sim, distance_px=8.0):
    """Stars with no other star within distance_px (input px): apertures and fits see one star."""
    xy = np.column_stack([sim["stars"]["x"], sim["stars"]["y"]])
    gaps = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(gaps, np.inf)
    return gaps.min(axis=1) > distance_px


def star_metrics(image, sim, scale, truth=None):
    """Median FWHM (input px), EE(1 px)/EE(5 px) and flux / true flux of the isolated stars."""
    image = np.ascontiguousarray(np.nan_to_num(image), dtype=np.float64)
    keep = isolated(sim)
    x = (sim["stars"]["x"][keep] + 0.5) * scale - 0.5
    y = (sim["stars"]["y"][keep] + 0.5) * scale - 0.5
    core, _, _ = sep.sum_circle(image, x, y, 1.0 * scale)
    total, _, _ = sep.sum_circle(image, x, y, 5.0 * scale)
    ratio = total / scale**2 / sim["stars"]["flux"][keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stars = detect_stars(image.astype(np.float32))
    stars = stars[stars["flag"] == 0]
    # each detection matched to an isolated true star within half an input pixel
    offsets = np.hypot(stars["x"].to_numpy()[:, None] - x[None], stars["y"].to_numpy()[:, None] - y[None])
    matched = offsets.min(axis=1) < 0.5 * scale if len(x) else np.zeros(len(stars), bool)
    return {
        "fwhm_px": float(np.nanmedian(stars.loc[matched, "fwhm"])) / scale if matched.any() else np.nan,
        "n_fwhm": int(matched.sum()),
        "ee_ratio": float(np.median(core / total)),
        # ringing: the most negative pixel (sky removed) in units of the brightest one
        "undershoot": float(image.min() / image.max()),
        "flux_ratio": float(np.median(ratio)),
        "flux_scatter": float(np.std(ratio)),
    }


def resolution(n_frames):
    rows = []
    for seed in SEEDS:
        sim = dithered_frames(
            SHAPE, n_frames=n_frames, n_stars=60, fwhm_px=1.2, noise_adu=3.0, rotation_deg=0.5, seed=seed
        )
        sky = sim["sky_adu"]
        pixmaps = [affine_pixmap(m, SHAPE) for m in sim["matrices"]]
        frames = [
            {"name": f"f{i}", "data": d, "pixmap": p, "weight": 1.0}
            for i, (d, p) in enumerate(zip(sim["frames"], pixmaps))
        ]
        for scale in (2, 3):
            truth = star_metrics(sim["truth"](scale), sim, scale)
            rows.append({"seed": seed, "scale": scale, "method": "truth", **truth})
        for scale, kernel, pixfrac in DRIZZLES:
            start = time.perf_counter()
            result = drizzle_frames(frames, SHAPE, scale=scale, pixfrac=pixfrac, kernel=kernel)
            seconds = time.perf_counter() - start
            rows.append({
                "seed": seed, "scale": scale, "method": f"drizzle {kernel} pixfrac {pixfrac}",
                "s_per_frame": seconds / n_frames, **star_metrics(result.image - sky, sim, scale),
            })
        for warp_kernel, resize in INTERPOLATIONS:
            start = time.perf_counter()
            warped = np.array(
                [warp(d, m, SHAPE, interpolation=warp_kernel) for d, m in zip(sim["frames"], sim["matrices"])]
            )
            count = np.isfinite(warped).sum(axis=0)
            mean = np.where(count > 0, np.nansum(warped, axis=0) / np.maximum(count, 1), sky)
            seconds = time.perf_counter() - start
            for scale in (2, 3):
                up = upsample(mean, scale, method=resize)
                rows.append({
                    "seed": seed, "scale": scale, "method": f"warp {warp_kernel} + mean + upsample {resize}",
                    "s_per_frame": seconds / n_frames, **star_metrics(up - sky, sim, scale),
                })
        print(f"seed {seed} done", flush=True)
    return pd.DataFrame(rows)


def runtime(repeat):
    rng = np.random.default_rng(0)
    size = (2048, 2048)
    matrix = np.array([[np.cos(0.01), -np.sin(0.01), 3.3], [np.sin(0.01), np.cos(0.01), -2.7], [0, 0, 1]])
    rows = []
    for layout in ("mono", "rgb", "cfa"):
        shape = size + ((3,) if layout == "rgb" else ())
        data = (100 + rng.normal(0, 3, shape)).astype(np.float32)
        stack = (100 + rng.normal(0, 1, size + (() if layout == "mono" else (3,)))).astype(np.float32)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            frame = {"name": "f", "data": data, "pixmap": affine_pixmap(matrix, size), "weight": 1.0,
                     "pattern": "RGGB" if layout == "cfa" else None}
            drizzle_frames([frame], size, scale=2, pixfrac=0.9, kernel="square", stack=stack)
            times.append(time.perf_counter() - start)
        rows.append({"frame": f"2048x2048 {layout}", "s_per_frame": float(np.median(times))})
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = resolution(args.frames)
    table.to_csv(args.out / "drizzle.csv", index=False)
    summary = (
        table.groupby(["scale", "method"], sort=False)
        .agg(
            fwhm_px=("fwhm_px", "mean"), n_fwhm=("n_fwhm", "sum"), ee_ratio=("ee_ratio", "mean"),
            undershoot=("undershoot", "mean"), flux_ratio=("flux_ratio", "mean"),
            flux_scatter=("flux_scatter", "mean"), s_per_frame=("s_per_frame", "mean"),
        )
        .reset_index()
    )
    timing = runtime(args.repeat)
    text = (
        f"Undersampled stars (FWHM 1.2 px), {args.frames} dithered frames of {SHAPE[0]}x{SHAPE[1]}, "
        f"mean of seeds {', '.join(map(str, SEEDS))}; FWHM in input px, EE = energy within 1 px / within 5 px, "
        "flux = aperture flux / true flux\n\n"
        + summary.to_markdown(index=False, floatfmt=".3f")
        + "\n\nRuntime per frame (drizzle with outlier rejection, scale 2, square, pixfrac 0.9)\n\n"
        + timing.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    (args.out / "drizzle.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
