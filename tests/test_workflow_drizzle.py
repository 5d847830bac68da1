"""Drizzle in the workflow: a tiny simulated (CFA) night, Bayer drizzle then plain drizzle, read by rule background."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, snakemake

from astroflow.io.fits import read_image

pytestmark = pytest.mark.integration
TARGET = "sim-drizzle"
CONFIG = (
    "--configfile",
    str(ROOT / "config.yaml"),
    str(ROOT / "tests" / "configs" / "simulated-drizzle.yaml"),
)
CORRECTED = f"results/{TARGET}/corrected.fits"


def outlier_counts(work):
    """Frame -> outlier pixels, from the drizzle log."""
    log = (Path(work) / "logs" / "drizzle" / f"{TARGET}.log").read_text()
    return {m[0]: int(m[1]) for m in re.findall(r"(light_\d+): offset .* (\d+) outlier pixels", log)}


def test_drizzle_feeds_background_with_bayer_and_plain_drizzle(tmp_path):
    work = tmp_path / "work"
    snakemake(work, CORRECTED, "--cores", "2", *CONFIG, "--config", "keep_intermediates=True")
    results = Path(work, "results", TARGET)
    stack, _ = read_image(results / "stack.fits")
    drizzle, header = read_image(results / "drizzle.fits")
    weight, _ = read_image(results / "drizzle_weight.fits")
    corrected, _ = read_image(results / "corrected.fits")
    height, width = stack.shape[:2]
    assert drizzle.shape == (2 * height, 2 * width, 3) == weight.shape
    # rule background worked on the drizzle, not on the stack
    assert corrected.shape == drizzle.shape
    for name in ("drizzle.tif", "drizzle_f32.tif", "drizzle.png"):
        assert (results / name).stat().st_size > 0
    registration = pd.read_csv(results / "registration.csv")
    used = registration[registration["status"] == "used"]
    assert header["NCOMBINE"] == len(used) and header["DRIZBAYR"] and header["DRIZSCAL"] == 2
    assert "BAYERPAT" not in header
    # Bayer drizzle read the calibrated mosaics, kept beside the debayered lights
    cfa, cfa_header = read_image(results / "calibrated_cfa" / "light_001.fits")
    assert cfa.shape == (height, width) and cfa_header["BAYERPAT"]
    truth = pd.read_csv(Path(work, "resources", "simulated", "night", "truth", "transforms.csv"))
    satellite = truth.loc[truth["satellite"], "frame"].item()
    counts = outlier_counts(work)
    print(f"Bayer drizzle: outlier pixels per frame {counts}; {(weight > 0).mean():.3f} of the grid covered")
    assert satellite in counts and counts[satellite] > 10 * max(v for f, v in counts.items() if f != satellite)

    # Plain drizzle of the debayered lights: only drizzle and background rerun. Binned back to the
    # reference grid it is the stack, up to the noise of the drop weights.
    plain = tmp_path / "plain.yaml"
    plain.write_text("drizzle:\n  bayer: false\n")
    snakemake(work, CORRECTED, "--cores", "2", *CONFIG, str(plain), "--config", "keep_intermediates=True")
    drizzle, header = read_image(results / "drizzle.fits")
    assert drizzle.shape == (2 * height, 2 * width, 3) and not header["DRIZBAYR"]
    assert read_image(results / "corrected.fits")[0].shape == drizzle.shape
    binned = drizzle.reshape(height, 2, width, 2, 3).mean(axis=(1, 3))
    inner = (slice(16, -16), slice(16, -16))
    difference = (binned - stack)[inner]
    sky_noise = np.nanstd(np.diff(stack[inner], axis=1)) / np.sqrt(2)
    ratio = np.nanmedian(np.abs(difference)) / sky_noise
    print(f"plain drizzle binned 2x2 vs stack: median |difference| {ratio:.3f} of the stack's pixel noise")
    assert np.isfinite(binned[inner]).mean() > 0.99 and ratio < 0.5
