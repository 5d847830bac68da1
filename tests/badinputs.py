"""A corpus of bad (and awkward but valid) input files, made by code: no stored binaries.

Every public function here writes ONE small file into a given folder and returns its path; the
file name says what the file is (``fits_truncated.fits``, ``ser_absurd_size.ser``...). Pass
``name`` to choose another file name (a workflow test may want ``light 001.fits``). Frames are
tiny (32 x 48 px unless said otherwise) so that a test can make dozens of them in well under a
second.

The functions are grouped by format (FITS, camera RAW, SER, video, PNG/TIFF/JPEG). Each entry of
:data:`CORPUS` names one function and the format of the file it makes, so that a test can run
every file through every reader of that format (``tests/test_bad_inputs.py``); other tests
(workflow-level cases: frame sizes, file names, folders) import the single functions::

    from badinputs import fits_frame, fits_truncated
    fits_truncated(tmp_path / "lights", name="light_003.fits")

Values of the valid images are known: :func:`pixels` gives the ``(H, W)`` or ``(H, W, 3)``
array a correct reader must return for the images made from it (rows top first).
"""

from __future__ import annotations

import datetime as dt
import io
import struct
from pathlib import Path

import numpy as np

#: (height, width) of the frames of the corpus
SHAPE = (32, 48)
# Unsigned 16-bit values that survive every format's round trip; well inside 0..65535.
_BASE = (np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint32).reshape(SHAPE) * 37 % 60000 + 1000)


def pixels(channels=1, dtype=np.uint16):
    """The pixel values of the corpus's valid images, row 0 at the top.

    Parameters
    ----------
    channels : {1, 3, 4}, optional
        1: ``(H, W)``; 3: ``(H, W, 3)`` RGB; 4: ``(H, W, 4)`` RGBA (alpha 255 or 65535... a
        constant half of full scale, so that a reader that keeps alpha as colour is caught).
    dtype : numpy dtype, optional
        ``uint16`` (default, values 1000..60999) or ``uint8`` (the same values >> 8).

    Returns
    -------
    numpy.ndarray
        ``SHAPE``, ``SHAPE + (3,)`` or ``SHAPE + (4,)`` of ``dtype``.
    """
    base = _BASE if np.dtype(dtype) == np.uint16 else _BASE >> 8
    if channels == 1:
        return base.astype(dtype)
    planes = [base, base[::-1], base[:, ::-1]]
    if channels == 4:
        planes.append(np.full(SHAPE, 128 if np.dtype(dtype) == np.uint8 else 32768))
    return np.stack(planes, axis=-1).astype(dtype)


def _out(folder, name, default):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (name or default)


