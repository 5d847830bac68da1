"""The sky flat (astroflow.calibration.skyflat) on simulated dithered lights with a known flat."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from astroflow.calibration.skyflat import SkyFlatRefused, SkyFlatWarning, dither_between, light_mask, sky_flat
from astroflow.io.fits import read_image
from astroflow.simulation.night import PATTERN, simulate_night

N_LIGHTS = 8


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Truth of a small simulated night: its flat (vignetting, dust donuts, PRNU) and noiseless skies.

    The simulator's sky gradient keeps one direction all night, fixed on the sensor, which no sky
    flat can tell from vignetting; it is off here, and each light gets its own gradient below.
    """
    out = tmp_path_factory.mktemp("skyflat-night")
    simulate_night(
        out, width=256, height=192, n_lights=N_LIGHTS, n_darks=1, n_flats=1, n_bias=1,
        satellite_frame=None, cloudy_frame=None, zero_point_mag=21.5, star_density=0.003,
        sky_gradient=0.0,
    )
    flat, _ = read_image(out / "truth" / "flat.fits")
    skies = [read_image(out / "truth" / f"sky_light_{i:03d}.fits")[0] for i in range(1, N_LIGHTS + 1)]
    return flat, skies, pd.read_csv(out / "truth" / "dust.csv")


def observe(flat, skies, *, gradient=0.1, seed=1):
    """Lights (bias and dark subtracted) through ``flat``: each sky tilted its own way, shot and read noise."""
    rng = np.random.default_rng(seed)
    height, width = flat.shape
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width) - 0.5
    lights = []
    for sky in skies:
        angle = rng.uniform(0, 2 * np.pi)
        tilted = sky + np.median(sky) * gradient * (np.cos(angle) * xx + np.sin(angle) * yy)
        signal = flat * tilted
        lights.append((signal + rng.normal(0.0, np.sqrt(np.maximum(signal, 0) + 9.0))).astype(np.float32))
    return lights


def without_plane(error):
    """``error`` less its best-fitting plane: the mean sky gradient, which a sky flat keeps."""
    height, width = error.shape
    yy, xx = np.mgrid[0:height, 0:width]
    design = np.column_stack([np.ones(error.size), xx.ravel(), yy.ravel()])
    coef, *_ = np.linalg.lstsq(design, error.ravel(), rcond=None)
    return error - (design @ coef).reshape(error.shape)


