import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from astropy.io import fits
from scipy import ndimage, signal, stats
from skimage.registration import phase_cross_correlation

from astroflow.io.fits import read_image
from astroflow.simulation.planetary import (
    LUCKY_BAND,
    PEAK_E,
    SKY_E,
    PlanetarySequence,
    border_margin,
    planet_truth,
    simulate_sequence,
    write_sequence,
)

NOISE_FREE = dict(read_noise=0.0, photon_noise=False)


@pytest.fixture(scope="module")
def small_planet():
    """A 128 px planet with a wide sky border (no moon) for sequences with default turbulence."""
    return planet_truth(128, seed=1, radius_frac=0.25, moon=False)


@pytest.fixture(scope="module")
def planet256():
    return planet_truth(256, seed=0)


def spot(shape=(96, 96), centre=(48.0, 48.0), sigma=2.0, peak=1000.0, sky=SKY_E):
    yy, xx = np.indices(shape)
    r2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    return (sky + peak * np.exp(-0.5 * r2 / sigma**2)).astype(np.float32)


def laplacian_variance(image):
    return float(ndimage.laplace(np.asarray(image, dtype=np.float64)).var())


def disc_mask(size, radius_frac, scale=1.0):
    yy, xx = np.indices((size, size))
    c = (size - 1) / 2
    r_eq = radius_frac * size
    return ((yy - c) / (0.935 * r_eq)) ** 2 + ((xx - c) / r_eq) ** 2 < scale**2


# --- truth ---------------------------------------------------------------------------------


def test_truth_is_deterministic_with_sky_and_peak_levels(planet256):
    assert planet256.dtype == np.float32 and planet256.shape == (256, 256)
    assert np.array_equal(planet256, planet_truth(256, seed=0))
    assert not np.array_equal(planet256, planet_truth(256, seed=1))
    corners = np.concatenate([planet256[:20, :20].ravel(), planet256[-20:, -20:].ravel()])
    assert np.all(corners == pytest.approx(SKY_E))
    assert planet256.max() == pytest.approx(SKY_E + PEAK_E, rel=1e-4)


def test_truth_has_fine_detail_and_bands(planet256):
    truth = planet256.astype(np.float64)
    inner = disc_mask(256, 0.3, scale=0.8)

    def high_pass_fraction(image):
        residual = image - ndimage.gaussian_filter(image, 2.0)
        return residual[inner].std() / image[inner].mean()

    # Detail at 1-4 px: measured ~0.10; a 1 px Gaussian blur of the same truth gives ~0.057.
    assert high_pass_fraction(truth) > 0.08
    assert high_pass_fraction(ndimage.gaussian_filter(truth, 1.0)) < 0.07
    # Belts: dark minima in the profile along the central meridian.
    c, r_pol = 127.5, 0.3 * 256 * 0.935
    profile = np.median(truth[:, 118:138], axis=1)[int(c - 0.7 * r_pol) : int(c + 0.7 * r_pol)]
    minima, _ = signal.find_peaks(
        -ndimage.gaussian_filter1d(profile, 1.0), prominence=0.05 * profile.mean()
    )
    assert len(minima) >= 4
    # Limb darkening: the disc is dimmer near the limb than at the centre of the same band.
    row = truth[128]
    limb = disc_mask(256, 0.3)[128]
    x_in = np.flatnonzero(limb)
    assert row[x_in[2]] < 0.75 * np.median(row[120:136])


def test_moon_is_a_small_disc_beside_the_planet(planet256):
    without = planet_truth(256, seed=0, moon=False)
    moon = planet256.astype(np.float64) - without
    lit = np.argwhere(moon > 0)
    assert 4 <= len(lit) <= 16
    extent = lit.max(axis=0) - lit.min(axis=0) + 1
    assert np.all(extent <= 4)
    assert moon.max() > 0.5 * PEAK_E
    assert moon.sum() == pytest.approx(0.7 * PEAK_E * math.pi * 1.25**2, rel=0.02)
    centre = lit.mean(axis=0)
    assert not disc_mask(256, 0.3, scale=1.05)[tuple(np.round(centre).astype(int))]
    assert np.array_equal(without[disc_mask(256, 0.3)], planet256[disc_mask(256, 0.3)])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(size=16), "size"),
        (dict(size=64.0), "size"),
        (dict(radius_frac=0.6), "radius_frac"),
        (dict(radius_frac=0.0), "radius_frac"),
        (dict(radius_frac=0.42), "moon"),
        (dict(seed=-1), "seed"),
    ],
)
def test_truth_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        planet_truth(**{"size": 64, **kwargs})


