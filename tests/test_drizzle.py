import numpy as np
import pytest
from scipy import ndimage

from astroflow.deepsky.drizzle import drizzle_add, drizzle_finish, upsample


def grids(h, w, scale, channels=None, dtype=np.float64):
    shape = (int(round(h * scale)), int(round(w * scale)))
    data = np.zeros(shape + ((channels,) if channels else ()), dtype)
    return data, np.zeros(shape, dtype)


def random_patch(shape, seed=0):
    return np.random.default_rng(seed).uniform(100.0, 1000.0, shape).astype(np.float32)


@pytest.mark.parametrize("scale", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("pixfrac", [1.0, 0.6, 0.25])
@pytest.mark.parametrize("channels", [None, 3])
def test_flux_and_weight_conservation_for_a_drop_inside_the_grid(scale, pixfrac, channels):
    h, w = 12, 9
    patch = random_patch((h, w) + ((channels,) if channels else ()))
    weights = np.random.default_rng(1).uniform(0.2, 2.0, (h, w))
    data, weight = grids(h + 4, w + 4, scale, channels)  # room for the shift: fully inside
    drizzle_add(data, weight, patch, 1.37, 2.21, scale=scale, pixfrac=pixfrac, weights=weights)
    area = (pixfrac * scale) ** 2  # area of one drop, in output pixels
    assert weight.sum() == pytest.approx(area * weights.sum(), rel=1e-12)
    expected = area * np.einsum("ij,ij...->...", weights, patch.astype(np.float64))
    np.testing.assert_allclose(data.sum(axis=(0, 1)), expected, rtol=1e-12)

    # unit weights: each drop adds its area to the weight map
    data, weight = grids(h + 4, w + 4, scale, channels)
    drizzle_add(data, weight, patch, 1.37, 2.21, scale=scale, pixfrac=pixfrac)
    assert weight.sum() == pytest.approx(h * w * area, rel=1e-12)


def test_pixfrac_1_integer_scale_replicates_pixels_with_unit_weight():
    patch = random_patch((6, 5, 3))
    data, weight = grids(6, 5, 2, 3)
    drizzle_add(data, weight, patch, 0.0, 0.0, scale=2, pixfrac=1.0)
    np.testing.assert_allclose(weight, 1.0, rtol=1e-12)
    image = drizzle_finish(data, weight)
    np.testing.assert_allclose(image, np.repeat(np.repeat(patch, 2, axis=0), 2, axis=1), rtol=1e-6)
    # the finished image keeps surface brightness: its total is sum(patch) * scale**2
    np.testing.assert_allclose(image.sum(axis=(0, 1)), 4 * patch.sum(axis=(0, 1)), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scale_1_integer_shift_reproduces_the_shifted_patch(dtype):
    patch = random_patch((10, 8))
    data, weight = grids(14, 13, 1.0, dtype=dtype)
    drizzle_add(data, weight, patch, 3, 2, scale=1.0, pixfrac=1.0)
    image = drizzle_finish(data, weight)
    np.testing.assert_allclose(image[3:13, 2:10], patch, rtol=1e-6)
    assert np.all(weight[3:13, 2:10] == pytest.approx(1.0))
    mask = np.ones(weight.shape, bool)
    mask[3:13, 2:10] = False
    assert np.all(weight[mask] == 0) and np.all(np.isnan(image[mask]))
    assert data.dtype == dtype and weight.dtype == dtype


def test_half_pixel_shift_splits_a_drop_equally():
    data, weight = grids(1, 3, 1.0)
    drizzle_add(data, weight, np.array([[8.0]]), 0.0, 0.5, scale=1.0)
    np.testing.assert_allclose(weight, [[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(data, [[4.0, 4.0, 0.0]])


def test_zero_weight_and_nan_pixels_contribute_nothing():
    patch = random_patch((8, 8))
    weights = np.ones((8, 8))
    weights[2, 3] = 0.0
    patch_bad = patch.copy()
    patch_bad[2, 3] = 1e9
    patch_bad[5, 5] = np.nan
    weights_nan = weights.copy()
    weights_nan[5, 5] = 0.0

    ref_data, ref_weight = grids(8, 8, 2)
    drizzle_add(ref_data, ref_weight, patch, 0.3, 0.6, scale=2, pixfrac=0.8, weights=weights_nan)
    data, weight = grids(8, 8, 2)
    drizzle_add(data, weight, patch_bad, 0.3, 0.6, scale=2, pixfrac=0.8, weights=weights)
    assert np.all(np.isfinite(data))
    np.testing.assert_allclose(data, ref_data, rtol=1e-12)
    np.testing.assert_allclose(weight, ref_weight, rtol=1e-12)
    # an all-rejected patch adds nothing at all
    data, weight = grids(8, 8, 2)
    drizzle_add(data, weight, patch, 0.3, 0.6, scale=2, weights=np.zeros((8, 8)))
    assert not data.any() and not weight.any()


def test_drops_partly_outside_the_grid_are_clipped_not_wrapped():
    h = w = 6
    patch = np.ones((h, w))
    data, weight = grids(h, w, 2)
    drizzle_add(data, weight, patch, -1.25, 2.5, scale=2, pixfrac=1.0)
    # rows: drops cover input y in [-1.25, 4.75) -> output [-2.5, 9.5), of which [0, 9.5) is kept
    # cols: input x in [2.5, 8.5) -> output [5, 17), of which [5, 12) is kept
    assert weight.sum() == pytest.approx(9.5 * 7.0)
    assert np.all(weight[:, :5] == 0)  # nothing wrapped round to the left
    assert np.all(weight[10:, :] == 0)  # nothing wrapped round to the bottom
    assert weight[9, 5:] == pytest.approx(np.full(7, 0.5))
    # entirely outside: no-op
    data, weight = grids(h, w, 2)
    drizzle_add(data, weight, patch, 50.0, 0.0, scale=2)
    drizzle_add(data, weight, patch, 0.0, -7.0, scale=2)
    assert not weight.any() and not data.any()


def scene(seed=3, n_waves=12, max_freq=0.9):
    """A band-limited scene (sum of cosines, frequencies in cycles per input pixel, below the
    Nyquist limit 1.0 of a 2x finer grid but up to 1.8x the input's) and its exact mean over
    squares, i.e. what a pixel of any size and position records."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(-max_freq, max_freq, (2, n_waves))
    amp = rng.uniform(20.0, 60.0, n_waves)
    phase = rng.uniform(0.0, 2 * np.pi, n_waves)

    def pixel_mean(y0, x0, size):
        out = np.full(np.broadcast(y0, x0).shape, 500.0)
        for uk, vk, ak, pk in zip(u, v, amp, phase):
            out += (
                ak
                * np.sinc(uk * size)
                * np.sinc(vk * size)
                * np.cos(2 * np.pi * (uk * (y0 + size / 2) + vk * (x0 + size / 2)) + pk)
            )
        return out

    return pixel_mean


@pytest.mark.parametrize("pixfrac, max_ratio", [(1.0, 0.97), (0.5, 0.88)])
def test_drizzle_of_dithered_frames_beats_upsampling_their_aligned_mean(pixfrac, max_ratio):
    pixel_mean = scene()
    h = w = 40
    scale = 2
    ii, jj = np.mgrid[:h, :w].astype(np.float64)
    kk, ll = np.mgrid[: h * scale, : w * scale].astype(np.float64)
    truth = pixel_mean(kk / scale, ll / scale, 1.0 / scale)  # what 2x finer pixels record

    rng = np.random.default_rng(4)
    data, weight = grids(h, w, scale)
    aligned = []
    for _ in range(64):
        dy, dx = rng.uniform(-0.5, 0.5, 2)
        frame = pixel_mean(ii + dy, jj + dx, 1.0).astype(np.float32)
        drizzle_add(data, weight, frame, dy, dx, scale=scale, pixfrac=pixfrac)
        # conventional stacking: shift each frame onto the reference grid, average, upsample
        aligned.append(ndimage.shift(frame.astype(np.float64), (dy, dx), order=3, mode="reflect"))
    drizzled = drizzle_finish(data, weight)
    upsampled = upsample(np.mean(aligned, axis=0), scale)

    m = 8  # ignore border effects of the shifts
    assert np.all(weight[m:-m, m:-m] > 0)

    def rms(image):
        return float(np.sqrt(np.mean((image - truth)[m:-m, m:-m] ** 2)))

    # measured: pixfrac 1.0 -> 60.5 vs 63.4 ADU; pixfrac 0.5 -> 52.8 vs 63.4 ADU
    assert rms(drizzled) < max_ratio * rms(upsampled)


def test_drizzle_finish_fill_and_shapes():
    data = np.array([[2.0, 0.0], [6.0, 1.0]])
    weight = np.array([[2.0, 0.0], [3.0, 0.5]])
    out = drizzle_finish(data, weight, fill=-1.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.0, -1.0], [2.0, 2.0]])
    rgb = drizzle_finish(np.stack([data, 2 * data], axis=-1), weight)
    assert rgb.shape == (2, 2, 2) and np.isnan(rgb[0, 1]).all()
    np.testing.assert_allclose(rgb[1, 0], [2.0, 4.0])
    with pytest.raises(ValueError, match="do not match"):
        drizzle_finish(np.zeros((3, 2)), weight)


@pytest.mark.parametrize("channels", [None, 3])
def test_upsample_shape_dtype_and_alignment_with_drizzle(channels):
    shape = (20, 30) + ((channels,) if channels else ())
    yy, xx = np.mgrid[:20, :30].astype(np.float64)
    ramp = 100.0 + 3.0 * yy + 2.0 * xx
    image = ramp if channels is None else np.stack([ramp] * channels, axis=-1)
    for method in ("lanczos", "cubic", "linear"):
        up = upsample(image.astype(np.float32), 2, method=method)
        assert up.shape == (40, 60) + shape[2:] and up.dtype == np.float32
        kk, ll = np.mgrid[:40, :60].astype(np.float64)
        # pixel centre convention of drizzle_add: output k <-> input (k + 0.5) / 2 - 0.5
        expected = 100.0 + 3.0 * ((kk + 0.5) / 2 - 0.5) + 2.0 * ((ll + 0.5) / 2 - 0.5)
        if channels:
            expected = expected[..., None]
        error = (up - expected)[8:-8, 8:-8]
        # no shift: a misalignment by d input pixels would bias the error by 5 d ADU on average;
        # what remains is the interpolation kernels' small ripple on a ramp (0 for linear)
        assert abs(error.mean()) < 1e-3
        assert np.abs(error).max() < 0.25
    assert upsample(np.ones((10, 10), np.float32), 1.5).shape == (15, 15)


def test_bad_arguments():
    patch = np.ones((4, 4))
    data, weight = grids(4, 4, 2)
    for scale in (0, -1.0, np.nan):
        with pytest.raises(ValueError, match="scale"):
            drizzle_add(data, weight, patch, 0, 0, scale=scale)
        with pytest.raises(ValueError, match="scale"):
            upsample(patch, scale)
    for pixfrac in (0.0, -0.5, 1.01, np.nan):
        with pytest.raises(ValueError, match="pixfrac"):
            drizzle_add(data, weight, patch, 0, 0, scale=2, pixfrac=pixfrac)
    with pytest.raises(ValueError, match="dy"):
        drizzle_add(data, weight, patch, np.nan, 0, scale=2)
    with pytest.raises(ValueError, match="weights has shape"):
        drizzle_add(data, weight, patch, 0, 0, scale=2, weights=np.ones((4, 5)))
    with pytest.raises(ValueError, match="weights must be"):
        drizzle_add(data, weight, patch, 0, 0, scale=2, weights=-np.ones((4, 4)))
    with pytest.raises(ValueError, match="data_sum has shape"):
        drizzle_add(data, weight, np.ones((4, 4, 3)), 0, 0, scale=2)  # mono grid, RGB patch
    with pytest.raises(ValueError, match="data_sum has shape"):
        drizzle_add(np.zeros((8, 9)), weight, patch, 0, 0, scale=2)
    with pytest.raises(ValueError, match="weight_sum"):
        drizzle_add(data, np.zeros((8, 8, 1)), patch, 0, 0, scale=2)
    with pytest.raises(ValueError, match="patch"):
        drizzle_add(data, weight, np.ones(4), 0, 0, scale=2)
    with pytest.raises(TypeError, match="float32 or float64"):
        drizzle_add(data.astype(np.int32), weight, patch, 0, 0, scale=2)
    with pytest.raises(ValueError, match="method"):
        upsample(patch, 2, method="nearest")
    with pytest.raises(ValueError, match="NaN"):
        upsample(np.full((4, 4), np.nan), 2)
    assert not data.any() and not weight.any()  # failed calls left the accumulators alone


def test_numpy_scalars_are_accepted_as_offsets_and_scale():
    patch = random_patch((5, 5))
    ref_data, ref_weight = grids(5, 5, 2)
    drizzle_add(ref_data, ref_weight, patch, 0.25, -0.5, scale=2, pixfrac=0.5)
    data, weight = grids(5, 5, 2)
    drizzle_add(
        data, weight, patch, np.float32(0.25), np.array(-0.5), scale=np.int64(2), pixfrac=0.5
    )
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_array_equal(weight, ref_weight)
    with pytest.raises(ValueError, match="dx"):
        drizzle_add(data, weight, patch, 0.0, np.array([0.5, 0.5]), scale=2)
    with pytest.raises(ValueError, match="scale"):
        drizzle_add(data, weight, patch, 0.0, 0.0, scale=True)
