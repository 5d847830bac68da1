"""Deconvolution: multi-frame blind deconvolution against lucky stacking and Richardson-Lucy.

    PYTHONPATH=scripts python benchmarks/deconvolution.py [--sequences] [--star-field] [--speed]
        [--quick] [--tune] [--frames 128] [--threads 2] [--mfbd JSON] [--out FILE]

With no section flag every section runs. ``--quick`` shrinks everything for a smoke run (24
frames of 96x96, a 256x256 star field, memory runs of 24-240 small frames; under a minute).
Prints markdown tables of measured numbers only (progress goes to stderr); ``--out`` also
writes them to a file. Not run by the tests. On 2 CPU cores: sequences about 3 minutes (10 with
``--tune``), star field under a minute, speed about 2 minutes.

torch's OpenMP threads spin while they wait for each other; on a machine whose cores are also
busy with other processes that slows MFBD down by up to an order of magnitude, so the
in-process MFBD runs set ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait-policy ''`` leaves it
alone), and the speed section measures both.

Sections
--------
``--sequences``
    Simulated planetary sequences through Kolmogorov turbulence with known truth
    (:func:`astroflow.turbulence.simulate_turbulent_sequence` of
    :func:`astroflow.simulate_planetary.planet_truth`; pupil 64 px, ``oversample=2`` so that
    ``lambda / D`` = 2 px and the diffraction limit is sampled at Nyquist) at D/r0 = 4 and 8.
    The frames are written as a FITS folder and run through the planetary pipeline
    (``analyse_sequence``, ``plan_window``, ``align_sequence``, ``stack_sequence`` with default
    settings, keep 25 %). Scored against the truth: the best frame, the mean of all globally
    aligned frames, the lucky stack, Richardson-Lucy on the lucky stack with an oracle PSF (the
    true PSFs of the frames it stacked, recentred) and with a Gaussian of that PSF's FWHM, and
    :func:`astroflow.mfbd.multiframe_deconvolve` on the frames' globally aligned windows (as
    the pipeline extracts them) with the lucky stack as its start, all frames and the best
    half. Every result is registered to the truth by a sub-pixel shift (phase correlation,
    upsampling 100, then ``scipy.ndimage.shift``, cubic) and fitted to it by a least-squares
    flux scale and offset before PSNR and SSIM (data range = truth maximum) are measured on a
    common interior window. ``--tune`` adds MFBD runs with other settings (:data:`TUNE`).
``--star-field``
    Single-image deconvolution (:func:`astroflow.deconvolve.deconvolve_image`, PSF estimated
    from the image's own stars) of a simulated star field blurred by a long-exposure PSF (the
    mean of many short-exposure Kolmogorov PSFs), with sky, Poisson and read noise and a few
    saturated stars: median star FWHM, aperture-flux ratio after/before, and ringing (below-sky
    energy in an annulus of 1.5-4 FWHM around the brightest stars over their flux), with star
    protection on and off, and with the sky not held fixed.
``--speed``
    Iterations per second and peak resident memory of ``multiframe_deconvolve`` on 256x256
    frames in an :class:`astroflow.io.framestore.FrameStore` on disk, batch 8, one fresh
    subprocess per case: 100 frames on ``--threads`` threads (also on 1 thread, and with
    ``OMP_WAIT_POLICY`` unset), and 100, 300 and 1000 frames (one epoch) for memory. The peak is the worker's VmHWM,
    not its ``ru_maxrss``, which inherits the parent's resident size across fork and exec.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio
from skimage.registration import phase_cross_correlation

from astroflow.io.sequence import open_sequence
from astroflow.nets.metrics import image_ssim
from astroflow.planetary import lucky
from astroflow.planetary import passes as planetary
from astroflow.restoration.deconvolve import deconvolve_image, richardson_lucy, star_metrics
from astroflow.simulation import turbulence
from astroflow.simulation.planetary import PlanetarySequence, planet_truth, write_sequence

ROOT = Path(__file__).resolve().parents[1]

PUPIL_PX = 64
OVERSAMPLE = 2
# Settings tried besides the defaults with --tune (keyword arguments of multiframe_deconvolve).
TUNE = [
    {"epochs": 10},
    {"epochs": 40},
    {"psf_lr": 0.03},
    {"psf_lr": 0.01},
    {"tv_weight": 0.0005},
    {"tv_weight": 0.005},
    {"lr": 0.005},
    {"psf_size": 47},
    {"psf_steps": 0, "tv_weight": 0.0005},  # PSFs kept at their Wiener start
    {"psf_lr": 0.03, "tv_weight": 0.0005},
    {"psf_lr": 0.03, "tv_weight": 0.0005, "epochs": 10},
    {"psf_lr": 0.03, "tv_weight": 0.0005, "epochs": 10, "psf_steps": 2},
]


def markdown(table, floatfmt):
    """``table.to_markdown`` with integer columns kept as integers (not upcast to floats)."""
    table = table.copy()
    for column in table.columns:
        if pd.api.types.is_integer_dtype(table[column]):
            table[column] = table[column].astype(str)
    return table.to_markdown(index=False, floatfmt=floatfmt)


def log(message):
    print(message, file=sys.stderr, flush=True)


def peak_rss_mb():
    """Peak resident memory of this process so far, MB: VmHWM of /proc/self/status.

    Not ``ru_maxrss``: Linux carries the parent's resident size at fork over into the child's
    ``ru_maxrss`` across exec, so a worker started from a big parent would report the parent's
    peak. VmHWM belongs to the process's own address space. ``ru_maxrss`` (KiB) elsewhere.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- PSF measures ---------------------------------------------------------------------------


