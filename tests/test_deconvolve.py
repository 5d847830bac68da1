"""Empirical PSF and regularised Richardson-Lucy deconvolution (astroflow.restoration.deconvolve)."""

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import fftconvolve

from astroflow.restoration.deconvolve import (
    NoStarsForPSF,
    deconvolve_image,
    estimate_psf,
    richardson_lucy,
    star_metrics,
)

SPITZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "psf-spitzer-irac"

FWHM, BETA, SKY = 4.0, 3.0, 500.0


def moffat_stamp(size, fwhm, beta, dx=0.0, dy=0.0, over=5):
    """Pixel-integrated circular Moffat (sum 1) centred at (size//2 + dx, size//2 + dy)."""
    half = size // 2
    sub = (np.arange(size * over) + 0.5) / over - 0.5 - half
    yy, xx = np.meshgrid(sub - dy, sub - dx, indexing="ij")
    alpha2 = fwhm**2 / (4 * (2 ** (1 / beta) - 1))
    p = (1 + (xx**2 + yy**2) / alpha2) ** -beta
    p = p.reshape(size, over, size, over).sum(axis=(1, 3))
    return p / p.sum()


def add_star(img, x, y, flux, fwhm=FWHM, beta=BETA, stamp=41):
    h = stamp // 2
    i, j = int(round(x)), int(round(y))
    p = flux * moffat_stamp(stamp, fwhm, beta, x - i, y - j)
    n_y, n_x = img.shape
    y0, x0 = j - h, i - h
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + stamp, n_y), min(x0 + stamp, n_x)
    img[ys:ye, xs:xe] += p[ys - y0 : ye - y0, xs - x0 : xe - x0]


def star_field(n=160, spacing=36, fwhm=FWHM, seed=1, flux_range=(3e4, 2e5)):
    """Isolated Moffat stars on a jittered grid, sky 500 ADU, Poisson (gain 1) + 5 ADU read noise."""
    rng = np.random.default_rng(seed)
    img = np.full((n, n), SKY)
    xy, flux = [], []
    for gy in np.arange(22, n - 21, spacing):
        for gx in np.arange(22, n - 21, spacing):
            x, y = gx + rng.uniform(-3, 3), gy + rng.uniform(-3, 3)
            f = np.exp(rng.uniform(*np.log(flux_range)))
            add_star(img, x, y, f, fwhm=fwhm)
            xy.append((x, y))
            flux.append(f)
    noisy = rng.poisson(img).astype(float) + rng.normal(0, 5.0, img.shape)
    return noisy.astype(np.float32), np.array(xy), np.array(flux)


@pytest.fixture(scope="module")
def field():
    return star_field()


@pytest.fixture(scope="module")
def field_psf(field):
    img, _, _ = field
    return estimate_psf(img)


def test_estimate_psf_recovers_fwhm_and_shape(field_psf):
    psf, info = field_psf
    assert psf.shape == (25, 25) and psf.dtype == np.float32
    assert psf.sum() == pytest.approx(1.0, abs=1e-5) and psf.min() >= 0
    assert info["method"] == "empirical" and info["n_stars"] >= 10
    assert info["fwhm"] == pytest.approx(FWHM, rel=0.10)
    # The whole profile, not only its FWHM, matches the true (pixel-integrated) Moffat.
    truth = moffat_stamp(25, FWHM, BETA)
    assert np.abs(psf - truth).max() < 0.05 * truth.max()
    assert np.unravel_index(np.argmax(psf), psf.shape) == (12, 12)


def test_estimate_psf_moffat_with_few_stars():
    rng = np.random.default_rng(5)
    img = np.full((128, 128), SKY)
    for x, y, f in [(30.3, 40.6, 1e5), (90.7, 35.2, 8e4), (64.1, 95.5, 1.2e5)]:
        add_star(img, x, y, f, fwhm=3.5)
    img = rng.poisson(img).astype(float)
    psf, info = estimate_psf(img)
    assert info["method"] == "moffat" and info["n_stars"] == 3
    assert info["fwhm"] == pytest.approx(3.5, rel=0.10)
    assert 2.0 < info["beta"] < 4.5
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)


