import numpy as np
import pytest
from astropy.io import fits

from astroflow.io.fits import (
    combined_header,
    data_unit,
    derived_header,
    image_shape,
    is_rejected,
    iso_date,
    read_header,
    read_image,
    top_down_rows,
    write_image,
    write_planes,
    write_rejected,
)


@pytest.mark.parametrize("shape", [(6, 7), (6, 7, 3)])
def test_round_trip_keeps_layout_and_header(tmp_path, shape):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = tmp_path / "x.fits"
    write_image(path, data, {"EXPTIME": 20.0, "SRCFILE": "/very/long/" + "p" * 90}, ["made"])
    back, header = read_image(path)
    np.testing.assert_array_equal(back, data)
    assert header["EXPTIME"] == 20.0 and header["SRCFILE"].endswith("p" * 90)
    assert "made" in str(header["HISTORY"])
    assert image_shape(read_header(path)) == shape
    with fits.open(path) as hdul:
        # colour is stored the FITS way, planes first, unscaled float32 for memmap reads
        assert hdul[0].data.dtype == np.dtype(">f4") and "BZERO" not in hdul[0].header
        assert hdul[0].data.shape == (shape if len(shape) == 2 else (3, 6, 7))


def test_rejected_placeholder(tmp_path):
    path = tmp_path / "bad.fits"
    write_rejected(path, "truncated: /data/x.fit", {"SRCFILE": "/data/x.fit"})
    header = read_header(path)
    assert is_rejected(header) and header["AFREASON"] == "truncated: /data/x.fit"
    with pytest.raises(ValueError, match="rejected"):
        read_image(path)


def test_bad_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="bad.fits"):
        write_image(tmp_path / "bad.fits", np.zeros((2, 3, 4), np.float32))


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3)])
def test_rows_are_stored_bottom_up_the_fits_way(tmp_path, shape):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = tmp_path / "x.fits"
    write_image(path, data, {"ROWORDER": "TOP-DOWN"})  # a source's row order is not the file's
    with fits.open(path) as hdul:
        disk, header = hdul[0].data, hdul[0].header
        assert header["ROWORDER"] == "BOTTOM-UP"
        # The first row stored is the bottom row of the image, as FITS viewers draw it.
        bottom = data[-1] if data.ndim == 2 else np.moveaxis(data[-1], -1, 0)
        np.testing.assert_array_equal(disk[..., 0, :], bottom)
        np.testing.assert_array_equal(disk[..., -1, :], data[0] if data.ndim == 2 else data[0].T)
    np.testing.assert_array_equal(read_image(path)[0], data)


@pytest.mark.parametrize("roworder", ["TOP-DOWN", " top-down ", "BOTTOM-UP", None])
def test_files_are_read_in_the_row_order_they_declare(tmp_path, roworder):
    stored = np.arange(12, dtype=np.float32).reshape(4, 3)
    hdu = fits.PrimaryHDU(stored)
    if roworder is not None:
        hdu.header["ROWORDER"] = roworder
    hdu.writeto(tmp_path / "x.fits")
    data, _ = read_image(tmp_path / "x.fits")
    top_down = roworder is not None and roworder.strip().upper() == "TOP-DOWN"
    np.testing.assert_array_equal(data, stored if top_down else stored[::-1])


def test_top_down_rows_is_a_view():
    stored = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # planes, rows, columns
    view = top_down_rows(stored, {})
    assert np.shares_memory(view, stored)
    np.testing.assert_array_equal(view, stored[:, ::-1, :])
    assert top_down_rows(stored, {"ROWORDER": "TOP-DOWN"}) is stored


def test_planes_are_each_stored_bottom_up(tmp_path):
    planes = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5)
    write_planes(tmp_path / "psfs.fits", planes, history=["one PSF per frame"])
    with fits.open(tmp_path / "psfs.fits") as hdul:
        assert hdul[0].header["ROWORDER"] == "BOTTOM-UP" and hdul[0].data.shape == (4, 3, 5)
        np.testing.assert_array_equal(top_down_rows(hdul[0].data, hdul[0].header), planes)
        assert "one PSF per frame" in str(hdul[0].header["HISTORY"])
    with pytest.raises(ValueError, match="planes must be"):
        write_planes(tmp_path / "bad.fits", planes[0])