def fwhm_px(psf, upsample=8):
    """FWHM of a (mean) PSF: the diameter of the circle with the area above half maximum.

    The PSF is linearly interpolated ``upsample`` times finer first, so that PSFs of 2-3 px are
    measured to a small fraction of a pixel. Exact for a circular Gaussian or Airy core.
    """
    fine = ndimage.zoom(np.asarray(psf, np.float64), upsample, order=1)
    area = np.count_nonzero(fine >= 0.5 * fine.max()) / upsample**2
    return 2.0 * math.sqrt(area / math.pi)


def centroid_offset(psf):
    """(dy, dx) of a PSF's centroid from its centre pixel ``(s // 2, s // 2)``."""
    s = psf.shape[0]
    grid = np.arange(s) - s // 2
    total = psf.sum()
    return float((psf.sum(axis=1) * grid).sum() / total), float((psf.sum(axis=0) * grid).sum() / total)


def recentred(psf):
    """The PSF moved (Fourier shift) so that its centroid is on its centre pixel, sum 1."""
    dy, dx = centroid_offset(psf)
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(psf), (-dy, -dx))).real
    moved = np.clip(moved, 0.0, None)
    return moved / moved.sum()


def gaussian_psf(size, fwhm):
    half = size // 2
    yy, xx = np.mgrid[:size, :size] - half
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    g = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    return g / g.sum()


# --- scores ---------------------------------------------------------------------------------


def score(result, truth_crop, margin, data_range):
    """Register ``result`` onto ``truth_crop`` and measure PSNR and SSIM on its interior.

    Sub-pixel shift by phase correlation (plain cross-correlation, upsampling 100) applied with
    a cubic spline, then a least-squares fit ``a * result + b`` to the truth over the interior
    ``[margin:-margin, margin:-margin]``, where PSNR and SSIM (``data_range``;
    :func:`astroflow.nets.metrics.image_ssim`, Wang et al.'s 11-px Gaussian window) are
    measured; ``ssim_planet`` is the mean of the SSIM map where the truth exceeds 10 % of its
    maximum (the planet and its moon, without the flat sky; the map's border, where the window
    leaves the interior, is left out); ``limb_bias_pct`` the mean of fitted minus
    truth 2-12 px outside that mask, in % of the truth's maximum: negative for a dark moat around
    the limb, positive for a halo left there.
    """
    result = np.asarray(result, np.float64)
    truth_crop = np.asarray(truth_crop, np.float64)
    shift, _, _ = phase_cross_correlation(truth_crop, result, upsample_factor=100, normalization=None)
    moved = ndimage.shift(result, shift, order=3, mode="nearest")
    inner = np.s_[margin:-margin, margin:-margin]
    x, t = moved[inner].ravel(), truth_crop[inner].ravel()
    (a, b), *_ = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), t, rcond=None)
    fitted = (a * moved[inner] + b).astype(np.float64)
    ssim, ssim_map = image_ssim(truth_crop[inner], fitted, data_range=data_range, full=True)
    planet = truth_crop[inner] > 0.1 * data_range
    # Sky just outside the limb (2-12 px): a dark moat (negative) or a halo left (positive),
    # mean of fitted - truth there, in % of the truth's maximum.
    distance = ndimage.distance_transform_edt(~planet)
    limb = (distance >= 2) & (distance < 12)
    return {
        "limb_bias_pct": float(100.0 * np.mean(fitted[limb] - truth_crop[inner][limb]) / data_range),
        "psnr_db": peak_signal_noise_ratio(truth_crop[inner], fitted, data_range=data_range),
        "ssim": ssim,
        "ssim_planet": float(np.nanmean(ssim_map[planet])),
        "shift_px": float(np.hypot(*shift)),
        "scale": float(a),
    }


# --- section 1: simulated sequences ---------------------------------------------------------


