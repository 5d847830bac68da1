"""Tests of astroflow.io.imagefile: XISF finished images (data, layout, keywords, errors)."""

import numpy as np
import pytest
import tifffile
from xisf import XISF

from astroflow.io.imagefile import (
    UnreadableImageError,
    choose_encoding,
    read_finished_header,
    read_finished_image,
)

H, W = 5, 7


def asymmetric(dtype, scale):
    """An (H, W) image whose every pixel differs, with a bright top-left corner: flips show."""
    image = np.arange(H * W, dtype=np.float64).reshape(H, W) / (H * W)
    image[0, 0] = 1.0
    return (image * scale).astype(dtype)


def write_xisf_by_hand(
    path, block, geometry, sample_format, colour="Gray", attributes="", children=""
):
    """A monolithic XISF file with one attached data block, for what the xisf package never
    writes (normal pixel storage, big-endian samples, sample formats it does not know, non-ASCII
    text)."""
    position = 4096
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<xisf version="1.0" xmlns="http://www.pixinsight.com/xisf">'
        f'<Image geometry="{geometry}" sampleFormat="{sample_format}" colorSpace="{colour}" '
        f'location="attachment:{position}:{len(block)}" {attributes}>{children}</Image>'
        '<Metadata><Property id="XISF:CreatorApplication" type="String">test</Property></Metadata>'
        "</xisf>"
    ).encode()
    head = b"XISF0100" + len(xml).to_bytes(4, "little") + bytes(4) + xml
    path.write_bytes(head + bytes(position - len(head)) + block)
    return path


