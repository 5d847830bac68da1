import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from astroflow.io.export import save_map_png, save_preview_png, save_tiff16
from astroflow.stretch import auto_stretch, mtf


def sky(seed=0, shape=(64, 80), channels=None):
    rng = np.random.default_rng(seed)
    full = shape + ((channels,) if channels else ())
    image = 500.0 + rng.normal(0.0, 10.0, full)
    image[20, 30] = 15000.0
    return image.astype(np.float32)


def test_mtf_fixed_points_and_inverse():
    x = np.linspace(0, 1, 101)
    for m in (0.05, 0.25, 0.5, 0.8):
        y = mtf(m, x)
        assert y[0] == pytest.approx(0) and y[-1] == pytest.approx(1)
        assert mtf(m, m) == pytest.approx(0.5)
        assert np.all(np.diff(y) > 0)
        np.testing.assert_allclose(mtf(1 - m, y), x, atol=1e-12)


@pytest.mark.parametrize("channels", [None, 3])
def test_auto_stretch_puts_background_on_target(channels):
    image = sky(channels=channels)
    stretch = auto_stretch(image, target_background=0.25)
    out = stretch.apply(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() >= 0 and out.max() <= 1
    median = np.median(out.reshape(-1, channels or 1), axis=0)
    np.testing.assert_allclose(median, 0.25, atol=0.02)


def test_stretch_inverse_recovers_linear_data():
    image = sky(channels=3)
    stretch = auto_stretch(image)
    back = stretch.invert(stretch.apply(image))
    unclipped = stretch.apply(image) > 0
    np.testing.assert_allclose(back[unclipped], image[unclipped], rtol=1e-4)


def test_auto_stretch_rejects_empty_image():
    with pytest.raises(ValueError, match="finite"):
        auto_stretch(np.full((4, 4), np.nan, np.float32))


def test_tiff16_is_linear_and_records_scale(tmp_path):
    image = sky()
    image[0, 0] = np.nan
    scale = save_tiff16(tmp_path / "a.tif", image)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        data = tif.asarray()
        description = tif.pages[0].description
    assert data.dtype == np.uint16 and data.max() == 65535 and data[0, 0] == 0
    assert f"{scale:.9g}" in description
    np.testing.assert_allclose(data[1:, 1:] / scale, image[1:, 1:], atol=0.5 / scale + 1e-3)


def test_preview_png_is_8bit_stretched(tmp_path):
    image = sky(channels=3)
    save_preview_png(tmp_path / "a.png", image)
    png = iio.imread(tmp_path / "a.png")
    assert png.dtype == np.uint8 and png.shape == image.shape
    assert abs(np.median(png) - 0.25 * 255) < 8


def test_map_png_scales_to_peak(tmp_path):
    counts = np.zeros((10, 10))
    counts[3, 4] = 4
    counts[5, 5] = 2
    assert save_map_png(tmp_path / "m.png", counts) == 4
    png = iio.imread(tmp_path / "m.png")
    assert png[3, 4] == 255 and png[5, 5] == 128 and png[0, 0] == 0