def _random_bytes(size, *, seed):
    """``size`` reproducible random bytes (the filling of the garbage files)."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _truncate(path, fraction):
    """Cut a file to ``fraction`` of its length (at least 1 byte less)."""
    data = path.read_bytes()
    path.write_bytes(data[: min(len(data) - 1, int(len(data) * fraction))])
    return path


def zero_bytes(folder, ext, name=None):
    """An empty file (0 bytes) with extension ``ext`` (``".fits"``, ``".nef"``, ``".ser"``...)."""
    path = _out(folder, name, f"zero_bytes{ext}")
    path.write_bytes(b"")
    return path


def truncated_copy(source, folder, fraction=0.5, name=None):
    """The first ``fraction`` of the bytes of an existing file (a real NEF, a real video...).

    ``source`` is only read; the copy gets the same name in ``folder`` unless ``name`` is given.
    """
    source = Path(source)
    path = _out(folder, name, f"truncated_{source.name}")
    path.write_bytes(source.read_bytes()[: int(source.stat().st_size * fraction)])
    return path


# --- FITS ------------------------------------------------------------------------------------


def fits_frame(folder, name=None, data=None, keywords=None):
    """A good FITS light: uint16 (BZERO 32768, as cameras write it), EXPTIME 30 s.

    ``data`` (default :func:`pixels`, stored bottom-up so that readers return :func:`pixels`)
    and ``keywords`` (added to, or replacing, the header's) let other functions and tests
    make variants.
    """
    from astropy.io import fits

    path = _out(folder, name, "fits_frame.fits")
    data = pixels() if data is None else np.asarray(data)
    stored = data[::-1] if data.ndim == 2 else np.moveaxis(data, 2, 0)[:, ::-1]
    hdu = fits.PrimaryHDU(np.ascontiguousarray(stored))
    hdu.header["EXPTIME"] = 30.0
    hdu.header["IMAGETYP"] = "Light Frame"
    for key, value in (keywords or {}).items():
        if value is None:
            hdu.header.remove(key, ignore_missing=True)
        else:
            hdu.header[key] = value
    hdu.writeto(path, overwrite=True)
    return path


def fits_truncated(folder, name=None):
    """A FITS file cut in the middle of its data (the header complete)."""
    path = fits_frame(folder, name or "fits_truncated.fits")
    return _truncate(path, 0.6)


def fits_truncated_header(folder, name=None):
    """A FITS file cut inside its header (1000 of the 2880 header bytes)."""
    path = fits_frame(folder, name or "fits_truncated_header.fits")
    path.write_bytes(path.read_bytes()[:1000])
    return path


def fits_garbage(folder, name=None):
    """4 KB of random bytes named ``.fits``."""
    path = _out(folder, name, "fits_garbage.fits")
    path.write_bytes(_random_bytes(4096, seed=1))
    return path


def fits_negative_exptime(folder, name=None):
    """A good FITS image whose EXPTIME is -30 (an absurd exposure)."""
    return fits_frame(folder, name or "fits_negative_exptime.fits", keywords={"EXPTIME": -30.0})


def fits_missing_exptime(folder, name=None):
    """A good FITS image without EXPTIME (nor EXPOSURE)."""
    return fits_frame(folder, name or "fits_missing_exptime.fits", keywords={"EXPTIME": None})


def fits_huge_naxis(folder, name=None):
    """A 16-bit FITS header claiming NAXIS1 = NAXIS2 = 100000 (20 GB of data) over 10 KB of data."""
    path = fits_frame(folder, name or "fits_huge_naxis.fits")
    return _patch_naxis(path, 100_000, 100_000)


def fits_huge_sparse(folder, name=None, shape=(8192, 8192)):
    """A complete FITS file of a large float32 image, as a sparse file (takes no disk space).

    Default 8192 x 8192 px: 256 MB of data that a reader with a small memory budget must refuse
    before it allocates them; the header and the size on disk agree, so only the budget can
    refuse it.
    """
    from astropy.io import fits

    path = _out(folder, name, "fits_huge_sparse.fits")
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 2
    header["NAXIS1"] = shape[1]
    header["NAXIS2"] = shape[0]
    header["EXPTIME"] = 30.0
    block = header.tostring().encode("ascii")
    n_data = shape[0] * shape[1] * 4
    with open(path, "wb") as fh:
        fh.write(block)
        fh.truncate(len(block) + -(-n_data // 2880) * 2880)
    return path


def _patch_naxis(path, naxis1, naxis2):
    """Rewrite NAXIS1/NAXIS2 of a FITS primary header in place, keeping its byte layout."""
    raw = bytearray(path.read_bytes())
    for key, value in (("NAXIS1", naxis1), ("NAXIS2", naxis2)):
        at = raw.index(key.ljust(8).encode())
        raw[at : at + 80] = f"{key:<8}= {value:>20}".ljust(80).encode()
    path.write_bytes(bytes(raw))
    return path


def fits_bitpix64(folder, name=None):
    """A FITS image of 64-bit integers (BITPIX 64) holding :func:`pixels` values."""
    return fits_frame(folder, name or "fits_bitpix64.fits", data=pixels().astype(np.int64))


def fits_nan_filled(folder, name=None):
    """A float32 FITS image whose pixels are all NaN."""
    return fits_frame(folder, name or "fits_nan_filled.fits", data=np.full(SHAPE, np.nan, np.float32))


def fits_inf_filled(folder, name=None):
    """A float32 FITS image whose pixels are all +Inf."""
    return fits_frame(folder, name or "fits_inf_filled.fits", data=np.full(SHAPE, np.inf, np.float32))


def fits_some_nan(folder, name=None):
    """A float32 FITS image of :func:`pixels` with NaN in its first row (dead pixels marked NaN)."""
    data = pixels().astype(np.float32)
    data[0] = np.nan
    return fits_frame(folder, name or "fits_some_nan.fits", data=data)


def fits_table_only(folder, name=None):
    """A FITS file whose only data is a binary table (empty primary HDU, no image)."""
    from astropy.io import fits

    path = _out(folder, name, "fits_table_only.fits")
    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return path


def fits_scaled(folder, name=None):
    """An int16 FITS image with BSCALE = 2, BZERO = 1000: physical values are :func:`pixels`.

    Stored values are ``(pixels() - 1000) / 2`` (pixels() of even value minus 1000 are exact).
    """
    from astropy.io import fits

    path = _out(folder, name, "fits_scaled.fits")
    physical = (pixels() // 2 * 2).astype(np.int64)
    stored = ((physical - 1000) // 2 - 16384).astype(np.int16)
    hdu = fits.PrimaryHDU(np.ascontiguousarray(stored[::-1]))
    hdu.header["BSCALE"] = 2.0
    hdu.header["BZERO"] = 1000.0 + 2 * 16384
    hdu.header["EXPTIME"] = 30.0
    hdu.writeto(path, overwrite=True)
    return path


def fits_scaled_values():
    """The physical values a reader must return for :func:`fits_scaled`."""
    return (pixels() // 2 * 2).astype(np.float32)


def fits_compressed(folder, name=None):
    """A tile-compressed (fpack RICE_1, lossless) 16-bit FITS image of :func:`pixels`, ``.fits.fz``."""
    from astropy.io import fits

    path = _out(folder, name, "fits_compressed.fits.fz")
    hdu = fits.CompImageHDU(np.ascontiguousarray(pixels()[::-1]), compression_type="RICE_1")
    hdu.header["EXPTIME"] = 30.0
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def fits_compressed_truncated(folder, name=None):
    """A tile-compressed FITS image cut in the middle of its compressed table."""
    path = fits_compressed(folder, name or "fits_compressed_truncated.fits.fz")
    return _truncate(path, 0.7)


def fits_gzip(folder, name=None):
    """A good FITS light (:func:`fits_frame`) gzipped whole, ``.fits.gz``."""
    import gzip

    path = _out(folder, name, "fits_gzip.fits.gz")
    plain = fits_frame(folder, path.name.removesuffix(".gz") + ".tmp")
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    return path


def fits_gzip_truncated(folder, name=None):
    """A gzipped FITS light cut at 60% of its compressed length."""
    return _truncate(fits_gzip(folder, name or "fits_gzip_truncated.fits.gz"), 0.6)


def fits_rgb_cube(folder, name=None):
    """A float32 FITS ``(3, H, W)`` colour cube of :func:`pixels(3)`."""
    return fits_frame(folder, name or "fits_rgb_cube.fits", data=pixels(3).astype(np.float32))


def fits_4d(folder, name=None):
    """A FITS image of NAXIS = 4 (2 x 3 x H x W), which no reader takes as one frame."""
    from astropy.io import fits

    path = _out(folder, name, "fits_4d.fits")
    fits.PrimaryHDU(np.zeros((2, 3) + SHAPE, np.float32)).writeto(path, overwrite=True)
    return path


# --- Camera RAW --------------------------------------------------------------------------------


def dng_frame(folder, name=None, make="astroflow", model="SimCam DSLR"):
    """A good uncompressed DNG of a 32 x 48 RGGB mosaic (:func:`pixels` >> 2, 14-bit), 30 s."""
    from astroflow.simulation.night import write_dng

    path = _out(folder, name, "dng_frame.dng")
    mosaic = (pixels() >> 2).astype(np.uint16)
    write_dng(path, mosaic, exposure_s=30.0, timestamp=dt.datetime(2024, 3, 1, 22, 0, 0),
              black_level_adu=256, make=make, model=model)
    return path


def dng_truncated(folder, name=None):
    """A DNG cut to half its length (in the middle of the mosaic)."""
    return _truncate(dng_frame(folder, name or "dng_truncated.dng"), 0.5)


def dng_unknown_camera(folder, name=None):
    """A good DNG from a camera no one knows (Make 'Nobody', Model 'Mystery 9000')."""
    return dng_frame(folder, name or "dng_unknown_camera.dng", make="Nobody", model="Mystery 9000")


def raw_really_jpeg(folder, name=None):
    """A JPEG photograph named ``.nef`` (what a camera's JPEG+RAW mode mix-up gives)."""
    path = _out(folder, name, "raw_really_jpeg.nef")
    path.write_bytes(_jpeg_bytes(pixels(3, np.uint8)))
    return path


def raw_unknown_camera(folder, name=None):
    """A 16-bit TIFF mosaic named ``.nef`` whose Make/Model no RAW decoder knows (Acme RX-1)."""
    import tifffile

    path = _out(folder, name, "raw_unknown_camera.nef")
    tifffile.imwrite(path, pixels(), photometric="minisblack",
                     extratags=[(271, "s", 0, "Acme", True), (272, "s", 0, "RX-1", True)])
    return path


def raw_garbage(folder, name=None, ext=".cr2"):
    """64 KB of random bytes named as a camera RAW (``.cr2`` unless ``ext``)."""
    path = _out(folder, name, f"raw_garbage{ext}")
    path.write_bytes(_random_bytes(65536, seed=2))
    return path


# --- SER ---------------------------------------------------------------------------------------


def ser_header(colour_id=0, width=SHAPE[1], height=SHAPE[0], depth=8, count=3, endian=0):
    """The 178-byte header of a SER file (format version 3) with the fields given."""
    return struct.pack("<14s7i40s40s40sqq", b"LUCAM-RECORDER", 0, colour_id, endian, width, height,
                       depth, count, b"", b"", b"", 0, 0)


def ser_frames(count=3, dtype=np.uint8):
    """``count`` mono frames ``(count, H, W)`` of ``dtype``: frame k is :func:`pixels` + k."""
    return np.stack([pixels(1, dtype) + k for k in range(count)])


def ser_file(folder, name=None, count=3, declared=None, width=SHAPE[1], height=SHAPE[0]):
    """A mono 8-bit SER file holding ``count`` frames of :func:`ser_frames`.

    ``declared`` (default ``count``) is the FrameCount written in the header; ``width`` and
    ``height`` the frame size it claims (the data are always ``count`` frames of ``SHAPE``).
    """
    path = _out(folder, name, "ser_file.ser")
    frames = ser_frames(count)
    declared = count if declared is None else declared
    path.write_bytes(ser_header(width=width, height=height, count=declared) + frames.tobytes())
    return path


def ser_truncated(folder, name=None):
    """A SER file whose header declares 100 frames; it holds 3 and a half."""
    path = ser_file(folder, name or "ser_truncated.ser", count=4, declared=100)
    return _truncate(path, 0.9)


def ser_absurd_count(folder, name=None):
    """A SER file whose header declares 2**31 - 1 frames; it holds 2."""
    return ser_file(folder, name or "ser_absurd_count.ser", count=2, declared=2**31 - 1)


def ser_absurd_size(folder, name=None):
    """A SER file whose header claims 100000 x 100000 px frames (10 GB each); it holds 4.5 KB."""
    return ser_file(folder, name or "ser_absurd_size.ser", width=100_000, height=100_000)


def ser_zero_size(folder, name=None):
    """A SER file whose header claims 0 x 32 px frames."""
    return ser_file(folder, name or "ser_zero_size.ser", width=0)


def ser_header_only(folder, name=None):
    """A SER file cut inside its 178-byte header (100 bytes)."""
    path = _out(folder, name, "ser_header_only.ser")
    path.write_bytes(ser_header()[:100])
    return path


def ser_not_ser(folder, name=None):
    """A PNG named ``.ser``: its first bytes are not ``LUCAM-RECORDER``."""
    path = _out(folder, name, "ser_not_ser.ser")
    path.write_bytes(_png_bytes(pixels(1, np.uint8)) + b"\0" * 200)
    return path


def ser_bad_depth(folder, name=None):
    """A SER file whose header gives PixelDepthPerPlane 64."""
    path = _out(folder, name, "ser_bad_depth.ser")
    path.write_bytes(ser_header(depth=64) + ser_frames(3).tobytes())
    return path


# --- Video -------------------------------------------------------------------------------------


def video_frames(count=12):
    """``count`` RGB uint8 frames ``(count, 64, 96, 3)``: a bright square moving on grey."""
    frames = np.full((count, 64, 96, 3), 60, np.uint8)
    for k in range(count):
        frames[k, 20:40, 10 + 4 * k : 30 + 4 * k] = (230, 180, 90)
    return frames


def video_file(folder, name=None, count=12):
    """A good MPEG-4 AVI of :func:`video_frames` (64 x 96 px, yuv420p, 10 fps)."""
    import av

    path = _out(folder, name, "video_file.avi")
    frames = video_frames(count)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.gop_size = 4
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_truncated(folder, name=None):
    """An AVI of 60 frames cut at 60% of its length (its header still declares all 60)."""
    return _truncate(video_file(folder, name or "video_truncated.avi", count=60), 0.6)


def video_broken_stream(folder, name=None):
    """An AVI whose middle third of bytes is overwritten with random bytes (a damaged stream)."""
    path = video_file(folder, name or "video_broken_stream.avi", count=24)
    raw = bytearray(path.read_bytes())
    start, stop = len(raw) // 3, 2 * len(raw) // 3
    raw[start:stop] = _random_bytes(stop - start, seed=3)
    path.write_bytes(bytes(raw))
    return path


def video_garbage(folder, name=None):
    """50 KB of random bytes named ``.avi``."""
    path = _out(folder, name, "video_garbage.avi")
    path.write_bytes(_random_bytes(50_000, seed=4))
    return path


# --- PNG, TIFF, JPEG -----------------------------------------------------------------------------


def _png_bytes(array, mode=None):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes(array):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


#: PNG/TIFF variants: name -> (channels of :func:`pixels`, dtype)
IMAGE_VARIANTS = {
    "mono8": (1, np.uint8),
    "mono16": (1, np.uint16),
    "rgb8": (3, np.uint8),
    "rgb16": (3, np.uint16),
    "rgba8": (4, np.uint8),
    "rgba16": (4, np.uint16),
}


def png_image(folder, variant="rgb8", name=None):
    """A PNG of :func:`pixels` as ``variant`` (a key of :data:`IMAGE_VARIANTS`), written by OpenCV.

    OpenCV writes 16-bit RGB and RGBA PNGs, which Pillow cannot.
    """
    import cv2

    path = _out(folder, name, f"png_{variant}.png")
    channels, dtype = IMAGE_VARIANTS[variant]
    array = pixels(channels, dtype)
    if channels > 1:
        array = array[..., [2, 1, 0, 3][:channels]]  # OpenCV writes BGR(A)
    ok, encoded = cv2.imencode(".png", array)
    assert ok, f"OpenCV cannot encode {variant}"
    path.write_bytes(encoded.tobytes())
    return path


def palette_colours():
    """The 4-colour palette of :func:`png_palette` and :func:`tiff_palette`, ``(4, 3)`` uint8."""
    return np.array([[0, 0, 0], [250, 20, 20], [20, 250, 20], [30, 30, 240]], np.uint8)


def palette_indices():
    """The ``(H, W)`` uint8 palette indices (0..3) of the palette images."""
    return (pixels(1, np.uint16) % 4).astype(np.uint8)


def palette_rgb():
    """The ``(H, W, 3)`` colours a reader must return for the palette images (uint8 scale)."""
    return palette_colours()[palette_indices()]


def png_palette(folder, name=None):
    """An 8-bit palette PNG (colour type 3) of :func:`palette_indices` with :func:`palette_colours`."""
    from PIL import Image

    path = _out(folder, name, "png_palette.png")
    image = Image.fromarray(palette_indices(), mode="P")
    image.putpalette(palette_colours().ravel().tolist())
    image.save(path, format="PNG")
    return path


def png_grey_alpha(folder, name=None):
    """An 8-bit grey + alpha PNG (colour type 4) of :func:`pixels` (uint8) with alpha 128."""
    from PIL import Image

    path = _out(folder, name, "png_grey_alpha.png")
    grey = pixels(1, np.uint8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 128)], axis=-1), mode="LA").save(path)
    return path


