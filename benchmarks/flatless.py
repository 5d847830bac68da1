"""Flat-less correction on the SBIG night, measured against the same lights with their real flats.

The workflow stacks the 13 SBIG STL-1001E lights (``../shared/data/sbig-stl1001``) registered
to one fixed reference light, so that the stacks line up pixel for pixel:

(a) calibrated with the real master flat (the reference of every measure);
(b) without any flat (``calibration.flatless: none``);
(c) with the sky flat made from the lights themselves (``calibration.flatless: sky``);
(d) stack (b) after gradient removal alone (:func:`astroflow.restoration.background.fit_background`,
    the workflow's background settings but ``mode: divide``, since vignetting multiplies);
(e) stack (b) corrected by the flat-correction network (:func:`astroflow.calibration.flatnet.correct`)
    where ``models/flatfield.pt`` exists; else reported as not measured.

Each is measured by :func:`astroflow.calibration.flatnet.ratio_rms`: the RMS of
``result / (a) - 1`` over star-masked 32 px blocks, on the area every light covers. Writes
``flatless.json`` and ``flatless.png`` (the block ratio maps, +-3 %) to ``--out``::

    .venv/bin/python benchmarks/flatless.py --out /tmp/flatless
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from astroflow.calibration.flatnet import ratio_rms
from astroflow.io.fits import read_image

ROOT = Path(__file__).resolve().parents[1]
# The light registration chose as reference in the workflow's own run of this night.
REFERENCE = "Lab_1_HAT-P-27b_science_exposures.00000034"
BLOCK = 32


def run_workflow(work, data, flatless, targets, cores):
    """Stack the night's targets in ``work``; returns the seconds it took."""
    work.mkdir(parents=True, exist_ok=True)
    night = {"lights": f"{data}/light", "darks": f"{data}/dark", "bias": f"{data}/bias"}
    config = {
        "targets": {name: dict(night, kind="deep-sky", **extra) for name, extra in targets.items()},
        "calibration": {"flatless": flatless},
        "registration": {"reference": REFERENCE},
    }
    path = work / "flatless.yaml"
    path.write_text(yaml.safe_dump(config))
    outputs = [f"results/{name}/stack.fits" for name in targets]
    start = time.time()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
         *outputs, "--cores", str(cores), "--configfile", str(ROOT / "config.yaml"), str(path)],
        check=True, capture_output=True, text=True,
    )
    return time.time() - start


def common_area(*images):
    """The bounding box of the pixels every image covers (stacks are NaN outside their frames)."""
    finite = np.logical_and.reduce([np.isfinite(image) for image in images])
    rows, cols = np.flatnonzero(finite.all(axis=1)), np.flatnonzero(finite.all(axis=0))
    return np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def block_ratio(result, reference):
    h, w = (s // BLOCK * BLOCK for s in result.shape)

    def blocks(a):
        return a[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3))

    ratio = blocks(result) / blocks(reference)
    return ratio / np.median(ratio) - 1


def gradient_removed(image):
    from astroflow.restoration.background import fit_background

    settings = yaml.safe_load((ROOT / "config.yaml").read_text())["background"]
    result = fit_background(
        image, model=settings["model"], mode="divide", grid=settings["grid"], degree=settings["degree"],
        smoothing=settings["smoothing"][settings["model"]] if settings["model"] in settings["smoothing"] else 0.0,
        threshold_sigma=settings["threshold_sigma"], grow=settings["grow"], reject_sigma=settings["reject_sigma"],
        min_fraction=settings["min_fraction"], min_samples=settings["min_samples"], name="stack (b)",
    )
    return result.corrected


def network_corrected(image):
    weights = ROOT / "models" / "flatfield.pt"
    if not weights.exists():
        return None, f"{weights.relative_to(ROOT)} does not exist"
    from astroflow.calibration.flatnet import correct, load_flatnet

    model, _ = load_flatnet(weights)
    corrected, _, _ = correct(image, model)
    return corrected, ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sbig-stl1001"))
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    seconds = {
        "sky": run_workflow(args.out / "work-sky", data, "sky",
                            {"flat": {"flats": f"{data}/flat"}, "noflat": {}}, args.cores),
        "none": run_workflow(args.out / "work-none", data, "none", {"noflat": {}}, args.cores),
    }
    flat, _ = read_image(args.out / "work-sky" / "results" / "flat" / "stack.fits")
    sky, _ = read_image(args.out / "work-sky" / "results" / "noflat" / "stack.fits")
    none, _ = read_image(args.out / "work-none" / "results" / "noflat" / "stack.fits")
    area = common_area(flat, sky, none)
    flat, sky, none = flat[area], sky[area], none[area]
    results = {"no correction": none, "sky flat": sky}
    notes = {}
    try:
        results["gradient removal alone"] = gradient_removed(none)
    except ImportError as exc:
        notes["gradient removal alone"] = f"not measured: {exc}"
    network, why = network_corrected(none)
    if network is not None:
        results["network"] = network
    else:
        notes["network"] = f"not measured: {why}"
    summary = json.loads((args.out / "work-sky" / "results" / "noflat" / "masters" / "sky_flat.json").read_text())
    report = {
        "input": str(data),
        "reference_light": REFERENCE,
        "area_px": list(flat.shape),
        "block_px": BLOCK,
        "ratio_rms": {name: ratio_rms(image, flat, block=BLOCK) for name, image in results.items()},
        "not_measured": notes,
        "sky_flat": {k: summary[k] for k in ("accepted", "reason", "n_lights", "dither_px", "dither_max_px")},
        "workflow_seconds": seconds,
    }
    (args.out / "flatless.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.4), squeeze=False)
    for ax, (name, image) in zip(axes[0], results.items(), strict=True):
        shown = ax.imshow(100 * block_ratio(image, flat), cmap="RdBu_r", vmin=-3, vmax=3)
        ax.set_title(f"{name}\nRMS {100 * report['ratio_rms'][name]:.2f} %")
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes[0].tolist(), label="result / flat-fielded - 1 (%), 32 px blocks", shrink=0.8)
    fig.savefig(args.out / "flatless.png", dpi=90)


if __name__ == "__main__":
    main()
