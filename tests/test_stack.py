"""Tests of astroflow.deepsky.stack: rejection against astropy, chunking, memory, normalisation."""

from __future__ import annotations

import os
import tracemalloc
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


@pytest.mark.parametrize("method", ["mean", "median", "sigma_clip", "winsorized"])
def test_peak_memory_stays_under_budget(tmp_path, method):
    rng = np.random.default_rng(4)
    n, shape = 24, (256, 512)
    paths = write_frames(tmp_path, rng.normal(SKY, NOISE, (n,) + shape).astype(np.float32))
    budget_mb = 4
    assert n * shape[0] * shape[1] * 4 > 2 * budget_mb * 2**20, "frames must not fit the budget"
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
    assert np.all(result.ncombine_map > n // 2)


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


@pytest.mark.parametrize("method", ["mean", "median", "sigma_clip", "winsorized"])
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
    if method == "mean":
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


@pytest.mark.parametrize("method", ["mean", "median", "sigma_clip", "winsorized"])
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
def test_frame_sort_orders_every_input(n):
    # Zero-one principle: a comparator network sorting every 0/1 input sorts every input.
    cases = min(2**n, 4096)
    bits = ((np.arange(cases)[None, :] >> np.arange(n)[:, None]) & 1).astype(np.float32)
    rng = np.random.default_rng(n)
    bits[:, rng.random(cases) < 0.2] *= rng.normal(size=(n, 1)).astype(np.float32)
    bits[rng.random(bits.shape) < 0.1] = np.nan
    work = {
        "data": np.empty((n + 1) * cases, dtype=np.float32),
        "e": np.empty((n + 1) * cases, dtype=np.float32),
        "mask": np.empty((n + 1) * cases, dtype=bool),
    }
    sorted_stack = stack._SortedStack.from_frames(bits, work)
    ranked = np.stack([sorted_stack.take(np.full(cases, k)) for k in range(n)])
    np.testing.assert_array_equal(ranked, np.sort(bits, axis=0))  # NaN (no data) last
    np.testing.assert_array_equal(sorted_stack.nvalid, np.isfinite(bits).sum(axis=0))


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
