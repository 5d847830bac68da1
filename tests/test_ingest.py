"""Tests of astroflow.io.ingest: RAW, FITS and TIFF reading, metadata, provenance, rejection."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import rawpy
import tifffile
from astropy.io import fits

from astroflow.io.fits import is_rejected, read_image
from astroflow.io.ingest import UnreadableFrameError, ingest_frame, read_frame, sha256_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SBIG = DATA / "sbig-stl1001"
NEF = DATA / "raw-nikon-d1" / "RAW_NIKON_D1.NEF"
needs_sbig = pytest.mark.skipif(not SBIG.is_dir(), reason=f"real SBIG frames not found at {SBIG}")
needs_nef = pytest.mark.skipif(not NEF.is_file(), reason=f"real Nikon NEF not found at {NEF}")


def make_dng(path, pattern="RGGB", shape=(48, 64), black=512, white=16383, seed=0):
    """A pidng DNG of a 14-bit mosaic (16-bit container, as DNG converters store it)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CFAPattern, DNGVersion, PhotometricInterpretation

    rng = np.random.default_rng(seed)
    mosaic = rng.integers(black, white + 1, size=shape, dtype=np.uint16)
    tags = DNGTags()
    tags.set(Tag.ImageWidth, shape[1])
    tags.set(Tag.ImageLength, shape[0])
    tags.set(Tag.TileWidth, shape[1])
    tags.set(Tag.TileLength, shape[0])
    tags.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    tags.set(Tag.SamplesPerPixel, 1)
    tags.set(Tag.BitsPerSample, 16)
    tags.set(Tag.CFARepeatPatternDim, [2, 2])
    tags.set(Tag.CFAPattern, getattr(CFAPattern, pattern))
    tags.set(Tag.BlackLevel, black)
    tags.set(Tag.WhiteLevel, white)
    tags.set(Tag.Make, "Astroflow")
    tags.set(Tag.Model, "Test Camera")
    tags.set(Tag.ExposureTime, [[30, 1]])
    tags.set(Tag.PhotographicSensitivity, [800])
    tags.set(Tag.DateTimeOriginal, "2024:03:01 22:10:05")
    tags.set(Tag.DNGVersion, DNGVersion.V1_4)
    tags.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    tags.set(Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]])
    tags.set(Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]])
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    writer.convert(mosaic, filename=str(path.with_suffix("")))
    return mosaic


def make_fits(path, data, keywords=None):
    """A FITS file the way cameras write it (uint16 gets BZERO 32768 from astropy)."""
    hdu = fits.PrimaryHDU(data)
    for key, value in (keywords or {}).items():
        hdu.header[key] = value
    hdu.writeto(path)
    return path


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_dng_mosaic_and_metadata(tmp_path, pattern):
    path = tmp_path / "frame.dng"
    mosaic = make_dng(path, pattern=pattern)
    data, meta = read_frame(path)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, mosaic.astype(np.float32))
    assert meta["BAYERPAT"] == pattern
    assert meta["BLACKLVL"] == 512
    assert meta["WHITELVL"] == 16383
    assert meta["INSTRUME"] == "Astroflow Test Camera"
    assert meta["EXPTIME"] == pytest.approx(30.0)
    assert meta["ISOSPEED"] == 800
    assert meta["DATE-OBS"] == "2024-03-01T22:10:05"
    assert (meta["NAXIS1"], meta["NAXIS2"]) == (64, 48)


def test_extension_is_case_insensitive(tmp_path):
    path = tmp_path / "FRAME.DNG"
    mosaic = make_dng(path.with_name("frame.dng"))
    path.with_name("frame.dng").rename(path)
    data, _ = read_frame(path)
    np.testing.assert_array_equal(data, mosaic)


def test_fits_bzero_applied_and_aliases(tmp_path):
    rng = np.random.default_rng(1)
    adu = rng.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    path = make_fits(
        tmp_path / "cam.fit",
        adu,
        {
            "EXPOSURE": 12.5,
            "CCD-TEMP": -9.5,
            "DATE-OBS": "2021-05-04",
            "TIME-OBS": "01:02:03.5",
            "BAYERPAT": "RGGB",
            "XBAYROFF": 1,
            "YBAYROFF": 0,
            # as NINA writes it: rows stored top-down, and read so
            "ROWORDER": "TOP-DOWN",
        },
    )
    assert fits.getheader(path)["BZERO"] == 32768
    data, meta = read_frame(path)
    np.testing.assert_array_equal(data, adu.astype(np.float32))
    assert meta["EXPTIME"] == 12.5
    assert meta["CCD-TEMP"] == -9.5
    assert meta["DATE-OBS"] == "2021-05-04T01:02:03.500"
    # The pattern named by BAYERPAT starts one column in: pixel (0, 0) is the second colour.
    assert meta["BAYERPAT"] == "GRBG"
    assert "ISOSPEED" not in meta and "BLACKLVL" not in meta


