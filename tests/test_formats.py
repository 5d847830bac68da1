"""The format registry, and the readers that follow it: gzipped and fpacked FITS, RAW names."""

import gzip

import numpy as np
import pytest
from astropy.io import fits

from astroflow.io import formats
from astroflow.io.formats import (
    DEEP_SKY_FRAME,
    FINISHED_IMAGE,
    FORMATS,
    extensions,
    format_of,
    readable,
    strip_extension,
)
from astroflow.io.ingest import UnreadableFrameError, read_frame

# Extensions that rules/common.smk once left out although LibRaw reads them.
ONCE_MISSING_RAW = (".dcr", ".raw", ".mef", ".ari", ".bay", ".fff", ".k25", ".rwl")


@pytest.mark.parametrize("ext", formats.RAW)
def test_every_libraw_extension_is_a_deep_sky_frame(ext):
    assert format_of(f"IMG_0001{ext.upper()}") == "raw"
    assert readable(f"light{ext}", DEEP_SKY_FRAME)


def test_the_extensions_discovery_once_missed_are_registered():
    assert set(ONCE_MISSING_RAW) <= set(formats.RAW)


@pytest.mark.parametrize(
    "name,fmt,stem",
    [
        ("m42_001.fits", "fits", "m42_001"),
        ("m42_001.FIT.GZ", "fits", "m42_001"),
        ("m42_001.fits.fz", "fits", "m42_001"),
        ("m42_001.fz", "fits", "m42_001"),
        ("jupiter.ser", "ser", "jupiter"),
        ("cave.xisf", "xisf", "cave"),
        ("notes.txt", None, "notes.txt"),
        (".fits", None, ".fits"),
    ],
)
def test_format_and_stem_come_from_the_longest_extension(name, fmt, stem):
    assert format_of(name) == fmt
    assert strip_extension(name) == stem


def test_purposes_name_registered_formats_only():
    for purpose in (DEEP_SKY_FRAME, FINISHED_IMAGE, formats.SEQUENCE_FRAME, formats.SEQUENCE_CONTAINER):
        assert set(purpose) <= set(FORMATS)
    assert ".xisf" in extensions(FINISHED_IMAGE) and ".xisf" not in extensions(DEEP_SKY_FRAME)
    with pytest.raises(KeyError, match="bmp"):
        readable("a.bmp", ["bmp"])


def _fits_bytes(tmp_path, data):
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(data, header=fits.Header({"EXPTIME": 30.0})).writeto(path)
    return path.read_bytes()


def test_gzipped_fits_reads_like_the_plain_file(tmp_path):
    data = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)
    raw = _fits_bytes(tmp_path, data)
    gz = tmp_path / "light_001.fits.gz"
    gz.write_bytes(gzip.compress(raw))
    # the compressed file is far smaller than the header's promise: not a truncation
    assert gz.stat().st_size < data.nbytes
    plain, meta_plain = read_frame(tmp_path / "plain.fits")
    image, meta = read_frame(gz)
    np.testing.assert_array_equal(image, plain)
    assert meta["EXPTIME"] == 30.0


def test_truncated_gzipped_fits_is_an_unreadable_frame(tmp_path):
    data = np.random.default_rng(0).integers(0, 65535, (64, 64)).astype(np.uint16)
    packed = gzip.compress(_fits_bytes(tmp_path, data))
    gz = tmp_path / "cut.fits.gz"
    gz.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(UnreadableFrameError, match="cut.fits.gz"):
        read_frame(gz)


def test_tile_compressed_fits_reads(tmp_path):
    data = np.random.default_rng(1).integers(0, 4000, (40, 56)).astype(np.int32)
    path = tmp_path / "light.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="RICE_1")]).writeto(path)
    image, _ = read_frame(path)
    # no ROWORDER: the first FITS row is the bottom of the image, the last row of the array
    np.testing.assert_array_equal(image, data[::-1].astype(np.float32))