def _frame_windows(sequence, table, size, rows):
    """Globally aligned windows of the given table rows, as the pipeline extracts them."""
    position = dict(zip(table["index"], zip(table["position_y"], table["position_x"])))
    wanted = sorted(int(i) for i in rows["index"])
    for frame in sequence.frames(wanted):
        yield frame.index, lucky.extract(np.asarray(frame.image, np.float32), *position[frame.index], size)


def _write_frame_file(path, sequence, table, size, rows):
    from astroflow.io.framestore import FrameStore

    frames = FrameStore(path, (len(rows), *size))
    for k, (_, window) in enumerate(_frame_windows(sequence, table, size, rows)):
        frames.write(k, window)
    return frames


def _steady(history):
    """Set-up time (to the first latent update) and iterations/s after it, from the history."""
    if len(history) < 2:
        return {"setup_s": math.nan, "steady_it_per_s": math.nan}
    first, last = history[0], history[-1]
    span = last["seconds"] - first["seconds"]
    return {
        "setup_s": first["seconds"],
        "steady_it_per_s": (len(history) - 1) / span if span > 0 else math.nan,
    }


def _run_mfbd(frames, init, settings, threads):
    import torch

    from astroflow.restoration.mfbd import multiframe_deconvolve

    torch.set_num_threads(threads)
    start = time.time()
    latent, info = multiframe_deconvolve(frames, init, device="cpu", **settings)
    wall = time.time() - start
    history = info.get("history") or []
    last = history[-1] if history else {}
    return latent, {
        **_steady(history),
        "epochs": last.get("epoch", -1) + 1,
        "iterations": info.get("iterations", len(history)),
        "seconds": info.get("seconds", wall),
        "it_per_s": info.get("iterations_per_second", math.nan),
        "final_chi2": last.get("chi2", math.nan),
        "device": info.get("device"),
    }


def simulate(truth, n_frames, d_over_r0, args):
    """A turbulent sequence of the truth (e- per frame), photon and read noise."""
    return turbulence.simulate_turbulent_sequence(
        truth,
        n_frames,
        d_over_r0=d_over_r0,
        seed=args.seed,
        pupil_px=PUPIL_PX,
        oversample=OVERSAMPLE,
        psf_size=args.psf_size,
        read_noise=args.read_noise,
    )