def test_no_stars_falls_back_with_warning():
    rng = np.random.default_rng(2)
    img = rng.normal(SKY, 10.0, (96, 96)).astype(np.float32)
    with pytest.warns(NoStarsForPSF):
        psf, info = estimate_psf(img, fallback_fwhm=3.0)
    assert info["method"] == "gaussian-fallback" and info["n_stars"] == 0
    assert psf.shape == (25, 25) and psf.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.warns(NoStarsForPSF):
        out, dinfo = deconvolve_image(img, iterations=5)
    assert out.shape == img.shape and out.dtype == img.dtype and np.isfinite(out).all()
    assert dinfo["psf_info"]["method"] == "gaussian-fallback"
    # Only the positivity bias of the sky (u >= 0 above it): well below 0.5 sigma.
    assert abs(float(np.mean(out)) - float(np.mean(img))) < 5.0


def test_deconvolution_sharpens_conserves_flux_without_ringing(field, field_psf):
    img, xy, _ = field
    out, info = deconvolve_image(img, psf=field_psf[0], iterations=30)
    before = star_metrics(img, xy, radius=10)
    after = star_metrics(out, xy, radius=10)
    assert before["fwhm"].median() == pytest.approx(FWHM, rel=0.05)
    assert (after["fwhm"] <= 0.75 * before["fwhm"]).all()
    ratio = after["flux"] / before["flux"]
    assert np.abs(ratio - 1).max() < 0.05
    assert after["ringing"].max() < 0.02
    # TV regularisation: no more ringing than plain RL, and less noise amplified on the sky.
    plain, _ = deconvolve_image(img, psf=field_psf[0], iterations=30, tv_weight=0.0)
    plain_m = star_metrics(plain, xy, radius=10)
    assert after["ringing"].max() <= plain_m["ringing"].max() + 0.005
    sky = np.s_[2:14, 60:100]
    assert out[sky].std() < plain[sky].std()
    # The fixed sky (u >= 0 above it) is what prevents the dark rings: without it RL rings.
    free, _ = richardson_lucy(img, field_psf[0], iterations=30, background=False)
    assert star_metrics(free, xy, radius=10)["ringing"].max() > 0.03


def test_nan_pixels_are_filled_and_restored(field, field_psf):
    img, xy, _ = field
    holed = img.copy()
    holed[70:73, 10:13] = np.nan
    holed[5, 150] = np.nan
    holed[int(round(xy[5, 1])) + 3, int(round(xy[5, 0]))] = np.nan  # in a star's wing
    out, _ = richardson_lucy(holed, field_psf[0], iterations=20)
    assert np.array_equal(np.isnan(out), np.isnan(holed))
    ref, _ = richardson_lucy(img, field_psf[0], iterations=20)
    ok = ~np.isnan(holed)
    # Filling with the local median leaves the rest of the result (nearly) unchanged.
    assert np.median(np.abs(out[ok] - ref[ok])) < 1.0
    star = star_metrics(out, xy[5:6], radius=6)
    star_ref = star_metrics(ref, xy[5:6], radius=6)
    assert star["flux"].iloc[0] == pytest.approx(star_ref["flux"].iloc[0], rel=0.03)