def test_fits_colour_cube_becomes_channels_last(tmp_path):
    cube = np.stack([np.full((5, 7), v, dtype=np.float32) for v in (1.0, 2.0, 3.0)])
    path = make_fits(tmp_path / "rgb.fits", cube, {"BAYERPAT": "RGGB"})
    data, meta = read_frame(path)
    assert data.shape == (5, 7, 3)
    np.testing.assert_array_equal(data[2, 3], [1.0, 2.0, 3.0])
    assert "BAYERPAT" not in meta and meta["NAXIS3"] == 3


@pytest.mark.parametrize("roworder", [None, "BOTTOM-UP", "TOP-DOWN"])
@pytest.mark.parametrize("planes", [0, 3], ids=["mono", "rgb"])
def test_fits_rows_are_read_top_row_first(tmp_path, roworder, planes):
    stored = np.arange(4 * 5, dtype=np.uint16).reshape(4, 5)
    if planes:
        stored = np.stack([stored + 100 * k for k in range(planes)])
    path = make_fits(tmp_path / "cam.fits", stored, {"ROWORDER": roworder} if roworder else {})
    data, _ = read_frame(path)
    top_down = stored if roworder == "TOP-DOWN" else stored[..., ::-1, :]
    np.testing.assert_array_equal(data, np.moveaxis(top_down, 0, 2) if planes else top_down)


# Values of a CFA test mosaic: red, green and blue sites each have their own.
CFA_VALUES = {"R": 1000.0, "G": 30000.0, "B": 60000.0}


def cfa_mosaic(height, pattern):
    """A (height, 6) uint16 mosaic whose first 2x2 cell is ``pattern``."""
    mosaic = np.empty((height, 6), np.uint16)
    for dy in (0, 1):
        for dx in (0, 1):
            mosaic[dy::2, dx::2] = CFA_VALUES[pattern[2 * dy + dx]]
    return mosaic


def mosaic_pattern(data):
    """The colours of ``data[0:2, 0:2]`` of a mosaic made by :func:`cfa_mosaic`."""
    colour = {value: name for name, value in CFA_VALUES.items()}
    return "".join(colour[float(v)] for v in data[:2, :2].ravel())


# Each case is a file in which Siril 1.0.6 (Debian's) finds the red pixels where they are
# (checked with its extract_Ha; test_siril.py does so for our own files): the stored mosaic
# starts with the cell `stored`, and the header says BAYERPAT, YBAYROFF and ROWORDER.
@pytest.mark.parametrize(
    ("height", "stored", "keywords"),
    [
        # BOTTOM-UP: BAYERPAT is the top-left cell, the last rows stored.
        (8, "GBRG", {"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP"}),
        (9, "RGGB", {"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP"}),
        (8, "RGGB", {"BAYERPAT": "RGGB", "YBAYROFF": 1, "ROWORDER": "BOTTOM-UP"}),
        # TOP-DOWN: the top-left cell is the first stored.
        (8, "RGGB", {"BAYERPAT": "RGGB", "ROWORDER": "TOP-DOWN"}),
        (8, "GBRG", {"BAYERPAT": "RGGB", "YBAYROFF": 1, "ROWORDER": "TOP-DOWN"}),
        # No ROWORDER: Siril takes BAYERPAT as the first cell stored (camera drivers write
        # top-down without saying so), while the rows are read bottom-up.
        (8, "GRBG", {"BAYERPAT": "GRBG"}),
        (9, "GRBG", {"BAYERPAT": "GRBG"}),
        (8, "GBRG", {"BAYERPAT": "RGGB", "YBAYROFF": 1}),
    ],
)
def test_fits_bayer_pattern_is_read_as_siril_reads_it(tmp_path, height, stored, keywords):
    path = make_fits(tmp_path / "cfa.fits", cfa_mosaic(height, stored), keywords)
    data, meta = read_frame(path)
    assert meta["BAYERPAT"] == mosaic_pattern(data)
    # and it survives the workflow's own FITS (written bottom-up, read back top-down)
    header = ingest_frame(path, "light", tmp_path / "out.fits")
    back, _ = read_image(tmp_path / "out.fits")
    assert header["BAYERPAT"] == mosaic_pattern(back) == meta["BAYERPAT"]


def test_tile_compressed_fits(tmp_path):
    adu = np.random.default_rng(2).integers(0, 4000, size=(64, 64)).astype(np.int32)
    path = tmp_path / "frame.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(adu, header=fits.Header({"EXPTIME": 3.0}))]).writeto(
        path
    )
    data, meta = read_frame(path)
    # No ROWORDER: stored bottom-up, the FITS way, so the last row stored is the top one.
    np.testing.assert_array_equal(data, adu[::-1])
    assert meta["EXPTIME"] == 3.0


