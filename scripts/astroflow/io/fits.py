"""FITS files between workflow rules: layout, provenance and rejected frames.

Conventions (shared by every rule):

* In memory an image is ``numpy.float32`` of shape ``(H, W)`` (mono or CFA mosaic) or
  ``(H, W, 3)`` (RGB, channels last). On disk a colour image is stored the FITS way,
  ``(3, H, W)`` (NAXIS3 = 3), so that Siril and PixInsight open it as RGB.
* In memory row 0 is the top of the image, as in TIFF, PNG and camera raw files. On disk the
  rows are stored the FITS way, bottom-up (the first row stored is the bottom one, where
  Siril, PixInsight and ds9 draw it), with ``ROWORDER = 'BOTTOM-UP'``: a stack.fits opens the
  same way up as the stack.tif of the run. Readers turn the rows back
  (:func:`top_down_rows`), unless a file says ``ROWORDER = 'TOP-DOWN'`` (written by camera
  drivers such as NINA or INDI), so that what one rule writes the next reads unchanged. A
  ``BAYERPAT`` we write names the colours of the top-left 2x2 cell, ``data[0:2, 0:2]`` in
  memory: Siril reads the BAYERPAT of a BOTTOM-UP file that way.
* Float data are written unscaled (no BZERO/BSCALE) so that
  :func:`astroflow.deepsky.stack.combine` can read row chunks through a memory map without
  loading the whole frame.
* A frame that cannot be used is still written, as a FITS file with an empty primary HDU and
  ``AFSTATUS = 'REJECTED'`` plus ``AFREASON``; later rules pass it through, so that the run goes
  on and the reason reaches ``frames.csv``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import math
import os
import warnings

import numpy as np
from astropy.io import fits

from astroflow.io.atomic import atomic_write
from astroflow.io.limits import check_memory

STATUS_KEY = "AFSTATUS"
REASON_KEY = "AFREASON"
ROWORDER_KEY = "ROWORDER"


def write_image(path, data, header=None, history=()):
    """Write a float32 image with its header, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output FITS path; parent folders are created.
    data : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` image, row 0 at the top; converted to float32. Stored
        bottom-up, the FITS way, with ``ROWORDER = 'BOTTOM-UP'`` (see the module notes).
    header : astropy.io.fits.Header or dict, optional
        Keywords to write (provenance, exposure...). Long string values use CONTINUE cards.
        A ``ROWORDER`` in it is replaced by the file's own.
    history : iterable of str, optional
        Lines appended as HISTORY cards.

    Raises
    ------
    ValueError
        If ``data`` is neither 2-D nor 3-D with 3 channels last.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 3 and data.shape[2] == 3:
        planes = np.moveaxis(data, 2, 0)
    elif data.ndim == 2:
        planes = data
    else:
        raise ValueError(f"{path}: image must be (H, W) or (H, W, 3), got shape {data.shape}")
    _write_planes(path, planes, header, history)


def write_planes(path, planes, header=None, history=()):
    """Write a stack of same-size images (one PSF per frame...) as one FITS cube, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output FITS path; parent folders are created.
    planes : numpy.ndarray
        ``(N, H, W)``: N images, row 0 of each at the top; converted to float32 and stored as
        NAXIS3 = N planes, each bottom-up like :func:`write_image` stores an image.
    header, history
        As for :func:`write_image`.

    Raises
    ------
    ValueError
        If ``planes`` is not 3-D.
    """
    planes = np.asarray(planes, dtype=np.float32)
    if planes.ndim != 3:
        raise ValueError(f"{path}: planes must be (N, H, W), got shape {planes.shape}")
    _write_planes(path, planes, header, history)


def write_images(path, images):
    """Write several images (one master per exposure group, per filter...) as one FITS file.

    Parameters
    ----------
    path : str or os.PathLike
        Output FITS path; parent folders are created.
    images : sequence of (numpy.ndarray, header)
        ``(H, W)`` or ``(H, W, 3)`` images with their headers, as for :func:`write_image`: the
        first is the primary HDU (what :func:`read_image` reads by default), the others image
        extensions 1, 2... (``read_image(path, hdu=i)``; their headers by :func:`read_headers`).

    Raises
    ------
    ValueError
        If ``images`` is empty or an image has another layout.
    """
    if not images:
        raise ValueError(f"{path}: no images to write")
    hdus = []
    for i, (data, header) in enumerate(images):
        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 3 and data.shape[2] == 3:
            data = np.moveaxis(data, 2, 0)
        elif data.ndim != 2:
            raise ValueError(f"{path}: image must be (H, W) or (H, W, 3), got shape {data.shape}")
        disk, hdr = _disk_planes(data, header, ())
        hdus.append(fits.PrimaryHDU(disk, header=hdr) if i == 0 else fits.ImageHDU(disk, header=hdr))
    _atomic_write(path, fits.HDUList(hdus))


def read_headers(path):
    """The headers of every image HDU of a file of :func:`write_images` (or :func:`write_image`).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    list of astropy.io.fits.Header
        Primary first; index ``i`` is ``read_image(path, hdu=i)``'s.
    """
    with fits.open(path, memmap=True) as hdul:
        return [hdu.header.copy() for hdu in hdul]


def _disk_planes(planes, header, history):
    # planes: (H, W) or (N, H, W) float32, rows top-down; FITS readers draw the first row
    # stored at the bottom, so the rows are stored in reverse.
    disk = np.ascontiguousarray(planes[..., ::-1, :])
    hdr = fits.Header()
    for key, value in dict(header or {}).items():
        if key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND"):
            continue
        if key in ("HISTORY", "COMMENT"):
            continue
        hdr[key] = value
    if isinstance(header, fits.Header):
        for line in header.get("HISTORY", []):
            hdr.add_history(str(line))
    hdr[ROWORDER_KEY] = ("BOTTOM-UP", "first row stored is the bottom of the image")
    hdr[STATUS_KEY] = "OK"
    for line in history:
        hdr.add_history(line)
    return disk, hdr


def _write_planes(path, planes, header, history):
    disk, hdr = _disk_planes(planes, header, history)
    _atomic_write(path, fits.HDUList([fits.PrimaryHDU(disk, header=hdr)]))


def write_rejected(path, reason, header=None):
    """Write the placeholder of a frame that cannot be used.

    Parameters
    ----------
    path : str or os.PathLike
        Output FITS path.
    reason : str
        Why the frame is excluded (recorded in ``frames.csv``).
    header : dict or astropy.io.fits.Header, optional
        Whatever provenance is known (source file, sha256...).
    """
    hdr = fits.Header()
    for key, value in dict(header or {}).items():
        if key not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND"):
            if key not in ("HISTORY", "COMMENT"):
                hdr[key] = value
    hdr[STATUS_KEY] = "REJECTED"
    hdr[REASON_KEY] = str(reason)
    _atomic_write(path, fits.HDUList([fits.PrimaryHDU(header=hdr)]))


def read_header(path):
    """Primary header of a FITS file (without reading the data).

    Returns
    -------
    astropy.io.fits.Header
    """
    with fits.open(path, memmap=True) as hdul:
        return hdul[0].header.copy()


def parsable_header(header):
    """A copy of a FITS header without the cards whose value astropy cannot parse.

    A camera or a program that writes ``EXPTIME = nan`` (no such FITS value) or a cut card
    leaves a header on which every later ``header.get`` of that keyword raises astropy's
    ``VerifyError``; the frame's data are still good.

    Parameters
    ----------
    header : astropy.io.fits.Header

    Returns
    -------
    header : astropy.io.fits.Header
        A copy, every card parsable.
    dropped : list of str
        The keywords of the cards left out, in header order (to warn about).
    """
    parsed, dropped = fits.Header(), []
    for card in header.cards:
        try:
            card.value  # noqa: B018 (parsing it is the test)
            card.comment  # noqa: B018
        except (fits.VerifyError, ValueError):
            dropped.append(card.keyword)
            continue
        parsed.append(card, end=True)
    return parsed, dropped


def is_rejected(header):
    """True when a header marks its frame as rejected."""
    return header.get(STATUS_KEY, "OK") == "REJECTED"


def stored_top_down(header):
    """Whether a FITS header says its first row stored is the top of the image.

    Parameters
    ----------
    header : astropy.io.fits.Header or dict
        Header of an image HDU.

    Returns
    -------
    bool
        True only for ``ROWORDER = 'TOP-DOWN'`` (any case and padding); False for
        ``'BOTTOM-UP'`` and for files without the keyword, which follow the FITS convention.
    """
    return str(header.get(ROWORDER_KEY, "")).strip().upper() == "TOP-DOWN"


def top_down_rows(data, header):
    """FITS pixel data with the top row of the image first, as images are held in memory.

    Parameters
    ----------
    data : numpy.ndarray
        Pixel data of an image HDU as astropy gives it: ``(NAXIS2, NAXIS1)`` or
        ``(NAXIS3, NAXIS2, NAXIS1)``, rows in the order stored.
    header : astropy.io.fits.Header or dict
        The HDU's header, for ``ROWORDER`` (see :func:`stored_top_down`).

    Returns
    -------
    numpy.ndarray
        ``data`` itself for a TOP-DOWN file, otherwise a view of it with the rows (axis -2)
        reversed. Nothing is copied: a memory-mapped file is still read only where the view is
        sliced.
    """
    return data if stored_top_down(header) else data[..., ::-1, :]


class FitsImageError(ValueError):
    """A FITS file that holds no readable image: the message names the file and the problem."""


_BITPIX = (8, 16, 32, 64, -32, -64)


def open_input(path):
    """Open an input FITS file (plain, gzipped or tile-compressed) for :func:`input_image_hdu`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    astropy.io.fits.HDUList
        Opened without a memory map (``memmap=False``: a truncated file must not be mapped past
        its end); use it as a context manager.

    Raises
    ------
    FitsImageError
        Naming the file, when it is empty (0 bytes) or astropy cannot open it (cut inside its
        header, not FITS).
    OSError
        If the file cannot be opened at all (missing, no permission).
    """
    if not os.path.isfile(path):
        return fits.open(path)  # astropy's FileNotFoundError / PermissionError
    if os.path.getsize(path) == 0:
        raise FitsImageError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            # A truncated file is reported by input_image_hdu from the header's own sizes.
            warnings.filterwarnings("ignore", message="File may have been truncated")
            return fits.open(path, memmap=False)
    except (OSError, ValueError, TypeError, IndexError, EOFError) as exc:
        _stream_size(path)  # a cut gzip stream is the likely cause: say so if it is
        raise FitsImageError(f"{path}: cannot read FITS ({type(exc).__name__}: {exc})") from exc


def input_image_hdu(hdul, path, memory_mb=None):
    """The first image HDU of an input FITS file, checked before its data are read.

    An input file is one that comes from a camera or another program; files the workflow writes
    itself are read by :func:`read_image`.

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
        The open file (:func:`open_input`).
    path : str or os.PathLike
        The file, for messages.
    memory_mb : float, optional
        Memory budget of one decoded frame (MB); default
        :data:`astroflow.io.limits.MEMORY_MB`.

    Returns
    -------
    astropy.io.fits.ImageHDU or PrimaryHDU or CompImageHDU
        The first HDU whose header describes an image of at least 2 axes (a tile-compressed
        image counts; tables do not).

    Raises
    ------
    FitsImageError
        Naming the file and the problem: no image HDU, NAXISn or BITPIX missing or invalid, an
        image larger than the memory budget (refused before allocation, see
        :func:`astroflow.io.limits.check_memory`), or data shorter than the header promises
        (truncated file; for gzip, of the decompressed stream).
    """
    hdu = next((h for h in hdul if h.is_image and _int_card(h.header, "NAXIS") >= 2), None)
    if hdu is None:
        raise FitsImageError(f"{path}: FITS file holds no image HDU")
    _check_hdu(hdu, path, memory_mb)
    return hdu


def _check_hdu(hdu, path, memory_mb):
    """Refuse an image HDU with invalid axes, beyond the budget, or truncated: see input_image_hdu."""
    header = hdu.header
    naxis = _int_card(header, "NAXIS")
    axes = [_int_card(header, f"NAXIS{i}") for i in range(1, naxis + 1)]
    bitpix = _int_card(header, "BITPIX")
    if min(axes) < 1 or bitpix not in _BITPIX:
        raise FitsImageError(
            f"{path}: FITS header gives an invalid image: NAXISn {axes}, BITPIX {bitpix}"
        )
    n_samples = int(np.prod(axes, dtype=np.float64))
    claim = " x ".join(map(str, axes[::-1]))
    check_memory(path, f"a {claim} image of BITPIX {bitpix}", n_samples, abs(bitpix) // 8 + 4,
                 memory_mb, FitsImageError)
    info = hdu.fileinfo()
    if info is not None:
        if hasattr(hdu, "compression_type"):
            # Tile-compressed: the header describes the image, not the stored table, so rely on
            # the padded span of the table (fpack always pads).
            needed = info["datLoc"] + info["datSpan"]
        else:
            needed = info["datLoc"] + abs(bitpix) // 8 * n_samples
        size = _stream_size(path)
        if size < needed:
            raise FitsImageError(
                f"{path}: truncated FITS: file has {size} bytes, header promises {needed}"
            )


def _int_card(header, key):
    value = header.get(key, 0)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return -1
    return int(value)


def _stream_size(path):
    # The bytes astropy reads: for a gzipped FITS that is the decompressed stream, not the file.
    if not os.fspath(path).lower().endswith(".gz"):
        return os.path.getsize(path)
    try:
        with gzip.open(path, "rb") as stream:
            return stream.seek(0, io.SEEK_END)
    except (OSError, EOFError) as exc:
        raise FitsImageError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc


def read_image(path, hdu=0):
    """Read an image written by :func:`write_image` (or one of :func:`write_images`).

    Parameters
    ----------
    path : str or os.PathLike
    hdu : int, optional
        Which image of a :func:`write_images` file; the primary one by default.

    Returns
    -------
    data : numpy.ndarray
        float32, ``(H, W)`` or ``(H, W, 3)``, row 0 at the top (rows turned by
        :func:`top_down_rows`).
    header : astropy.io.fits.Header

    Raises
    ------
    ValueError
        Naming the file: a rejected placeholder, no image, an image neither ``(H, W)`` nor
        ``(N, H, W)``, or a file astropy cannot read (:class:`FitsImageError`).
    OSError
        If the file cannot be opened at all (missing, no permission).
    """
    with warnings.catch_warnings(), open_input(path) as hdul:
        # Truncation is reported by _check_hdu from the header's sizes, not by astropy's warning.
        warnings.filterwarnings("ignore", message="File may have been truncated")
        header = hdul[hdu].header.copy()
        if is_rejected(header):
            raise ValueError(f"{path}: frame was rejected: {header.get(REASON_KEY, '?')}")
        if _int_card(header, "NAXIS") >= 1:
            # Files of the workflow may be larger than an input frame (a drizzle): no budget.
            _check_hdu(hdul[hdu], path, math.inf)
        try:
            data = hdul[hdu].data
        except (OSError, ValueError, TypeError) as exc:
            raise FitsImageError(f"{path}: cannot read FITS data ({type(exc).__name__}: {exc})") from exc
        if data is None:
            raise ValueError(f"{path}: FITS file holds no image data")
        if data.ndim not in (2, 3):
            raise ValueError(f"{path}: FITS image of shape {data.shape} is neither (H, W) nor (N, H, W)")
        data = np.ascontiguousarray(top_down_rows(data, header), dtype=np.float32)
    if data.ndim == 3:
        data = np.ascontiguousarray(np.moveaxis(data, 0, 2))
    return data, header


def image_shape(header):
    """In-memory shape ``(H, W)`` or ``(H, W, C)`` described by a FITS header."""
    naxis = header.get("NAXIS", 0)
    if naxis == 2:
        return (header["NAXIS2"], header["NAXIS1"])
    if naxis == 3:
        return (header["NAXIS2"], header["NAXIS1"], header["NAXIS3"])
    raise ValueError(f"header describes no 2-D or 3-D image (NAXIS={naxis})")


def combined_header(headers, history=()):
    """Header of an image combined from frames: provenance kept, exposure summed.

    Parameters
    ----------
    headers : sequence of astropy.io.fits.Header
        Headers of the frames that went into the combination (used frames only).
    history : iterable of str, optional
        HISTORY lines describing the combination.

    Returns
    -------
    astropy.io.fits.Header
        ``NCOMBINE`` (number of frames), ``EXPTIME`` (total exposure, s, where every frame has
        one), ``DATE-OBS`` (start of the first frame) and ``DATE-END`` (end of the last one:
        its ``DATE-OBS`` plus its ``EXPTIME``, in the format of :func:`iso_date`; the latest
        start where no frame that late has an exposure), every keyword whose value all frames
        share (camera, object, filter, Bayer history, temperature set point...), and HISTORY:
        the first frame's processing steps, then ``history``.

    Raises
    ------
    ValueError
        If ``headers`` is empty.
    """
    if not headers:
        raise ValueError("no frames to combine")
    skip = {"HISTORY", "COMMENT", "SRCFILE", "SRCSHA", "EXPTIME", "DATE-OBS", STATUS_KEY}
    header = fits.Header()
    for key in headers[0]:
        if key in skip or key.startswith("NAXIS") or key in ("SIMPLE", "BITPIX", "EXTEND"):
            continue
        value = headers[0][key]
        if all(h.get(key) == value for h in headers[1:]):
            header[key] = value
    header["NCOMBINE"] = (len(headers), "number of frames combined")
    exposures = [h.get("EXPTIME") for h in headers]
    if all(e is not None for e in exposures):
        header["EXPTIME"] = (float(sum(exposures)), "[s] total exposure of combined frames")
    starts, ends = [], []
    for h in headers:
        start = _parse_date(h.get("DATE-OBS"))
        if start is None:
            continue
        starts.append(start)
        exposure = h.get("EXPTIME")
        ends.append(start if exposure is None else start + dt.timedelta(seconds=float(exposure)))
    if starts:
        header["DATE-OBS"] = (_format_date(min(starts)), "start of the first frame")
        header["DATE-END"] = (_format_date(max(ends)), "end of the last frame")
    # every frame went through the same steps: the first frame's history tells them
    for line in list(headers[0].get("HISTORY", [])) + list(history):
        header.add_history(str(line))
    return header


def data_unit(encoding):
    """``BUNIT`` of image data of an encoding.

    Parameters
    ----------
    encoding : {"linear", "display"}
        ``AFENCODE`` of the data (see :mod:`astroflow.io.imagefile`).

    Returns
    -------
    str
        ``"ADU"`` for linear data (camera units, calibrated or stacked); ``""`` (dimensionless)
        for display data, which are stretched values scaled to 0..1 of the full scale and have
        no physical unit.
    """
    return "" if encoding == "display" else "ADU"


def derived_header(source_header, history):
    """Header of a product made from one image: the source's keywords and history, plus a step.

    Parameters
    ----------
    source_header : astropy.io.fits.Header
        Header of the image the product is made from (a stack, an ingested image...), as
        :func:`read_image` returns it.
    history : iterable of str
        HISTORY lines of the step that made the product.

    Returns
    -------
    astropy.io.fits.Header
        Every keyword of the source (``EXPTIME``, ``NCOMBINE``, ``DATE-OBS``, ``DATE-END``,
        ``OBJECT``, ``RA``/``DEC``, ``FILTER``, camera, ``AFENCODE``...) except those of its
        file layout and state (``SIMPLE``, ``BITPIX``, ``NAXISn``, ``EXTEND``, ``BZERO``,
        ``BSCALE``, checksums, ``AFSTATUS``/``AFREASON``); ``AFENCODE``, the source's or
        ``"linear"`` (a stack); ``BUNIT`` from :func:`data_unit` for display data, else the
        source's (``"ADU"`` when it has none); HISTORY: the source's lines, then ``history``.
    """
    header = fits.Header()
    for card in source_header.cards:
        key = card.keyword
        if not key or key in _NOT_CARRIED or key.startswith("NAXIS"):
            continue
        header.append((key, card.value, card.comment))
    encoding = str(source_header.get("AFENCODE", "linear"))
    header["AFENCODE"] = encoding
    if encoding == "display" or "BUNIT" not in header:
        header["BUNIT"] = data_unit(encoding)
    for line in list(source_header.get("HISTORY", [])) + list(history):
        header.add_history(str(line))
    return header


def iso_date(text):
    """An ISO 8601 date and time in the form of the workflow's ``DATE-OBS``.

    Parameters
    ----------
    text : str
        ISO 8601, with or without a time zone (``Z``, ``+02:00``) and fractional seconds.

    Returns
    -------
    str or None
        UTC when ``text`` gives a time zone (converted, zone dropped), else the time as
        written; to the second, or to the millisecond when there are fractional seconds
        (``"2024-03-09T21:30:00"``, ``"2024-03-09T21:30:00.500"``). None when ``text`` is not
        ISO 8601.
    """
    stamp = _parse_date(text)
    return None if stamp is None else _format_date(stamp)


def fits_text(text):
    """Text made fit for a FITS string value, which holds printable ASCII only.

    Parameters
    ----------
    text : str

    Returns
    -------
    str
        ``text`` with every other character escaped as Python writes it (``"é"`` becomes
        ``"\\xe9"``), so that a header write never fails on a file name or an object name.
    """
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)


# Keywords of one file's layout or state, not of its data: never carried to a derived product.
_NOT_CARRIED = {
    "SIMPLE", "BITPIX", "EXTEND", "BZERO", "BSCALE", "CHECKSUM", "DATASUM", "HISTORY", "COMMENT",
    STATUS_KEY, REASON_KEY,
}  # fmt: skip


def _parse_date(text):
    if text is None:
        return None
    try:
        stamp = dt.datetime.fromisoformat(str(text).strip())
    except ValueError:
        return None
    if stamp.tzinfo is not None:
        try:
            stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:  # '0001-01-01T00:00:00+05:00' is before year 1 in UTC (fuzzing)
            return None
    return stamp


def _format_date(stamp):
    return stamp.isoformat(timespec="milliseconds" if stamp.microsecond else "seconds")


def _atomic_write(path, hdul):
    # A job killed mid-write must never leave a file a later run would trust.
    atomic_write(path, lambda tmp: hdul.writeto(tmp, overwrite=True, output_verify="silentfix"))
