"""Gradient removal (astroflow.restoration.background) and colour calibration (colour) on
synthetic skies with a known background, stars and a faint extended blob."""

import warnings

import numpy as np
import pytest

from astroflow.restoration.background import BackgroundWarning, TooFewSamples, fit_background
from astroflow.restoration.colour import ColourWarning, calibrate_colour, camera_factors, sky_levels
from astroflow.simulation.night import render_stars

SETTINGS = dict(grid=16, degree=4, threshold_sigma=3.0, grow=4, reject_sigma=2.5, min_fraction=0.5, min_samples=16)
SMOOTHING = {"polynomial": 0.0, "rbf": 0.1, "spline": 3.0}
CAST = np.array([0.5, 1.0, 0.7])


def sky_scene(seed=0, shape=(300, 450), rgb=False, vignetting=False, blob=6.0, noise=5.0):
    """Image, true background, true blob: gradient (or vignetting) + stars + a faint Gaussian blob + noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    n = int(h * w / 1500)
    x, y = rng.uniform(0, w, n), rng.uniform(0, h, n)
    flux = 10 ** rng.uniform(2.5, 4.5, n)
    blob_img = blob * np.exp(-((xx - 0.3 * w) ** 2 + (yy - 0.6 * h) ** 2) / (2 * (0.06 * w) ** 2))
    if rgb:
        stars = render_stars(shape, x, y, flux[:, None] * CAST, fwhm_px=3.0, pattern=None)
        blob_img = blob_img[..., None] * np.array([1.0, 0.6, 0.8])
    else:
        stars = render_stars(shape, x, y, flux, fwhm_px=3.0)
    if vignetting:
        r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.5 * np.hypot(w, h)) ** 2
        falloff = (1 + 0.4 * r2) ** -2
        falloff = falloff[..., None] if rgb else falloff
        background = 320.0 * falloff
        total = (320.0 + stars + blob_img) * falloff
    else:
        background = 300 + 30 * xx / w + 12 * yy / h + 8 * ((xx - w / 2) / w) ** 2
        if rgb:
            background = background[..., None] * np.array([1.1, 1.0, 0.8])
        total = background + stars + blob_img
    image = total + rng.normal(0.0, noise, total.shape)
    return image.astype(np.float32), background, blob_img


def blob_ratio(image, fitted, background, blob):
    """Flux of the blob kept by the removal: sum over the blob of (image - model) against the truth."""
    inside = (blob.mean(axis=2) if blob.ndim == 3 else blob) > 1.0
    kept = (image - fitted) - (image - background - blob)
    return float(kept[inside].sum() / blob[inside].sum())


@pytest.mark.parametrize("model", ["polynomial", "rbf", "spline"])
def test_gradient_removed_and_blob_kept(model):
    image, background, blob = sky_scene(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackgroundWarning)  # a sky with a gradient and a blob: no warning
        result = fit_background(image, model=model, mode="subtract", smoothing=SMOOTHING[model], **SETTINGS)
    error = result.background - background
    # the gradient spans 38 ADU; the model follows it to under 0.25 ADU, the noise of one sample
    # box's median (5 ADU per pixel, about 700 free pixels a box); measured 0.15-0.19
    assert np.std(error - error.mean()) < 0.25
    # a blob 3-4 sample boxes wide, 1.2 noise sigmas at its peak: measured 0.80 (rbf) to 0.87
    assert 0.75 < blob_ratio(image, result.background, background, blob) < 1.05
    assert result.n_rejected >= 1  # the samples on the blob
    # the median level is kept: the corrected sky is flat at the model's median
    assert np.allclose(result.corrected, image - result.background + result.pedestal, atol=1e-3)
    assert abs(float(np.median(result.background)) - result.pedestal[0]) < 1e-3


def test_without_rejection_the_blob_is_eaten():
    """The rejection is what keeps the blob: with a threshold too high to reject anything, the model follows it."""
    image, background, blob = sky_scene(1)
    loose = dict(SETTINGS, reject_sigma=1e6, threshold_sigma=50.0, grow=0)
    result = fit_background(image, model="rbf", mode="subtract", smoothing=0.0, **loose)
    assert blob_ratio(image, result.background, background, blob) < 0.6


@pytest.mark.parametrize("model", ["polynomial", "rbf", "spline"])
def test_divide_mode_flattens_vignetting(model):
    image, background, blob = sky_scene(2, vignetting=True, blob=0.0)
    result = fit_background(image, model=model, mode="divide", smoothing=SMOOTHING[model], **SETTINGS)
    relative = result.background / background
    # 50 % falloff to the corners, followed to better than 1 %
    assert np.std(relative / np.median(relative)) < 0.01
    assert np.isclose(np.median(result.corrected), result.pedestal[0], rtol=0.01)


def test_rgb_per_channel_and_nan_kept():
    image, background, blob = sky_scene(3, rgb=True)
    image[:5, :7] = np.nan
    result = fit_background(image, model="rbf", mode="subtract", smoothing=0.1, **SETTINGS)
    assert result.corrected.shape == image.shape and result.background.shape == image.shape
    assert np.isnan(result.corrected[:5, :7]).all() and np.isfinite(result.background).all()
    for c in range(3):
        error = result.background[:, :, c] - background[:, :, c]
        assert np.std(error[10:, 10:] - error[10:, 10:].mean()) < 0.3
    assert result.pedestal.shape == (3,)


def test_too_few_sky_samples_is_a_clear_error():
    """Few sky samples left (here: data only in one corner, as a heavily cropped mosaic) -> an error that
    names the image and both numbers. (A smooth nebula filling the frame is not detected as signal:
    no mask can tell it from a gradient; switch the stage off for such a target.)"""
    image, _, _ = sky_scene(4, shape=(200, 300))
    image[40:, :] = np.nan
    image[:, 60:] = np.nan
    with pytest.raises(TooFewSamples, match=r"nebula\.fits: only \d+ of 176 .* needs at least 16"):
        fit_background(image, model="rbf", mode="subtract", smoothing=0.1, name="nebula.fits", **SETTINGS)


@pytest.mark.parametrize("model", ["polynomial", "rbf", "spline"])
def test_frame_filling_nebula_is_not_eaten_silently(model):
    """A smooth nebula filling the frame passes every mask and rejection (it looks like a gradient) and is
    fitted away; the fit must say so, naming the image, rather than return a flat sky without a word."""
    image, background, _ = sky_scene(7, shape=(200, 300), blob=0.0)
    yy, xx = np.mgrid[0:200, 0:300].astype(float)
    nebula = 150.0 * np.exp(-((xx - 150) ** 2 + (yy - 100) ** 2) / (2 * 105.0**2))
    with pytest.warns(BackgroundWarning, match=r"nebula\.fits: the fitted .* looks like extended signal.*inside"):
        result = fit_background((image + nebula).astype(np.float32), model=model, mode="subtract",
                                smoothing=SMOOTHING[model], name="nebula.fits", **SETTINGS)
    inside = nebula > 75.0
    kept = ((background - result.background)[inside] + nebula[inside]).sum() / nebula[inside].sum()
    assert kept < 0.3  # the model did eat it: the warning is what tells the user


@pytest.mark.parametrize("shape", [(1, 500), (500, 1), (1, 500, 3)])
def test_one_pixel_strip_is_a_clear_error(shape):
    image = np.full(shape, 100.0, np.float32)
    with pytest.raises(ValueError, match=r"strip\.fits: .* too small for background sampling"):
        fit_background(image, model="polynomial", mode="subtract", smoothing=0.0, name="strip.fits", **SETTINGS)


def test_bad_settings():
    image, _, _ = sky_scene(0, shape=(64, 64))
    with pytest.raises(ValueError, match="model must be one of"):
        fit_background(image, model="akima", mode="subtract", smoothing=0.0, **SETTINGS)
    with pytest.raises(ValueError, match="mode must be one of"):
        fit_background(image, model="rbf", mode="add", smoothing=0.0, **SETTINGS)
    with pytest.raises(ValueError, match="divide mode needs a positive background"):
        fit_background(image - 400.0, model="polynomial", mode="divide", smoothing=0.0, **SETTINGS)


def star_field(seed=5, shape=(300, 400), cast=CAST, sky=(220.0, 200.0, 160.0)):
    rng = np.random.default_rng(seed)
    h, w = shape
    x, y = rng.uniform(0, w, 150), rng.uniform(0, h, 150)
    flux = 10 ** rng.uniform(3, 5, 150)
    image = render_stars(shape, x, y, flux[:, None] * np.asarray(cast), fwhm_px=3.0, pattern=None) + np.asarray(sky)
    return (image + rng.normal(0, 3.0, image.shape)).astype(np.float32)


def test_star_white_balance_recovers_a_colour_cast():
    image = star_field()
    result = calibrate_colour(image, neutralise=True, white_balance="stars", threshold_sigma=5.0, saturation=0.8,
                              min_stars=10)
    assert result.method == "stars" and result.n_stars >= 10
    assert np.allclose(result.factors, 1.0 / CAST, rtol=0.02)
    # the sky is grey after neutralisation, at the mean of the three levels
    assert np.allclose(sky_levels(result.image), np.mean(result.sky), atol=0.2)


def test_camera_white_balance_and_fallbacks():
    image = star_field()
    header = {"CAMWBR": 2.0, "CAMWBG": 1.0, "CAMWBB": 1.4}
    assert np.allclose(camera_factors(header), [2.0, 1.0, 1.4])
    result = calibrate_colour(image, neutralise=False, white_balance="camera", header=header, threshold_sigma=5.0,
                              saturation=0.8, min_stars=10)
    assert result.method == "camera" and np.allclose(result.factors, [2.0, 1.0, 1.4])
    # the sky is left where it was (no neutralisation), the signal above it scaled
    assert np.allclose(sky_levels(result.image), result.sky, atol=0.2)
    with pytest.warns(ColourWarning, match="no camera white-balance multipliers"):
        result = calibrate_colour(image, neutralise=True, white_balance="camera", header={}, threshold_sigma=5.0,
                                  saturation=0.8, min_stars=10)
    assert result.method == "stars"
    blank = np.random.default_rng(0).normal(100.0, 3.0, (100, 100, 3)).astype(np.float32)
    with pytest.warns(ColourWarning, match="unsaturated stars usable"):
        result = calibrate_colour(blank, neutralise=True, white_balance="stars", threshold_sigma=5.0,
                                  saturation=0.8, min_stars=10)
    assert result.method == "none" and np.allclose(result.factors, 1.0)


def test_colour_needs_rgb():
    with pytest.raises(ValueError, match=r"mono\.fits: colour calibration needs an \(H, W, 3\)"):
        calibrate_colour(np.zeros((10, 10), np.float32), neutralise=True, white_balance="none", threshold_sigma=5.0,
                         saturation=0.8, min_stars=10, name="mono.fits")
