"""Tests of astroflow.calibration.cosmic: L.A.Cosmic hits found, repaired or made no data."""

from __future__ import annotations

import numpy as np
import pytest

from astroflow.calibration.cosmic import remove_cosmic_rays

SKY = 1000.0


def star_field(rng, shape=(160, 160), n_stars=20):
    """A Poisson-noise sky (ADU = electrons) with Gaussian stars (FWHM 3 px), float32."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    scene = np.full(shape, SKY)
    for _ in range(n_stars):
        y0, x0 = rng.uniform(8, shape[0] - 8, 2)
        scene += rng.uniform(2000, 30000) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 1.3**2))
    return rng.poisson(scene).astype(np.float32), scene


def with_hits(rng, frame, n=30):
    """``frame`` with ``n`` single-pixel hits of 500-5000 ADU away from its edges, and their mask."""
    hit = frame.copy()
    truth = np.zeros(frame.shape, dtype=bool)
    ys, xs = rng.integers(4, frame.shape[0] - 4, n), rng.integers(4, frame.shape[1] - 4, n)
    hit[ys, xs] += rng.uniform(500, 5000, n).astype(np.float32)
    truth[ys, xs] = True
    return hit, truth


@pytest.mark.parametrize("pattern", [None, "RGGB"], ids=["mono", "cfa"])
def test_hits_are_found_and_repaired(pattern):
    rng = np.random.default_rng(1)
    frame, _ = star_field(rng)
    if pattern:
        frame[0::2, 1::2] *= 0.6  # a colour sky: the planes differ in level
        frame[1::2, 1::2] *= 0.4
    hit, truth = with_hits(rng, frame)
    original = hit.copy()
    cleaned, n_hits = remove_cosmic_rays(hit, pattern, readnoise=5.0)
    np.testing.assert_array_equal(hit, original)
    changed = cleaned != hit
    assert changed[truth].sum() >= truth.sum() - 2  # nearly every hit
    assert changed[~truth].sum() <= 0.5 * truth.sum()  # few others (hits' brightest neighbours)
    assert n_hits == changed.sum()
    # Repaired from the same colour: back to the frame within a few sky noises.
    assert np.median(np.abs(cleaned - frame)[truth & changed]) < 3 * np.sqrt(SKY)
    assert cleaned.dtype == np.float32


def test_a_clean_star_field_is_left_alone():
    rng = np.random.default_rng(2)
    frame, _ = star_field(rng)
    cleaned, n_hits = remove_cosmic_rays(frame, readnoise=5.0)
    assert n_hits == 0
    np.testing.assert_array_equal(cleaned, frame)


def test_nan_fill_marks_hits_as_no_data():
    rng = np.random.default_rng(3)
    frame, _ = star_field(rng)
    frame[:, :10] = np.nan  # outside the registered field: masked, not a hit
    hit, truth = with_hits(rng, frame)
    truth[:, :10] = False
    cleaned, n_hits = remove_cosmic_rays(hit, fill="nan", readnoise=5.0)
    hits = np.isnan(cleaned) & np.isfinite(hit)
    assert hits.sum() == n_hits and hits[truth].sum() >= truth.sum() - 2
    np.testing.assert_array_equal(cleaned[~np.isnan(cleaned)], hit[~np.isnan(cleaned)])


def test_rgb_channels_each_and_bad_input():
    rng = np.random.default_rng(4)
    frame, _ = star_field(rng, shape=(96, 96), n_stars=8)
    hit, truth = with_hits(rng, frame, n=10)
    rgb = np.stack([frame, hit, frame], axis=2)
    cleaned, n_hits = remove_cosmic_rays(rgb, readnoise=5.0)
    assert cleaned.shape == rgb.shape and n_hits >= truth.sum() - 1
    np.testing.assert_array_equal(cleaned[..., 0], frame)
    with pytest.raises(ValueError, match="cannot have a Bayer pattern"):
        remove_cosmic_rays(rgb, "RGGB")
    with pytest.raises(ValueError, match="fill must be one of"):
        remove_cosmic_rays(frame, fill="zero")
    with pytest.raises(ValueError, match="gain"):
        remove_cosmic_rays(frame, gain=0.0)