@pytest.mark.parametrize("shape", [(6, 9), (6, 9, 3), (3, 6, 9)])
def test_tiff(tmp_path, shape):
    image = np.random.default_rng(3).integers(0, 65536, size=shape, dtype=np.uint16)
    path = tmp_path / "frame.TIFF"
    if len(shape) == 2:
        tifffile.imwrite(path, image, photometric="minisblack")
    else:
        tifffile.imwrite(
            path, image, photometric="rgb", planarconfig="separate" if shape[0] == 3 else "contig"
        )
    data, _ = read_frame(path)
    expected = np.moveaxis(image, 0, 2) if shape[0] == 3 else image
    np.testing.assert_array_equal(data, expected)


def test_sha256_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"astroflow" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"astroflow" * 1000).hexdigest()


def test_ingest_frame_type_from_folder_not_header(tmp_path):
    src = make_fits(
        tmp_path / "nébuleuse flat.fits",
        np.ones((8, 8), np.uint16),
        {"IMAGETYP": "Light Frame", "EXPTIME": 2.0},
    )
    header = ingest_frame(src, "flat", tmp_path / "out" / "flat.fits")
    assert header["IMAGETYP"] == "FLAT"
    assert header["SRCSHA"] == sha256_file(src)
    assert header["SRCFILE"].endswith("n\\xe9buleuse flat.fits")
    assert not is_rejected(header)
    assert any("ingest" in str(line) for line in header["HISTORY"])
    data, on_disk = read_image(tmp_path / "out" / "flat.fits")
    assert data.shape == (8, 8) and on_disk["EXPTIME"] == 2.0


def test_ingest_frame_unknown_type_raises(tmp_path):
    src = make_fits(tmp_path / "a.fits", np.ones((4, 4), np.uint16))
    with pytest.raises(ValueError, match="frame type"):
        ingest_frame(src, "science", tmp_path / "out.fits")


def truncated_copy(src, dst, fraction):
    blob = Path(src).read_bytes()
    dst.write_bytes(blob[: int(len(blob) * fraction)])
    return dst


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.fits", b"", "empty"),
        ("noise.cr2", bytes(range(256)) * 40, "cannot read camera RAW"),
        ("garbage.fits", b"not a fits file at all" * 200, "cannot read FITS"),
        ("frame.jpg", b"\xff\xd8\xff", "unknown image file extension"),
    ],
)
def test_unreadable_files_become_rejected_placeholders(tmp_path, name, content, problem):
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / "out.fits"
    header = ingest_frame(src, "light", out)
    assert is_rejected(header) and is_rejected(fits.getheader(out))
    assert str(src) in header["AFREASON"] and problem in header["AFREASON"]
    assert header["IMAGETYP"] == "LIGHT" and header["SRCSHA"] == hashlib.sha256(content).hexdigest()
    with pytest.raises(UnreadableFrameError, match=problem):
        read_frame(src)


def test_truncated_synthetic_fits_and_dng_rejected(tmp_path):
    good = make_fits(tmp_path / "good.fits", np.ones((300, 300), np.uint16))
    bad = truncated_copy(good, tmp_path / "bad.fits", 0.9)
    header = ingest_frame(bad, "dark", tmp_path / "bad_out.fits")
    assert is_rejected(header) and "truncated FITS" in header["AFREASON"] and str(bad) in header["AFREASON"]
    make_dng(tmp_path / "good.dng", shape=(200, 300))
    bad_dng = truncated_copy(tmp_path / "good.dng", tmp_path / "bad.dng", 0.5)
    header = ingest_frame(bad_dng, "light", tmp_path / "bad_dng.fits")
    assert is_rejected(header) and str(bad_dng) in header["AFREASON"]


@needs_sbig
def test_real_sbig_keeps_adu_and_classifies_by_folder(tmp_path):
    src = sorted((SBIG / "flat").glob("*.FIT"))[0]
    assert fits.getheader(src)["IMAGETYP"].strip() == "Light Frame"
    header = ingest_frame(src, "flat", tmp_path / "flat.fits")
    data, _ = read_image(tmp_path / "flat.fits")
    # CCDSoft writes no ROWORDER: the rows are stored bottom-up, the FITS way.
    expected = fits.getdata(src).astype(np.float32)[::-1]
    np.testing.assert_array_equal(data, expected)
    assert 10000 < np.median(data) < 30000
    assert header["IMAGETYP"] == "FLAT" and header["EXPTIME"] == 10.0
    assert header["INSTRUME"].startswith("SBIG STL-1001")
    assert header["DATE-OBS"].startswith("2018-04-23T")
    assert -6 < header["CCD-TEMP"] < -4
    assert "BAYERPAT" not in header