def test_truth_without_moon_fits_a_large_disc():
    truth = planet_truth(64, radius_frac=0.42, moon=False)
    assert truth.shape == (64, 64)


# --- sequence ------------------------------------------------------------------------------


def test_sequence_is_deterministic(small_planet):
    a = simulate_sequence(small_planet, 6, seed=4)
    b = simulate_sequence(small_planet, 6, seed=4)
    c = simulate_sequence(small_planet, 6, seed=5)
    assert isinstance(a, PlanetarySequence)
    assert a.frames.dtype == np.float32 and a.frames.shape == (6, 128, 128)
    assert a.truth.dtype == np.float32 and a.truth.shape == (128, 128)
    assert a.shifts.dtype == np.float64 and a.shifts.shape == (6, 2)
    assert a.seeing.dtype == np.float64 and a.seeing.shape == (6,)
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.shifts, b.shifts) and np.array_equal(a.seeing, b.seeing)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.allclose(a.shifts, c.shifts)
    assert np.array_equal(a.truth, small_planet)


def test_shift_sign_moves_content_by_plus_shift():
    truth = spot()
    seq = simulate_sequence(
        truth, 8, seed=2, tip_tilt_px=3.0, local_px=0.0, blur_px=(0.5, 0.5), **NOISE_FREE
    )
    yy, xx = np.indices(truth.shape)
    for frame, (dy, dx) in zip(seq.frames, seq.shifts):
        light = np.clip(frame.astype(np.float64) - SKY_E, 0, None)
        cy, cx = (light * yy).sum() / light.sum(), (light * xx).sum() / light.sum()
        # A feature at (48, 48) of the truth is at (48 + dy, 48 + dx) in the frame.
        assert cy == pytest.approx(48.0 + dy, abs=0.02)
        assert cx == pytest.approx(48.0 + dx, abs=0.02)


def test_seeing_is_the_gaussian_blur_sigma():
    truth = spot(sigma=2.0)
    seq = simulate_sequence(
        truth, 8, seed=4, local_px=0.0, blur_variation=0.0, blur_px=(0.5, 2.5), **NOISE_FREE
    )
    yy, xx = np.indices(truth.shape)
    for frame, (dy, dx), seeing in zip(seq.frames, seq.shifts, seq.seeing):
        light = frame.astype(np.float64) - SKY_E
        r2 = (yy - 48.0 - dy) ** 2 + (xx - 48.0 - dx) ** 2
        variance = (light * r2).sum() / light.sum() / 2  # per axis
        assert math.sqrt(variance - 2.0**2) == pytest.approx(seeing, abs=0.02)


def test_tip_tilt_rms():
    truth = np.full((32, 32), 100.0, dtype=np.float32)
    seq = simulate_sequence(truth, 400, seed=3, tip_tilt_px=2.0, **NOISE_FREE)
    np.testing.assert_allclose(seq.shifts.std(axis=0), 2.0, rtol=0.12)
    np.testing.assert_allclose(seq.shifts.mean(axis=0), 0.0, atol=0.3)
    assert abs(np.corrcoef(seq.shifts.T)[0, 1]) < 0.15


def test_shifts_recovered_by_phase_correlation(small_planet):
    seq = simulate_sequence(
        small_planet, 10, seed=3, tip_tilt_px=3.0, local_px=0.0, blur_px=(0.6, 0.7), **NOISE_FREE
    )
    assert np.abs(seq.shifts).max() > 1.5  # the test means something
    for frame, true_shift in zip(seq.frames, seq.shifts):
        found, _, _ = phase_cross_correlation(seq.truth, frame, upsample_factor=100)
        # phase_cross_correlation gives the shift that registers the frame on the truth.
        np.testing.assert_allclose(-found, true_shift, atol=0.1)


def test_seeing_ranks_frame_sharpness(small_planet):
    seq = simulate_sequence(small_planet, 40, seed=6, **NOISE_FREE)
    sharpness = [laplacian_variance(frame) for frame in seq.frames]
    rho = stats.spearmanr(sharpness, seq.seeing).statistic
    assert rho < -0.8


