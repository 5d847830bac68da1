"""The on-disk frame store (astroflow.io.framestore) and the three places that use it."""

import json
import os

import numpy as np
import pytest

from astroflow.io.framestore import FrameStore
from astroflow.io.sequence import open_sequence
from astroflow.planetary import lucky
from astroflow.planetary import passes as planetary
from astroflow.simulation import planetary as sp


def test_frame_store_round_trip_and_region_reads(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(5, 20, 30)).astype(np.float32)
    frames[2, 3:5, 4:9] = np.nan
    path = tmp_path / "frames.f32"
    with FrameStore(path, frames.shape) as store:
        assert len(store) == 5 and store.shape == (5, 20, 30)
        for i, frame in enumerate(frames):
            store.write(i, frame)
        np.testing.assert_array_equal(store.read([0, 1, 2, 3, 4]), frames)
    assert path.stat().st_size == frames.nbytes
    with FrameStore.open(path, frames.shape) as store:
        got = store.read([4, 2, 2])
        assert got.dtype == np.float32 and got.shape == (3, 20, 30)
        np.testing.assert_array_equal(got, frames[[4, 2, 2]])
        region = store.read([2, 0], region=(2, 11, 3, 17))
        np.testing.assert_array_equal(region, frames[[2, 0], 2:11, 3:17])
        with pytest.raises(OSError):  # opened read-only
            store.write(0, frames[0])
        with pytest.raises(ValueError, match="region"):
            store.read([0], region=(5, 5, 0, 10))
        with pytest.raises(ValueError, match="out of range"):
            store.read([5])
    with pytest.raises(ValueError, match="bytes"):
        FrameStore.open(path, (6, 20, 30))  # larger than the file
    with pytest.raises(ValueError, match="shape"):
        FrameStore(tmp_path / "bad.f32", (5, 20))


def test_frame_store_rgb_and_shape_checks(tmp_path):
    rgb = np.arange(3 * 8 * 10 * 3, dtype=np.float32).reshape(3, 8, 10, 3)
    with FrameStore(tmp_path / "rgb.f32", rgb.shape) as store:
        for i in range(3):
            store.write(i, rgb[i])
        np.testing.assert_array_equal(store.read([1, 2]), rgb[1:3])
        np.testing.assert_array_equal(store.read([0], region=(1, 7, 2, 9)), rgb[:1, 1:7, 2:9])
        with pytest.raises(ValueError, match="shape"):
            store.write(0, rgb[0, :, :, :2])


def _resident_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_frame_store_memory_does_not_grow_with_the_frames(tmp_path):
    """64 MiB written and read back, one frame at a time: resident memory stays put (a memmap's
    cached pages would count in it)."""
    frame = np.ones((512, 512), np.float32)  # 1 MiB
    with FrameStore(tmp_path / "big.f32", (64, 512, 512)) as store:
        before = _resident_mb()
        for i in range(64):
            store.write(i, frame * i)
        for i in range(64):
            assert store.read([i])[0, 0, 0] == i
        grown = _resident_mb() - before
    assert grown < 16, f"resident memory grew by {grown:.1f} MiB"


def test_aligned_frames_file_holds_the_aligned_windows(tmp_path):
    """The planetary pass writes what the deconvolution reads: a store of the aligned windows."""
    truth = sp.planet_truth(96, seed=1, radius_frac=0.25, moon=False)
    seq = sp.simulate_sequence(truth, 6, seed=2, tip_tilt_px=1.0, local_px=0.0)
    frames = open_sequence([str(p) for p in sp.write_sequence(seq, tmp_path / "seq")])
    table, _, size = planetary.plan_window(planetary.analyse_sequence(frames), frames.shape[:2])
    table, *_ = planetary.align_sequence(frames, table, size)
    chosen = planetary.deconvolution_frames(table, keep_percent=50, max_frames=0)
    path = tmp_path / "frames.f32"
    description = planetary.write_aligned_frames(frames, chosen, size, path)
    json.dumps(description)  # the sidecar
    assert description["shape"] == [len(chosen), *size]
    assert description["indices"] == sorted(chosen["index"].astype(int))
    position = dict(zip(chosen["index"], zip(chosen["position_y"], chosen["position_x"])))
    with FrameStore.open(path, description["shape"]) as store:
        got = store.read(range(len(store)))
    for k, frame in enumerate(frames.frames(description["indices"])):
        expected = lucky.extract(np.asarray(frame.image, np.float32), *position[frame.index], size)
        np.testing.assert_array_equal(got[k], expected)


def test_patch_stacker_keeps_its_samples_in_two_stores(tmp_path):
    """Every alignment point's patches and the fill windows go to frame stores in workdir, and
    come back as written (a frame without a shift is not read)."""
    rng = np.random.default_rng(3)
    reference = rng.normal(100.0, 5.0, (32, 32)).astype(np.float32)
    points = np.array([[4, 4], [12, 12]])
    stacker = lucky.PatchStacker(reference, points, 16, [[0, 1, 2], [1, 2]], [0, 2], tmp_path, search=2)
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ap_patches.f32", "windows.f32"]
        images = {i: rng.normal(100.0, 5.0, (48, 48)).astype(np.float32) for i in range(3)}
        for i, image in images.items():
            stacker.add(i, image, 8.0, 8.0)
        aligned, raw, shifts = stacker._ap_samples(1)
        assert raw.shape == (2, 20, 20, 1) and shifts.shape == (2, 2)
        np.testing.assert_array_equal(raw[0, :, :, 0], images[1][8 + 12 - 2 : 8 + 12 + 18, 8 + 12 - 2 : 8 + 12 + 18])
        windows = stacker.windows.read([0, 1])
        np.testing.assert_array_equal(windows[1, :, :, 0], images[2][8:40, 8:40])
    finally:
        stacker.close()