def png_truncated(folder, name=None):
    """A 16-bit RGB PNG cut at half its length."""
    return _truncate(png_image(folder, "rgb16", name or "png_truncated.png"), 0.5)


def tiff_image(folder, variant="rgb16", name=None):
    """A TIFF of :func:`pixels` as ``variant`` (a key of :data:`IMAGE_VARIANTS`), by tifffile.

    RGBA is written with an unassociated-alpha extra sample, as image editors do.
    """
    import tifffile

    path = _out(folder, name, f"tiff_{variant}.tif")
    channels, dtype = IMAGE_VARIANTS[variant]
    array = pixels(channels, dtype)
    if channels == 1:
        tifffile.imwrite(path, array, photometric="minisblack")
    else:
        tifffile.imwrite(path, array, photometric="rgb",
                         extrasamples=("unassalpha",) if channels == 4 else None)
    return path


def tiff_palette(folder, name=None):
    """An 8-bit palette TIFF (photometric PALETTE) of :func:`palette_indices`.

    The TIFF colour map is 16-bit: each colour of :func:`palette_colours` times 257.
    """
    import tifffile

    path = _out(folder, name, "tiff_palette.tif")
    colourmap = np.zeros((3, 256), np.uint16)
    colourmap[:, :4] = palette_colours().T.astype(np.uint16) * 257
    tifffile.imwrite(path, palette_indices(), photometric="palette", colormap=colourmap)
    return path


