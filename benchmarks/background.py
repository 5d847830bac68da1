"""Gradient removal and colour calibration (rule ``background``) measured against truth and on real images.

What it measures, each with the workflow's default ``background.*`` and ``colour.*`` settings
(read from ``config.yaml``) and the library's own functions
(:func:`astroflow.restoration.background.fit_background`,
:func:`astroflow.restoration.colour.calibrate_colour`):

* **held-out synthetic skies** (seeds 100-104, none used by the tests): a linear + quadratic
  gradient, stars (:func:`astroflow.simulation.night.render_stars`), a faint extended Gaussian
  region (1 noise sigma at its peak, 5 % of the width in sigma) and Gaussian noise; per model
  (``polynomial``, ``rbf``, ``spline``): the residual RMS of the fitted model against the true
  background (ADU, its mean offset removed, which the pedestal absorbs) and the faint region's flux
  kept (sum of ``image - model`` minus the true sky-and-noise, over the region, / its true flux);
* **Cave Nebula** (``../shared/data/cave-nebula/cave_nebula_starry_color.png``, display data in
  0..1): the nebula's flux kept, i.e. the sum over the brightest-nebula region (the top 10 % of a
  star-free, 41 px median-filtered grey image) of the level above the darkest sky (the 2nd
  percentile of that filtered image), after / before; and the fraction of pixels masked as signal;
* **Seestar S50 M 94, night 2**: a stack made by the workflow (``--m94-stack``): the left-right
  gradient per channel (ADU), from star-masked 64 px block medians of the sky: the x slope of a
  plane fitted to them times the image width, before and after, and the white-balance factors the
  colour calibration finds;
* **the simulated default night** (a finished run, ``--sim-run``, with
  ``resources/simulated/night/truth``): the fitted background against the true sky (the
  simulator's linear ramp, :func:`astroflow.simulation.night._sky`, in the stack's reference frame,
  scaled by each channel's sky level; flats removed the vignetting): RMS of model - truth in % of
  the sky, and the star-masked block-median sky RMS (%) before and after; and the colour error of
  isolated unsaturated stars (SEP aperture photometry at their true positions) against their true
  colours white-balanced to the simulator's 5800 K white (``truth/stars.csv`` flux_r/g/b), in
  magnitudes of R-G and B-G (median offset and median absolute error), before calibration, with
  star white balance (the default) and with the camera multipliers.

Writes ``background.csv`` and ``background.md`` to ``--out`` and prints the markdown table::

    .venv/bin/python benchmarks/background.py --out /tmp/background-bench

Not run by the tests (about two minutes on two cores).
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.ndimage as ndi
import sep
import yaml

from astroflow.io.fits import read_image
from astroflow.io.imagefile import display_scale, read_finished_image
from astroflow.restoration.background import BackgroundWarning, fit_background, signal_mask
from astroflow.restoration.colour import calibrate_colour
from astroflow.simulation.night import _REFERENCE_TEMPERATURE_K, colour_ratios, render_stars

ROOT = Path(__file__).resolve().parents[1]
CAVE = ROOT.parent / "shared/data/cave-nebula/cave_nebula_starry_color.png"
ROWS = []


def record(section, input_, measure, value, unit=""):
    ROWS.append(dict(section=section, input=input_, measure=measure, value=value, unit=unit))


def settings():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    return config["background"], config["colour"]


def background_kwargs(bg, model=None):
    model = model or bg["model"]
    return dict(model=model, mode=bg["mode"], grid=bg["grid"], degree=bg["degree"],
                smoothing=bg["smoothing"].get(model, 0.0), threshold_sigma=bg["threshold_sigma"], grow=bg["grow"],
                reject_sigma=bg["reject_sigma"], min_fraction=bg["min_fraction"], min_samples=bg["min_samples"])


def colour_kwargs(cc, white_balance=None):
    return dict(neutralise=cc["neutralise_background"], white_balance=white_balance or cc["white_balance"],
                threshold_sigma=cc["threshold_sigma"], saturation=cc["saturation"], min_stars=cc["min_stars"])


def synthetic_scene(seed, shape=(400, 600), noise=5.0):
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    n = int(h * w / 1500)
    stars = render_stars(shape, rng.uniform(0, w, n), rng.uniform(0, h, n), 10 ** rng.uniform(2.5, 4.5, n),
                         fwhm_px=3.0)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    region = noise * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.05 * w) ** 2))
    angle = rng.uniform(0, 2 * np.pi)
    along = ((xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)) / w
    background = 300 + 40 * along + 10 * along**2 + 6 * ((yy - h / 2) / h) ** 2
    image = background + stars + region + rng.normal(0, noise, shape)
    return image.astype(np.float32), background, region


def bench_synthetic(bg):
    for model in ("polynomial", "rbf", "spline"):
        rms, kept = [], []
        for seed in range(100, 105):
            image, background, region = synthetic_scene(seed)
            result = fit_background(image, **background_kwargs(bg, model), name=f"synthetic {seed}")
            error = result.background - background
            rms.append(float(np.std(error)))
            inside = region > 0.2 * region.max()
            kept.append(float((background - result.background)[inside].sum() / region[inside].sum() + 1.0))
        record("synthetic", "5 held-out skies 400x600, 40 ADU gradient, noise 5", f"{model}: model - truth RMS",
               f"{np.mean(rms):.3f} (max {np.max(rms):.3f})", "ADU")
        record("synthetic", "5 held-out skies 400x600, 40 ADU gradient, noise 5", f"{model}: faint region flux kept",
               f"{np.mean(kept):.3f} ({np.min(kept):.3f}-{np.max(kept):.3f})", "ratio")


def nebula_level(image):
    """Star-free smooth grey map (41 px median of a 5 px median)."""
    grey = image.mean(axis=2) if image.ndim == 3 else image
    small = ndi.zoom(ndi.median_filter(grey, 5), 0.25, order=1)
    return ndi.zoom(ndi.median_filter(small, 11), np.array(grey.shape) / np.array(small.shape), order=1)


def bench_cave(bg):
    image, bits = read_finished_image(CAVE)
    image = image / display_scale(bits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BackgroundWarning)
        result = fit_background(image, **background_kwargs(bg), name=CAVE.name)
    before, after = nebula_level(image), nebula_level(result.corrected)
    region = before >= np.percentile(before, 90)
    flux_before = (before - np.percentile(before, 2))[region].sum()
    flux_after = (after - np.percentile(after, 2))[region].sum()
    label = f"{CAVE.name} {image.shape[1]}x{image.shape[0]}"
    record("cave", label, "nebula flux kept (top-10% region above darkest sky, after/before)",
           f"{flux_after / flux_before:.3f}", "ratio")
    record("cave", label, "pixels masked as signal", f"{result.masked_fraction:.1%}")
    used = f"{result.n_samples} / {result.n_rejected} / {result.n_grid}"
    record("cave", label, "samples used / rejected / grid", used)
    grey = result.background.mean(axis=2)
    record("cave", label, "model range (max-min, grey)", f"{np.ptp(grey):.4f}", "of full scale")
    record("cave", label, "model range / model median", f"{np.ptp(grey) / np.median(grey):.2f}")
    record("cave", label, "BackgroundWarning given", str(bool(caught)))


def block_sky(image, mask, block=64):
    """Star-masked block medians of each channel: y, x (px) and (n, C) values of blocks > 50 % free."""
    planes = image if image.ndim == 3 else image[:, :, None]
    h, w = mask.shape
    ys, xs, values = [], [], []
    for y0 in range(0, h - block + 1, block):
        for x0 in range(0, w - block + 1, block):
            free = ~mask[y0:y0 + block, x0:x0 + block] & np.isfinite(planes[y0:y0 + block, x0:x0 + block]).all(axis=2)
            if free.mean() < 0.5:
                continue
            ys.append(y0 + block / 2)
            xs.append(x0 + block / 2)
            values.append(np.median(planes[y0:y0 + block, x0:x0 + block][free], axis=0))
    return np.array(ys), np.array(xs), np.array(values)


def plane_x_amplitude(ys, xs, values, width):
    design = np.column_stack([np.ones_like(xs), xs, ys])
    coef = np.linalg.lstsq(design, values, rcond=None)[0]
    return coef[1] * width


def bench_m94(bg, cc, path):
    image, header = read_image(path)
    result = fit_background(image, **background_kwargs(bg), name=str(path))
    mask = signal_mask(image.mean(axis=2), threshold_sigma=bg["threshold_sigma"], grow=bg["grow"])
    width = image.shape[1]
    label = f"Seestar M 94 night 2 stack ({image.shape[1]}x{image.shape[0]}, {header.get('NCOMBINE')} lights)"
    for name, data in (("before", image), ("after", result.corrected)):
        ys, xs, values = block_sky(data, mask)
        amp = plane_x_amplitude(ys, xs, values, width)
        record("m94", label, f"left-right gradient {name} (R, G, B)", ", ".join(f"{a:+.1f}" for a in amp), "ADU")
        if name == "before":
            record("m94", label, "sky level (R, G, B, block median)",
                   ", ".join(f"{v:.0f}" for v in np.median(values, axis=0)), "ADU")
    colour = calibrate_colour(result.corrected, **colour_kwargs(cc), header=header, mask=mask, name=str(path))
    record("m94", label, f"colour: {colour.method} white balance factors (R, G, B)",
           ", ".join(f"{f:.3f}" for f in colour.factors), f"{colour.n_stars} stars")
    record("m94", label, "samples used / rejected, pixels masked",
           f"{result.n_samples} / {result.n_rejected}, {result.masked_fraction:.1%}")


def truth_positions(run):
    truth = run / "resources/simulated/night/truth"
    stars = pd.read_csv(truth / "stars.csv")
    registration = pd.read_csv(run / "results/simulated-night/registration.csv")
    reference = registration.loc[registration["reference"].astype(str) == "True", "frame"].iloc[0]
    transforms = pd.read_csv(truth / "transforms.csv").set_index("frame")
    m = transforms.loc[reference]
    x = m.m00 * stars.x + m.m01 * stars.y + m.m02
    y = m.m10 * stars.x + m.m11 * stars.y + m.m12
    return stars, x.to_numpy(), y.to_numpy(), m, reference


def star_colours(image, x, y, radius=5.0):
    """R/G and B/G of aperture fluxes (local annulus sky) at given positions."""
    fluxes = []
    for c in range(3):
        plane = np.ascontiguousarray(image[:, :, c], dtype=np.float32)
        flux, _, _ = sep.sum_circle(plane, x, y, radius, bkgann=(2 * radius, 3 * radius))
        fluxes.append(flux)
    fluxes = np.array(fluxes)
    return fluxes[0] / fluxes[1], fluxes[2] / fluxes[1]


def colour_error(measured, true):
    """Median offset and median absolute error (mag) of -2.5 log10(measured / true)."""
    d = -2.5 * np.log10(measured / true)
    return float(np.median(d)), float(np.median(np.abs(d)))


def bench_simulated(bg, cc, run):
    stack_path = run / "results/simulated-night/stack.fits"
    image, header = read_image(stack_path)
    h, w = image.shape[:2]
    meta = yaml.safe_load((run / "resources/simulated/night/truth/meta.json").read_text())["settings"]
    stars, x, y, m, reference = truth_positions(run)
    label = f"simulated default night stack ({w}x{h}, reference {reference})"
    result = fit_background(image, **background_kwargs(bg), name=str(stack_path))
    # True sky in the stack: the simulator's ramp (light_001 coordinates) seen from the reference frame.
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    inv = np.linalg.inv([[m.m00, m.m01, m.m02], [m.m10, m.m11, m.m12], [0, 0, 1]])
    x1 = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    y1 = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    angle = _gradient_angle(meta)
    half_diagonal = 0.5 * np.hypot(w - 1, h - 1)
    along = (x1 - (w - 1) / 2) * np.cos(angle) + (y1 - (h - 1) / 2) * np.sin(angle)
    ramp = 1.0 + 0.5 * meta["sky_gradient"] * along / half_diagonal
    mask = signal_mask(image.mean(axis=2), threshold_sigma=bg["threshold_sigma"], grow=bg["grow"])
    ys, xs, sky_before = block_sky(image, mask)
    level = np.median(sky_before, axis=0)
    resid = []
    for c in range(3):
        truth = level[c] * ramp
        d = result.background[:, :, c] - truth
        resid.append(100 * np.std(d) / level[c])
    record("simulated", label, "true gradient (ramp range / sky)", f"{100 * np.ptp(ramp):.1f}", "%")
    record("simulated", label, "model - true sky RMS (R, G, B)", ", ".join(f"{r:.2f}" for r in resid), "% of sky")
    _, _, sky_after = block_sky(result.corrected, mask)
    for name, values in (("before", sky_before), ("after", sky_after)):
        rms = 100 * np.std(values, axis=0) / level
        record("simulated", label, f"sky block-median RMS {name} (R, G, B)", ", ".join(f"{r:.2f}" for r in rms),
               "% of sky")
    # Star colours: isolated, unsaturated, well-exposed stars at their true positions.
    inside = (x > 20) & (x < w - 21) & (y > 20) & (y < h - 21)
    bright = stars.flux_g.to_numpy()
    near = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(near, np.inf)
    isolated = ~((near < 15) & (bright[None, :] > 0.01 * bright[:, None])).any(axis=1)
    peak = np.array([np.nanmax(image[int(round(b)) - 2:int(round(b)) + 3, int(round(a)) - 2:int(round(a)) + 3])
                     if i else np.inf for a, b, i in zip(x, y, inside, strict=True)])
    unsaturated = peak < 0.8 * np.nanmax(image)
    use = inside & isolated & unsaturated & (bright > 3000)
    sun = colour_ratios(_REFERENCE_TEMPERATURE_K)
    true_rg = (stars.flux_r / stars.flux_g).to_numpy()[use] / (sun[0] / sun[1])
    true_bg = (stars.flux_b / stars.flux_g).to_numpy()[use] / (sun[2] / sun[1])
    record("simulated", label, "stars measured (isolated, unsaturated, flux_g > 3000 ADU)", f"{int(use.sum())}")
    raw_rg, raw_bg = star_colours(image, x[use], y[use])
    cases = {"before calibration": (raw_rg, raw_bg, None)}
    for wb in ("stars", "camera"):
        col = calibrate_colour(result.corrected, **colour_kwargs(cc, wb), header=header, mask=mask,
                               name=str(stack_path))
        rg, bgc = star_colours(col.image, x[use], y[use])
        cases[f"after, {wb} white balance {np.round(col.factors, 3).tolist()}"] = (rg, bgc, col)
    for name, (rg, bgc, _) in cases.items():
        o1, e1 = colour_error(rg, true_rg)
        o2, e2 = colour_error(bgc, true_bg)
        measure = f"star colour error {name}: R-G offset / median abs err, B-G offset / median abs err"
        record("simulated", label, measure,
               f"{o1:+.3f} / {e1:.3f}, {o2:+.3f} / {e2:.3f}", "mag")
    # (equal to the camera white balance's errors when its multipliers are exactly 1 / the 5800 K white)
    o1, e1 = colour_error(raw_rg, true_rg * sun[0] / sun[1])
    o2, e2 = colour_error(raw_bg, true_bg * sun[2] / sun[1])
    record("simulated", label, "photometry check: stack vs true raw camera colours (R-G, B-G offset / abs err)",
           f"{o1:+.3f} / {e1:.3f}, {o2:+.3f} / {e2:.3f}", "mag")


def _gradient_angle(meta):
    """The simulator's gradient direction, drawn as simulate_night draws it (its rng(6) stream)."""
    import inspect

    from astroflow.simulation import night

    source = inspect.getsource(night.simulate_night)
    for line in ("np.random.default_rng([seed, component, index])", "gradient_angle = rng(6).uniform(0.0, 2 * np.pi)"):
        if line not in source:
            sys.exit(f"simulate_night no longer has {line!r}: update this benchmark's copy of the gradient angle")
    return np.random.default_rng([meta["seed"], 6, 0]).uniform(0.0, 2 * np.pi)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--m94-stack", type=Path, default=Path("/tmp/pics/results/m94/stack.fits"))
    parser.add_argument("--sim-run", type=Path, default=Path("/tmp/bgA/run"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bg, cc = settings()
    bench_synthetic(bg)
    bench_cave(bg)
    bench_m94(bg, cc, args.m94_stack)
    bench_simulated(bg, cc, args.sim_run)
    table = pd.DataFrame(ROWS)
    table.to_csv(args.out / "background.csv", index=False)
    markdown = table.to_markdown(index=False)
    (args.out / "background.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