def test_good_fraction_of_lucky_frames():
    truth = np.full((32, 32), 100.0, dtype=np.float32)
    low, high = 0.6, 2.5
    threshold = low + LUCKY_BAND * (high - low)
    seq = simulate_sequence(truth, 200, seed=1, blur_px=(low, high), good_fraction=0.15)
    assert np.all((seq.seeing >= low) & (seq.seeing <= high))
    assert np.sum(seq.seeing < threshold) == 30
    # Most frames are soft: the poor ones crowd towards the high end.
    assert np.median(seq.seeing) > 0.5 * (low + high)
    assert np.sum(seq.seeing > low + 0.8 * (high - low)) > 40
    none = simulate_sequence(truth, 50, seed=1, good_fraction=0.0)
    every = simulate_sequence(truth, 50, seed=1, good_fraction=1.0)
    assert np.all(none.seeing >= threshold) and np.all(every.seeing < threshold)


@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_noise_matches_photon_and_read_noise(gain):
    level, read = 500.0, 5.0
    truth = np.full((64, 64), level, dtype=np.float32)
    seq = simulate_sequence(truth, 10, seed=2, read_noise=read, gain=gain)
    assert seq.truth == pytest.approx(level / gain)
    assert seq.frames.mean() == pytest.approx(level / gain, rel=0.003)
    assert seq.frames.std() == pytest.approx(math.sqrt(level + read**2) / gain, rel=0.03)
    photon_only = simulate_sequence(truth, 10, seed=2, read_noise=0.0, gain=gain)
    assert photon_only.frames.std() == pytest.approx(math.sqrt(level) / gain, rel=0.03)
    read_only = simulate_sequence(truth, 10, seed=2, read_noise=read, gain=gain, photon_noise=False)
    assert read_only.frames.std() == pytest.approx(read / gain, rel=0.03)
    clean = simulate_sequence(truth, 3, seed=2, gain=gain, **NOISE_FREE)
    np.testing.assert_allclose(clean.frames, level / gain, atol=1e-3)


def test_noise_leaves_the_atmosphere_unchanged(small_planet):
    noisy = simulate_sequence(small_planet, 4, seed=9)
    clean = simulate_sequence(small_planet, 4, seed=9, **NOISE_FREE)
    assert np.array_equal(noisy.shifts, clean.shifts)
    assert np.array_equal(noisy.seeing, clean.seeing)
    residual = noisy.frames.astype(np.float64) - clean.frames
    expected = np.sqrt(np.clip(clean.frames, 0, None) + 25.0)
    assert np.std(residual / expected) == pytest.approx(1.0, rel=0.03)


def spot_grid(size=128, step=10, first=24, sigma=1.2, peak=1000.0):
    """Small Gaussian spots on a grid, with a sky border of ``first`` px; and their centres."""
    centres = np.arange(first, size - first + 1, step, dtype=float)
    yy, xx = np.indices((size, size))
    image = np.full((size, size), SKY_E)
    for cy in centres:
        for cx in centres:
            image += peak * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / sigma**2)
    return image.astype(np.float32), centres


def spot_centroids(frame, centres, half=4):
    out = []
    for cy in centres:
        for cx in centres:
            win = np.s_[int(cy) - half : int(cy) + half + 1, int(cx) - half : int(cx) + half + 1]
            light = np.clip(frame[win].astype(np.float64) - SKY_E, 0, None)
            yy, xx = np.indices(light.shape)
            out.append(((light * yy).sum() / light.sum(), (light * xx).sum() / light.sum()))
    return np.array(out).reshape(len(centres), len(centres), 2)


def test_local_displacement_field():
    truth, centres = spot_grid()
    common = dict(seed=8, tip_tilt_px=0.0, blur_px=(0.8, 0.8), region_px=48, **NOISE_FREE)
    still = simulate_sequence(truth, 6, local_px=0.0, **common)
    warped = simulate_sequence(truth, 6, local_px=1.0, **common)
    assert still.local_rms == 0.0
    assert warped.local_rms == pytest.approx(1.0, rel=0.05)
    assert np.array_equal(still.shifts, warped.shifts)
    assert np.array_equal(still.seeing, warped.seeing)
    # Each spot moves by the displacement field where it is: about local_px RMS, smoothly (its
    # neighbours 10 px away move alike), differently across the frame, differently per frame.
    moves = np.array(
        [
            spot_centroids(b, centres) - spot_centroids(a, centres)
            for a, b in zip(still.frames, warped.frames)
        ]
    )
    rms_per_axis = np.sqrt(np.mean(moves**2, axis=(0, 1, 2)))
    assert np.all((rms_per_axis > 0.5) & (rms_per_axis < 1.5))
    neighbours = np.corrcoef(moves[:, :-1].ravel(), moves[:, 1:].ravel())[0, 1]
    assert neighbours > 0.7
    assert moves.std(axis=(1, 2)).mean() > 0.3  # not one common shift per frame
    assert np.abs(moves[0] - moves[1]).mean() > 0.3  # independent per frame