@pytest.mark.skipif(not SPITZER.is_dir(), reason=f"real PSFs not available: {SPITZER} is absent")
def test_spitzer_psf_known_kernel_reduces_rms_error():
    from astropy.io import fits

    kernel = fits.getdata(SPITZER / "irac_ch1_flight.fits").astype(float)
    assert kernel.shape == (81, 81)
    kernel /= kernel.sum()
    rng = np.random.default_rng(7)
    n = 128
    yy, xx = np.mgrid[:n, :n]
    truth = 100 + 3000 * np.exp(-((xx - 70) ** 2 / (2 * 12**2) + (yy - 60) ** 2 / (2 * 6**2)))
    for x, y, f in [(30, 30, 2e5), (100, 40, 1e5), (40, 100, 3e5), (90, 100, 5e4)]:
        truth[y, x] += f
    blurred = fftconvolve(np.pad(truth, 40, mode="reflect"), kernel, mode="same")[40:-40, 40:-40]
    blurred += rng.normal(0, 10.0, blurred.shape)
    out, info = richardson_lucy(blurred, kernel, iterations=50, stop_tol=0)
    rms_blurred = np.sqrt(np.mean((blurred - truth) ** 2))
    rms_out = np.sqrt(np.mean((out - truth) ** 2))
    assert info["iterations_run"] == 50
    assert rms_out < 0.9 * rms_blurred
    # Flux is kept: the total within 3 % (the sky's positivity bias is the difference).
    assert out.sum() == pytest.approx(blurred.sum(), rel=0.03)


def test_stopping_rules(field, field_psf):
    psf = field_psf[0]
    rng = np.random.default_rng(3)
    noise_only = rng.normal(SKY, 20.0, (128, 128))
    _, info = richardson_lucy(noise_only, psf, iterations=50, noise=20.0)
    assert info["stopped"] == "discrepancy" and info["iterations_run"] < 25
    assert len(info["chi2"]) == info["iterations_run"] + 1 and info["chi2"][-1] <= 1.0
    # The star field is far from chi^2 = 1 at the start, so it keeps iterating.
    img = field[0]
    _, info = richardson_lucy(img, psf, iterations=30, noise=np.sqrt(img + 25.0))
    assert info["chi2"][0] > 5 and info["iterations_run"] == 30
    # Relative-change rule: history decreases and the loop stops when it falls below stop_tol.
    _, info = richardson_lucy(img, psf, iterations=200, stop_tol=0.02)
    assert info["stopped"] == "stop_tol" and info["iterations_run"] < 200
    assert info["history"][-1] < 0.02 <= info["history"][-2]
    assert len(info["history"]) == info["iterations_run"]


def test_saturated_star_core_is_protected():
    rng = np.random.default_rng(11)
    img = np.full((128, 128), SKY)
    add_star(img, 64.2, 63.7, 2e6)
    for x, y in [(25, 25), (100, 30), (30, 100), (100, 100)]:
        add_star(img, x + 0.3, y - 0.2, 5e4)
    img = rng.poisson(img).astype(float)
    sat = 20000.0
    img = np.minimum(img, sat)
    psf = moffat_stamp(25, FWHM, BETA)
    prot, info = richardson_lucy(img, psf, iterations=30, saturation=sat)
    raw, info_raw = richardson_lucy(img, psf, iterations=30, saturation=sat, protect_stars=False)
    assert info["n_protected"] == 1 and info_raw["n_protected"] == 0
    core = np.s_[60:68, 60:68]
    np.testing.assert_allclose(prot[core], img[core], rtol=1e-6)
    # Unprotected RL piles the missing flux of the clipped core into spikes far above the data.
    assert raw[core].max() > 1.5 * sat and prot[core].max() <= sat
    # Faint stars away from it are still sharpened.
    faint = star_metrics(prot, [(100.3, 29.8)], radius=8)["fwhm"].iloc[0]
    assert faint < 0.75 * FWHM