def tiff_truncated(folder, name=None):
    """A 16-bit RGB TIFF cut at half its length."""
    return _truncate(tiff_image(folder, "rgb16", name or "tiff_truncated.tif"), 0.5)


def tiff_huge_claim(folder, name=None):
    """A TIFF whose one strip claims 100000 x 100000 16-bit px (the IFD rewritten), 3 KB long."""
    import tifffile

    path = tiff_image(folder, "mono16", name or "tiff_huge_claim.tif")
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        offsets = [tags["ImageWidth"].valueoffset, tags["ImageLength"].valueoffset]
        types = [tags["ImageWidth"].dtype, tags["ImageLength"].dtype]
    for offset, kind in zip(offsets, types, strict=True):
        fmt = "<I" if kind == 4 else "<H"
        value = 100_000 if kind == 4 else 65_535
        raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(raw))
    return path


def xisf_garbage(folder, name=None):
    """4 KB of random bytes named ``.xisf``."""
    path = _out(folder, name, "xisf_garbage.xisf")
    path.write_bytes(_random_bytes(4096, seed=5))
    return path


def jpeg_image(folder, name=None):
    """A good RGB JPEG of :func:`pixels` (uint8), quality 95."""
    path = _out(folder, name, "jpeg_image.jpg")
    path.write_bytes(_jpeg_bytes(pixels(3, np.uint8)))
    return path