def test_mono_uint16_reads_as_the_same_tiff_would(tmp_path):
    image = asymmetric(np.uint16, 60000)
    XISF.write(str(tmp_path / "mono.xisf"), image[:, :, None])
    tifffile.imwrite(tmp_path / "mono.tif", image)
    data, bits = read_finished_image(tmp_path / "mono.xisf")
    assert data.dtype == np.float32 and data.shape == (H, W) and bits == 16
    # top row first, as TIFF: the bright corner stays top left
    np.testing.assert_array_equal(data, image.astype(np.float32))
    tiff, tiff_bits = read_finished_image(tmp_path / "mono.tif")
    np.testing.assert_array_equal(data, tiff)
    assert choose_encoding(data, bits) == choose_encoding(tiff, tiff_bits) == "display"
    dark = (image // 100)[:, :, None]
    XISF.write(str(tmp_path / "dark.xisf"), dark)
    assert choose_encoding(*read_finished_image(tmp_path / "dark.xisf")) == "linear"


def test_rgb_float32_compressed(tmp_path):
    rgb = np.stack([asymmetric(np.float32, s) for s in (1.0, 0.5, 0.25)], axis=2)
    XISF.write(str(tmp_path / "rgb.xisf"), rgb, codec="zlib", shuffle=True)
    data, bits = read_finished_image(tmp_path / "rgb.xisf")
    assert data.shape == (H, W, 3) and data.dtype == np.float32 and bits == 32
    np.testing.assert_array_equal(data, rgb)
    np.testing.assert_array_equal(data[0, 0], [1.0, 0.5, 0.25])
    assert choose_encoding(data, bits) == "linear"


def test_normal_pixel_storage_interleaves_channels(tmp_path):
    rgb = np.stack([asymmetric(np.uint8, s) for s in (250, 120, 60)], axis=2)
    path = write_xisf_by_hand(
        tmp_path / "normal.xisf", rgb.tobytes(), f"{W}:{H}:3", "UInt8", "RGB",
        'pixelStorage="Normal"',
    )  # fmt: skip
    data, bits = read_finished_image(path)
    assert bits == 8
    np.testing.assert_array_equal(data, rgb.astype(np.float32))


def test_big_endian_samples(tmp_path):
    image = asymmetric(np.uint16, 65535)
    block = image.astype(">u2").tobytes()
    path = write_xisf_by_hand(
        tmp_path / "big.xisf", block, f"{W}:{H}:1", "UInt16", attributes='byteOrder="big"'
    )
    np.testing.assert_array_equal(read_finished_image(path)[0], image.astype(np.float32))


def test_uint32_becomes_float_of_unit_range_and_alpha_is_dropped(tmp_path):
    grey = asymmetric(np.uint32, 2**32 - 1)
    alpha = np.full((H, W), 2**32 - 1, np.uint32)
    # planar storage: the grey plane, then the alpha plane
    block = np.stack([grey, alpha]).tobytes()
    path = write_xisf_by_hand(tmp_path / "u32.xisf", block, f"{W}:{H}:2", "UInt32")
    data, bits = read_finished_image(path)
    assert bits == 32 and data.shape == (H, W) and data[0, 0] == 1.0
    np.testing.assert_allclose(data, grey / (2**32 - 1), rtol=1e-6)


def test_fits_keywords_and_properties_are_carried(tmp_path):
    meta = {
        "FITSKeywords": {
            "OBJECT": [{"value": "M 42", "comment": "target"}],
            "EXPTIME": [{"value": "3600.", "comment": "[s]"}],
            "NCOMBINE": [{"value": "12", "comment": ""}],
            "DATE-OBS": [{"value": "2024-01-02T03:04:05", "comment": ""}],
            "GAIN": [{"value": "100", "comment": "not an observation keyword"}],
            "HISTORY": [{"value": "", "comment": "ImageIntegration: 12 frames"}],
        },
        "XISFProperties": {
            prop: {"id": prop, "type": kind, "value": value}
            for prop, kind, value in (
                ("Observation:Object:RA", "Float64", 83.82),
                ("Observation:Object:Dec", "Float64", -5.39),
                ("Instrument:Filter:Name", "String", "Ha"),
                ("Instrument:Telescope:FocalLength", "Float32", 0.53),
                ("Observation:Time:End", "TimePoint", "2024-01-02T05:04:05.5+01:00"),
                ("Instrument:ExposureTime", "Float32", 300.0),
            )
        },
    }
    path = tmp_path / "meta.xisf"
    XISF.write(str(path), asymmetric(np.uint16, 100)[:, :, None], image_metadata=meta)
    header = read_finished_header(path)
    assert header["OBJECT"] == "M 42" and header["NCOMBINE"] == 12
    # the FITS keyword wins over the property
    assert header["EXPTIME"] == 3600.0
    assert header["RA"] == 83.82 and header["DEC"] == -5.39 and header["FILTER"] == "Ha"
    assert header["FOCALLEN"] == pytest.approx(530.0)  # m in XISF, mm in FITS
    assert header["DATE-OBS"] == "2024-01-02T03:04:05"
    assert header["DATE-END"] == "2024-01-02T04:04:05.500"  # UTC
    assert "GAIN" not in header
    assert list(header["HISTORY"]) == ["ImageIntegration: 12 frames"]


def test_non_ascii_keywords_are_escaped_for_fits(tmp_path):
    keywords = (
        '<FITSKeyword name="OBJECT" value="\'M 42 Orión\'" comment=""/>'
        '<FITSKeyword name="HISTORY" value="" comment="ImageIntegration: 12 × 300 s"/>'
    )
    path = tmp_path / "utf8.xisf"
    write_xisf_by_hand(path, bytes(H * W), f"{W}:{H}:1", "UInt8", children=keywords)
    header = read_finished_header(path)
    assert header["OBJECT"] == "M 42 Ori\\xf3n"
    assert list(header["HISTORY"]) == ["ImageIntegration: 12 \\xd7 300 s"]


def test_png_and_tiff_carry_no_keywords(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", asymmetric(np.uint16, 100))
    assert len(read_finished_header(tmp_path / "x.tif")) == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not an xisf file at all", "broken XISF"),
        (b"XISF0100\xff\xff\x00\x00\x00\x00\x00\x00<xisf", "broken XISF"),
    ],
)
def test_broken_xisf_names_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.xisf"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=rf"bad\.xisf.*{problem}"):
        read_finished_image(path)
    assert issubclass(UnreadableImageError, ValueError)


def test_truncated_xisf(tmp_path):
    XISF.write(str(tmp_path / "full.xisf"), asymmetric(np.uint16, 100)[:, :, None])
    cut = tmp_path / "cut.xisf"
    cut.write_bytes((tmp_path / "full.xisf").read_bytes()[:-10])
    with pytest.raises(UnreadableImageError, match=r"cut\.xisf.*broken XISF"):
        read_finished_image(cut)


@pytest.mark.parametrize(
    ("geometry", "sample_format", "colour", "problem"),
    [
        (f"{W}:{H}:1", "Int16", "Gray", "unsupported XISF.*Int16"),
        (f"{W}:{H}:3", "UInt8", "CIELab", "colour space CIELab"),
        (f"{W}:{H}:2", "UInt8", "RGB", "2 channels"),
        (f"{W}:{H}:3:1", "UInt8", "Gray", "not 2-D"),
    ],
)
def test_unsupported_xisf_names_the_file(tmp_path, geometry, sample_format, colour, problem):
    size = np.prod([int(n) for n in geometry.split(":")]) * (2 if sample_format == "Int16" else 1)
    path = tmp_path / "odd.xisf"
    write_xisf_by_hand(path, bytes(int(size)), geometry, sample_format, colour)
    with pytest.raises(UnreadableImageError, match=rf"odd\.xisf.*{problem}"):
        read_finished_image(path)