def sequence_case(d_over_r0, truth, work, args, tune):
    seq = simulate(truth, args.frames, d_over_r0, args)
    n = len(seq.frames)
    psfs = seq.psfs.astype(np.float64)
    diffraction = turbulence.turbulent_psfs(
        1, 0.0, 0, pupil_px=PUPIL_PX, oversample=OVERSAMPLE, size=args.psf_size
    )[0].astype(np.float64)
    short = np.mean([recentred(p) for p in psfs], axis=0)
    conditions = {
        "D/r0": d_over_r0,
        "frames": n,
        "long-exposure FWHM px": fwhm_px(psfs.mean(axis=0)),
        "tip-tilt-free FWHM px": fwhm_px(short),
        "diffraction FWHM px": fwhm_px(diffraction),
        "mean Strehl (peak ratio)": float(np.mean(psfs.max(axis=(1, 2))) / diffraction.max()),
        "best-frame Strehl": float(psfs.max(axis=(1, 2)).max() / diffraction.max()),
        "tip-tilt RMS px": float(
            np.sqrt(np.mean(np.sum((seq.shifts - seq.shifts.mean(0)) ** 2, axis=1) / 2))
        ),
    }

    # The frames as a FITS folder, through the planetary pipeline.
    folder = work / f"dr0-{d_over_r0:g}"
    rms = np.sqrt([np.sum(recentred(p) * _r2(p.shape[0])) for p in psfs])
    write_sequence(
        PlanetarySequence(
            frames=seq.frames,
            truth=seq.truth,
            shifts=seq.shifts,
            seeing=rms,
            local_rms=0.0,
            params=dict(seq.params),
        ),
        folder,
        fmt="fits",
    )
    sequence = open_sequence(folder / "frames")
    start = time.time()
    table = planetary.analyse_sequence(sequence)
    table, mode, size = planetary.plan_window(table, seq.frames.shape[1:])
    table, reference, points, ap_quality = planetary.align_sequence(sequence, table, size)
    stack, _, usage, stats = planetary.stack_sequence(sequence, table, reference, points, ap_quality)
    lucky_s = time.time() - start
    mean_all, best = planetary.baselines(sequence, table, size)
    usable = table[(table["status"] == "ok") & np.isfinite(table["position_y"])]
    conditions.update(
        {
            "window": f"{size[0]}x{size[1]}",
            "usable frames": len(usable),
            "alignment points": len(points),
            "kept per point": stats["n_keep"],
        }
    )

    # Where the window lies on the truth: position of the window minus the frame's tip-tilt.
    oy = int(round(float(np.median(usable["position_y"] - seq.shifts[usable["index"], 0]))))
    ox = int(round(float(np.median(usable["position_x"] - seq.shifts[usable["index"], 1]))))
    pad = max(size) + 8
    padded = np.pad(seq.truth, pad, mode="edge")
    truth_crop = padded[pad + oy : pad + oy + size[0], pad + ox : pad + ox + size[1]]
    data_range = float(seq.truth.max())
    margin = args.margin

    # Oracle PSF: the true PSFs of the frames stacked at each alignment point, recentred and
    # averaged over the points (weights = number of points each frame was stacked at).
    counts = usage.set_index("index")["ap_count"].reindex(range(n)).fillna(0).to_numpy(float)
    if counts.sum() == 0:
        counts = usage.set_index("index")["in_fill"].reindex(range(n)).fillna(False).to_numpy(float)
    kept = np.flatnonzero(counts > 0)
    oracle = np.sum([counts[i] * recentred(psfs[i]) for i in kept], axis=0) / counts[kept].sum()
    oracle_fwhm = fwhm_px(oracle)
    conditions.update(
        {
            "frames stacked (any point)": len(kept),
            "oracle PSF FWHM px": oracle_fwhm,
            "oracle PSF Strehl": float(oracle.max() / diffraction.max()),
        }
    )

    rows = []

    def add(method, image, seconds=math.nan, note=""):
        rows.append(
            {
                "D/r0": d_over_r0,
                "method": method,
                **score(image, truth_crop, margin, data_range),
                "seconds": seconds,
                "note": note,
            }
        )

    add("best single frame", best, note="sharpest by pipeline quality")
    add("mean of all frames (globally aligned)", mean_all, note=f"{len(usable)} frames")
    add("lucky stack (pipeline, keep 25 %)", stack, lucky_s, f"{stats['n_keep']} frames per point")

    # Noise of the stack per pixel, for the discrepancy-principle variant: Poisson + read noise
    # of one frame over the number of frames stacked.
    noise = np.sqrt(np.clip(stack, 0.0, None) + args.read_noise**2) / math.sqrt(stats["n_keep"])
    rl_runs = [
        ("RL, oracle PSF (defaults)", oracle, {}),
        ("RL, oracle PSF, discrepancy stop (noise given)", oracle, {"noise": noise}),
        ("RL, oracle PSF, background=False", oracle, {"background": False}),
        (
            f"RL, Gaussian PSF FWHM {oracle_fwhm:.2f} px (defaults)",
            gaussian_psf(args.psf_size, oracle_fwhm),
            {},
        ),
    ]
    for method, psf, kw in rl_runs:
        start = time.time()
        result, info = richardson_lucy(stack, psf, **kw)
        note = f"{info['iterations_run']} it, stopped by {info['stopped']}"
        if info.get("chi2"):
            note += f", last chi2 {info['chi2'][-1]:.2f}"
        add(method, result, time.time() - start, note)

    # MFBD on the globally aligned frames (all usable; and the best half), lucky stack as start.
    mfbd_rows = []
    if not args.no_mfbd:
        by_quality = usable.sort_values("quality", ascending=False)
        subsets = {"all": usable, "best 50 %": by_quality.head(max(1, len(usable) // 2))}
        files = {}
        for name, rows_ in subsets.items():
            files[name] = _write_frame_file(
                work / f"mfbd-{d_over_r0:g}-{len(rows_)}.f32", sequence, table, size, rows_
            )
        settings_list = [("defaults", {}, "all"), ("defaults", {}, "best 50 %")]
        settings_list += [(", ".join(f"{k}={v}" for k, v in s.items()), s, "all") for s in tune]
        for label, settings, subset in settings_list:
            log(f"  MFBD D/r0={d_over_r0:g} {subset} {label}")
            kw = dict(args.mfbd_base)
            kw.update(settings)
            latent, info = _run_mfbd(files[subset], stack, kw, args.threads)
            s = score(latent, truth_crop, margin, data_range)
            mfbd_rows.append(
                {
                    "D/r0": d_over_r0,
                    "frames": f"{subset} ({len(subsets[subset])})",
                    "settings": label,
                    **info,
                    "psnr_db": s["psnr_db"],
                    "ssim": s["ssim"],
                    "ssim_planet": s["ssim_planet"],
                    "limb_bias_pct": s["limb_bias_pct"],
                }
            )
            if label == "defaults":
                add(
                    f"MFBD defaults, {subset} frames",
                    latent,
                    info["seconds"],
                    f"{info['epochs']} epochs, {info['iterations']} it, {info['it_per_s']:.2f} it/s",
                )
        for f in files.values():
            f.close()
            os.unlink(f.path)
    return conditions, rows, mfbd_rows


def _r2(size):
    grid = np.arange(size) - size // 2
    return grid[:, None] ** 2 + grid[None, :] ** 2


def section_sequences(args):
    truth = planet_truth(args.size, radius_frac=0.25, seed=args.seed)
    truth = truth * (args.peak_e / float(truth.max()))
    tune = TUNE if args.tune else []
    work = Path(tempfile.mkdtemp(prefix="astroflow-deconv-bench-"))
    conditions, rows, mfbd_rows = [], [], []
    start = time.time()
    for d in args.d_over_r0:
        log(f"sequences: D/r0 = {d:g}")
        c, r, m = sequence_case(d, truth, work, args, tune)
        conditions.append(c)
        rows += r
        mfbd_rows += m
    print(f"## Simulated sequences ({args.frames} frames of {args.size}x{args.size})\n")
    print(
        f"Kolmogorov phase screens, pupil {PUPIL_PX} px, oversample {OVERSAMPLE} (lambda/D = "
        f"{OVERSAMPLE} px), PSFs {args.psf_size}x{args.psf_size} px; planet_truth (radius 0.25 of the "
        f"image, a sky border of {int(args.size * 0.25)} px) scaled to a peak of {args.peak_e:g} e- per "
        f"frame (sky {truth.min():.1f} e-), Poisson noise, read noise {args.read_noise:g} e-; "
        f"seed {args.seed}. Strehl = mean PSF peak over the diffraction-limited peak.\n"
    )
    shown = [{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in c.items()} for c in conditions]
    print(pd.DataFrame(shown).set_index("D/r0").T.to_markdown())
    print(
        "\nScores: each result registered to the truth by a sub-pixel shift (phase correlation, "
        "upsampling 100, cubic spline shift), then fitted by least squares with a flux scale and "
        f"offset; PSNR and SSIM (data_range = truth max) on the window interior ({args.margin} px "
        "margin dropped), common to all methods. The RL PSF is an oracle: the true PSFs of the frames "
        "the lucky stack used, recentred on their centroids and averaged over the alignment points "
        "(favourable to RL). RL defaults: 50 iterations max, tv_weight 0.002, stop_tol 1e-3, SEP "
        "background.\n"
    )
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    if mfbd_rows:
        import inspect

        from astroflow.restoration.mfbd import multiframe_deconvolve

        defaults = {
            k: p.default
            for k, p in inspect.signature(multiframe_deconvolve).parameters.items()
            if p.default is not inspect.Parameter.empty and k not in ("device", "progress")
        }
        print(
            f"\nMFBD runs on {args.threads} CPU threads; library defaults {defaults}; base settings "
            f"{args.mfbd_base or '= defaults'}; settings named in a row replace them. steady_it_per_s: "
            "iterations/s after the first iteration (setup_s: the pre-pass, noise and Wiener PSFs of all "
            "frames, plus the first iteration).\n"
        )
        print(markdown(pd.DataFrame(mfbd_rows), ".4g"))
    print(f"\n(sequences section: {time.time() - start:.0f} s; work folder {work})\n")


# --- section 2: star field ------------------------------------------------------------------


def ring_energy(image, xy, flux, r_in, r_out, sky):
    """Below-sky energy in the annulus [r_in, r_out) around each star, over the star's flux.

    The annulus is averaged in 1-px radial bins (so that pixel noise averages out); the energy
    is ``sum over bins of max(0, sky - bin mean) * pixels in the bin``.
    """
    out = []
    height, width = image.shape
    for (x, y), f in zip(xy, flux):
        rad = int(math.ceil(r_out)) + 1
        j, i = int(round(y)), int(round(x))
        y0, y1, x0, x1 = max(j - rad, 0), min(j + rad + 1, height), max(i - rad, 0), min(i + rad + 1, width)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(xx - x, yy - y)
        sel = (r >= r_in) & (r < r_out)
        bins = np.floor(r[sel] - r_in).astype(int)
        sums = np.bincount(bins, weights=image[y0:y1, x0:x1][sel] - sky)
        counts = np.bincount(bins)
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        out.append(float(np.sum(np.clip(-means, 0.0, None) * counts)) / f)
    return np.asarray(out)


def section_star_field(args):
    size = args.star_size
    rng = np.random.default_rng([7, args.seed])
    truth, stars = turbulence.star_field_truth(
        size, n_stars=args.stars, seed=args.seed, flux_range=(2e3, 1e6), border=32, background=args.sky_e
    )
    psfs = turbulence.turbulent_psfs(
        args.star_psfs, args.star_d_over_r0, rng, pupil_px=PUPIL_PX, oversample=OVERSAMPLE, size=64
    )
    psf = psfs.mean(axis=0).astype(np.float64)
    psf /= psf.sum()
    psf_fwhm = fwhm_px(psf)
    clean = turbulence.convolve(truth, psf)
    image = rng.poisson(np.clip(clean, 0.0, None)).astype(np.float64)
    image += rng.normal(0.0, args.read_noise_star, image.shape)
    # Saturation: a level just below the noise-free peak of the third brightest star.
    third = np.sort(stars["flux"].to_numpy())[-3]
    saturation = args.sky_e + 0.9 * third * psf.max()
    image = np.minimum(image, saturation).astype(np.float32)
    stars = stars.copy()
    stars["peak"] = [clean[int(y), int(x)] for x, y in zip(stars["x"], stars["y"])]
    stars["saturated"] = stars["peak"] >= saturation
    xy = stars[["x", "y"]].to_numpy()
    dist = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    np.fill_diagonal(dist, np.inf)
    stars["isolated"] = dist.min(axis=1) > 4 * psf_fwhm
    sky_mask = (clean - args.sky_e) < 0.2 * math.sqrt(args.sky_e + args.read_noise_star**2)
    measured = stars[stars["isolated"] & ~stars["saturated"] & (stars["flux"] >= 1e4)]
    by_flux = stars.sort_values("flux", ascending=False)
    saturated = by_flux[by_flux["saturated"]]
    bright = by_flux[~by_flux["saturated"]].head(5)
    r_in, r_out = 1.5 * psf_fwhm, 4.0 * psf_fwhm

    cases = [("input (blurred)", image, None)]
    own_psf = None
    for protect in (True, False):
        start = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result, info = deconvolve_image(image, protect_stars=protect)
        own_psf = info["psf"]
        cases.append((f"deconvolve_image, protect_stars={protect}", result, (info, time.time() - start)))
    # The same PSF with no fixed sky (background=False): RL free to ring below the sky.
    for protect in (True, False):
        start = time.time()
        result, rl = richardson_lucy(image, own_psf, background=False, protect_stars=protect)
        cases.append(
            (
                f"richardson_lucy, own-star PSF, background=False, protect_stars={protect}",
                result,
                ({"psf_info": {"method": "own-star (as above)"}, "rl": rl}, time.time() - start),
            )
        )
    start = time.time()
    result, rl = richardson_lucy(image, psf, protect_stars=True)
    cases.append(
        (
            "richardson_lucy, true PSF (oracle), protect_stars=True",
            result,
            ({"psf_info": {"method": "true", "fwhm": psf_fwhm}, "rl": rl}, time.time() - start),
        )
    )

    before = star_metrics(image, measured[["x", "y"]].to_numpy())
    rows = []
    for name, img, extra in cases:
        img = np.asarray(img, np.float64)
        sky = float(np.median(img[sky_mask]))
        m = star_metrics(img, measured[["x", "y"]].to_numpy())
        ring_sat = ring_energy(
            img, saturated[["x", "y"]].to_numpy(), saturated["flux"].to_numpy(), r_in, r_out, sky
        )
        ring_bright = ring_energy(
            img, bright[["x", "y"]].to_numpy(), bright["flux"].to_numpy(), r_in, r_out, sky
        )
        row = {
            "image": name,
            "median FWHM px": float(np.nanmedian(m["fwhm"])),
            "flux after/before": float(np.nanmedian(m["flux"] / before["flux"])),
            "ringing, saturated": float(ring_sat.mean()) if len(ring_sat) else math.nan,
            "ringing, 5 brightest unsaturated": float(ring_bright.mean()) if len(ring_bright) else math.nan,
            "PSF": "",
            "RL": "",
            "seconds": math.nan,
        }
        if extra is not None:
            info, seconds = extra
            rl, pinfo = info["rl"], info["psf_info"]
            fwhm = pinfo.get("fwhm")
            row["PSF"] = (
                pinfo["method"]
                + (f" ({pinfo['n_stars']} stars)" if "n_stars" in pinfo else "")
                + (f", FWHM {fwhm:.2f}" if fwhm is not None else "")
            )
            row["RL"] = (
                f"{rl['iterations_run']} it, stopped by {rl['stopped']}, {rl.get('n_protected', 0)} protected"
            )
            row["seconds"] = seconds
        rows.append(row)
    print(f"## Star field ({size}x{size}, single image)\n")
    print(
        f"{len(stars)} stars (star_field_truth, flux 2e3-1e6 e-, seed {args.seed}), sky {args.sky_e:g} e-/px, "
        f"read noise {args.read_noise_star:g} e-, Poisson noise; blurred by the mean of {args.star_psfs} "
        f"short-exposure Kolmogorov PSFs at D/r0 = {args.star_d_over_r0:g} (pupil {PUPIL_PX} px, "
        f"oversample {OVERSAMPLE}, 64x64 px): FWHM {psf_fwhm:.2f} px. Clipped at {saturation:.0f} ADU "
        f"({len(saturated)} saturated stars). FWHM and flux from star_metrics (aperture radius 8 px, "
        f"local sky 12-20 px) over {len(measured)} isolated (no star within 4 FWHM), unsaturated stars "
        f"of flux >= 1e4 e-; flux after/before is the median per-star ratio. Ringing: below-sky energy "
        f"(1-px radial bins, sky = median of star-free pixels) in an annulus of {r_in:.1f}-{r_out:.1f} px "
        f"(1.5-4 input FWHM) over the star's true flux, mean over the saturated stars and over the 5 "
        f"brightest unsaturated ones. deconvolve_image runs with its defaults (PSF from the image's own "
        f"stars, 50 iterations max, tv_weight 0.002, stop_tol 1e-3, SEP sky held fixed).\n"
    )
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
    print()


# --- section 3: speed and memory ------------------------------------------------------------


def write_speed_frames(folder, n_frames, size):
    """``n_frames`` synthetic aligned frames in a FrameStore (one in memory at a time) and the start.

    A planet (:func:`planet_truth`, 0.5 x its brightness) through 16 recentred short-exposure
    PSFs at D/r0 = 4 in turn, Poisson and 2 e- read noise; the start is the truth through their
    mean. Written here, in the parent, so that the workers' peak memory is MFBD's alone.
    """
    from astroflow.io.framestore import FrameStore

    rng = np.random.default_rng(0)
    truth = planet_truth(size, radius_frac=0.25) * 0.5
    psfs = [
        recentred(p)
        for p in turbulence.turbulent_psfs(
            16, 4.0, rng, pupil_px=PUPIL_PX, oversample=OVERSAMPLE, size=min(64, size // 2)
        )
    ]
    path = Path(folder) / "frames.f32"
    with FrameStore(path, (n_frames, size, size)) as frames:
        for i in range(n_frames):
            signal = np.clip(turbulence.convolve(truth, psfs[i % 16]), 0, None)
            frames.write(i, rng.poisson(signal) + rng.normal(0, 2.0, truth.shape))
    np.save(Path(folder) / "init.npy", turbulence.convolve(truth, np.mean(psfs, axis=0)).astype(np.float32))
    return path


def speed_worker(n_frames, size, epochs, threads, batch, folder):
    """One MFBD run in this (fresh) process; prints a JSON line with its speed and peak memory."""
    import torch

    from astroflow.io.framestore import FrameStore
    from astroflow.restoration.mfbd import multiframe_deconvolve

    torch.set_num_threads(threads)
    init = np.load(Path(folder) / "init.npy")
    frames = FrameStore.open(Path(folder) / "frames.f32", (n_frames, size, size))
    before = peak_rss_mb()
    start = time.time()
    _, info = multiframe_deconvolve(frames, init, epochs=epochs, batch=batch, device="cpu")
    wall = time.time() - start
    frames.close()
    print(
        json.dumps(
            {
                "frames": n_frames,
                "size": size,
                "epochs": epochs,
                "batch": batch,
                "iterations": info.get("iterations"),
                "seconds": info.get("seconds", wall),
                "it_per_s": info.get("iterations_per_second"),
                **_steady(info.get("history") or []),
                "rss_before_mb": before,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def run_worker(n_frames, size, epochs, args, folder, threads=None, policy="PASSIVE"):
    """``speed_worker`` in a fresh process; ``policy`` is OMP_WAIT_POLICY (None: unset)."""
    threads = threads or args.threads
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        f"{n_frames},{size},{epochs},{threads},{args.batch}",
        str(folder),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["threads"] = threads
    row["OMP_WAIT_POLICY"] = policy or "(unset)"
    row["load_avg_1min"] = os.getloadavg()[0]
    return row


def section_speed(args):
    size = args.speed_size
    n = args.speed_frames
    folder = Path(tempfile.mkdtemp(prefix="astroflow-mfbd-speed-"))
    log(f"speed: writing {max(args.memory_frames + [n])} frames of {size}x{size}")
    write_speed_frames(folder, max(args.memory_frames + [n]), size)
    cases = [
        (args.threads, "PASSIVE", args.speed_epochs),
        (1, "PASSIVE", args.speed_epochs),
        (args.threads, None, 1),
    ]
    rows = []
    for threads, policy, epochs in cases:
        log(f"speed: {n} frames x {epochs} epochs, {threads} threads, OMP_WAIT_POLICY={policy}")
        rows.append(run_worker(n, size, epochs, args, folder, threads=threads, policy=policy))
    columns = [
        "frames",
        "threads",
        "OMP_WAIT_POLICY",
        "epochs",
        "iterations",
        "seconds",
        "setup_s",
        "it_per_s",
        "steady_it_per_s",
        "peak_rss_mb",
        "load_avg_1min",
    ]
    print(
        f"## MFBD speed and memory ({size}x{size} frames, FrameStore on disk, batch {args.batch}, "
        "library defaults otherwise)\n"
    )
    print(
        "One fresh process per case. it_per_s: the library's iterations_per_second (includes the set-up "
        "pre-pass: noise and Wiener PSF of every frame); steady_it_per_s: from the history's time stamps "
        "after the first iteration. load_avg_1min: the machine's load when the case ended (other "
        "processes on the 2 cores slow the numbers down). OMP_WAIT_POLICY unset is torch's default "
        "(OpenMP threads spin while waiting).\n"
    )
    print(markdown(pd.DataFrame(rows)[columns], ".2f"))
    rows = []
    for k in args.memory_frames:
        log(f"memory: {k} frames x 1 epoch")
        rows.append(run_worker(k, size, 1, args, folder))
    table = pd.DataFrame(rows)
    table["mfbd_increase_mb"] = table["peak_rss_mb"] - table["rss_before_mb"]
    print(
        f"\nPeak resident memory (VmHWM), one fresh process per case, 1 epoch, {args.threads} threads, "
        "OMP_WAIT_POLICY=PASSIVE; the frames (the first N of one file) and the start image are written "
        "beforehand by the parent process; rss_before_mb: peak before multiframe_deconvolve (torch and "
        "astroflow imported, the start image loaded, the FrameStore opened):\n"
    )
    columns = [
        "frames",
        "epochs",
        "iterations",
        "seconds",
        "steady_it_per_s",
        "rss_before_mb",
        "peak_rss_mb",
        "mfbd_increase_mb",
        "load_avg_1min",
    ]
    print(markdown(table[columns], ".2f"))
    first, last = rows[0], rows[-1]
    growth = last["peak_rss_mb"] - first["peak_rss_mb"]
    shutil.rmtree(folder, ignore_errors=True)
    print(
        f"\nPeak RSS growth from {first['frames']} to {last['frames']} frames: {growth:+.1f} MB "
        f"({100 * growth / first['peak_rss_mb']:+.1f} %).\n"
    )


# --- main -----------------------------------------------------------------------------------


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        n, size, epochs, threads, batch = (int(v) for v in sys.argv[2].split(","))
        with contextlib.redirect_stdout(io.StringIO()) as captured:
            speed_worker(n, size, epochs, threads, batch, sys.argv[3])
        print(captured.getvalue().strip().splitlines()[-1])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", action="store_true", help="simulated turbulent sequences")
    parser.add_argument("--star-field", action="store_true", help="single-image deconvolution of stars")
    parser.add_argument("--speed", action="store_true", help="MFBD speed and peak memory")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--frames", type=int, default=None, help="frames per sequence (default 128)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune", action="store_true", help="also try other MFBD settings")
    parser.add_argument("--no-mfbd", action="store_true", help="sequences without MFBD")
    parser.add_argument("--mfbd", default="{}", help="JSON of MFBD settings used as the base")
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for the in-process MFBD runs ('' leaves it alone)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the printed tables to this file")
    args = parser.parse_args()
    if not (args.sequences or args.star_field or args.speed):
        args.sequences = args.star_field = args.speed = True
    args.mfbd_base = json.loads(args.mfbd)
    # torch's OpenMP threads spin while they wait; on a shared machine a spinning thread whose
    # partner is descheduled slows MFBD down by an order of magnitude. Set before torch loads.
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    quick = args.quick
    args.size = 96 if quick else 256
    args.frames = args.frames or (24 if quick else 128)
    args.psf_size = 32 if quick else 64
    args.d_over_r0 = [4.0, 8.0]
    args.peak_e = 1000.0
    args.read_noise = 2.0
    args.margin = 8 if quick else 12
    args.star_size = 256 if quick else 512
    args.stars = 60 if quick else 150
    args.star_psfs = 64 if quick else 400
    args.star_d_over_r0 = 2.5
    args.sky_e = 200.0
    args.read_noise_star = 5.0
    args.batch = 8
    args.speed_size = 96 if quick else 256
    args.speed_frames = 24 if quick else 100
    args.speed_epochs = 2 if quick else 3
    args.memory_frames = [24, 72, 240] if quick else [100, 300, 1000]
    if quick:
        global TUNE
        TUNE = TUNE[:1]

    buffer = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, s):
            sys.__stdout__.write(s)
            buffer.write(s)
            return len(s)

        def flush(self):
            sys.__stdout__.flush()

    start = time.time()
    with contextlib.redirect_stdout(Tee()):
        print(f"# astroflow deconvolution benchmark{' (quick)' if quick else ''}\n")
        import torch

        print(
            f"{os.cpu_count()} CPUs visible, {args.threads} threads used, OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}; python {sys.version.split()[0]}, torch "
            f"{torch.__version__}; load average at start {os.getloadavg()[0]:.2f}\n"
        )
        if args.sequences:
            section_sequences(args)
        if args.star_field:
            log("star field")
            section_star_field(args)
        if args.speed:
            section_speed(args)
        print(f"(total {time.time() - start:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")
    if args.out:
        Path(args.out).write_text(buffer.getvalue())


if __name__ == "__main__":
    main()
