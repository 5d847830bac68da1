"""Tests of astroflow.deepsky.stack: rejection against astropy, chunking, memory, normalisation."""

from __future__ import annotations

import os
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import sigma_clip

import astroflow.deepsky.stack as stack
from astroflow.deepsky.stack import StackResult, combine, combine_chunk
from astroflow.io.fits import write_image, write_rejected

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SKY = 100.0
NOISE = 5.0


def make_frames(rng, n=8, shape=(48, 40), sky=SKY, noise=NOISE, channels=None):
    """Seeded frames of a sky plus a few stars plus Gaussian noise, float32 (n, *shape[, C])."""
    full = (n,) + shape + ((channels,) if channels else ())
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    scene = np.full(shape, sky, dtype=np.float64)
    for _ in range(4):
        y0, x0 = rng.uniform(5, shape[0] - 5), rng.uniform(5, shape[1] - 5)
        scene += rng.uniform(200, 2000) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 1.5**2))
    if channels:
        scene = scene[..., None] * np.linspace(0.8, 1.2, channels)
    return (scene + rng.normal(0, noise, full)).astype(np.float32)


def write_frames(tmp_path, frames, prefix="light"):
    paths = []
    for i, frame in enumerate(frames):
        path = tmp_path / f"{prefix}_{i:03d}.fits"
        write_image(path, frame)
        paths.append(path)
    return paths


def with_outliers(rng, frames, fraction=0.04, amplitude=300.0):
    out = frames.copy()
    hit = rng.random(out.shape) < fraction
    out[hit] += np.float32(amplitude) * rng.choice([-1, 1], size=hit.sum()).astype(np.float32)
    return out


@pytest.mark.filterwarnings("ignore:Input data contains invalid values")
@pytest.mark.parametrize("n_frames", [13, 70])  # sorting network; numpy.sort beyond 64 frames
@pytest.mark.parametrize("max_iters", [1, 2, 10])
@pytest.mark.parametrize(("sigma_low", "sigma_high"), [(3.0, 3.0), (2.5, 2.0)])
def test_sigma_clip_matches_astropy(n_frames, max_iters, sigma_low, sigma_high):
    rng = np.random.default_rng(1)
    cube = rng.normal(SKY, NOISE, (n_frames, 30, 40)).astype(np.float32)
    for amplitude in (15, 25, 60, -40, 400):
        cube[rng.random(cube.shape) < 0.03] += amplitude
    cube[rng.random(cube.shape) < 0.05] = np.nan
    ref = sigma_clip(
        cube,
        sigma_lower=sigma_low,
        sigma_upper=sigma_high,
        maxiters=max_iters,
        cenfunc="median",
        stdfunc="std",
        axis=0,
        masked=True,
    )
    image, rejected, used = combine_chunk(
        cube, method="sigma_clip", sigma_low=sigma_low, sigma_high=sigma_high, max_iters=max_iters
    )
    kept = (~ref.mask).sum(axis=0)
    np.testing.assert_array_equal(used, kept)
    np.testing.assert_array_equal(rejected, np.isfinite(cube).sum(axis=0) - kept)
    np.testing.assert_allclose(image, ref.mean(axis=0).filled(np.nan), rtol=0, atol=1e-3)
    assert image.dtype == np.float32 and used.dtype == np.int16 and rejected.dtype == np.int16


def siril_winsorized(samples, sigma_low, sigma_high, max_iters):
    """Kept samples of one pixel by winsorized sigma clipping, written as Siril's loop is."""
    kept = np.sort(samples[np.isfinite(samples)]).astype(np.float64)
    for _ in range(max_iters):
        if kept.size == 0:
            break
        median = np.median(kept)
        sigma = kept.std(ddof=1) if kept.size > 1 else 0.0
        winsorized = kept.copy()
        while True:
            winsorized = np.clip(winsorized, median - 1.5 * sigma, median + 1.5 * sigma)
            previous = sigma
            sigma = 1.134 * winsorized.std(ddof=1) if kept.size > 1 else 0.0
            if not abs(sigma - previous) > previous * 5e-4:
                break
        keep = (median - kept <= sigma_low * sigma) & (kept - median <= sigma_high * sigma)
        if keep.all():
            break
        kept = kept[keep]
    return kept