def test_combined_header_sums_exposure_and_keeps_shared_keys():
    headers = []
    for i, date in enumerate(["2024-03-09T22:00:00", "2024-03-09T21:30:00", "2024-03-09T23:00:00"]):
        h = fits.Header()
        h["EXPTIME"] = 120.0
        h["DATE-OBS"] = date
        h["INSTRUME"] = "SimCam"
        h["CCD-TEMP"] = -10.0 + i
        h.add_history("calibrated")
        headers.append(h)
    header = combined_header(headers, ["stacked"])
    assert header["NCOMBINE"] == 3 and header["EXPTIME"] == 360.0
    assert header["DATE-OBS"] == "2024-03-09T21:30:00" and header["DATE-END"].startswith("2024-03-09T23")
    assert header["INSTRUME"] == "SimCam" and "CCD-TEMP" not in header
    assert list(header["HISTORY"]) == ["calibrated", "stacked"]
    with pytest.raises(ValueError):
        combined_header([])


def test_combined_header_date_end_is_the_end_of_the_last_frame():
    headers = []
    for date, exposure in (("2024-03-09T21:30:00", 120.0), ("2024-03-09T23:00:00.250", 300.0)):
        h = fits.Header()
        h["DATE-OBS"], h["EXPTIME"] = date, exposure
        headers.append(h)
    header = combined_header(headers[::-1])
    assert header["DATE-OBS"] == "2024-03-09T21:30:00"
    assert header["DATE-END"] == "2024-03-09T23:05:00.250"
    # a long first frame can end after a short last one
    headers[0]["EXPTIME"] = 7200.0
    assert combined_header(headers)["DATE-END"] == "2024-03-09T23:30:00"
    # without an exposure the last frame's start is the latest time known
    del headers[1]["EXPTIME"]
    headers[0]["EXPTIME"] = 60.0
    assert combined_header(headers)["DATE-END"] == "2024-03-09T23:00:00.250"


def stack_header():
    header = fits.Header()
    for key, value in {
        "SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 7, "NAXIS2": 6, "BZERO": 0.0,
        "EXPTIME": 600.0, "NCOMBINE": 5, "DATE-OBS": "2024-03-09T21:30:00",
        "DATE-END": "2024-03-09T22:00:00", "OBJECT": "M 42", "RA": 83.82, "DEC": -5.39,
        "FILTER": "L", "AFSTATUS": "OK", "SRCFILE": "/data/" + "p" * 90,
    }.items():  # fmt: skip
        header[key] = value
    header.add_history("calibrated")
    header.add_history("astroflow stack: average")
    return header


def test_derived_header_carries_the_source_and_adds_its_step(tmp_path):
    source = stack_header()
    header = derived_header(source, ["astroflow deconvolve: Richardson-Lucy"])
    for key in ("EXPTIME", "NCOMBINE", "DATE-OBS", "DATE-END", "OBJECT", "RA", "DEC", "FILTER"):
        assert header[key] == source[key], key
    assert header["BUNIT"] == "ADU" and header["AFENCODE"] == "linear"
    assert list(header["HISTORY"]) == [
        "calibrated",
        "astroflow stack: average",
        "astroflow deconvolve: Richardson-Lucy",
    ]
    for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "BZERO", "AFSTATUS"):
        assert key not in header, key
    # the source is untouched, and the header survives a write of the product
    assert len(source["HISTORY"]) == 2
    write_image(tmp_path / "product.fits", np.zeros((4, 5), np.float32), header)
    written = read_header(tmp_path / "product.fits")
    assert written["NCOMBINE"] == 5 and written["SRCFILE"] == source["SRCFILE"]
    assert list(written["HISTORY"]) == list(header["HISTORY"]) and written["NAXIS1"] == 5


def test_derived_header_units_follow_the_encoding():
    source = stack_header()
    source["BUNIT"] = "electron"
    assert derived_header(source, [])["BUNIT"] == "electron"
    # stretched data have no physical unit, whatever the source said
    source["AFENCODE"] = "display"
    header = derived_header(source, [])
    assert header["BUNIT"] == "" and header["AFENCODE"] == "display"
    assert data_unit("display") == "" and data_unit("linear") == "ADU"


def test_iso_date():
    assert iso_date("2024-03-09T21:30:00") == "2024-03-09T21:30:00"
    assert iso_date("2024-03-09T23:30:00.5+02:00") == "2024-03-09T21:30:00.500"
    assert iso_date("2024-05-01T21:13:05.123456Z") == "2024-05-01T21:13:05.123"
    assert iso_date("9 March 2024") is None
