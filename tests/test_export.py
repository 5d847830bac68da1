"""Tests of the TIFF writers of astroflow.io.export: 16-bit scaled, 32-bit float exact."""

import re

import numpy as np
import pytest
import tifffile

from astroflow.io.export import save_tiff16, save_tiff32, tiff_scale


def image(channels=None, seed=0):
    """A linear (ADU) test image, bright block top-left, one NaN (no data) pixel."""
    rng = np.random.default_rng(seed)
    shape = (20, 30) + ((channels,) if channels else ())
    data = (400.0 + rng.normal(0.0, 8.0, shape)).astype(np.float32)
    data[:4, :5] = 20000.0
    data[10, 12] = np.nan
    return data


def tags(path):
    """(code, value) of every tag of the first page, in the order stored."""
    with tifffile.TiffFile(path) as tif:
        return [(tag.code, tag.value) for tag in tif.pages[0].tags]


@pytest.mark.parametrize("channels", [None, 3], ids=["grey", "rgb"])
def test_tiff16_round_trip_recovers_adu_from_the_recorded_scale(tmp_path, channels):
    data = image(channels)
    scale = save_tiff16(tmp_path / "a.tif", data, description="astroflow stack")
    stored = tifffile.imread(tmp_path / "a.tif")
    assert stored.dtype == np.uint16 and stored.shape == data.shape
    assert stored.max() == 65535 and stored[10, 12].max() == 0  # peak to white, NaN to 0
    (description,) = [value for code, value in tags(tmp_path / "a.tif") if code == 270]
    assert description.startswith("astroflow stack linear; ADU = value / ")
    recorded = float(re.search(r"ADU = value / (\S+)$", description).group(1))
    assert recorded == pytest.approx(scale, rel=1e-8)
    finite = np.isfinite(data)
    np.testing.assert_allclose(stored[finite] / recorded, data[finite], atol=0.5 / scale + 1e-3)
    assert (stored[:4, :5] == 65535).all()  # the top row is stored first


def test_tiff16_of_display_data_maps_one_to_white(tmp_path):
    data = np.linspace(0.0, 0.5, 20 * 30, dtype=np.float32).reshape(20, 30)
    assert save_tiff16(tmp_path / "d.tif", data, encoding="display") == 65535.0
    stored = tifffile.imread(tmp_path / "d.tif")
    np.testing.assert_array_equal(stored, np.round(data.astype(np.float64) * 65535))
    (description,) = [value for code, value in tags(tmp_path / "d.tif") if code == 270]
    assert "display" in description


@pytest.mark.parametrize("channels", [None, 3], ids=["grey", "rgb"])
def test_tiff32_is_0_to_1_and_gives_back_the_adu(tmp_path, channels):
    data = image(channels)
    scale = save_tiff32(tmp_path / "a.tif", data, description="astroflow stack")
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        page = tif.pages[0]
        assert page.dtype == np.float32 and page.photometric.name == ("RGB" if channels else "MINISBLACK")
        stored = tif.asarray()
    # float TIFF readers (Siril, PixInsight) take 1.0 as white: the peak is 1.0
    assert np.nanmax(stored) == pytest.approx(1.0, rel=1e-6)
    assert scale == pytest.approx(1.0 / np.nanmax(data)) and tiff_scale(tmp_path / "a.tif") == pytest.approx(scale)
    np.testing.assert_allclose(stored / tiff_scale(tmp_path / "a.tif"), data, rtol=1e-6)
    assert np.array_equal(np.isnan(stored), np.isnan(data))  # NaN (no data) where it was
    (description,) = [value for code, value in tags(tmp_path / "a.tif") if code == 270]
    assert description.startswith("astroflow stack linear; ADU = value / ")


def test_tiff32_keeps_display_data_as_they_are(tmp_path):
    data = np.linspace(0.0, 0.5, 20 * 30, dtype=np.float32).reshape(20, 30)
    assert save_tiff32(tmp_path / "d.tif", data, encoding="display") == 1.0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "d.tif"), data)


@pytest.mark.parametrize("writer", [save_tiff16, save_tiff32])
def test_one_description_and_tags_in_order_so_libtiff_does_not_warn(tmp_path, writer):
    # libtiff warns ("tags are not sorted in ascending order") when a tag appears twice, as
    # tifffile's own JSON ImageDescription beside ours did.
    writer(tmp_path / "a.tif", image(3), description="astroflow stack")
    codes = [code for code, _ in tags(tmp_path / "a.tif")]
    assert codes.count(270) == 1
    assert codes == sorted(set(codes))


@pytest.mark.parametrize("writer", [save_tiff16, save_tiff32])
def test_bad_shape_and_encoding_raise(tmp_path, writer):
    with pytest.raises(ValueError, match="bad.tif"):
        writer(tmp_path / "bad.tif", np.zeros((4, 5, 2), np.float32))
    with pytest.raises(ValueError, match="unknown encoding"):
        writer(tmp_path / "enc.tif", np.zeros((4, 5), np.float32), encoding="gamma")
    assert not (tmp_path / "bad.tif").exists() and not (tmp_path / "enc.tif").exists()