def test_winsorized_matches_a_per_pixel_reference():
    rng = np.random.default_rng(16)
    cube = rng.normal(SKY, NOISE, (12, 12, 15)).astype(np.float32)
    for amplitude in (12, 20, 40, -30, 500):
        cube[rng.random(cube.shape) < 0.04] += amplitude
    cube[rng.random(cube.shape) < 0.05] = np.nan
    image, _, used = combine_chunk(cube, method="winsorized", sigma_low=2.5, sigma_high=3.0)
    reference = [siril_winsorized(cube[:, i, j], 2.5, 3.0, 5) for i, j in np.ndindex(12, 15)]
    ref_used = np.array([r.size for r in reference]).reshape(12, 15)
    ref_mean = np.array([r.mean() for r in reference]).reshape(12, 15)
    assert (ref_used < np.isfinite(cube).sum(axis=0)).sum() > 20, "the data must need rejection"
    # float32 against float64 may move a sample sitting on a threshold: allow one such pixel.
    same = used == ref_used
    assert same.sum() >= same.size - 1
    np.testing.assert_allclose(image[same], ref_mean[same], rtol=0, atol=1e-3)


@pytest.mark.parametrize("method", ["sigma_clip", "winsorized"])
def test_satellite_trail_is_rejected(method):
    rng = np.random.default_rng(2)
    frames = make_frames(rng, n=10)
    trail = frames.copy()
    trail[4, 20:22, :] += 800.0
    image, rejected, _ = combine_chunk(trail, method=method)
    without = np.delete(frames, 4, axis=0).mean(axis=0)
    mean_with = trail.mean(axis=0)
    # The plain mean is 80 ADU too bright along the trail; the rejected stack is not.
    assert np.all(mean_with[20:22] - without[20:22] > 50)
    np.testing.assert_allclose(image[20:22], without[20:22], atol=3 * NOISE / 3)
    assert np.all(rejected[20:22] >= 1)
    assert rejected[30:40].mean() / 10 < 0.025  # a few percent, as iterated 3-sigma rejection does