def test_grid_of_psfs_follows_a_varying_fwhm():
    rng = np.random.default_rng(4)
    n = 256
    img = np.full((n, n), SKY)
    xy = []
    for gy in np.arange(16, n - 15, 28):
        for gx in np.arange(16, n - 15, 28):
            x, y = gx + rng.uniform(-2, 2), gy + rng.uniform(-2, 2)
            add_star(img, x, y, 8e4, fwhm=3.0 if x < n / 2 else 5.0, stamp=31)
            xy.append((x, y))
    img = rng.poisson(img).astype(np.float32)
    out, info = deconvolve_image(img, grid=(1, 2), iterations=20, psf_size=21)
    assert out.shape == img.shape and np.isfinite(out).all()
    assert [c[2] for c in info["cells"]] == ["empirical", "empirical"]
    xy = np.array(xy)
    interior = (xy[:, 1] > 30) & (xy[:, 1] < n - 30)
    left = xy[interior & (xy[:, 0] < 100)]
    right = xy[interior & (xy[:, 0] > 156)]
    for stars, fwhm in [(left, 3.0), (right, 5.0)]:
        before = star_metrics(img, stars, radius=8)["fwhm"]
        after = star_metrics(out, stars, radius=8)["fwhm"]
        assert before.median() == pytest.approx(fwhm, rel=0.1)
        assert after.median() < 0.75 * fwhm
    # One global PSF (FWHM ~4) under-deconvolves the FWHM-5 half.
    single, _ = deconvolve_image(img, iterations=20, psf_size=21)
    assert (star_metrics(out, right, radius=8)["fwhm"].median()
            < star_metrics(single, right, radius=8)["fwhm"].median())
    # The tiles blend without a seam: the sky between star rows is the same at the tile
    # boundary (x = 128) as far from it.
    band = out[54:63]
    assert abs(np.median(band[:, 124:133]) - np.median(band[:, 60:100])) < 10.0
    assert abs(np.median(band[:, 124:133]) - np.median(band[:, 160:200])) < 10.0


def test_rgb_keeps_colour_ratios(field, field_psf):
    img, xy, _ = field
    rgb = np.stack([img * 1.2, img, img * 0.7], axis=2).astype(np.float32)
    out, _ = richardson_lucy(rgb, field_psf[0], iterations=15)
    assert out.shape == rgb.shape and out.dtype == np.float32
    i, j = int(round(xy[0, 0])), int(round(xy[0, 1]))
    core = out[j, i]
    assert core[0] / core[1] == pytest.approx(1.2, rel=0.02)
    assert core[2] / core[1] == pytest.approx(0.7, rel=0.02)
    mono, _ = richardson_lucy(img, field_psf[0], iterations=15)
    assert core[1] == pytest.approx(mono[j, i], rel=0.05)


def test_star_metrics_known_star_and_ring():
    img = np.full((64, 64), 100.0)
    add_star(img, 32.3, 31.6, 1e4)
    m = star_metrics(img, [(32.3, 31.6)], radius=10)
    assert m["flux"].iloc[0] == pytest.approx(1e4 * 0.98, rel=0.02)
    assert m["fwhm"].iloc[0] == pytest.approx(FWHM, rel=0.03)
    assert m["background"].iloc[0] == pytest.approx(100.0, abs=1.0)
    assert m["ringing"].iloc[0] == 0.0
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(xx - 32.3, yy - 31.6)
    ring = (r >= 11) & (r < 13)
    img[ring] -= 10.0  # a dark ring of 10 ADU (the star's wing there is < 1 ADU)
    m = star_metrics(img, [(32.3, 31.6)], radius=10)
    assert m["ringing"].iloc[0] == pytest.approx(10.0 * ring.sum() / 1e4, rel=0.15)


def test_sky_model_below_the_data_does_not_blow_up():
    """A background map extrapolated below every pixel (a mesh dominated by a bright object)
    used to let the RL model approach zero and the result explode."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :96]
    truth = 1000.0 * np.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / (2 * 12.0**2))
    psf = moffat_stamp(25, FWHM, BETA)
    image = fftconvolve(truth, psf, mode="same") + rng.normal(0, 2.0, truth.shape)
    background = np.full(truth.shape, float(image.min()) - 500.0)
    result, info = richardson_lucy(image, psf, background=background, iterations=50,
                                   protect_stars=False)
    assert np.isfinite(result).all()
    assert result.max() < 3 * image.max() and result.min() > image.min() - 500.0
    assert abs(result.sum() / image.sum() - 1) < 0.05