def test_blur_varies_within_a_frame(small_planet):
    common = dict(seed=5, local_px=0.0, blur_px=(1.5, 1.5), **NOISE_FREE)
    uniform = simulate_sequence(small_planet, 3, blur_variation=0.0, **common)
    varied = simulate_sequence(small_planet, 3, blur_variation=0.3, **common)
    assert np.array_equal(uniform.seeing, varied.seeing)
    patches = [np.s_[y : y + 24, x : x + 24] for y in (34, 52, 70) for x in (34, 52, 70)]
    for a, b in zip(uniform.frames, varied.frames):
        ratios = np.array([laplacian_variance(b[p]) / laplacian_variance(a[p]) for p in patches])
        assert ratios.max() / ratios.min() > 1.3
    flat = simulate_sequence(small_planet, 1, blur_variation=0.0, **common)
    np.testing.assert_array_equal(flat.frames, uniform.frames[:1])


def test_default_planet_fits_default_turbulence(planet256):
    # filterwarnings = error: a crowded-border warning would fail this test.
    seq = simulate_sequence(planet256, 2, seed=0)
    assert seq.frames.shape == (2, 256, 256)
    assert border_margin() <= 51 - 25  # sky border at radius_frac=0.3, minus the moon's room


def test_warns_when_truth_touches_the_border():
    truth = spot(centre=(48.0, 90.0))
    with pytest.warns(UserWarning, match="sky border"):
        simulate_sequence(truth, 1, **NOISE_FREE)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_frames=0), "n_frames"),
        (dict(n_frames=2.5), "n_frames"),
        (dict(tip_tilt_px=-1.0), "tip_tilt_px"),
        (dict(local_px=-0.1), "local_px"),
        (dict(local_px=float("nan")), "local_px"),
        (dict(blur_px=(2.0, 1.0)), "blur_px"),
        (dict(blur_px=(-1.0, 1.0)), "blur_px"),
        (dict(blur_px=1.0), "blur_px"),
        (dict(good_fraction=1.5), "good_fraction"),
        (dict(region_px=0), "region_px"),
        (dict(read_noise=-5.0), "read_noise"),
        (dict(gain=0.0), "gain"),
        (dict(blur_variation=1.0), "blur_variation"),
        (dict(turbulence="von-karman"), "turbulence"),
        (dict(seed=-3), "seed"),
    ],
)
def test_sequence_bad_arguments(kwargs, name):
    truth = spot()
    with pytest.raises(ValueError, match=name):
        simulate_sequence(truth, **{"n_frames": 2, **kwargs})


@pytest.mark.parametrize(
    "truth",
    [np.ones((8, 8)), np.ones((3, 32, 32)), np.full((32, 32), np.nan), np.full((32, 32), -1.0)],
)
def test_sequence_bad_truth(truth):
    with pytest.raises(ValueError, match="truth"):
        simulate_sequence(truth, 2)


# --- files ---------------------------------------------------------------------------------