def test_chunked_read_equals_single_chunk(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    frames = with_outliers(rng, make_frames(rng, n=12, shape=(64, 50)))
    frames[2, :10, :7] = np.nan
    paths = write_frames(tmp_path, frames)
    whole = combine(paths, method="winsorized", normalize="additive_scaling", memory_mb=64)
    calls = []
    real_read = stack._read_rows

    def counting_read(path, r0, r1, out):
        calls.append((r0, r1))
        real_read(path, r0, r1, out)

    monkeypatch.setattr(stack, "_read_rows", counting_read)
    chunked = combine(paths, method="winsorized", normalize="additive_scaling", memory_mb=1.08)
    assert len(set(calls)) >= 3, "the tight budget should force several row chunks"
    np.testing.assert_array_equal(chunked.offset, whole.offset)
    np.testing.assert_allclose(chunked.image, whole.image, rtol=1e-6)
    np.testing.assert_array_equal(chunked.rejected, whole.rejected)
    np.testing.assert_array_equal(chunked.ncombine_map, whole.ncombine_map)
    normalised = frames * whole.scale[:, None, None] + whole.offset[:, None, None]
    image, _, _ = combine_chunk(normalised.astype(np.float32), method="winsorized")
    np.testing.assert_allclose(whole.image, image, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("channels", [None, 3], ids=["mono", "rgb"])
def test_row_chunks_follow_the_row_order_of_each_file(tmp_path, monkeypatch, channels):
    rng = np.random.default_rng(16)
    frames = make_frames(rng, n=5, shape=(60, 40), channels=channels)
    frames[:, :9, :6] = np.nan  # no data in the top-left corner of every frame
    ours = write_frames(tmp_path, frames)  # stored bottom-up, ROWORDER = 'BOTTOM-UP'
    # The same frames, one of them from a camera driver that stores the rows top-down and
    # says so.
    mixed = write_frames(tmp_path, frames, prefix="mixed")
    hdu = fits.PrimaryHDU(np.moveaxis(frames[4], -1, 0) if channels else frames[4])
    hdu.header["ROWORDER"] = "TOP-DOWN"
    hdu.writeto(mixed[4], overwrite=True)
    chunks = []
    real_read = stack._read_rows

    def counting_read(path, r0, r1, out):
        chunks.append((r0, r1))
        real_read(path, r0, r1, out)

    monkeypatch.setattr(stack, "_read_rows", counting_read)
    budget = 1.1 if channels else 1.04  # a few rows a chunk
    result = combine(mixed, method="mean", normalize="additive", memory_mb=budget)
    assert len(set(chunks)) >= 3, "the tight budget should force several row chunks"
    reference = combine(ours, method="mean", normalize="additive", memory_mb=budget)
    # The background of each frame is sampled from the same pixels, whatever its row order.
    np.testing.assert_array_equal(result.offset, reference.offset)
    np.testing.assert_array_equal(result.image, reference.image)
    normalised = frames + reference.offset[:, None, None]
    expected, _, _ = combine_chunk(normalised.astype(np.float32), method="mean")
    np.testing.assert_allclose(result.image, expected, rtol=1e-6)
    assert np.isnan(result.image[:9, :6]).all() and np.isfinite(result.image[9:]).all()


@pytest.mark.parametrize("method", stack.METHODS)
def test_peak_memory_stays_under_budget(tmp_path, method):
    rng = np.random.default_rng(4)
    n, shape = 24, (256, 512)
    paths = write_frames(tmp_path, rng.normal(SKY, NOISE, (n,) + shape).astype(np.float32))
    budget_mb = 4
    assert n * shape[0] * shape[1] * 4 > 2 * budget_mb * 2**20, "frames must not fit the budget"
    # Loading (or the first time compiling) the kernel is once per process, outside the budget.
    combine_chunk(np.ones((n, 2, 2), dtype=np.float32), method=method, weights=np.linspace(1, 2, n))
    tracemalloc.start()
    try:
        result = combine(
            paths, method=method, normalize="additive_scaling", memory_mb=budget_mb,
            weights=np.linspace(1, 2, n),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < budget_mb * 2**20
    # Iterated MAD clipping cascades on a few pixels of pure noise (the MAD of a clipped
    # sample shrinks): it keeps 9 of 24 at worst here, the others at least 14.
    assert np.all(result.ncombine_map > n // 3)


def test_budget_too_small_raises(tmp_path):
    rng = np.random.default_rng(5)
    paths = write_frames(tmp_path, make_frames(rng, n=4))
    with pytest.raises(ValueError, match="memory_mb=0.5 is too small"):
        combine(paths, normalize="additive_scaling", memory_mb=0.5)


def test_files_are_closed_after_combine(tmp_path):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to count open files and memory maps")
    rng = np.random.default_rng(6)
    paths = write_frames(tmp_path, make_frames(rng, n=6))
    before = len(os.listdir("/proc/self/fd"))
    combine(paths, normalize="additive_scaling", memory_mb=1.1)
    assert len(os.listdir("/proc/self/fd")) == before
    maps = Path("/proc/self/maps").read_text()
    assert str(tmp_path) not in maps


@pytest.mark.parametrize("method", stack.METHODS)
def test_nan_is_no_data(method):
    rng = np.random.default_rng(7)
    cube = rng.normal(SKY, NOISE, (9, 20, 30)).astype(np.float32)
    cube[:3, :, :10] = np.nan  # three frames do not cover the left edge
    cube[:, 5, 5] = np.nan  # no frame covers this pixel
    cube[4, 6, 6] = np.inf
    original = cube.copy()
    image, rejected, used = combine_chunk(cube, method=method)
    np.testing.assert_array_equal(cube, original)
    assert np.isnan(image[5, 5]) and used[5, 5] == 0
    assert np.isfinite(np.delete(image.ravel(), 5 * 30 + 5)).all()
    valid = np.isfinite(cube).sum(axis=0)
    np.testing.assert_array_equal(used + rejected, valid)
    assert used[0, 0] <= 6 and used[0, 20] <= 9
    if method in ("none", "mean"):
        finite = np.where(np.isfinite(cube), cube, np.nan)[:, 6:, :10]
        np.testing.assert_allclose(image[6:, :10], np.nanmean(finite, axis=0), rtol=1e-6)


def test_weights_change_the_mean_as_expected():
    rng = np.random.default_rng(8)
    cube = rng.normal(SKY, NOISE, (6, 10, 12)).astype(np.float32)
    cube[3:] += 20.0
    weights = np.array([1.0, 1.0, 1.0, 3.0, 3.0, 3.0])
    image, _, _ = combine_chunk(cube, method="mean", weights=weights)
    np.testing.assert_allclose(image, np.average(cube, axis=0, weights=weights), rtol=1e-6)
    equal, _, _ = combine_chunk(cube, method="mean", weights=np.full(6, 7.0))
    np.testing.assert_allclose(equal, cube.mean(axis=0), rtol=1e-6)
    assert np.mean(image - equal) == pytest.approx(5.0, abs=0.5)


@pytest.mark.filterwarnings("ignore:Input data contains invalid values")
def test_weighted_mean_of_kept_samples():
    rng = np.random.default_rng(9)
    cube = with_outliers(
        rng, rng.normal(SKY, NOISE, (11, 16, 16)).astype(np.float32), amplitude=200
    )
    cube[0, :4] = np.nan
    weights = rng.uniform(0.5, 2.0, 11)
    image, _, used = combine_chunk(cube, method="sigma_clip", weights=weights, max_iters=4)
    ref = sigma_clip(
        cube, sigma=3, maxiters=4, cenfunc="median", stdfunc="std", axis=0, masked=True
    )
    np.testing.assert_array_equal(used, (~ref.mask).sum(axis=0))
    expected = np.ma.average(ref, axis=0, weights=weights).filled(np.nan)
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-3)


def test_normalisation_handles_offset_and_scale(tmp_path):
    rng = np.random.default_rng(10)
    n = 8
    frames = make_frames(rng, n=n, shape=(64, 64))
    frames[3] += 200.0  # brighter sky
    frames[5] = frames[5] * 1.5 + 40.0  # more transparent and brighter
    paths = write_frames(tmp_path, frames)
    raw = combine(paths, normalize="none", memory_mb=1024)
    norm = combine(paths, normalize="additive_scaling", memory_mb=1024)
    # Without normalisation frames 3 and 5 are rejected wholesale; with it almost nothing is.
    assert raw.rejected.mean() > 1.8
    assert norm.rejected.mean() < 0.3
    assert norm.scale[0] == 1 and norm.offset[0] == 0
    assert norm.scale.shape == (n,) and norm.offset.shape == (n,)
    assert norm.scale[5] == pytest.approx(1 / 1.5, rel=0.1)
    normalised = frames * norm.scale[:, None, None] + norm.offset[:, None, None]
    np.testing.assert_allclose(np.median(normalised, axis=(1, 2)), np.median(frames[0]), atol=1.0)
    np.testing.assert_allclose(np.median(norm.image), np.median(frames[0]), atol=1.0)

    additive = combine(paths, method="sigma_clip", normalize="additive", memory_mb=1024)
    assert additive.offset[3] == pytest.approx(-200, abs=3)
    assert np.all(additive.scale == 1)
    doubled = write_frames(tmp_path, [frames[0], frames[0] * 2.0], prefix="doubled")
    multiplicative = combine(doubled, method="mean", normalize="multiplicative", memory_mb=1024)
    np.testing.assert_allclose(multiplicative.scale, [1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(multiplicative.image, frames[0], rtol=1e-6)


def test_winsorized_rejects_outliers_that_sigma_clip_and_mean_keep():
    rng = np.random.default_rng(11)
    cube = rng.normal(SKY, NOISE, (8, 20, 20)).astype(np.float32)
    # Two strong outliers in eight samples inflate the plain standard deviation so much that
    # kappa-sigma clipping around it rejects nothing; the winsorised sigma does not inflate.
    cube[[1, 6], 5:15, 5:15] += 1000.0
    mean, _, _ = combine_chunk(cube, method="mean")
    clipped, clip_rejected, _ = combine_chunk(cube, method="sigma_clip")
    winsorized, rejected, used = combine_chunk(cube, method="winsorized")
    assert np.all(mean[5:15, 5:15] > SKY + 200)
    assert np.all(clip_rejected[5:15, 5:15] == 0)
    assert np.all(rejected[5:15, 5:15] >= 2)
    np.testing.assert_allclose(winsorized[5:15, 5:15], SKY, atol=4 * NOISE / np.sqrt(6))
    assert rejected[:5].mean() < 0.2


@pytest.mark.parametrize("method", stack.METHODS)
@pytest.mark.parametrize("n_frames", [1, 2])
def test_one_or_two_frames_are_averaged(method, n_frames):
    rng = np.random.default_rng(17)
    cube = rng.normal(SKY, NOISE, (n_frames, 6, 7)).astype(np.float32)
    image, rejected, used = combine_chunk(cube, method=method)
    np.testing.assert_allclose(image, cube.mean(axis=0), rtol=1e-6)
    assert np.all(used == n_frames) and np.all(rejected == 0)


def test_all_rejected_falls_back_to_median():
    cube = np.array([1.0, 3.0], dtype=np.float32).reshape(2, 1, 1)
    image, rejected, used = combine_chunk(cube, method="sigma_clip", sigma_low=0.5, sigma_high=0.5)
    assert image[0, 0] == 2.0 and used[0, 0] == 2 and rejected[0, 0] == 0


def test_median_method():
    rng = np.random.default_rng(12)
    cube = rng.normal(SKY, NOISE, (7, 5, 6)).astype(np.float32)
    cube[2, 1, 1] = np.nan
    image, rejected, used = combine_chunk(cube, method="median")
    np.testing.assert_array_equal(image, np.nanmedian(cube, axis=0))
    assert used[1, 1] == 6 and rejected.sum() == 0


@pytest.mark.parametrize("n", list(range(1, 13)) + [65])
def test_sorting_network_orders_every_input(n):
    # Zero-one principle: a comparator network sorting every 0/1 input sorts every input.
    cases = min(2**n, 4096)
    bits = ((np.arange(cases)[None, :] >> np.arange(n)[:, None]) & 1).astype(np.float32)
    rng = np.random.default_rng(n)
    bits[:, rng.random(cases) < 0.2] *= rng.normal(size=(n, 1)).astype(np.float32)
    network = stack._sorting_network(n)
    ranked = bits.copy()
    for i, j in network:
        ranked[i], ranked[j] = np.minimum(ranked[i], ranked[j]), np.maximum(ranked[i], ranked[j])
    np.testing.assert_array_equal(ranked, np.sort(bits, axis=0))


@pytest.mark.parametrize("n", [1, 2, 5, 16, 65])
def test_median_of_any_frame_count_with_no_data(n):
    rng = np.random.default_rng(n)
    cube = rng.normal(size=(n, 9, 300)).astype(np.float32)
    cube[rng.random(cube.shape) < 0.2] = np.nan
    cube[0, 0, 0] = np.inf  # any non-finite value is no data
    image, _, used = combine_chunk(cube, method="median")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(np.where(np.isfinite(cube), cube, np.nan), axis=0)
    np.testing.assert_array_equal(image, expected.astype(np.float32))
    np.testing.assert_array_equal(used, np.isfinite(cube).sum(axis=0))


def test_rgb_files(tmp_path):
    rng = np.random.default_rng(13)
    frames = with_outliers(rng, make_frames(rng, n=6, shape=(24, 30), channels=3))
    paths = write_frames(tmp_path, frames)
    with fits.open(paths[0]) as hdul:
        assert hdul[0].data.shape == (3, 24, 30)
    result = combine(paths, method="sigma_clip", normalize="none", memory_mb=1.1)
    image, rejected, used = combine_chunk(frames, method="sigma_clip")
    assert isinstance(result, StackResult)
    assert result.image.shape == (24, 30, 3) and result.rejected.shape == (24, 30, 3)
    np.testing.assert_allclose(result.image, image, rtol=1e-6)
    np.testing.assert_array_equal(result.ncombine_map, used)
    shifted = frames.copy()
    shifted[1, ..., 2] += 30.0
    shifted_paths = write_frames(tmp_path, shifted, prefix="shifted")
    normalised = combine(shifted_paths, method="sigma_clip", normalize="additive", memory_mb=1024)
    assert normalised.offset.shape == (6, 3)
    assert normalised.offset[1, 2] == pytest.approx(-30, abs=2)
    assert np.all(np.abs(normalised.offset[1, :2]) < 2)


def test_shape_mismatch_names_the_files(tmp_path):
    rng = np.random.default_rng(14)
    paths = write_frames(tmp_path, make_frames(rng, n=3))
    odd = tmp_path / "odd.fits"
    write_image(odd, make_frames(rng, n=1, shape=(40, 40))[0])
    with pytest.raises(ValueError, match="differ in shape") as info:
        combine(paths + [odd], normalize="additive_scaling", memory_mb=1024)
    assert str(odd) in str(info.value) and str(paths[0]) in str(info.value)


def test_rejected_placeholder_raises(tmp_path):
    rng = np.random.default_rng(15)
    paths = write_frames(tmp_path, make_frames(rng, n=2))
    bad = tmp_path / "cloudy.fits"
    write_rejected(bad, "no stars found")
    with pytest.raises(ValueError, match="cloudy.fits: frame was rejected: no stars found"):
        combine(paths + [bad], normalize="additive_scaling", memory_mb=1024)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "sum"}, "method must be"),
        ({"sigma_low": -1.0}, "sigma_low"),
        ({"max_iters": 0}, "max_iters"),
        ({"method": "gesd", "gesd_outliers": 1.0}, "gesd_outliers"),
        ({"method": "gesd", "gesd_alpha": 0.0}, "gesd_alpha"),
        ({"method": "percentile", "percentile_low": -0.1}, "percentile_low"),
        ({"weights": [1.0, 2.0]}, "weights must have shape"),
        ({"weights": [1.0, 0.0, 1.0]}, "weights must be finite and > 0"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    cube = np.zeros((3, 2, 2), dtype=np.float32)
    settings = {"method": "sigma_clip", **kwargs}
    with pytest.raises(ValueError, match=message):
        combine_chunk(cube, **settings)


@pytest.mark.skipif(
    not (DATA / "sbig-stl1001" / "bias").is_dir(), reason=f"real data not found in {DATA}"
)
def test_real_bias_frames_match_ccdproc(tmp_path):
    ccdproc = pytest.importorskip("ccdproc")
    sources = sorted((DATA / "sbig-stl1001" / "bias").glob("*.FIT"))
    assert len(sources) >= 10
    frames = [fits.getdata(p).astype(np.float32)[:128] for p in sources]
    paths = write_frames(tmp_path, frames, prefix="bias")
    ours = combine(paths, method="sigma_clip", max_iters=1, normalize="none", memory_mb=1024)
    theirs = ccdproc.combine(
        [CCDData(f, unit="adu") for f in frames],
        method="average",
        sigma_clip=True,
        sigma_clip_low_thresh=3,
        sigma_clip_high_thresh=3,
        sigma_clip_func=np.ma.median,
        sigma_clip_dev_func=np.ma.std,
    )
    np.testing.assert_allclose(ours.image, theirs.data, rtol=0, atol=1e-3)
    assert ours.rejected.sum() > 0


# Direct per-pixel references of the rejections added after Siril: plain loops over one
# pixel's sorted samples, in float64.


def _leading(flags):
    """How many of ``flags`` are True before the first False."""
    count = 0
    for flag in flags:
        if not flag:
            break
        count += 1
    return count


def reference_mad(samples, sigma_low, sigma_high, max_iters):
    kept = np.sort(samples[np.isfinite(samples)]).astype(np.float64)
    for _ in range(max_iters):
        if kept.size == 0:
            break
        median = np.median(kept)
        sigma = 1.4826 * np.median(np.abs(kept - median))
        keep = (median - kept <= sigma_low * sigma) & (kept - median <= sigma_high * sigma)
        if keep.all():
            break
        kept = kept[keep]
    return kept


def reference_percentile(samples, low, high):
    kept = np.sort(samples[np.isfinite(samples)]).astype(np.float64)
    median = np.median(kept)
    return kept[(median - kept <= median * low) & (kept - median <= median * high)]


def reference_linear_fit(samples, sigma_low, sigma_high, max_iters):
    kept = np.sort(samples[np.isfinite(samples)]).astype(np.float64)
    for _ in range(max_iters):
        n = kept.size
        if n <= 3:
            break
        rank = np.arange(n)
        slope, intercept = np.polyfit(rank, kept, 1)
        residual = kept - (slope * rank + intercept)
        sigma = np.mean(np.abs(residual))
        n_low = _leading(residual < -sigma_low * sigma)
        n_high = _leading((residual > sigma_high * sigma)[::-1])
        if n_low == 0 and n_high == 0:
            break
        kept = kept[n_low : max(n_low, n - n_high)]
    return kept


def reference_gesd(samples, outliers, alpha):
    from scipy.stats import t as student_t

    kept = np.sort(samples[np.isfinite(samples)]).astype(np.float64)
    lo, hi = 0, kept.size
    runs, last = [(lo, hi)], 0
    for step in range(int(np.floor(outliers * kept.size + 1e-9))):
        m = hi - lo
        if m < 3:
            break
        run = kept[lo:hi]
        mean, sd = run.mean(), run.std(ddof=1)
        below, above = mean - run[0], run[-1] - mean
        t = student_t.ppf(1 - alpha / (2 * m), m - 2)
        critical = (m - 1) * t / np.sqrt((m - 2 + t * t) * m)
        if above > below:
            hi -= 1
        else:
            lo += 1
        runs.append((lo, hi))
        if sd > 0 and max(below, above) / sd > critical:
            last = step + 1
    lo, hi = runs[last]
    return kept[lo:hi]


REFERENCES = {
    "mad": lambda s, lo, hi, it: reference_mad(s, lo, hi, it),
    "linear_fit": lambda s, lo, hi, it: reference_linear_fit(s, lo, hi, it),
    "percentile": lambda s, lo, hi, it: reference_percentile(s, 0.2, 0.1),
    "gesd": lambda s, lo, hi, it: reference_gesd(s, 0.3, 0.05),
}


@pytest.mark.parametrize("n_frames", [13, 70])  # sorting network; numpy.sort beyond 64 frames
@pytest.mark.parametrize("method", sorted(REFERENCES))
@pytest.mark.parametrize(("sigma_low", "sigma_high", "max_iters"), [(3.0, 3.0, 5), (2.0, 2.5, 2)])
def test_rejection_matches_a_per_pixel_reference(method, n_frames, sigma_low, sigma_high, max_iters):
    rng = np.random.default_rng(18)
    cube = rng.normal(SKY, NOISE, (n_frames, 16, 20)).astype(np.float32)
    for amplitude in (15, 25, 60, -40, 400):
        cube[rng.random(cube.shape) < 0.03] += amplitude
    cube[rng.random(cube.shape) < 0.05] = np.nan
    image, low, high, used = combine_chunk(
        cube,
        method=method,
        sigma_low=sigma_low,
        sigma_high=sigma_high,
        max_iters=max_iters,
        sides=True,
    )
    reference = [
        REFERENCES[method](cube[:, i, j], sigma_low, sigma_high, max_iters)
        for i, j in np.ndindex(16, 20)
    ]
    ref_used = np.array([r.size for r in reference]).reshape(16, 20)
    valid = np.isfinite(cube).sum(axis=0)
    assert (ref_used < valid).sum() > 100, "the data must need rejection"
    assert (ref_used > 0).all(), "no pixel falls back to the median here"
    # float32 against float64 may move a sample sitting on a threshold: allow one such pixel.
    same = used == ref_used
    assert same.sum() >= same.size - 1
    ref_mean = np.array([r.mean() for r in reference]).reshape(16, 20)
    np.testing.assert_allclose(image[same], ref_mean[same], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(low + high + used, valid)
    # What was rejected low lies below every kept sample, what was rejected high above.
    ordered = np.sort(cube, axis=0)
    for i, j in zip(*np.nonzero(same)):
        np.testing.assert_allclose(ordered[low[i, j] : valid[i, j] - high[i, j], i, j],
                                   reference[i * 20 + j], rtol=1e-6)


def test_gesd_critical_values_match_rosner():
    # NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.5.17.3, Rosner's 54 samples
    # tested for up to 10 outliers at alpha = 0.05: 3.159, 3.151, 3.144 for n = 54, 53, 52.
    critical = stack._gesd_critical(54, 0.05)
    np.testing.assert_allclose(critical[[54, 53, 52, 45]], [3.159, 3.151, 3.144, 3.085], atol=1e-3)
    assert np.isinf(critical[:3]).all()


def test_mad_is_robust_where_the_standard_deviation_is_not():
    rng = np.random.default_rng(19)
    cube = rng.normal(SKY, NOISE, (9, 20, 20)).astype(np.float32)
    cube[[2, 7], 5:15, 5:15] += 1000.0  # two of nine inflate the standard deviation
    _, clip_rejected, _ = combine_chunk(cube, method="sigma_clip")
    image, low, high, _ = combine_chunk(cube, method="mad", sides=True)
    assert np.all(clip_rejected[5:15, 5:15] == 0)
    assert np.all(high[5:15, 5:15] >= 2)
    np.testing.assert_allclose(image[5:15, 5:15], SKY, atol=4 * NOISE / np.sqrt(7))


@pytest.mark.parametrize("method", ["percentile", "sigma_clip", "mad", "winsorized", "linear_fit", "gesd"])
def test_low_and_high_rejections_are_told_apart(method):
    rng = np.random.default_rng(20)
    n = 24
    cube = rng.normal(SKY, NOISE, (n, 12, 12)).astype(np.float32)
    cube[3, :6] += 80.0  # a bright trail in the top half of one frame
    cube[5, 6:] -= 70.0  # a dark one in the bottom half of another
    # Percentile thresholds wide enough for the noise of a 100 ADU sky (5 % a sigma).
    wide = {"percentile_low": 0.5, "percentile_high": 0.5}
    image, low, high, used = combine_chunk(cube, method=method, sides=True, **wide)
    _, total, _ = combine_chunk(cube, method=method, **wide)
    np.testing.assert_array_equal(low + high, total)
    np.testing.assert_array_equal(low + high + used, n)
    assert np.all(high[:6] >= 1) and np.all(low[6:] >= 1)
    assert low[:6].mean() < 0.5 and high[6:].mean() < 0.5
    np.testing.assert_allclose(image, SKY, atol=4 * NOISE / np.sqrt(n - 4))


@pytest.mark.parametrize("method", ["percentile", "sigma_clip", "mad", "winsorized", "linear_fit", "gesd"])
def test_methods_that_reject_nothing_give_the_plain_mean(method):
    rng = np.random.default_rng(21)
    cube = rng.normal(SKY, NOISE, (11, 10, 14)).astype(np.float32)
    cube[2, 4, 4] = np.nan
    lenient = {
        "sigma_low": 1e4, "sigma_high": 1e4, "percentile_low": 10.0, "percentile_high": 10.0,
        "gesd_outliers": 0.0,
    }  # fmt: skip
    image, rejected, used = combine_chunk(cube, method=method, **lenient)
    plain, _, plain_used = combine_chunk(cube, method="none")
    same_run, _, _ = combine_chunk(cube, method="sigma_clip", **lenient)
    assert rejected.sum() == 0
    np.testing.assert_array_equal(used, plain_used)
    # One final mean for every rejection: the same kept samples give the same bits.
    np.testing.assert_array_equal(image, same_run)
    np.testing.assert_allclose(image, plain, rtol=2e-7, atol=0)
    mean_alias, _, _ = combine_chunk(cube, method="mean")
    np.testing.assert_array_equal(mean_alias, plain)


def test_combine_writes_low_and_high_maps(tmp_path):
    rng = np.random.default_rng(22)
    frames = make_frames(rng, n=10, shape=(40, 30))
    frames[2, 10:12] += 900.0  # a trail
    frames[6, 20:22] -= 200.0  # a dark stripe
    paths = write_frames(tmp_path, frames)
    result = combine(paths, method="gesd", normalize="additive", memory_mb=1.1)
    np.testing.assert_array_equal(result.rejected_low + result.rejected_high, result.rejected)
    np.testing.assert_array_equal(result.rejected + result.ncombine_map, 10)
    assert np.all(result.rejected_high[10:12] >= 1) and np.all(result.rejected_low[20:22] >= 1)
    assert result.rejected_low.dtype == np.int16 and result.rejected_high.shape == (40, 30)


def test_multiplicative_scaling_multiplies_both_ratios(tmp_path):
    rng = np.random.default_rng(23)
    frames = make_frames(rng, n=3, shape=(64, 64))
    frames[1] = frames[1] * 2.0
    frames[2] = (frames[2] - SKY) * 3.0 + SKY  # three times the noise, same background
    paths = write_frames(tmp_path, frames)
    result = combine(paths, method="none", normalize="multiplicative_scaling", memory_mb=64)
    # Frame 1: background ratio 1/2 and dispersion ratio 1/2; frame 2: 1 and 1/3.
    np.testing.assert_allclose(result.scale, [1.0, 0.25, 1 / 3], rtol=0.1)
    np.testing.assert_array_equal(result.offset, 0.0)
    additive_scaling = combine(paths, method="none", normalize="additive_scaling", memory_mb=64)
    np.testing.assert_allclose(additive_scaling.scale, [1.0, 0.5, 1 / 3], rtol=0.1)
    frames[0] = -frames[0]
    negative = write_frames(tmp_path, frames, prefix="negative")
    with pytest.raises(ValueError, match="multiplicative_scaling normalisation needs a background > 0"):
        combine(negative, method="none", normalize="multiplicative_scaling", memory_mb=64)


def test_lights_to_stack_puts_the_reference_first_and_names_an_empty_filter():
    import pandas as pd

    from astroflow.deepsky.frames import lights_to_stack

    registration = pd.DataFrame({
        "frame": ["ha1", "ha2", "o1", "o2"],
        "status": ["used", "used", "rejected", "rejected"],
        "reason": [None, None, "registration failed: no star pattern in common with the reference",
                   "registration failed: no star pattern in common with the reference"],
        "reference": [False, True, False, False],
        "weight": [1.0, 1.0, 0.0, 0.0],
    })
    used = lights_to_stack(registration, {"ha1": "a.fits", "ha2": "b.fits"}, where="target 't', filter Ha")
    assert list(used["frame"]) == ["ha2", "ha1"] and list(used["path"]) == ["b.fits", "a.fits"]
    with pytest.raises(ValueError, match=r"target 't', filter OIII: none of its 2 lights can be stacked "
                                         r"\(2 x registration failed: no star pattern"):
        lights_to_stack(registration, {"o1": "c.fits", "o2": "d.fits"}, where="target 't', filter OIII")


def test_thread_count_does_not_change_the_result(tmp_path):
    rng = np.random.default_rng(24)
    frames = with_outliers(rng, make_frames(rng, n=9, shape=(70, 50)))
    paths = write_frames(tmp_path, frames)
    one = combine(paths, method="winsorized", normalize="additive", memory_mb=64, threads=1)
    two = combine(paths, method="winsorized", normalize="additive", memory_mb=64, threads=2)
    np.testing.assert_array_equal(one.image, two.image)
    np.testing.assert_array_equal(one.rejected, two.rejected)
    assert one.rejected.sum() > 0
    with pytest.raises(ValueError, match="threads"):
        combine(paths, method="median", normalize="none", memory_mb=64, threads=0)
