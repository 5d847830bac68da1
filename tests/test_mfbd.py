"""Tests of multi-frame blind deconvolution (astroflow.restoration.mfbd) on Kolmogorov sequences with truth."""

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from astroflow.io.framestore import FrameStore
from astroflow.restoration.mfbd import SingleFrameWarning, multiframe_deconvolve
from astroflow.simulation.planetary import planet_truth
from astroflow.simulation.turbulence import convolve, simulate_turbulent_sequence, turbulent_psfs

SIZE = 96
N_FRAMES = 24
LONG_RUN = dict(epochs=20, psf_lr=0.1, psf_steps=5, tv_weight=0.002)
WINDOW = (slice(16, -16), slice(16, -16))  # interior window for PSNR


def planet_sequence(seed=1, n_frames=N_FRAMES):
    """Frames of a 96 px Jupiter through D/r0 = 5 turbulence (lambda/D = 2 px), with truth."""
    truth = planet_truth(SIZE, seed=seed, moon=False)
    return simulate_turbulent_sequence(
        truth, n_frames, d_over_r0=5.0, seed=seed, pupil_px=32, psf_size=32
    )


def registered_psnr(image, truth):
    """PSNR (dB, peak = truth max) on the interior window after sub-pixel registration."""
    shift = phase_cross_correlation(truth, image, upsample_factor=20)[0]
    moved = ndimage.shift(image.astype(np.float64), shift, order=3, mode="nearest")
    err = np.mean((moved[WINDOW] - truth[WINDOW]) ** 2)
    return 10.0 * math.log10(float(truth.max()) ** 2 / err)


def support_circle(size):
    r = size // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= r**2


class SpyFrames(FrameStore):
    """A FrameStore that records every read."""

    reads = None

    def read(self, indices, region=None):
        if self.reads is None:
            self.reads = []
        self.reads.append((len(list(indices)), region))
        return super().read(indices, region)


@pytest.fixture(scope="module")
def planet():
    """MFBD of the small sequence with the settings of the library's first defaults (20 epochs,
    fast PSFs): 60 latent updates. The current defaults (10 epochs, psf_lr 0.03, 2 PSF steps;
    chosen on 128-frame sequences of 256 px, where the sky beside the limb stays within 0.1 % of
    the peak) make only 30 here, and their slow PSFs keep the wide wings of the Wiener start
    long enough to dig a dark moat, held at the pedestal by x >= 0, 4-16 px around the limb of
    this 96 px planet; the background properties are tested with the fast PSFs."""
    seq = planet_sequence()
    mean = seq.frames.mean(axis=0)
    latent, info = multiframe_deconvolve(seq.frames, mean, seed=0, **LONG_RUN)
    return seq, mean, latent, info


def test_defaults_on_a_short_sequence_gain_detail_and_keep_flux(planet):
    seq, mean, _, _ = planet
    latent, info = multiframe_deconvolve(seq.frames, mean, seed=0)
    assert info["iterations"] == 10 * math.ceil(N_FRAMES / 8)
    assert registered_psnr(latent, seq.truth) > registered_psnr(mean, seq.truth) + 3
    assert abs(latent.sum() / mean.sum() - 1.0) < 0.02


# --- the deconvolution -----------------------------------------------------------------------


def test_mfbd_beats_mean_stack_on_kolmogorov_sequence(planet):
    seq, mean, latent, info = planet
    assert latent.shape == mean.shape and latent.dtype == np.float32
    assert np.all(np.isfinite(latent))
    psnr_mean = registered_psnr(mean, seq.truth)
    psnr_mfbd = registered_psnr(latent, seq.truth)
    # Measured: 17.7 dB (mean stack = init) -> 24.5 dB (MFBD).
    assert psnr_mfbd > psnr_mean + 4.0, (psnr_mean, psnr_mfbd)

    # Sharper: the limb's steepest gradient rises toward the truth's.
    def steepest(im):
        return np.percentile(np.hypot(*np.gradient(im.astype(np.float64))), 99)

    assert steepest(latent) > 1.5 * steepest(mean)


def test_psfs_are_normalised_non_negative_and_zero_outside_the_support(planet):
    seq, _, _, info = planet
    psfs = info["psfs"]
    assert psfs.shape == (N_FRAMES, 31, 31) and psfs.dtype == np.float32
    assert psfs.min() >= 0.0
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-5)
    outside = ~support_circle(31)
    assert np.all(psfs[:, outside] == 0.0)
    # The PSFs carry each frame's tip-tilt: their centroids follow the true ones.
    r = np.arange(31) - 15
    cy = np.einsum("kyx,y->k", psfs, r)
    cx = np.einsum("kyx,x->k", psfs, r)
    assert np.corrcoef(cy, seq.shifts[:, 0])[0, 1] > 0.9
    assert np.corrcoef(cx, seq.shifts[:, 1])[0, 1] > 0.9


