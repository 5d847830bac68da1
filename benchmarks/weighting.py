"""Frame weighting, selection and registration models on the real SBIG night.

The workflow calibrates the 13 SBIG STL-1001E lights (``../shared/data/sbig-stl1001``, seeing
drifting from about 2.6 to 5.2 px FWHM over the night) and keeps them
(``keep_intermediates``); the library then registers them to one fixed reference light with
each weighting and selection setting (:func:`astroflow.deepsky.register.register_frames`),
warps the frames kept, and stacks them with the workflow's default combination (winsorized
sigma clipping, additive normalisation). Each stack is measured as
``tests/test_workflow_sbig.py`` measures it: the median Moffat FWHM and the background noise
(:func:`astroflow.deepsky.quality.frame_quality`) on the area every light covers, against the
median single calibrated light. Then every registration model is fitted and its residuals of
the matched stars reported (for ``tps`` also the 5-fold cross-validated residual, since its
in-sample one is optimistic), with the stack FWHM of each model under the default (psf_signal)
weights and the time of the register step (star detection included) on this machine.

Prints two Markdown tables and writes ``weighting.json`` to ``--out``::

    .venv/bin/python benchmarks/weighting.py --out /tmp/weighting

``--work`` reuses a folder where the calibration already ran (it is run there otherwise).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from astroflow.deepsky.quality import frame_quality
from astroflow.deepsky.register import pixel_map, register_frames, transform_matrix, warp
from astroflow.deepsky.stack import combine
from astroflow.io.fits import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]
TARGET = "sbig-stl1001"
# The light registration chose as reference in the workflow's own run of this night.
REFERENCE = "Lab_1_HAT-P-27b_science_exposures.00000034"
CROP = np.s_[64:-64, 64:-64]
OUTLIERS = {"fwhm": 5.0, "eccentricity": 5.0, "background": 5.0, "n_stars": 5.0}
# (label, weighting, outlier_sigma, keep_percent)
CASES = [
    ("noise weights (the old default)", "noise", None, 100.0),
    ("equal weights", "none", None, 100.0),
    ("psf weights", "psf", OUTLIERS, 100.0),
    ("psf_signal weights, outlier filters (the new default)", "psf_signal", OUTLIERS, 100.0),
    ("psf_signal, best 75%", "psf_signal", OUTLIERS, 75.0),
    ("psf_signal, best 50%", "psf_signal", OUTLIERS, 50.0),
    ("psf_signal, best 25%", "psf_signal", OUTLIERS, 25.0),
]
MODELS = ["similarity", "affine", "homography", "tps"]


def calibrate(work, cores):
    """Calibrated lights of the night in ``work`` (the workflow's own calibration)."""
    calibrated = sorted((work / "results" / TARGET / "calibrated").glob("*.fits"))
    if len(calibrated) == 13:
        return calibrated
    work.mkdir(parents=True, exist_ok=True)
    shared = work.parent / "shared"
    if not shared.exists():
        shared.symlink_to(ROOT.parent / "shared")
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(work), f"results/{TARGET}/registration.csv", "--cores", str(cores),
         "--configfile", str(ROOT / "tests" / "configs" / f"{TARGET}.yaml"),
         "--config", "keep_intermediates=True"],
        check=True, capture_output=True, text=True,
    )
    return sorted((work / "results" / TARGET / "calibrated").glob("*.fits"))


def stack(table, paths, warped_dir, model):
    """Warp the used frames of ``table`` (cached per model) and combine them with its weights."""
    used = table[table["status"] == "used"].sort_values("reference", ascending=False)
    files = []
    for row in used.itertuples():
        out = warped_dir / model / f"{row.frame}.fits"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            image, header = read_image(paths[row.frame])
            series = table.set_index("frame").loc[row.frame]
            coords = pixel_map(series, image.shape) if model == "tps" else None
            write_image(out, warp(image, transform_matrix(series), image.shape,
                                  coordinates=coords), header)
        files.append(out)
    result = combine(files, method="winsorized", weights=used["weight"].to_numpy(float),
                     normalize="additive", memory_mb=1024)
    return result.image, used