def test_write_sequence_round_trip_and_stale_files(tmp_path):
    truth = spot(peak=80000.0)  # saturates 16 bits: the clipping is tested
    seq = simulate_sequence(truth, 5, seed=1, local_px=0.0, blur_px=(0.3, 0.5), read_noise=30.0)
    assert seq.frames.max() > 65535 and seq.frames.min() < 0
    paths = write_sequence(seq, tmp_path)
    assert [p.name for p in paths] == [f"frame_{i:04d}.tif" for i in range(1, 6)]
    for path, frame in zip(paths, seq.frames):
        data = tifffile.imread(path)
        assert data.dtype == np.uint16
        np.testing.assert_array_equal(data, np.clip(np.rint(frame), 0, 65535).astype(np.uint16))
    with fits.open(tmp_path / "truth" / "truth.fits") as hdul:
        assert hdul[0].data.dtype.kind == "f"
    truth_back, truth_header = read_image(tmp_path / "truth" / "truth.fits")
    np.testing.assert_array_equal(truth_back, seq.truth)
    assert truth_header["NFRAMES"] == 5
    table = pd.read_csv(tmp_path / "truth" / "shifts.csv")
    assert list(table.columns) == ["frame", "dy", "dx", "seeing"]
    assert len(table) == 5 and list(table["frame"]) == [p.name for p in paths]
    np.testing.assert_allclose(table[["dy", "dx"]].to_numpy(), seq.shifts, rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["seeing"].to_numpy(), seq.seeing, rtol=0, atol=1e-12)

    # A shorter run in the same folder removes the frames it no longer has, nothing else.
    (tmp_path / "frames" / "notes.txt").write_text("keep me")
    shorter = simulate_sequence(truth, 3, seed=2, local_px=0.0)
    paths = write_sequence(shorter, tmp_path)
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == ["frame_0001.tif", "frame_0002.tif", "frame_0003.tif", "notes.txt"]
    assert len(pd.read_csv(tmp_path / "truth" / "shifts.csv")) == 3
    assert sorted(p.name for p in (tmp_path / "truth").iterdir()) == ["shifts.csv", "truth.fits"]

    # FITS frames replace the TIFF ones and keep the float values.
    paths = write_sequence(shorter, tmp_path, fmt="fits")
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == ["frame_0001.fits", "frame_0002.fits", "frame_0003.fits", "notes.txt"]
    np.testing.assert_array_equal(read_image(paths[1])[0], shorter.frames[1])


def test_write_sequence_bad_format(tmp_path):
    seq = simulate_sequence(spot(), 1, local_px=0.0)
    with pytest.raises(ValueError, match="fmt"):
        write_sequence(seq, tmp_path, fmt="png")


def test_kolmogorov_frames_are_truth_convolved_with_their_psfs():
    truth = planet_truth(128, seed=3)
    seq = simulate_sequence(truth, 6, seed=2, turbulence="kolmogorov", d_over_r0=5.0,
                            local_px=0.0, photon_noise=False, read_noise=0.0, psf_size=32)
    assert seq.psfs.shape == (6, 32, 32)
    assert np.allclose(seq.psfs.sum(axis=(1, 2)), 1.0, atol=1e-5)
    from astroflow.simulation.turbulence import convolve

    for i in (0, 5):
        expected = convolve(seq.truth, seq.psfs[i])
        assert np.allclose(seq.frames[i], expected, atol=1e-3 * float(truth.max()))
    # seeing is the PSF's RMS radius: a blurrier frame has less high-frequency power
    sharp, blurry = int(np.argmin(seq.seeing)), int(np.argmax(seq.seeing))
    assert seq.seeing[blurry] > seq.seeing[sharp]
    power = [np.abs(np.diff(seq.frames[i], axis=1)).mean() for i in (sharp, blurry)]
    assert power[0] > power[1]


def test_kolmogorov_stronger_turbulence_blurs_more():
    truth = planet_truth(96, seed=1, moon=False)
    widths = [
        simulate_sequence(truth, 8, seed=4, turbulence="kolmogorov", d_over_r0=r,
                          psf_size=32, local_px=0.0).seeing.mean()
        for r in (2.0, 8.0)
    ]
    assert widths[1] > 1.5 * widths[0]


def test_kolmogorov_same_seed_same_frames_and_noise_leaves_psfs():
    truth = planet_truth(64, seed=1, moon=False)
    kw = dict(seed=9, turbulence="kolmogorov", d_over_r0=4.0, psf_size=16, local_px=0.3)
    a = simulate_sequence(truth, 3, **kw)
    b = simulate_sequence(truth, 3, **kw)
    c = simulate_sequence(truth, 3, read_noise=0.0, photon_noise=False, **kw)
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.psfs, c.psfs) and np.array_equal(a.shifts, c.shifts)
    assert not np.array_equal(a.frames, c.frames)


def test_kolmogorov_warns_when_truth_touches_the_border():
    truth = np.zeros((64, 64), np.float32)
    truth[:, :3] = 100.0
    with pytest.warns(UserWarning, match="edges"):
        simulate_sequence(truth, 1, turbulence="kolmogorov", psf_size=16)
