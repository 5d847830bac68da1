"""One finished image in (the ``image`` target kind): PNG, TIFF, FITS or XISF, linear or stretched.

A finished image is either *linear* (a stack saved by Siril or PixInsight: float, or integer
data that is mostly dark) or *display* data (already stretched, 8 or 16-bit). Star removal
treats them differently (:mod:`astroflow.restoration.starless`), so the encoding is decided here and kept
in the FITS header (``AFENCODE``) with the bit depth (``AFBITS``).

XISF, PixInsight's format (https://pixinsight.com/doc/docs/XISF-1.0-spec/XISF-1.0-spec.html),
is read with the ``xisf`` package (Sergio Diaz, GPL-3): monolithic files, the first image,
UInt8/16/32 and Float32/64 samples, planar or normal (interleaved) pixel storage.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
from astropy.io import fits
from xisf import XISF

from astroflow.io.fits import FitsImageError, fits_text, input_image_hdu, iso_date, open_input, top_down_rows
from astroflow.io.formats import FINISHED_IMAGE, extensions, format_of
from astroflow.io.limits import MEMORY_MB, check_memory
from astroflow.io.tiff import read_tiff, tiff_shape

__all__ = [
    "CARRIED_KEYWORDS",
    "ENCODINGS",
    "UnreadableImageError",
    "choose_encoding",
    "probe_finished_image",
    "read_finished_header",
    "read_finished_image",
]

ENCODINGS = ("linear", "display")
# Integer data whose median is below this fraction of the full range is taken as linear.
LINEAR_MEDIAN_FRACTION = 0.02
#: FITS keywords of the observation that a finished image passes on to the products made from it.
CARRIED_KEYWORDS = (
    "OBJECT", "RA", "DEC", "OBJCTRA", "OBJCTDEC", "TELESCOP", "INSTRUME", "FILTER", "FOCALLEN",
    "XPIXSZ", "YPIXSZ", "SITELAT", "SITELONG", "EXPTIME", "NCOMBINE", "DATE-OBS", "DATE-END",
)  # fmt: skip
# Carried keywords whose value is text even when it looks like a number (an OBJECT of "42").
_TEXT_KEYWORDS = {
    "OBJECT", "OBJCTRA", "OBJCTDEC", "TELESCOP", "INSTRUME", "FILTER", "DATE-OBS", "DATE-END",
}  # fmt: skip
# XISF properties (spec section 11.5) that stand in for a missing FITS keyword, with the factor
# to the keyword's unit (None for text): focal length is in metres in XISF, mm in FITS.
_XISF_PROPERTIES = {
    "OBJECT": ("Observation:Object:Name", None),
    "RA": ("Observation:Object:RA", 1.0),
    "DEC": ("Observation:Object:Dec", 1.0),
    "DATE-OBS": ("Observation:Time:Start", None),
    "DATE-END": ("Observation:Time:End", None),
    "EXPTIME": ("Instrument:ExposureTime", 1.0),
    "FILTER": ("Instrument:Filter:Name", None),
    "TELESCOP": ("Instrument:Telescope:Name", None),
    "INSTRUME": ("Instrument:Camera:Name", None),
    "FOCALLEN": ("Instrument:Telescope:FocalLength", 1000.0),
    "XPIXSZ": ("Instrument:Sensor:XPixelSize", 1.0),
    "YPIXSZ": ("Instrument:Sensor:YPixelSize", 1.0),
    "SITELAT": ("Observation:Location:Latitude", 1.0),
    "SITELONG": ("Observation:Location:Longitude", 1.0),
}


class UnreadableImageError(ValueError):
    """An image file that cannot be read, or holds no 2-D or 3-channel image."""


def read_finished_image(path, memory_mb=MEMORY_MB):
    """Read one image file as float32, channels last.

    Parameters
    ----------
    path : str or os.PathLike
        PNG (8/16-bit; grey, grey + alpha, RGB, RGBA, palette; through OpenCV), TIFF (8/16-bit
        or float; mono, RGB, RGBA, planar RGB, palette), FITS (first image HDU, also
        tile-compressed; BZERO/BSCALE applied; a ``(3, H, W)`` cube is RGB) or XISF (first
        image; Gray or RGB, UInt8/16/32 or Float32/64, planar or normal pixel storage).
    memory_mb : float, optional
        Memory budget of the decoded image (MB, ``ingest.memory_mb``): a header claiming
        more is refused before the data are read.

    Returns
    -------
    image : numpy.ndarray
        float32 ``(H, W)`` or ``(H, W, 3)``, in the file's own units (0..255, 0..65535, or the
        float values; XISF UInt32 is scaled to 0..1, PixInsight's range of every sample
        format); alpha is dropped, a palette is applied (TIFF colour maps are 16-bit). Row 0 at
        the top: TIFF, PNG and XISF store the top row
        first; FITS rows are turned as :func:`astroflow.io.fits.top_down_rows` says (stored
        bottom-up unless ``ROWORDER = 'TOP-DOWN'``).
    bits : int
        8 or 16 for integer data, 32 for float data (and XISF UInt32).

    Raises
    ------
    UnreadableImageError
        Naming the file, when it cannot be read or is not a mono or RGB image, holds no finite
        pixel, or claims more than ``memory_mb`` (for XISF also: not monolithic, not 2-D, a
        colour space other than Gray or RGB, an unsupported sample format).
    """
    path, fmt = _image_format(path)
    try:
        if fmt == "fits":
            with open_input(path) as hdul:
                hdu = input_image_hdu(hdul, path, memory_mb)
                data = top_down_rows(np.asarray(hdu.data), hdu.header)
            if data.ndim == 3 and data.shape[0] in (3, 4):
                data = np.moveaxis(data, 0, 2)
        elif fmt == "tiff":
            data = read_tiff(path, memory_mb, UnreadableImageError)
        elif fmt == "xisf":
            data = _read_xisf(path, memory_mb)
        else:
            data = _read_png(path, memory_mb)
    except UnreadableImageError:
        raise
    except FitsImageError as exc:
        raise UnreadableImageError(str(exc)) from exc
    except Exception as exc:  # the readers raise many types; the user needs the file and cause
        raise UnreadableImageError(f"{path}: cannot read image: {exc}") from exc
    if data.ndim == 3 and data.shape[2] == 4:
        data = data[:, :, :3]
    if data.ndim == 3 and data.shape[2] in (1, 2):
        data = data[:, :, 0]  # grey, or grey and alpha
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 3)):
        raise UnreadableImageError(f"{path}: not a mono or RGB image (shape {data.shape})")
    if np.issubdtype(data.dtype, np.integer):
        bits = 8 if data.dtype.itemsize == 1 else 16
    else:
        bits = 32
    data = data.astype(np.float32)
    if not np.isfinite(data).any():
        raise UnreadableImageError(f"{path}: the image holds no finite pixel (all NaN or infinite)")
    return data, bits


def probe_finished_image(path, memory_mb=MEMORY_MB):
    """Check from its header alone that :func:`read_finished_image` can read an image file.

    A check made before any job runs (on an ``image`` target's file, when the workflow is
    parsed): it reads the header, not the image data, so it finds empty, mislabelled,
    truncated (FITS, TIFF) and oversized files, not damaged compressed data.

    Parameters
    ----------
    path : str or os.PathLike
        A PNG, TIFF, FITS or XISF file.
    memory_mb : float, optional
        Memory budget of the decoded image (MB, ``ingest.memory_mb``).

    Returns
    -------
    tuple of int
        ``(height, width, channels)`` the header gives (channels as stored, alpha included).

    Raises
    ------
    UnreadableImageError
        Naming the file and the problem: not an image extension, empty, not of its format,
        no image in it, truncated, or an image larger than ``memory_mb``.
    """
    path, fmt = _image_format(path)
    try:
        if fmt == "fits":
            with open_input(path) as hdul:
                header = input_image_hdu(hdul, path, memory_mb).header
                axes = [int(header[f"NAXIS{i}"]) for i in range(1, int(header["NAXIS"]) + 1)]
            if len(axes) > 3:
                raise UnreadableImageError(f"{path}: not a mono or RGB image (NAXIS {len(axes)}, axes {axes})")
            height, width = axes[1], axes[0]
            channels = axes[2] if len(axes) > 2 else 1
        elif fmt == "tiff":
            height, width, channels = tiff_shape(path, memory_mb, UnreadableImageError)
        elif fmt == "xisf":
            width, height, channels = _xisf_image(XISF(os.fspath(path)), path, memory_mb)["geometry"]
        else:
            width, height, _, colour_type = _png_header(path, memory_mb)
            channels = _PNG_SAMPLES.get(colour_type, 4)
    except UnreadableImageError:
        raise
    except FitsImageError as exc:
        raise UnreadableImageError(str(exc)) from exc
    except Exception as exc:  # the readers raise many types; the user needs the file and cause
        raise UnreadableImageError(f"{path}: cannot read the header: {exc}") from exc
    return int(height), int(width), int(channels)


def _image_format(path):
    """``(Path, format)`` of a finished image file, refused when its extension is not of one or
    it is empty."""
    path = Path(path)
    fmt = format_of(path)
    if fmt not in FINISHED_IMAGE:
        raise UnreadableImageError(
            f"{path}: not an image file (looked for {', '.join(extensions(FINISHED_IMAGE))})"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise UnreadableImageError(f"{path}: file is empty (0 bytes)")
    return path, fmt


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Samples per pixel of the PNG colour types (a palette image is decoded to RGB).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _read_png(path, memory_mb):
    """A PNG as ``(H, W)`` or ``(H, W, C)``, RGB(A) order, 8 or 16-bit as stored (OpenCV).

    OpenCV keeps 16-bit colour samples, which Pillow (imageio's reader) reduces to 8 bits.
    """
    _, _, _, colour_type = _png_header(path, memory_mb)
    # Mapped, not read: a file with gigabytes after its image costs only the pages decoded.
    image = cv2.imdecode(np.memmap(path, dtype=np.uint8, mode="r"), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UnreadableImageError(f"{path}: cannot read image: OpenCV cannot decode the PNG (truncated or corrupt)")
    if image.ndim == 3 and colour_type in (0, 4):
        image = image[..., 0]  # grey that OpenCV expanded to BGR(A)
    elif image.ndim == 3 and image.shape[2] >= 3:
        image = image[..., [2, 1, 0, 3][: image.shape[2]]]  # BGR(A) -> RGB(A)
    return image


def read_finished_header(path):
    """The observation keywords and history a finished image file carries.

    Parameters
    ----------
    path : str or os.PathLike
        An image file :func:`read_finished_image` reads.

    Returns
    -------
    astropy.io.fits.Header
        The :data:`CARRIED_KEYWORDS` the file records (``DATE-OBS``/``DATE-END`` as
        :func:`astroflow.io.fits.iso_date`, omitted when not ISO 8601) and its HISTORY lines.
        FITS: from the header of the image HDU. XISF: from the image's FITS keywords, else from
        the equivalent XISF properties (``Observation:Object:Name``, ``Instrument:ExposureTime``
        ...; focal length converted from m to mm). PNG and TIFF: empty.

    Raises
    ------
    UnreadableImageError
        Naming the file, when a FITS or XISF header cannot be read.
    """
    path = Path(path)
    fmt = format_of(path)
    header = fits.Header()
    try:
        if fmt == "fits":
            with open_input(path) as hdul:
                images = (h.header for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2)
                source = next(images, fits.Header())
                values = {key: source[key] for key in CARRIED_KEYWORDS if key in source}
                history = [str(line) for line in source.get("HISTORY", [])]
        elif fmt == "xisf":
            images = XISF(os.fspath(path)).get_images_metadata()
            values, history = _xisf_keywords(images[0]) if images else ({}, [])
        else:
            return header
    except Exception as exc:  # the readers raise many types; the user needs the file and cause
        raise UnreadableImageError(f"{path}: cannot read the header: {exc}") from exc
    for key in CARRIED_KEYWORDS:
        value = values.get(key)
        if key in ("DATE-OBS", "DATE-END") and value is not None:
            value = iso_date(str(value))
        if value is not None and value != "":
            # XISF text is UTF-8, FITS strings are ASCII
            header[key] = fits_text(value) if isinstance(value, str) else value
    for line in history:
        header.add_history(fits_text(line))
    return header


def choose_encoding(image, bits, requested="auto"):
    """Whether an image is linear or display (stretched) data.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W[, 3])`` as from :func:`read_finished_image`.
    bits : int
        8, 16 or 32 (float).
    requested : {"auto", "linear", "display"}, optional
        The target's ``encoding``; ``auto`` decides: float data is linear, integer data is linear
        when its median is below 2% of the full range (a linear stack saved as 16-bit TIFF is
        nearly black), else display.

    Returns
    -------
    str
        ``"linear"`` or ``"display"``.

    Raises
    ------
    ValueError
        For an unknown ``requested`` value, or display encoding asked for float data outside
        ``[0, 1]``.
    """
    if requested not in ("auto",) + ENCODINGS:
        raise ValueError(f"unknown encoding {requested!r} (auto, linear or display)")
    if requested == "display" and bits == 32:
        finite = image[np.isfinite(image)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError("display encoding of float data needs values in [0, 1]")
    if requested != "auto":
        return requested
    if bits == 32:
        return "linear"
    full = 255.0 if bits == 8 else 65535.0
    median = float(np.nanmedian(image))
    return "linear" if median < LINEAR_MEDIAN_FRACTION * full else "display"


def display_scale(bits):
    """Full-scale value of display data of a bit depth (255 or 65535; 1 for float)."""
    return {8: 255.0, 16: 65535.0}.get(int(bits), 1.0)


def _png_header(path, memory_mb):
    """``(width, height, bit depth, colour type)`` of a PNG's IHDR chunk, refused when the file
    is not a PNG or its image exceeds the memory budget."""
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise UnreadableImageError(f"{path}: not a PNG file (no PNG signature and IHDR header)")
    width, height, depth, colour_type = struct.unpack(">IIBB", head[16:26])
    check_memory(path, f"a {width} x {height} px PNG image", width * height * _PNG_SAMPLES.get(colour_type, 4),
                 (2 if depth == 16 else 1) + 4, memory_mb, UnreadableImageError)
    return width, height, depth, colour_type


def _xisf_image(xisf, path, memory_mb):
    """The metadata of an XISF file's first image, refused when there is none, it is not 2-D
    or it exceeds the memory budget."""
    images = xisf.get_images_metadata()
    if not images:
        raise UnreadableImageError(f"{path}: XISF file holds no image")
    meta = images[0]
    if len(meta["geometry"]) != 3:
        geometry = ":".join(map(str, meta["geometry"]))
        raise UnreadableImageError(
            f"{path}: XISF image of geometry {geometry} is not 2-D (width:height:channels)"
        )
    width, height, channels = meta["geometry"]
    sample_bytes = np.dtype(meta.get("dtype", np.float64)).itemsize
    check_memory(path, f"a {width} x {height} px XISF image of {channels} channel(s)", width * height * channels,
                 sample_bytes + 4, memory_mb, UnreadableImageError)
    return meta


def _read_xisf(path, memory_mb=MEMORY_MB):
    """The first image of a monolithic XISF file: ``(H, W)`` or ``(H, W, C)``, stored dtype."""
    try:
        xisf = XISF(os.fspath(path))
        meta = _xisf_image(xisf, path, memory_mb)
        width, height, channels = meta["geometry"]
        # The package lays the data block out as planes (channels first) whatever the storage.
        planes = xisf.read_image(0, data_format="channels_first")
    except UnreadableImageError:
        raise
    except NotImplementedError as exc:
        raise UnreadableImageError(f"{path}: unsupported XISF: {exc}") from exc
    except Exception as exc:  # signature, XML, data block: many types; the file and cause matter
        problem = f"{type(exc).__name__}: {exc}"
        raise UnreadableImageError(f"{path}: broken XISF file ({problem})") from exc
    # The package reads samples in the host's byte order; the file says which it used.
    order = ">" if meta.get("byteOrder") == "big" else "<"
    planes = planes.view(planes.dtype.newbyteorder(order))
    if meta.get("pixelStorage", "Planar") == "Normal":
        # Normal storage interleaves the channels of each pixel: the same bytes, read as
        # (height, width, channels).
        data = planes.reshape(height, width, channels)
    else:
        data = np.moveaxis(planes, 0, 2)
    colour = meta.get("colorSpace", "Gray")
    if colour == "Gray":
        # Channels after the first are alpha.
        data = data[:, :, 0]
    elif colour != "RGB":
        raise UnreadableImageError(
            f"{path}: XISF colour space {colour} is not supported (Gray or RGB)"
        )
    elif channels < 3:
        raise UnreadableImageError(f"{path}: RGB XISF image with {channels} channels")
    if data.dtype == np.uint32:
        # 32-bit integers are beyond the 8/16-bit display depths: PixInsight's 0..1 range, as
        # float.
        data = data / np.float64(np.iinfo(np.uint32).max)
    return data


def _xisf_keywords(meta):
    """Carried keywords and HISTORY lines of an XISF image's metadata (``xisf`` package dict)."""
    keywords = meta.get("FITSKeywords", {})
    values = {}
    for key in CARRIED_KEYWORDS:
        entries = keywords.get(key)
        if entries:
            text = str(entries[0]["value"]).strip()
            values[key] = text if key in _TEXT_KEYWORDS else _number(text)
            continue
        name, factor = _XISF_PROPERTIES.get(key, (None, None))
        prop = meta.get("XISFProperties", {}).get(name)
        if prop is None or prop.get("value") is None:
            continue
        value = prop["value"]
        if factor is None:
            values[key] = str(value).strip()
        else:
            try:
                values[key] = float(value) * factor
            except (TypeError, ValueError):
                continue
    # PixInsight writes a HISTORY keyword's text as its comment and leaves the value empty.
    history = [entry["comment"] or entry["value"] for entry in keywords.get("HISTORY", [])]
    return values, history


def _number(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
