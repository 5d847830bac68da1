"""Tests of astroflow.nets.tiling: blended overlapping tiles reproduce whole-image results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from astroflow.nets.tiling import blend_weights, predict_tiled, tile_grid
from astroflow.nets.unet import ResUNet


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def mean_filter(k):
    """A purely local fn: k x k box mean with mirrored borders, per channel."""

    def fn(t):
        return F.avg_pool2d(F.pad(t, (k // 2,) * 4, mode="reflect"), k, stride=1)

    return fn


@pytest.mark.parametrize("shape", [(37, 53), (256, 256), (300, 517, 3), (1, 1), (2, 600, 1)])
@pytest.mark.parametrize("tile, overlap", [(256, 32), (64, 8), (48, 0)])
def test_identity_returns_the_input(shape, tile, overlap):
    x = image(shape)
    out = predict_tiled(lambda t: t, x, tile=tile, overlap=overlap)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(100, 130), (90, 70, 3)])
def test_adding_a_constant_leaves_no_seams(shape):
    x = image(shape, seed=1)
    out = predict_tiled(lambda t: t + 0.25, x, tile=32, overlap=8, batch=3)
    np.testing.assert_allclose(out, x + 0.25, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k, tile, overlap", [(3, 32, 8), (5, 40, 16), (3, 256, 32)])
@pytest.mark.parametrize("channels", [None, 3])
def test_local_filter_tiled_equals_whole_image(k, tile, overlap, channels):
    """Tile edges, where the filter sees the tile's mirrored border, get zero weight."""
    shape = (300, 517) if channels is None else (150, 211, channels)
    x = image(shape, seed=2)
    planes = x[None, None] if channels is None else x.transpose(2, 0, 1)[None]
    whole = mean_filter(k)(torch.from_numpy(np.ascontiguousarray(planes)))[0].numpy()
    whole = whole[0] if channels is None else whole.transpose(1, 2, 0)
    tiled = predict_tiled(mean_filter(k), x, tile=tile, overlap=overlap)
    m = k // 2
    np.testing.assert_allclose(tiled[m:-m, m:-m], whole[m:-m, m:-m], rtol=0, atol=1e-5)
    # the image is padded by mirroring like the filter, so even its border agrees
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_tile_seams_would_show_without_the_zero_rim():
    """Control: with an overlap too small for a zero rim, the filter's tile edges show."""
    x = image((120, 120), seed=3)
    whole = mean_filter(3)(torch.from_numpy(x)[None, None])[0, 0].numpy()
    tiled = predict_tiled(mean_filter(3), x, tile=32, overlap=2)
    assert np.abs(tiled - whole)[1:-1, 1:-1].max() > 1e-3


def test_image_smaller_than_a_tile_and_integer_input():
    x = (image((20, 9, 3)) * 1000).astype(np.uint16)
    out = predict_tiled(lambda t: 2 * t, x, tile=64, overlap=16)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0 * x, rtol=1e-6)


def test_batches_and_tile_count():
    seen = []

    def fn(t):
        seen.append(tuple(t.shape))
        assert t.dtype == torch.float32 and t.is_contiguous()
        return t

    predict_tiled(fn, image((100, 150, 2)), tile=48, overlap=8, batch=4)
    ys, hp = tile_grid(100 + 16, 48, 8)
    xs, wp = tile_grid(150 + 16, 48, 8)
    assert hp >= 116 and wp >= 166 and ys[1] - ys[0] == 40
    assert sum(s[0] for s in seen) == len(ys) * len(xs)
    assert all(s[0] <= 4 and s[1:] == (2, 48, 48) for s in seen)


def test_blend_weights():
    w = blend_weights(32, 8)
    assert w.shape == (32, 32) and w.dtype == np.float32
    profile = w[16]
    assert np.all(profile[:2] == 0) and np.all(profile[8:24] == 1) and np.all(profile[-2:] == 0)
    assert np.all(np.diff(profile[:8]) >= 0)
    # neighbours every tile - overlap pixels sum to exactly 1 over their overlap
    np.testing.assert_allclose(profile[24:] + profile[:8], 1.0, atol=1e-6)
    np.testing.assert_array_equal(w, w.T)
    assert np.all(blend_weights(16, 0) == 1)


def test_a_network_applied_in_tiles():
    torch.manual_seed(0)
    model = ResUNet(3, 3, base=4, depth=2).eval()  # identity at initialisation
    x = image((70, 90, 3), seed=4)
    np.testing.assert_allclose(predict_tiled(model, x, tile=32, overlap=8), x, atol=1e-6)


def test_bad_input():
    x = image((40, 40))
    x[3, 4] = np.nan
    with pytest.raises(ValueError, match="image contains 1 NaN"):
        predict_tiled(lambda t: t, x)
    with pytest.raises(ValueError, match="twice the overlap"):
        predict_tiled(lambda t: t, image((40, 40)), tile=64, overlap=32)
    with pytest.raises(ValueError, match="twice the overlap"):
        blend_weights(16, 8)
    with pytest.raises(ValueError, match="batch"):
        predict_tiled(lambda t: t, image((40, 40)), batch=0)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        predict_tiled(lambda t: t, np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="shape of its input"):
        predict_tiled(lambda t: t[:, :1], image((40, 40, 3)), tile=32, overlap=8)
    with pytest.raises(ValueError, match="fn returned NaN"):
        predict_tiled(lambda t: t * np.nan, image((40, 40)), tile=32, overlap=8)