def jpeg_truncated(folder, name=None):
    """A JPEG cut at half its length (no end-of-image marker)."""
    return _truncate(jpeg_image(folder, name or "jpeg_truncated.jpg"), 0.5)


def _zero(ext):
    def make(folder, name=None):
        return zero_bytes(folder, ext, name)

    make.__doc__ = f"An empty ``{ext}`` file (0 bytes)."
    make.__name__ = f"zero_bytes_{ext.strip('.').replace('.', '_')}"
    return make


def _variant(maker, variant):
    def make(folder, name=None):
        return maker(folder, variant, name)

    make.__doc__ = f"{maker.__doc__.splitlines()[0]} Variant {variant}."
    make.__name__ = f"{maker.__name__}_{variant}"
    return make


#: every corpus file: case name -> (function(folder) -> path, format of formats.FORMATS)
CORPUS = {
    **{f"zero_bytes_{fmt}_{ext.strip('.')}": (_zero(ext), fmt) for fmt, ext in (
        ("fits", ".fits"), ("fits", ".fits.fz"), ("raw", ".nef"), ("raw", ".dng"), ("ser", ".ser"),
        ("video", ".avi"), ("png", ".png"), ("tiff", ".tif"), ("jpeg", ".jpg"), ("xisf", ".xisf"),
    )},
    "fits_frame": (fits_frame, "fits"),
    "fits_truncated": (fits_truncated, "fits"),
    "fits_truncated_header": (fits_truncated_header, "fits"),
    "fits_garbage": (fits_garbage, "fits"),
    "fits_negative_exptime": (fits_negative_exptime, "fits"),
    "fits_missing_exptime": (fits_missing_exptime, "fits"),
    "fits_huge_naxis": (fits_huge_naxis, "fits"),
    "fits_bitpix64": (fits_bitpix64, "fits"),
    "fits_nan_filled": (fits_nan_filled, "fits"),
    "fits_inf_filled": (fits_inf_filled, "fits"),
    "fits_some_nan": (fits_some_nan, "fits"),
    "fits_table_only": (fits_table_only, "fits"),
    "fits_scaled": (fits_scaled, "fits"),
    "fits_compressed": (fits_compressed, "fits"),
    "fits_compressed_truncated": (fits_compressed_truncated, "fits"),
    "fits_gzip": (fits_gzip, "fits"),
    "fits_gzip_truncated": (fits_gzip_truncated, "fits"),
    "fits_rgb_cube": (fits_rgb_cube, "fits"),
    "fits_4d": (fits_4d, "fits"),
    "dng_frame": (dng_frame, "raw"),
    "dng_truncated": (dng_truncated, "raw"),
    "dng_unknown_camera": (dng_unknown_camera, "raw"),
    "raw_really_jpeg": (raw_really_jpeg, "raw"),
    "raw_unknown_camera": (raw_unknown_camera, "raw"),
    "raw_garbage": (raw_garbage, "raw"),
    "ser_file": (ser_file, "ser"),
    "ser_truncated": (ser_truncated, "ser"),
    "ser_absurd_count": (ser_absurd_count, "ser"),
    "ser_absurd_size": (ser_absurd_size, "ser"),
    "ser_zero_size": (ser_zero_size, "ser"),
    "ser_header_only": (ser_header_only, "ser"),
    "ser_not_ser": (ser_not_ser, "ser"),
    "ser_bad_depth": (ser_bad_depth, "ser"),
    "video_file": (video_file, "video"),
    "video_truncated": (video_truncated, "video"),
    "video_broken_stream": (video_broken_stream, "video"),
    "video_garbage": (video_garbage, "video"),
    **{f"png_{v}": (_variant(png_image, v), "png") for v in IMAGE_VARIANTS},
    "png_palette": (png_palette, "png"),
    "png_grey_alpha": (png_grey_alpha, "png"),
    "png_truncated": (png_truncated, "png"),
    **{f"tiff_{v}": (_variant(tiff_image, v), "tiff") for v in IMAGE_VARIANTS},
    "tiff_palette": (tiff_palette, "tiff"),
    "tiff_truncated": (tiff_truncated, "tiff"),
    "tiff_huge_claim": (tiff_huge_claim, "tiff"),
    "xisf_garbage": (xisf_garbage, "xisf"),
    "jpeg_image": (jpeg_image, "jpeg"),
    "jpeg_truncated": (jpeg_truncated, "jpeg"),
}