def block_rms(error, size=16):
    return float(ndimage.uniform_filter(error, size)[size // 2 :: size, size // 2 :: size].std())


def test_sky_flat_recovers_vignetting_and_dust(night):
    flat, skies, dust = night
    # the motes of this small sensor are 7-10 px in radius: smoothed at 2 px, not the default 4
    result = sky_flat(observe(flat, skies), PATTERN, smooth_px=2.0)
    error = without_plane(result.flat / flat - 1)
    # The flat varies by 7.5 % RMS; what is left is noise, PRNU (0.5 %) and the smoothing at
    # the donut rims: measured 0.8 % per pixel, 0.3 % over 16 px blocks.
    assert (flat - 1).std() > 0.07
    assert error.std() < 0.012
    assert block_rms(error) < 0.005
    # the dust donuts are kept: their dark rim (0.7-1 radius) against the clear surroundings
    # (1.3-1.8 radii) as deep as in the truth within 2 points (the 2 px smoothing makes these
    # 3 px wide rims 0.7-1.8 points shallower: measured depths 4-7 % true, 2.5-5.6 % found)
    yy, xx = np.mgrid[0 : flat.shape[0], 0 : flat.shape[1]]
    for mote in dust.itertuples():
        r = np.hypot(xx - mote.x, yy - mote.y) / mote.radius_px
        rim, outside = (r > 0.7) & (r < 1.0), (r > 1.3) & (r < 1.8)
        depth = 1 - flat[rim].mean() / flat[outside].mean()
        found = 1 - result.flat[rim].mean() / result.flat[outside].mean()
        print(f"dust mote r={mote.radius_px:.1f} px: rim depth {depth:.4f} true, {found:.4f} sky flat")
        assert found == pytest.approx(depth, abs=0.02)
    # each CFA colour plane on its own
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        assert without_plane(result.flat[dy::2, dx::2] / flat[dy::2, dx::2] - 1).std() < 0.015
    header = result.header
    assert header["FLATTYPE"] == "SKY" and header["NCOMBINE"] == N_LIGHTS and header["BAYERPAT"] == PATTERN
    # the simulated drift: 40 px over the night, so about 17 px between two lights
    assert 10 < header["DITHERPX"] < 25 and 35 < header["DITHMAX"] < 45
    assert result.summary["accepted"] and result.lights["matched"].all()
    assert np.median(result.flat) == pytest.approx(1.0, abs=1e-3)


def test_gradient_pass_and_mono(night):
    """Mono (one green plane of the mosaic, as a mono camera) and the second pass helping a tilted sky."""
    flat, skies, _ = night
    lights = [light[1::2, 0::2] for light in observe(flat, skies, gradient=0.2)]
    truth = flat[1::2, 0::2]
    errors = {}
    for iterations in (1, 2):
        result = sky_flat(lights, None, iterations=iterations, smooth_px=2.0)
        errors[iterations] = without_plane(result.flat / truth - 1).std()
        assert "BAYERPAT" not in result.header
    assert errors[2] < 0.015
    assert errors[2] <= errors[1] * 1.02


def test_static_lights_are_refused_with_the_reason(night):
    flat, skies, _ = night
    static = [flat * skies[0] + np.random.default_rng(i).normal(0, 30, flat.shape) for i in range(6)]
    with pytest.warns(SkyFlatWarning, match="do not move"), pytest.raises(SkyFlatRefused) as refused:
        sky_flat(static, PATTERN, min_dither_px=5.0)
    assert "below min_dither_px = 5.0" in refused.value.reason
    summary = refused.value.summary
    assert not summary["accepted"] and summary["dither_px"] < 1.0 and summary["n_lights"] == 6


def test_too_few_lights_are_refused(night):
    flat, skies, _ = night
    with pytest.warns(SkyFlatWarning), pytest.raises(SkyFlatRefused, match="only 3 light"):
        sky_flat(observe(flat, skies[:3]), PATTERN, min_lights=5)


def test_lights_without_stars_cannot_show_their_dither():
    rng = np.random.default_rng(0)
    blank = [rng.normal(500, 20, (64, 64)).astype(np.float32) for _ in range(5)]
    with pytest.warns(SkyFlatWarning), pytest.raises(SkyFlatRefused, match="cannot be measured"):
        sky_flat(blank, None)


def test_bad_input_is_named():
    rng = np.random.default_rng(0)
    lights = [rng.normal(500, 20, (64, 64)).astype(np.float32) for _ in range(4)] + [np.ones((32, 32))]
    with pytest.raises(ValueError, match="light_4 has shape"):
        sky_flat(lights, None, min_lights=2)
    with pytest.raises(ValueError, match="unknown combine"):
        sky_flat(lights, None, combine="mean")
    with pytest.raises(ValueError, match="not positive"):
        sky_flat([np.zeros((64, 64))] * 3, None, min_lights=2)
    with pytest.raises(ValueError, match="even sides"):
        light_mask(np.ones((63, 64)), "RGGB", mask_sigma=3.0, grow_px=2)


def test_dither_counts_rotation_about_the_centre():
    theta = np.deg2rad(1.0)
    c, s = np.cos(theta), np.sin(theta)
    centre = np.array([511.5, 511.5])
    rotation = np.eye(3)
    rotation[:2, :2] = [[c, -s], [s, c]]
    rotation[:2, 2] = centre - rotation[:2, :2] @ centre
    shift = np.eye(3)
    shift[:2, 2] = [3.0, 4.0]
    moved = dither_between([np.eye(3), rotation, shift], (1024, 1024))
    # 1 deg about the centre moves the edge midpoints and corners by 9-13 px, the centre not
    assert moved[0] == pytest.approx(np.deg2rad(1.0) * 511.5, rel=0.05)
    assert moved[1] == pytest.approx(5.0)


def test_bad_pixels_are_ignored(night):
    flat, skies, _ = night
    lights = observe(flat, skies)
    hot = np.zeros(flat.shape, bool)
    hot[50:52, 100:102] = True
    for light in lights:
        light[hot] += 5000.0
    result = sky_flat(lights, PATTERN, bad_pixels=hot)
    assert abs(result.flat[hot] / flat[hot] - 1).max() < 0.05