def test_flux_conserved_and_background_does_not_drift(planet):
    seq, mean, latent, info = planet
    assert abs(latent.sum() / mean.sum() - 1.0) < 0.02
    # Sky well away from the disc (and from the edges): the truth's sky is 20 ADU. The mean
    # stack's is brighter there (the seeing halo); MFBD must neither keep nor add a glow.
    sky = ~ndimage.binary_dilation(seq.truth > 25, iterations=12)
    sky[:4], sky[-4:], sky[:, :4], sky[:, -4:] = False, False, False, False
    assert sky.sum() > 1000
    assert abs(latent[sky].mean() - 20.0) < 0.75, latent[sky].mean()
    assert mean[sky].mean() > 21.5  # the halo the deconvolution removed
    # x >= 0 is enforced: nothing below the sky pedestal b (no dark rings around the disc).
    assert latent.min() >= info["sky"][0] - 1e-4 * info["scale"]


def test_info_history_and_progress(planet):
    _, _, _, info = planet
    per_epoch = math.ceil(N_FRAMES / 8)
    assert info["iterations"] == 20 * per_epoch == len(info["history"])
    assert info["frames"] == N_FRAMES and info["n_patches"] == 1
    assert info["device"] == "cpu" and info["seconds"] > 0 and info["iterations_per_second"] > 0
    assert info["scale"] > 0
    for key in ("iteration", "epoch", "patch", "loss", "data_loss", "tv", "seconds"):
        assert key in info["history"][0]
    first, last = info["history"][0], info["history"][-1]
    assert [h["iteration"] for h in info["history"]] == list(range(1, info["iterations"] + 1))
    assert last["epoch"] == 19 and last["data_loss"] < 0.5 * first["data_loss"]


def test_reads_only_batch_frames_at_a_time_and_file_equals_array(tmp_path, planet):
    seq = planet[0]
    frames = seq.frames[:12]
    mean = frames.mean(axis=0)
    with SpyFrames(tmp_path / "frames.f32", frames.shape) as ff:
        for i, frame in enumerate(frames):
            ff.write(i, frame)
        records = []
        from_file, info = multiframe_deconvolve(
            ff, mean, batch=5, epochs=3, progress=records.append
        )
        assert ff.reads and max(n for n, _ in ff.reads) <= 5
        assert len(records) == info["iterations"] == 3 * 3
    from_array, _ = multiframe_deconvolve(frames, mean, batch=5, epochs=3)
    np.testing.assert_array_equal(from_file, from_array)


def test_patches_read_only_their_region(tmp_path):
    seq = planet_sequence(seed=2, n_frames=6)
    mean = seq.frames.mean(axis=0)
    with SpyFrames(tmp_path / "frames.f32", seq.frames.shape) as ff:
        for i, frame in enumerate(seq.frames):
            ff.write(i, frame)
        latent, info = multiframe_deconvolve(
            ff, mean, patch=64, overlap=16, psf_size=15, batch=4, epochs=2
        )
        assert latent.shape == mean.shape and np.all(np.isfinite(latent))
        assert info["n_patches"] == 4
        regions = {region for _, region in ff.reads}
        assert regions == set(info["patches"])
        for y0, y1, x0, x1 in regions:
            assert y1 - y0 <= 64 and x1 - x0 <= 64
        assert max(n for n, _ in ff.reads) <= 4


def test_rgb_frames_share_one_psf_per_frame():
    truth = planet_truth(SIZE, seed=1, moon=False)
    colours = (1.0, 0.8, 0.55)
    # Same seed: the same PSFs (their random stream is independent of the truth) per channel.
    seqs = [
        simulate_turbulent_sequence(truth * f, 16, d_over_r0=5.0, seed=1, pupil_px=32, psf_size=32)
        for f in colours
    ]
    np.testing.assert_array_equal(seqs[0].psfs, seqs[2].psfs)
    frames = np.stack([s.frames for s in seqs], axis=-1)  # (N, H, W, 3)
    mean = frames.mean(axis=0)
    latent, info = multiframe_deconvolve(frames, mean, **{**LONG_RUN, "epochs": 15})
    assert latent.shape == (SIZE, SIZE, 3) and latent.dtype == np.float32
    assert info["psfs"].shape == (16, 31, 31)
    for c, s in enumerate(seqs):
        assert registered_psnr(latent[..., c], s.truth) > registered_psnr(mean[..., c], s.truth) + 3
    # Colour ratios are kept: one achromatic PSF cannot tint the disc.
    disc = truth > 200
    ratios = latent[disc].sum(axis=0) / latent[disc][:, 0].sum()
    np.testing.assert_allclose(ratios, colours, rtol=0.03)


