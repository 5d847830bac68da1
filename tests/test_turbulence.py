"""Tests of the Kolmogorov turbulence simulator (phase screens, PSFs, frames with known truth)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, signal

from astroflow.simulation.planetary import planet_truth
from astroflow.simulation.turbulence import (
    TurbulentSequence,
    convolve,
    phase_screen,
    pupil,
    short_exposure_psf,
    simulate_turbulent_sequence,
    star_field_truth,
    turbulent_psfs,
)


def structure_function(screens, r):
    """<(phi(x) - phi(x + r))^2> over screens, along x and y."""
    dx = np.mean((screens[:, :, :-r] - screens[:, :, r:]) ** 2)
    dy = np.mean((screens[:, :-r, :] - screens[:, r:, :]) ** 2)
    return 0.5 * (dx + dy)


def fwhm_cut(psf):
    """FWHM (px) from the x and y cuts through the peak, linearly interpolated."""
    py, px = np.unravel_index(np.argmax(psf), psf.shape)
    widths = []
    for cut, c in ((psf[py, :], px), (psf[:, px], py)):
        half = cut[c] / 2.0
        right = c
        while cut[right + 1] > half:
            right += 1
        left = c
        while cut[left - 1] > half:
            left -= 1
        xr = right + (cut[right] - half) / (cut[right] - cut[right + 1])
        xl = left - (cut[left] - half) / (cut[left] - cut[left - 1])
        widths.append(xr - xl)
    return float(np.mean(widths))


def fwhm_area(psf):
    """FWHM (px) of a round PSF from the area above half its peak."""
    return 2.0 * math.sqrt(np.count_nonzero(psf >= psf.max() / 2.0) / math.pi)


# --- pupil ---------------------------------------------------------------------------------


def test_pupil_area_obstruction_and_spiders():
    n = 128
    clear = pupil(n)
    assert clear.shape == (n, n) and clear.dtype == np.float32
    assert clear.min() >= 0 and clear.max() <= 1
    assert clear.sum() == pytest.approx(math.pi / 4 * n**2, rel=0.005)
    obstructed = pupil(n, obstruction=0.4)
    assert obstructed.sum() == pytest.approx(math.pi / 4 * n**2 * (1 - 0.4**2), rel=0.01)
    assert obstructed[n // 2, n // 2] == 0
    # 4 vanes of width 0.05 D from the obstruction's edge to the rim: area 4 * w * (D - d) / 2.
    vanes = pupil(n, obstruction=0.4, spiders=4, spider_width=0.05)
    lost = obstructed.sum() - vanes.sum()
    assert lost == pytest.approx(4 * 0.05 * n * (0.5 - 0.2) * n, rel=0.1)
    # A cross: the row and column through the centre are blocked, the diagonals are not.
    assert vanes[n // 2, n - 10] < 0.05 and vanes[10, n // 2] < 0.05
    assert vanes[n // 2 + 30, n // 2 + 30] == 1.0


# --- phase screens -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def screens():
    # 64 screens: fewer leave the large-r estimate at the mercy of a few tip-tilt draws.
    rng = np.random.default_rng(1)
    return np.stack([phase_screen(128, 8.0, rng) for _ in range(64)])


@pytest.mark.parametrize("r", [1, 2, 5, 10, 20])
def test_structure_function_is_kolmogorov(screens, r):
    assert screens.shape == (64, 128, 128) and screens.dtype == np.float64
    theory = 6.88 * (r / 8.0) ** (5.0 / 3.0)
    assert structure_function(screens, r) == pytest.approx(theory, rel=0.25)


def test_subharmonics_restore_low_orders():
    rng = np.random.default_rng(2)
    plain = np.stack([phase_screen(128, 8.0, rng, subharmonics=False) for _ in range(16)])
    theory = 6.88 * (20 / 8.0) ** (5.0 / 3.0)
    assert structure_function(plain, 20) < 0.75 * theory  # the periodic FFT grid lacks tilt


def test_aperture_phase_variance_follows_noll():
    """Piston-removed variance over the pupil: 1.0299 (D / r0)^(5/3) rad^2 (Noll 1976)."""
    n, d_over_r0 = 64, 8.0
    rng = np.random.default_rng(3)
    inside = pupil(n) > 0.5
    variances = [phase_screen(n, n / d_over_r0, rng)[inside].var() for _ in range(150)]
    assert np.mean(variances) == pytest.approx(1.0299 * d_over_r0 ** (5.0 / 3.0), rel=0.2)


def test_phase_screen_seeded_and_scales_with_r0():
    a = phase_screen(64, 4.0, np.random.default_rng(5))
    b = phase_screen(64, 4.0, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    c = phase_screen(64, 8.0, np.random.default_rng(5))  # same draws, r0 doubled
    np.testing.assert_allclose(c, a * 2.0 ** (-5.0 / 6.0), rtol=1e-10, atol=1e-12)


# --- PSFs ----------------------------------------------------------------------------------


def test_psf_normalised_non_negative_and_centred():
    mask = pupil(64)
    psf = short_exposure_psf(mask, phase_screen(64, 8.0, np.random.default_rng(0)), size=48)
    assert psf.shape == (48, 48) and psf.dtype == np.float32
    assert psf.min() >= 0
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    flat = short_exposure_psf(mask, np.zeros((64, 64)), oversample=2)
    assert flat.shape == (128, 128)
    assert np.unravel_index(np.argmax(flat), flat.shape) == (64, 64)


def test_diffraction_limited_fwhm_is_airy():
    oversample = 8
    psf = short_exposure_psf(pupil(64), np.zeros((64, 64)), oversample=oversample, size=64)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (32, 32)
    assert fwhm_cut(psf) == pytest.approx(1.03 * oversample, rel=0.1)


def test_obstruction_lowers_strehl():
    zero = np.zeros((64, 64))
    clear = short_exposure_psf(pupil(64), zero)
    obstructed = short_exposure_psf(pupil(64, obstruction=0.4), zero)
    # Normalised peak is proportional to the open area: ratio 1 - eps^2.
    assert obstructed.max() / clear.max() == pytest.approx(1 - 0.4**2, rel=0.03)


def test_spiders_make_spikes_along_their_directions():
    zero = np.zeros((64, 64))
    y, x = np.indices((128, 128)) - 64
    r = np.hypot(y, x)
    halo = (r > 12) & (r < 60)
    axes = halo & ((np.abs(y) <= 1) | (np.abs(x) <= 1))
    diagonals = halo & ((np.abs(y - x) <= 1) | (np.abs(y + x) <= 1))

    def contrast(spiders):
        mask = pupil(64, spiders=spiders, spider_width=0.05)
        psf = short_exposure_psf(mask, zero, oversample=4, size=128)
        return psf[axes].mean() / psf[diagonals].mean()

    assert contrast(0) < 1.5
    assert contrast(4) > 3.0


def test_long_exposure_fwhm_grows_with_d_over_r0():
    fwhm = {}
    for d_over_r0 in (0, 2, 4, 8):
        psfs = turbulent_psfs(80, d_over_r0, np.random.default_rng(7), pupil_px=64, size=64)
        assert psfs.shape == (80, 64, 64) and psfs.dtype == np.float32
        np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-5)
        fwhm[d_over_r0] = fwhm_area(psfs.mean(axis=0))
    assert fwhm[0] < fwhm[2] < fwhm[4] < fwhm[8]
    assert fwhm[8] == pytest.approx(0.98 * 2 * 8, rel=0.35)  # 0.98 lambda / r0, lambda/D = 2 px


def test_short_exposures_are_speckled_and_differ():
    psfs = turbulent_psfs(4, 8.0, np.random.default_rng(8))
    assert not np.allclose(psfs[0], psfs[1])
    flat = turbulent_psfs(1, 0.0, np.random.default_rng(8))[0]
    assert psfs.max(axis=(1, 2)).max() < 0.5 * flat.max()  # Strehl far below 1 at D/r0 = 8


# --- convolution ---------------------------------------------------------------------------


def test_convolve_shift_convention_and_flux():
    image = np.zeros((32, 40))
    image[10, 12] = 5.0
    psf = np.zeros((8, 8))
    psf[4 + 2, 4 - 3] = 1.0  # light at (+2, -3) from the centre (s // 2 = 4)
    out = convolve(image, psf)
    assert out.shape == image.shape
    assert np.unravel_index(np.argmax(out), out.shape) == (12, 9)
    assert out.max() == pytest.approx(5.0)
    # Periodic: a star near the edge wraps round and keeps its flux; zero padding loses it.
    edge = np.zeros((32, 32))
    edge[0, 0] = 1.0
    blur = np.ones((5, 5)) / 25
    assert convolve(edge, blur).sum() == pytest.approx(1.0)
    assert convolve(edge, blur, boundary="zero").sum() == pytest.approx(9 / 25)


def test_convolve_zero_matches_scipy_for_odd_kernels():
    rng = np.random.default_rng(9)
    image = rng.random((30, 26))
    kernel = rng.random((7, 5))
    expected = signal.fftconvolve(image, kernel, mode="same")
    np.testing.assert_allclose(convolve(image, kernel, boundary="zero"), expected, atol=1e-10)
    wrapped = ndimage.convolve(image, kernel, mode="wrap")
    np.testing.assert_allclose(convolve(image, kernel), wrapped, atol=1e-10)


# --- truths and sequences ------------------------------------------------------------------


def test_star_field_truth():
    truth, stars = star_field_truth(128, n_stars=20, seed=4, border=16)
    assert star_field_truth(64)[1].x.between(16, 47).all()  # default border: min(32, size/4)
    assert truth.shape == (128, 128) and truth.dtype == np.float32
    assert isinstance(stars, pd.DataFrame) and list(stars.columns) == ["x", "y", "flux"]
    assert len(stars) == 20
    assert truth.sum() == pytest.approx(stars.flux.sum(), rel=1e-5)
    assert stars.x.between(16, 111).all() and stars.y.between(16, 111).all()
    for row in stars.itertuples():
        assert truth[int(row.y), int(row.x)] >= row.flux * 0.999
    soft, soft_stars = star_field_truth(128, n_stars=5, seed=4, sigma_px=0.7, background=3.0)
    assert soft.sum() == pytest.approx(soft_stars.flux.sum() + 3.0 * 128**2, rel=1e-4)
    assert not np.allclose(soft_stars.x, np.round(soft_stars.x))


def test_sequence_shapes_determinism_and_flux():
    truth, _ = star_field_truth(96, n_stars=8, seed=1, flux_range=(2e4, 5e4), border=24)
    kwargs = dict(d_over_r0=4.0, seed=3, psf_size=32, read_noise=2.0)
    seq = simulate_turbulent_sequence(truth, 12, **kwargs)
    assert isinstance(seq, TurbulentSequence)
    assert seq.frames.shape == (12, 96, 96) and seq.frames.dtype == np.float32
    assert seq.truth.shape == (96, 96) and seq.truth.dtype == np.float32
    assert seq.psfs.shape == (12, 32, 32) and seq.psfs.dtype == np.float32
    assert seq.shifts.shape == (12, 2)
    assert seq.d_over_r0 == 4.0 and seq.params["seed"] == 3
    np.testing.assert_array_equal(seq.truth, truth)
    again = simulate_turbulent_sequence(truth, 12, **kwargs)
    np.testing.assert_array_equal(seq.frames, again.frames)
    np.testing.assert_array_equal(seq.psfs, again.psfs)
    other = simulate_turbulent_sequence(truth, 12, **{**kwargs, "seed": 4})
    assert not np.array_equal(seq.frames, other.frames)
    # Noise does not change the PSFs.
    quiet = simulate_turbulent_sequence(truth, 12, **{**kwargs, "read_noise": 0.0})
    np.testing.assert_array_equal(seq.psfs, quiet.psfs)
    # Flux: each frame's sum equals the truth's within Poisson + read noise (5 sigma).
    total = float(truth.sum())
    sigma = math.sqrt(total + truth.size * 2.0**2)
    np.testing.assert_array_less(np.abs(seq.frames.sum(axis=(1, 2)) - total), 5 * sigma)
    assert seq.frames.mean(axis=0).sum() == pytest.approx(total, abs=5 * sigma / math.sqrt(12))


def test_noise_free_frame_is_truth_convolved_with_psf():
    truth = planet_truth(96, seed=2, radius_frac=0.25, moon=False)
    seq = simulate_turbulent_sequence(
        truth, 3, d_over_r0=3.0, psf_size=32, read_noise=0.0, photon_noise=False
    )
    for frame, psf in zip(seq.frames, seq.psfs):
        np.testing.assert_allclose(frame, convolve(truth, psf), rtol=1e-4, atol=1e-2)


def test_photons_and_gain_scale_truth():
    truth = planet_truth(64, seed=2, radius_frac=0.2, moon=False)
    seq = simulate_turbulent_sequence(
        truth, 2, d_over_r0=2.0, psf_size=16, photons=1e6, gain=2.0, read_noise=0.0,
        photon_noise=False,
    )
    assert seq.truth.sum() == pytest.approx(1e6 / 2.0, rel=1e-5)
    assert seq.frames[0].sum() == pytest.approx(1e6 / 2.0, rel=1e-4)


def test_stronger_turbulence_blurs_frames():
    truth = planet_truth(96, seed=2, radius_frac=0.25, moon=False)

    def sharpness(d_over_r0):
        seq = simulate_turbulent_sequence(
            truth, 6, d_over_r0=d_over_r0, psf_size=48, read_noise=0.0, photon_noise=False
        )
        return np.mean([ndimage.laplace(f.astype(np.float64)).var() for f in seq.frames])

    assert sharpness(1.0) > sharpness(4.0) > sharpness(12.0)


def test_tip_tilt_shifts_match_frames():
    truth = np.zeros((64, 64), dtype=np.float32)
    truth[32, 32] = 1e6
    seq = simulate_turbulent_sequence(
        truth, 4, d_over_r0=6.0, psf_size=32, read_noise=0.0, photon_noise=False
    )
    for frame, (dy, dx) in zip(seq.frames, seq.shifts):
        cy, cx = ndimage.center_of_mass(frame)
        assert (cy, cx) == pytest.approx((32 + dy, 32 + dx), abs=1e-3)


# --- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: pupil(2), "n"),
        (lambda: pupil(32, obstruction=1.0), "obstruction"),
        (lambda: pupil(32, spiders=-1), "spiders"),
        (lambda: pupil(32, spider_width=0.6), "spider_width"),
        (lambda: phase_screen(32, 0.0, 0), "r0_px"),
        (lambda: phase_screen(32.5, 4.0, 0), "n"),
        (lambda: short_exposure_psf(pupil(16), np.zeros((8, 8))), "phase"),
        (lambda: short_exposure_psf(np.zeros((16, 16)), np.zeros((16, 16))), "pupil_mask"),
        (lambda: short_exposure_psf(pupil(16), np.zeros((16, 16)), oversample=0.5), "oversample"),
        (lambda: short_exposure_psf(pupil(16), np.zeros((16, 16)), size=0), "size"),
        (lambda: turbulent_psfs(0, 2.0, 0), "n_frames"),
        (lambda: turbulent_psfs(2, -1.0, 0), "d_over_r0"),
        (lambda: turbulent_psfs(2, 40.0, 0, pupil_px=64), "d_over_r0"),
        (lambda: convolve(np.zeros((8, 8)), np.ones(3)), "psf"),
        (lambda: convolve(np.zeros(8), np.ones((3, 3))), "image"),
        (lambda: convolve(np.zeros((8, 8)), np.ones((3, 3)), boundary="reflect"), "boundary"),
        (lambda: simulate_turbulent_sequence(np.zeros((8, 8))), "truth"),
        (lambda: simulate_turbulent_sequence(-np.ones((32, 32))), "truth"),
        (lambda: simulate_turbulent_sequence(np.ones((32, 32)), 0), "n_frames"),
        (lambda: simulate_turbulent_sequence(np.ones((32, 32)), seed=-1), "seed"),
        (lambda: simulate_turbulent_sequence(np.ones((32, 32)), read_noise=-1), "read_noise"),
        (lambda: simulate_turbulent_sequence(np.ones((32, 32)), gain=0), "gain"),
        (lambda: simulate_turbulent_sequence(np.ones((32, 32)), photons=0), "photons"),
        (lambda: star_field_truth(8), "size"),
        (lambda: star_field_truth(64, n_stars=-1), "n_stars"),
        (lambda: star_field_truth(64, flux_range=(5, 1), border=8), "flux_range"),
        (lambda: star_field_truth(64, border=40), "border"),
        (lambda: star_field_truth(64, sigma_px=-1), "sigma_px"),
    ],
)
def test_bad_arguments_raise(call, name):
    with pytest.raises(ValueError, match=name):
        call()