def measure(image):
    q = frame_quality(image[CROP])
    return q["fwhm"], q["noise"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="folder of a calibration run to reuse")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    start = time.time()
    calibrated = calibrate(work, args.cores)
    paths = {p.stem: p for p in calibrated}
    singles = [measure(read_image(p)[0]) for p in calibrated]
    fwhm_single = float(np.median([f for f, _ in singles]))
    noise_single = float(np.median([n for _, n in singles]))
    print(f"single lights: median FWHM {fwhm_single:.3f} px (best {min(f for f, _ in singles):.3f}),"
          f" median noise {noise_single:.2f} ADU; calibration {time.time() - start:.0f} s")
    warped = args.out / "warped"
    results = {"single": {"fwhm_px": fwhm_single, "noise_adu": noise_single}, "cases": [],
               "models": []}

    print("\n| setting | lights used | effective N | stack FWHM (px) | FWHM / median single "
          "| noise gain vs one light | sqrt(N used) |")
    print("|---|---|---|---|---|---|---|")
    for label, weighting, outliers, keep in CASES:
        table = register_frames(list(calibrated), reference=REFERENCE, weighting=weighting,
                                outlier_sigma=outliers, keep_percent=keep)
        image, used = stack(table, paths, warped, "similarity")
        fwhm, noise = measure(image)
        w = used["weight"].to_numpy(float)
        n_eff = float(w.sum() ** 2 / (w**2).sum())
        case = {"setting": label, "weighting": weighting, "keep_percent": keep,
                "outliers": bool(outliers), "n_used": len(used), "n_effective": n_eff,
                "fwhm_px": fwhm, "fwhm_ratio": fwhm / fwhm_single,
                "noise_gain": noise_single / noise,
                "rejected": dict(zip(table.loc[table["status"] != "used", "frame"],
                                     table.loc[table["status"] != "used", "reason"]))}
        results["cases"].append(case)
        print(f"| {label} | {len(used)} | {n_eff:.1f} | {fwhm:.3f} | {fwhm / fwhm_single:.3f} | "
              f"{noise_single / noise:.2f} | {np.sqrt(len(used)):.2f} |")

    print("\n| model | median RMS residual (px) | max RMS residual (px) | median matches "
          "| cross-validated RMS (px) | stack FWHM (px), psf_signal weights | register (s) |")
    print("|---|---|---|---|---|---|---|")
    for model in MODELS:
        tic = time.time()
        table = register_frames(list(calibrated), reference=REFERENCE, model=model)
        seconds = time.time() - tic
        moved = table[~table["reference"]]
        cv = [json.loads(t)["cv_rms"] for t in moved["tps"] if isinstance(t, str) and t]
        image, _ = stack(table, paths, warped, model)
        fwhm, _ = measure(image)
        entry = {"model": model,
                 "rms_residual_median_px": float(moved["rms_residual_px"].median()),
                 "rms_residual_max_px": float(moved["rms_residual_px"].max()),
                 "n_matches_median": float(moved["n_matches"].median()),
                 "cv_rms_median_px": float(np.median(cv)) if cv else None,
                 "stack_fwhm_px": fwhm, "register_seconds": seconds}
        results["models"].append(entry)
        cv_text = f"{np.median(cv):.3f}" if cv else "-"
        print(f"| {model} | {entry['rms_residual_median_px']:.3f} | "
              f"{entry['rms_residual_max_px']:.3f} | {entry['n_matches_median']:.0f} | {cv_text} | "
              f"{fwhm:.3f} | {seconds:.1f} |")
    results["seconds"] = time.time() - start
    (args.out / "weighting.json").write_text(json.dumps(results, indent=2))
    print(f"\n{results['seconds']:.0f} s in all; {args.out / 'weighting.json'}")


if __name__ == "__main__":
    main()