def two_halves_sequence(n_frames=16, size=96, seed=3):
    """A textured field whose left and right halves see different turbulence (D/r0 3 and 6)."""
    rng = np.random.default_rng(seed)
    truth = 200.0 + 800.0 * ndimage.gaussian_filter(rng.random((size, size)), 2.0)
    truth = (truth - truth.min()) / np.ptp(truth) * 1500.0 + 100.0
    psf_a = turbulent_psfs(n_frames, 3.0, seed, pupil_px=16, size=17)
    psf_b = turbulent_psfs(n_frames, 6.0, seed + 1, pupil_px=16, size=17)
    left = np.arange(size)[None, :] < size // 2
    noise = np.random.default_rng(seed + 2)
    frames = np.empty((n_frames, size, size), np.float32)
    for i in range(n_frames):
        a = convolve(truth, psf_a[i])
        b = convolve(truth, psf_b[i])
        frames[i] = np.where(left, a, b) + noise.normal(0.0, 3.0, (size, size))
    return truth, frames


def test_patches_blend_without_seams():
    # A flat field is flat under any PSFs: the blended result must be flat, i.e. the blending
    # weights sum to exactly 1 everywhere (a seam would show as a step).
    for shape, patch, overlap, n_patches in (((90, 90), 40, 12, 9), ((120, 70), 64, 16, 6)):
        # (120 px / 64 px patches: three patches overlap at some rows)
        flat = np.full((6,) + shape, 500.0, np.float32)
        latent, info = multiframe_deconvolve(
            flat, flat[0], patch=patch, overlap=overlap, psf_size=9, epochs=1
        )
        assert info["n_patches"] == n_patches and latent.shape == shape
        np.testing.assert_allclose(latent, 500.0, rtol=1e-4)
    # Different blur in the two halves: the patched deconvolution sharpens both.
    truth, frames = two_halves_sequence()
    mean = frames.mean(axis=0)
    latent, info = multiframe_deconvolve(frames, mean, patch=48, overlap=16, psf_size=15, epochs=10)
    assert latent.shape == mean.shape and np.all(np.isfinite(latent))
    assert info["n_patches"] == 9
    inner = (slice(8, -8), slice(8, -8))
    err_mean = np.sqrt(np.mean((mean[inner] - truth[inner]) ** 2))
    err_mfbd = np.sqrt(np.mean((latent[inner] - truth[inner]) ** 2))
    assert err_mfbd < 0.9 * err_mean, (err_mean, err_mfbd)
    # No step across the patch borders: row-to-row differences there are like elsewhere.
    steps = np.abs(np.diff(latent, axis=0)).mean(axis=1)
    borders = [y1 - 1 for y0, y1, _, _ in info["patches"] if y1 < 96]
    assert steps[borders].max() < 2.0 * np.median(steps)


def test_psfs_stay_centred_and_latent_follows_the_frames():
    # init 3 px off the frames: the PSFs first absorb the offset; whole-pixel re-centring after
    # each epoch moves it into the latent, so the PSFs stay centred on average (keeping their
    # support balanced) and the latent registers with the frames.
    seq = planet_sequence()
    frames = seq.frames[:16]
    mean = frames.mean(axis=0)
    init = ndimage.shift(mean, (3, -2), order=1, mode="nearest")
    latent, info = multiframe_deconvolve(frames, init, epochs=8)
    r = np.arange(31) - 15
    centroid = (np.einsum("kyx,y->k", info["psfs"], r), np.einsum("kyx,x->k", info["psfs"], r))
    assert abs(centroid[0].mean()) < 0.5 and abs(centroid[1].mean()) < 0.5
    shift = phase_cross_correlation(mean, latent, upsample_factor=10)[0]
    assert np.all(np.abs(shift) <= 0.5), shift


def test_one_frame_warns_and_returns_finite_output():
    seq = planet_sequence(n_frames=1)
    with pytest.warns(SingleFrameWarning, match="one frame"):
        latent, info = multiframe_deconvolve(seq.frames, seq.frames[0], epochs=3)
    assert latent.shape == (SIZE, SIZE) and np.all(np.isfinite(latent))
    assert info["psfs"].shape == (1, 31, 31)


