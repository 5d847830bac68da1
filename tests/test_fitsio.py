import numpy as np
import pytest
from astropy.io import fits

from astroflow.io.fits import (
    combined_header,
    image_shape,
    is_rejected,
    read_header,
    read_image,
    write_image,
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