@needs_sbig
# 0.995 cuts into the last data rows; 0.999 would only cut the final padding, which is harmless.
@pytest.mark.parametrize("fraction", [0.5, 0.995])
def test_real_sbig_truncated_rejected(tmp_path, fraction):
    src = sorted((SBIG / "light").glob("*.FIT"))[0]
    bad = truncated_copy(src, tmp_path / src.name, fraction)
    header = ingest_frame(bad, "light", tmp_path / "out.fits")
    assert is_rejected(header)
    assert str(bad) in header["AFREASON"] and "truncated" in header["AFREASON"]


@needs_nef
def test_real_nef(tmp_path):
    data, meta = read_frame(NEF)
    assert data.shape == (1324, 2012) and data.dtype == np.float32
    with rawpy.imread(str(NEF)) as raw:
        np.testing.assert_array_equal(data, raw.raw_image_visible)
    assert meta["BAYERPAT"] == "BGGR"
    assert meta["BLACKLVL"] == 0 and meta["WHITELVL"] == 4095
    assert 0 <= data.min() and data.max() <= meta["WHITELVL"]
    assert "NIKON" in meta["INSTRUME"] and "D1" in meta["INSTRUME"]
    assert meta["EXPTIME"] == pytest.approx(1 / 250)
    assert meta["ISOSPEED"] == 200
    assert meta["DATE-OBS"].startswith("2000-11-19T13:01:50")


@needs_nef
def test_real_nef_truncated_rejected(tmp_path):
    bad = truncated_copy(NEF, tmp_path / "RAW_NIKON_D1.NEF", 0.8)
    header = ingest_frame(bad, "light", tmp_path / "out.fits")
    assert is_rejected(header)
    assert str(bad) in header["AFREASON"] and "RAW" in header["AFREASON"]


@needs_nef
def test_real_nef_copy_ingests_like_original(tmp_path):
    copy = shutil.copy(NEF, tmp_path / "copy.nef")
    header = ingest_frame(copy, "light", tmp_path / "out.fits")
    assert header["BAYERPAT"] == "BGGR" and header["SRCSHA"] == sha256_file(NEF)


def test_fits_without_final_padding_is_complete(tmp_path):
    image = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)
    padded = make_fits(tmp_path / "padded.fits", image).read_bytes()
    unpadded = tmp_path / "unpadded.fits"
    unpadded.write_bytes(padded[: 2880 + image.nbytes])
    data, _ = read_frame(unpadded)
    np.testing.assert_array_equal(data, image[::-1])


def test_fits_light_keeps_object_coordinates_filter_and_site(tmp_path):
    keywords = {
        "OBJECT": "M 94",
        "RA": 193.070835,
        "DEC": 40.979722,
        "OBJCTRA": "12 52 17.000",
        "OBJCTDEC": "+40 58 47.00",
        "TELESCOP": "S50",
        "INSTRUME": "Seestar S50",
        "INSFLNAM": "JohnsonV",
        "FOCALLEN": 250,
        "XPIXSZ": 2.9,
        "SITELAT": 32.8965,
        "SITELONG": "-79 45 45",
        "EXPTIME": 10.0,
    }
    path = make_fits(tmp_path / "light.fit", np.ones((8, 10), dtype=np.uint16), keywords)
    header = ingest_frame(path, "light", tmp_path / "out.fits")
    # as recorded: numbers stay numbers, sexagesimal text stays text; CAFOS' INSFLNAM is FILTER
    assert header["OBJECT"] == "M 94" and header["FILTER"] == "JohnsonV"
    assert header["RA"] == pytest.approx(193.070835) and header["DEC"] == pytest.approx(40.979722)
    assert header["OBJCTRA"] == "12 52 17.000" and header["OBJCTDEC"] == "+40 58 47.00"
    assert header["TELESCOP"] == "S50" and header["INSTRUME"] == "Seestar S50"
    assert header["FOCALLEN"] == 250.0 and header["XPIXSZ"] == pytest.approx(2.9)
    assert header["SITELAT"] == pytest.approx(32.8965) and header["SITELONG"] == "-79 45 45"
    assert header["BUNIT"] == "ADU"


def test_exif_focal_length_and_gps_site():
    from astroflow.io.ingest import _exif_meta

    gps = {1: "S", 2: (33.0, 52.0, 12.0), 3: "E", 4: (151.0, 12.0, 36.0)}
    meta = _exif_meta({37386: 135.0, "GPS": gps})
    assert meta["FOCALLEN"] == 135.0
    assert meta["SITELAT"] == pytest.approx(-(33 + 52 / 60 + 12 / 3600))
    assert meta["SITELONG"] == pytest.approx(151 + 12 / 60 + 36 / 3600)
    # a camera on a telescope records no lens and no position
    assert "FOCALLEN" not in _exif_meta({37386: 0.0}) and "SITELAT" not in _exif_meta({})