def test_nan_pixels_are_masked_not_propagated(planet):
    seq = planet[0]
    frames = seq.frames[:16].copy()
    mean = frames.mean(axis=0)
    clean, _ = multiframe_deconvolve(frames, mean, epochs=8)
    block = (slice(40, 60), slice(30, 50))  # on the disc
    holed, zeroed = frames.copy(), frames.copy()
    for i in (3, 7):
        holed[i][block] = np.nan
        zeroed[i][block] = 0.0
    holed[9, :, :5] = np.nan
    latent, _ = multiframe_deconvolve(holed, mean, epochs=8)
    assert np.all(np.isfinite(latent))
    change = np.abs(latent - clean)[block].mean() / clean[block].mean()
    assert change < 0.01, change  # measured 0.2 %
    # Were NaN read as 0 rather than left out, the block would darken (measured 8 %).
    poisoned, _ = multiframe_deconvolve(zeroed, mean, epochs=8)
    damage = np.abs(poisoned - clean)[block].mean() / clean[block].mean()
    assert damage > max(0.03, 5 * change), (damage, change)


def test_nan_in_init_is_filled_and_nan_only_where_no_frame_has_data(planet):
    seq = planet[0]
    frames = seq.frames[:8].copy()
    init = frames.mean(axis=0)
    init[10:20, 10:20] = np.nan  # init missing, frames have data: filled
    init[70:80, 5:12] = np.nan  # init missing, no frame has data: stays NaN
    frames[:, 70:80, 5:12] = np.nan
    latent, _ = multiframe_deconvolve(frames, init, epochs=3)
    assert np.all(np.isnan(latent[70:80, 5:12]))
    nan = np.isnan(latent)
    nan[70:80, 5:12] = False
    assert not nan.any()


@pytest.mark.parametrize(
    "kwargs, frames_shape, init_shape, match",
    [
        ({}, (4, 40, 40), (40, 41), "do not match init"),
        ({}, (4, 40, 40, 3), (40, 40), "do not match init"),
        ({}, (0, 40, 40), (40, 40), "zero length"),
        ({}, (4, 40), (40, 40), r"\(N, H, W\)"),
        ({"psf_size": 8}, (4, 40, 40), (40, 40), "psf_size must be odd"),
        ({"psf_size": 1}, (4, 40, 40), (40, 40), "psf_size"),
        ({"psf_size": 41}, (4, 40, 40), (40, 40), "larger than the image"),
        ({"batch": 0}, (4, 40, 40), (40, 40), "batch"),
        ({"epochs": 0}, (4, 40, 40), (40, 40), "epochs"),
        ({"lr": 0.0}, (4, 40, 40), (40, 40), "lr"),
        ({"tv_weight": -1.0}, (4, 40, 40), (40, 40), "tv_weight"),
        ({"patch": 30, "overlap": 15}, (4, 40, 40), (40, 40), "twice the overlap"),
        (
            {"patch": 20, "overlap": 4, "psf_size": 21},
            (4, 40, 40),
            (40, 40),
            "larger than the patch",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, frames_shape, init_shape, match):
    with pytest.raises(ValueError, match=match):
        multiframe_deconvolve(np.ones(frames_shape, np.float32), np.ones(init_shape), **kwargs)


def test_init_without_finite_pixels_raises():
    with pytest.raises(ValueError, match="no finite pixel"):
        multiframe_deconvolve(np.ones((3, 20, 20)), np.full((20, 20), np.nan), psf_size=5)


def test_same_seed_gives_identical_results(planet):
    frames = planet[0].frames[:12]
    mean = frames.mean(axis=0)
    a, info_a = multiframe_deconvolve(frames, mean, epochs=4, batch=4, seed=7)
    b, info_b = multiframe_deconvolve(frames, mean, epochs=4, batch=4, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(info_a["psfs"], info_b["psfs"])
    c, _ = multiframe_deconvolve(frames, mean, epochs=4, batch=4, seed=8)
    assert not np.array_equal(a, c)  # the seed drives the minibatch order


def test_result_does_not_depend_on_units(planet):
    frames = planet[0].frames[:12]
    mean = frames.mean(axis=0)
    a, info_a = multiframe_deconvolve(frames, mean, epochs=4)
    b, info_b = multiframe_deconvolve(frames * 16.0, mean * 16.0, epochs=4)
    np.testing.assert_allclose(b / 16.0, a, rtol=1e-3, atol=1e-3 * float(a.max()))
    assert info_b["scale"] == pytest.approx(16.0 * info_a["scale"], rel=1e-5)
