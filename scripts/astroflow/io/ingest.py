"""Ingest: read camera RAW, FITS and TIFF frames into float32 ADU with their metadata.

Every input frame, whatever its format, becomes one float32 FITS file (see
:mod:`astroflow.io.fits`) whose header carries the exposure, camera, CFA layout and provenance
that later rules need. RAW mosaics are kept exactly as recorded: no demosaic, no black-level
subtraction, no white balance. A frame that cannot be read becomes a rejected placeholder, so
that one bad file among hundreds does not stop the night.

Readers: rawpy (LibRaw) for camera RAW, astropy for FITS, tifffile for TIFF, and Pillow's EXIF
parser for the make, model, exposure, ISO and date stored in TIFF-structured files (NEF, CR2,
DNG, ARW, PEF, SRW, ORF, RW2, TIFF), which rawpy does not expose.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import rawpy
from astropy.io.fits.verify import VerifyError
from astropy.stats import mad_std
from PIL import ExifTags, Image

from astroflow import __version__
from astroflow.calibration.debayer import BAYER_PATTERNS
from astroflow.io.fits import (
    ROWORDER_KEY,
    FitsImageError,
    fits_text,
    input_image_hdu,
    iso_date,
    open_input,
    parsable_header,
    read_header,
    top_down_rows,
    write_image,
    write_rejected,
)
from astroflow.io.formats import DEEP_SKY_FRAME, extensions, format_of
from astroflow.io.limits import (
    DECODE_TIMEOUT_S,
    MEMORY_MB,
    DecoderDiedError,
    DecodeTimeoutError,
    call_in_process,
    check_memory,
)
from astroflow.io.tiff import read_tiff
from astroflow.workflow.provenance import sha256_file  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

FRAME_TYPES = ("LIGHT", "DARK", "FLAT", "BIAS", "DARKFLAT")


# FITS keywords copied into the ingested header, each from the first alias present.
_FITS_ALIASES = {
    "EXPTIME": ("EXPTIME", "EXPOSURE"),
    "ISOSPEED": ("ISOSPEED", "ISO"),
    "GAIN": ("GAIN",),
    "EGAIN": ("EGAIN", "E-GAIN"),
    "OFFSET": ("OFFSET",),
    "CCD-TEMP": ("CCD-TEMP", "CCD_TEMP", "TEMPERAT"),
    "SET-TEMP": ("SET-TEMP",),
    "INSTRUME": ("INSTRUME",),
    "TELESCOP": ("TELESCOP",),
    "OBJECT": ("OBJECT",),
    # CAFOS (Calar Alto) names the filter in INSFLNAM.
    "FILTER": ("FILTER", "INSFLNAM"),
    # Coordinates and site as recorded: degrees (numbers) or sexagesimal text.
    "RA": ("RA",),
    "DEC": ("DEC",),
    "OBJCTRA": ("OBJCTRA",),
    "OBJCTDEC": ("OBJCTDEC",),
    "SITELAT": ("SITELAT",),
    "SITELONG": ("SITELONG",),
    "XBINNING": ("XBINNING",),
    "YBINNING": ("YBINNING",),
    "XPIXSZ": ("XPIXSZ",),
    "YPIXSZ": ("YPIXSZ",),
    "FOCALLEN": ("FOCALLEN",),
    "BLACKLVL": ("BLACKLVL", "BLKLEVEL"),
    "WHITELVL": ("WHITELVL", "SATURATE"),
}
_FITS_NUMERIC = {
    "EXPTIME", "ISOSPEED", "GAIN", "EGAIN", "OFFSET", "CCD-TEMP", "SET-TEMP", "XBINNING",
    "YBINNING", "XPIXSZ", "YPIXSZ", "FOCALLEN", "BLACKLVL", "WHITELVL",
}  # fmt: skip

# Olympus ORF and Panasonic RW2 are TIFF files with a private magic number.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_TIFF_VARIANT_MAGIC = {b"IIRO": b"II*\x00", b"IIRS": b"II*\x00", b"IIU\x00": b"II*\x00", b"MMOR": b"MM\x00*"}

_EXIF_MAKE, _EXIF_MODEL, _EXIF_DATETIME = 271, 272, 306
_EXIF_EXPOSURE, _EXIF_ISO, _EXIF_DATE_ORIGINAL = 33434, 34855, 36867
_EXIF_OFFSET_ORIGINAL, _EXIF_SUBSEC_ORIGINAL, _EXIF_FOCAL_LENGTH = 36881, 37521, 37386
# The GPS IFD's tags sit under this key of the merged tags: their numbers (1-4) would clash
# with IFD0's.
_EXIF_GPS = "GPS"
_GPS_LATITUDE_REF, _GPS_LATITUDE, _GPS_LONGITUDE_REF, _GPS_LONGITUDE = 1, 2, 3, 4


class UnreadableFrameError(ValueError):
    """A frame file that cannot be read: empty, truncated, corrupt or of an unknown format.

    The message names the file and the problem.
    """


def read_frame(path, memory_mb=MEMORY_MB, decode_timeout_s=DECODE_TIMEOUT_S):
    """Read one frame as float32 ADU with its metadata as FITS keywords.

    Parameters
    ----------
    path : str or os.PathLike
        Camera RAW (CR2, CR3, NEF, ARW, RAF, ORF, RW2, DNG, PEF, SRW... through rawpy/LibRaw),
        FITS (``.fits``, ``.fit``, ``.fts``, optionally ``.fz`` tile-compressed or gzipped,
        through astropy) or TIFF (``.tif``, ``.tiff``, through tifffile). The format comes from
        the extension, case-insensitive.
    memory_mb : float, optional
        Memory budget of the decoded frame (MB, ``ingest.memory_mb``): a file whose header
        claims a larger image is refused before its data are read
        (:func:`astroflow.io.limits.check_memory`).
    decode_timeout_s : float, optional
        Time limit (s, ``ingest.decode_timeout_s``) of LibRaw's decoding of a RAW file, which
        runs in a child process that is killed at the limit
        (:func:`astroflow.io.limits.call_in_process`); a decoder that crashes ends only that
        child.

    Returns
    -------
    data : numpy.ndarray
        float32 ADU, ``(H, W)`` for a mono image or a CFA mosaic, ``(H, W, 3)`` for RGB.
        RAW: LibRaw's visible area exactly as recorded (``raw_image_visible``), no demosaic and
        no black subtraction. TIFF: a palette image becomes RGB through its colour map
        (16-bit values); alpha is dropped. FITS: BZERO/BSCALE applied (SBIG uint16 with BZERO 32768 gives
        0..65535 ADU); rows turned top row first, the first row stored being the bottom one
        unless ``ROWORDER = 'TOP-DOWN'`` (:func:`astroflow.io.fits.top_down_rows`); a
        ``(3, H, W)`` cube becomes ``(H, W, 3)``.
    meta : dict
        FITS keywords, each only when the file records it: ``EXPTIME`` (s), ``ISOSPEED``,
        ``GAIN`` (camera setting), ``EGAIN`` (e-/ADU), ``CCD-TEMP`` (deg C), ``DATE-OBS`` (ISO
        8601; UTC when the file gives a time zone, otherwise the camera clock as recorded),
        ``INSTRUME`` (make and model), ``BAYERPAT`` (pattern of ``data[0:2, 0:2]``, absent for
        mono and RGB; for FITS, the file's ``BAYERPAT`` shifted by ``XBAYROFF``/``YBAYROFF``
        and read as Siril reads it: as the top-left cell of the image when the file says
        ``ROWORDER``, as the cell of the first rows stored when it does not), ``BLACKLVL`` and
        ``WHITELVL`` (ADU), and ``NAXIS``, ``NAXIS1``,
        ``NAXIS2`` (, ``NAXIS3``) of the image as written. For RAW whose black levels differ
        between the four CFA positions, ``BLACK00``, ``BLACK01``, ``BLACK10``, ``BLACK11`` give
        the level of ``data[dy::2, dx::2]`` and ``BLACKLVL`` their mean. FITS also passes on
        ``OFFSET``, ``SET-TEMP``, ``TELESCOP``, ``OBJECT``, ``FILTER`` (or CAFOS'
        ``INSFLNAM``), ``RA``, ``DEC``, ``OBJCTRA``, ``OBJCTDEC``, ``SITELAT``, ``SITELONG``
        (as recorded: degrees or sexagesimal text), ``XBINNING``, ``YBINNING``, ``XPIXSZ``,
        ``YPIXSZ``, ``FOCALLEN`` when present. RAW and TIFF give ``FOCALLEN`` (mm, the lens's
        from EXIF) and ``SITELAT``/``SITELONG`` (degrees, north and east positive, from the
        EXIF GPS tags) when the camera recorded them. A numeric FITS keyword is omitted, with a
        warning, when its value is not a finite number, is negative where the quantity cannot
        be (``EXPTIME``, ``ISOSPEED``, ``GAIN``, ``EGAIN``, ``XPIXSZ``, ``YPIXSZ``,
        ``FOCALLEN``, ``WHITELVL``) or, for ``XBINNING``/``YBINNING``, is not a whole number
        from 1.

    Raises
    ------
    UnreadableFrameError
        A ValueError naming the file and the problem: unknown extension, empty, truncated or
        corrupt file, no image inside, an image layout that is not ``(H, W)`` or
        ``(H, W, 3)``, no finite pixel (all NaN or infinite), a header claiming an image larger
        than ``memory_mb``, or RAW decoding that crashes or takes longer than ``decode_timeout_s``.
    OSError
        If the file cannot be opened at all (missing, no permission).
    """
    path = Path(path)
    readers = {"raw": _read_raw, "fits": _read_fits, "tiff": _read_tiff}
    reader = readers.get(format_of(path))
    if reader is None:
        raise UnreadableFrameError(
            f"{path}: unknown image file extension {path.suffix!r} "
            f"(a frame is one of {' '.join(extensions(DEEP_SKY_FRAME))})"
        )
    if path.stat().st_size == 0:
        raise UnreadableFrameError(f"{path}: file is empty (0 bytes)")
    data, meta = reader(path, memory_mb, decode_timeout_s)
    if not np.isfinite(data).any():
        raise UnreadableFrameError(f"{path}: the image holds no finite pixel (all NaN or infinite)")
    meta.update(_naxis(data))
    return data, meta


# about this many pixels are sampled for the statistics of a frame: on a 24 Mpx frame half the
# time of every 7th pixel (0.25 s against 0.5 s on the loaded 2-core test machine)
_SAMPLES = 1_000_000


def frame_statistics(data):
    """Robust level and pixel noise of a frame, recorded at ingest (``AFMEDIAN``, ``AFNOISE``).

    Frame screening (:mod:`astroflow.deepsky.screening`) compares them between frames, from
    the headers alone, to find darks among the lights.

    Parameters
    ----------
    data : numpy.ndarray
        float32 ADU, ``(H, W)`` (mono or CFA mosaic) or ``(H, W, 3)``, as read from the source.

    Returns
    -------
    dict of str to float
        ``AFMEDIAN``: median (ADU) of every n-th pixel; ``AFNOISE``: the pixel noise (ADU),
        ``astropy.stats.mad_std`` of the differences between pixels two columns apart (the
        same CFA colour) in every n-th row, divided by sqrt(2), so that gradients, vignetting
        and stars do not count as noise. n is odd (every CFA cell and colour is visited) and
        about a million values are sampled (n = 1 up to 2 Mpx). NaN pixels are ignored; empty
        when no pixel is finite (a FITS header holds no NaN).
    """
    data = np.asarray(data, dtype=np.float32)
    step = 2 * (data.size // (2 * _SAMPLES)) + 1
    sample = data.reshape(-1)[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return {}
    rows = data[::step]
    steps = (rows[:, 2:] - rows[:, :-2]).reshape(-1)
    steps = steps[np.isfinite(steps)]
    noise = float(mad_std(steps)) / np.sqrt(2) if steps.size else 0.0
    return {"AFMEDIAN": round(float(np.median(sample)), 3), "AFNOISE": round(float(noise), 3)}


def ingest_frame(path, frame_type, out_path, memory_mb=MEMORY_MB, decode_timeout_s=DECODE_TIMEOUT_S):
    """Convert one input frame into the workflow's float32 FITS, or a rejected placeholder.

    Parameters
    ----------
    path : str or os.PathLike
        Source frame (any format :func:`read_frame` reads).
    frame_type : str
        ``light``, ``dark``, ``flat``, ``bias`` or ``darkflat`` (any case): the folder the
        configuration put the frame in. The file's own IMAGETYP is ignored, because headers lie
        (the SBIG dome flats say ``'Light Frame'``).
    out_path : str or os.PathLike
        FITS file to write (parent folders are created).
    memory_mb, decode_timeout_s : float, optional
        The limits of :func:`read_frame`; a frame beyond them is rejected with the reason.

    Returns
    -------
    astropy.io.fits.Header
        The header as written: the keywords of :func:`read_frame` plus ``IMAGETYP`` (upper-case
        ``frame_type``), ``BUNIT = 'ADU'``, ``SRCFILE`` (source path), ``SRCSHA`` (its SHA-256),
        ``AFMEDIAN`` and ``AFNOISE`` (:func:`frame_statistics`),
        ``AFSTATUS`` and HISTORY. For an unreadable frame: the placeholder's header, ``AFSTATUS = 'REJECTED'``
        and ``AFREASON`` naming the file and the problem.

    Raises
    ------
    ValueError
        If ``frame_type`` is not one of the frame types (a configuration error, not a bad frame).
    """
    imagetyp = str(frame_type).upper()
    if imagetyp not in FRAME_TYPES:
        raise ValueError(
            f"{path}: unknown frame type {frame_type!r}: expected one of {', '.join(FRAME_TYPES)}"
        )
    provenance = {"IMAGETYP": imagetyp, "SRCFILE": fits_text(os.fspath(path))}
    try:
        provenance["SRCSHA"] = sha256_file(path)
        data, meta = read_frame(path, memory_mb, decode_timeout_s)
    except (UnreadableFrameError, OSError) as exc:
        reason = fits_text(str(exc) if isinstance(exc, UnreadableFrameError) else f"{path}: {exc}")
        log.warning("rejected: %s", reason)
        write_rejected(out_path, reason, provenance)
        return read_header(out_path)
    header = {**meta, **frame_statistics(data), "BUNIT": "ADU", **provenance}
    history = [f"astroflow {__version__} ingest: {imagetyp} from {fits_text(Path(path).name)}"]
    write_image(out_path, data, header, history=history)
    return read_header(out_path)


def _read_raw(path, memory_mb, timeout_s):
    try:
        decoded = call_in_process(_decode_raw, timeout_s, os.fspath(path), memory_mb)
    except DecodeTimeoutError as exc:
        raise UnreadableFrameError(
            f"{path}: LibRaw was {exc} decoding the mosaic, the time limit "
            "(ingest.decode_timeout_s), and was stopped; a damaged RAW file?"
        ) from None
    except DecoderDiedError as exc:
        raise UnreadableFrameError(f"{path}: cannot read camera RAW: {exc}; a damaged RAW file?") from None
    mosaic, colours, desc, black, white, exposure, iso, stamp, camera_wb = decoded
    data = mosaic.astype(np.float32)
    del mosaic
    meta = {}
    pattern = "".join(desc[c] for c in colours.ravel())
    if pattern in BAYER_PATTERNS:
        meta["BAYERPAT"] = pattern
    else:
        log.warning("%s: CFA layout %s is not a Bayer pattern; BAYERPAT omitted", path, pattern)
    cell_black = [black[c] for c in colours.ravel()]
    meta["BLACKLVL"] = float(np.mean(cell_black))
    if len(set(cell_black)) > 1:
        for (dy, dx), level in zip(((0, 0), (0, 1), (1, 0), (1, 1)), cell_black, strict=True):
            meta[f"BLACK{dy}{dx}"] = level
    meta["WHITELVL"] = white
    # The camera's as-shot white balance (R, G, B multipliers, green = 1): the alternative to a
    # white balance from the stars in colour calibration (astroflow.restoration.colour).
    if all(v > 0 for v in camera_wb):
        for key, value in zip(("CAMWBR", "CAMWBG", "CAMWBB"), camera_wb, strict=True):
            meta[key] = (round(value / camera_wb[1], 6), "camera white-balance multiplier (LibRaw), G = 1")
    # EXIF first: its exposure is the exact rational; LibRaw's values fill what EXIF lacks.
    meta.update(_exif_meta(_tiff_exif(path)))
    if "EXPTIME" not in meta and exposure > 0:
        meta["EXPTIME"] = exposure
    if "ISOSPEED" not in meta and iso > 0:
        meta["ISOSPEED"] = int(round(iso))
    if "DATE-OBS" not in meta and stamp.year > 1970:
        meta["DATE-OBS"] = stamp.isoformat(timespec="seconds")
    return data, meta


def _decode_raw(path, memory_mb):
    """LibRaw's visible mosaic (uint16) and what :func:`_read_raw` needs of its metadata; run in
    a child process by :func:`astroflow.io.limits.call_in_process`."""
    # rawpy warns that LibRaw's OpenMP may deadlock in a forked child. That needs OpenMP used
    # in the parent before the fork; LibRaw runs only in these children, and rawpy's wheel
    # carries its own OpenMP runtime, which no other library in the parent uses.
    warnings.filterwarnings("ignore", "rawpy is being used in a process created by multiprocessing",
                            RuntimeWarning)
    raw = None
    try:
        raw = rawpy.imread(path)
        sizes = raw.sizes
        # LibRaw's 16-bit mosaic and colour map, the visible copy sent back and its pickle in
        # the child; the bytes received, the array and its float32 copy in the caller.
        check_memory(path, f"a {sizes.raw_width} x {sizes.raw_height} px raw mosaic",
                     sizes.raw_width * sizes.raw_height, 2 + 1 + 2 + 2 + 2 + 4, memory_mb, UnreadableFrameError)
        raw.unpack()
        if raw.raw_type != rawpy.RawType.Flat:
            raise UnreadableFrameError(f"{path}: not a CFA raw (LibRaw raw type {raw.raw_type.name})")
        other = raw.other
        return (
            raw.raw_image_visible.copy(),
            raw.raw_colors_visible[:2, :2].copy(),
            raw.color_desc.decode("ascii", "replace"),
            [float(b) for b in raw.black_level_per_channel],
            int(raw.white_level),
            float(other.shutter_speed),
            float(other.iso_speed),
            other.timestamp,
            [float(v) for v in raw.camera_whitebalance[:3]],
        )
    except rawpy.LibRawError as exc:
        # LibRaw says "Input/output error" when the data end before the mosaic does.
        hint = "; the file is truncated or damaged" if isinstance(exc, rawpy.LibRawIOError) else ""
        raise UnreadableFrameError(
            f"{path}: cannot read camera RAW ({type(exc).__name__}: {_libraw_message(exc)}){hint}"
        ) from None
    finally:
        if raw is not None:
            raw.close()


def _read_fits(path, memory_mb, timeout_s):
    try:
        with warnings.catch_warnings():
            # Truncation is detected by input_image_hdu from the header's own sizes; astropy's
            # warning about it would only repeat that.
            warnings.filterwarnings("ignore", message="File may have been truncated")
            with open_input(path) as hdul:
                hdu = input_image_hdu(hdul, path, memory_mb)
                header, dropped = parsable_header(hdu.header)
                if dropped:
                    log.warning("%s: unparsable header cards %s omitted", path, ", ".join(dropped))
                raw = hdu.data
                if raw is None:
                    raise UnreadableFrameError(f"{path}: FITS file holds no image data")
                data = np.ascontiguousarray(top_down_rows(raw, header), dtype=np.float32)
    except UnreadableFrameError:
        raise
    except FitsImageError as exc:
        raise UnreadableFrameError(str(exc)) from exc
    except (OSError, ValueError, TypeError, IndexError, VerifyError) as exc:
        raise UnreadableFrameError(f"{path}: cannot read FITS ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 3 and data.shape[0] == 3:
        data = np.ascontiguousarray(np.moveaxis(data, 0, 2))
    elif data.ndim != 2:
        raise UnreadableFrameError(
            f"{path}: FITS image of shape {data.shape} is neither (H, W) nor (3, H, W)"
        )
    meta = _fits_meta(header, path)
    if data.ndim == 3:
        meta.pop("BAYERPAT", None)
    return data, meta


def _read_tiff(path, memory_mb, timeout_s):
    data = read_tiff(path, memory_mb, UnreadableFrameError)
    if data.ndim == 3 and data.shape[2] in (3, 4):
        # A fourth channel is alpha, not light.
        data = data[:, :, :3]
    elif data.ndim == 3 and data.shape[2] == 2:
        data = data[:, :, 0]  # grey and alpha
    elif data.ndim != 2:
        raise UnreadableFrameError(
            f"{path}: TIFF image of shape {data.shape} is neither (H, W) nor (H, W, 3)"
        )
    data = np.ascontiguousarray(data, dtype=np.float32)
    return data, _exif_meta(_tiff_exif(path))


def _fits_meta(header, path):
    meta = {}
    for key, aliases in _FITS_ALIASES.items():
        for alias in aliases:
            value = header.get(alias)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            if key in _FITS_NUMERIC:
                try:
                    value = float(value)
                except (TypeError, ValueError, OverflowError):
                    log.warning("%s: %s = %r is not a number; omitted", path, alias, value)
                    continue
                problem = _implausible(key, value)
                if problem:
                    # NaN and Inf cannot even be written to a FITS header (found by fuzzing).
                    log.warning("%s: %s = %r %s; omitted", path, alias, header.get(alias), problem)
                    continue
                if value.is_integer() and key in ("ISOSPEED", "XBINNING", "YBINNING", "OFFSET", "WHITELVL"):
                    value = int(value)
            elif isinstance(value, str):
                value = fits_text(value.strip())
            elif isinstance(value, float) and not np.isfinite(value):  # FILTER = 1E400
                log.warning("%s: %s = %r is not a finite number; omitted", path, alias, value)
                continue
            meta[key] = value
            break
    date = header.get("DATE-OBS") or header.get("DATE_OBS")
    if date and "T" not in str(date) and header.get("TIME-OBS"):
        date = f"{str(date).strip()}T{str(header['TIME-OBS']).strip()}"
    if date:
        iso = iso_date(str(date))
        if iso is None:
            log.warning("%s: DATE-OBS = %r is not an ISO 8601 date; omitted", path, date)
        else:
            meta["DATE-OBS"] = iso
    pattern = str(header.get("BAYERPAT") or header.get("COLORTYP") or "").strip().upper()
    if pattern in BAYER_PATTERNS:
        try:
            # int(float('inf')) is an OverflowError (found by fuzzing)
            dx, dy = (int(float(header.get(key, 0) or 0)) for key in ("XBAYROFF", "YBAYROFF"))
            rows = int(header.get("NAXIS2", 1))
        except (TypeError, ValueError, OverflowError):
            log.warning("%s: XBAYROFF/YBAYROFF or NAXIS2 unreadable; BAYERPAT omitted", path)
        else:
            pattern = _shift_pattern(pattern, dx, dy)
            if str(header.get(ROWORDER_KEY, "")).strip().upper() not in ("TOP-DOWN", "BOTTOM-UP"):
                # Siril takes the BAYERPAT of a file that does not say its row order (camera
                # drivers write top-down without saying so) as the cell of the first rows
                # stored; read bottom-up, stored row H - 1 is row 0 in memory.
                pattern = _shift_pattern(pattern, 0, rows - 1)
            meta["BAYERPAT"] = pattern
    return meta


# Numeric keywords that cannot be negative (the others, temperatures and offsets, can).
_FITS_POSITIVE = {"EXPTIME", "ISOSPEED", "GAIN", "EGAIN", "XPIXSZ", "YPIXSZ", "FOCALLEN", "WHITELVL"}


def _implausible(key, value):
    """Why a numeric keyword's value cannot be taken as recorded, or "" when it can."""
    if not np.isfinite(value):
        return "is not a finite number"
    if key in ("XBINNING", "YBINNING") and (value < 1 or not value.is_integer()):
        return "is not a binning (a whole number from 1)"
    if key in _FITS_POSITIVE and value < 0:
        return "is negative"
    return ""


def _shift_pattern(pattern, dx, dy):
    # XBAYROFF/YBAYROFF: the pattern as named starts at column dx, row dy of the image.
    return "".join(pattern[2 * ((r + dy) % 2) + (c + dx) % 2] for r in (0, 1) for c in (0, 1))


def _tiff_exif(path):
    """EXIF tags (IFD0 merged with the Exif IFD, the GPS IFD under ``"GPS"``) of a TIFF-structured
    file; {} for others."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic not in _TIFF_MAGIC and magic not in _TIFF_VARIANT_MAGIC:
            return {}
        blob = _TIFF_VARIANT_MAGIC.get(magic, magic) + f.read()
    exif = Image.Exif()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif.load(blob)
            tags = dict(exif)
            tags.update(exif.get_ifd(ExifTags.IFD.Exif))
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
            if gps:
                tags[_EXIF_GPS] = dict(gps)
        # Metadata is optional: a maker's odd EXIF must not lose a good mosaic, and Pillow's
        # parser can fail in many ways on it.
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "%s: EXIF unreadable (%s: %s); camera metadata omitted", path, type(exc).__name__, exc
            )
            return {}
    for warning in caught:
        log.info("%s: EXIF: %s", path, warning.message)
    return tags


def _exif_meta(tags):
    meta = {}
    make = _exif_text(tags.get(_EXIF_MAKE))
    model = _exif_text(tags.get(_EXIF_MODEL))
    if make and model and not model.upper().startswith(make.split()[0].upper()):
        meta["INSTRUME"] = f"{make} {model}"
    elif model or make:
        meta["INSTRUME"] = model or make
    exposure = _exif_number(tags.get(_EXIF_EXPOSURE))
    if exposure:
        meta["EXPTIME"] = exposure
    iso = _exif_number(tags.get(_EXIF_ISO))
    if iso:
        meta["ISOSPEED"] = int(round(iso))
    stamp = _exif_text(tags.get(_EXIF_DATE_ORIGINAL)) or _exif_text(tags.get(_EXIF_DATETIME))
    if stamp:
        date, _, time = stamp.partition(" ")
        text = f"{date.replace(':', '-')}T{time}"
        subsec = _exif_text(tags.get(_EXIF_SUBSEC_ORIGINAL))
        if subsec and subsec.isdigit():
            text += f".{subsec}"
        date_obs = iso_date(text + (_exif_text(tags.get(_EXIF_OFFSET_ORIGINAL)) or ""))
        if date_obs is not None:
            meta["DATE-OBS"] = date_obs
    focal = _exif_number(tags.get(_EXIF_FOCAL_LENGTH))
    if focal:
        # mm, of the lens the camera knows; a camera on a telescope records none
        meta["FOCALLEN"] = focal
    gps = tags.get(_EXIF_GPS, {})
    for key, ref_tag, value_tag, negative in (
        ("SITELAT", _GPS_LATITUDE_REF, _GPS_LATITUDE, "S"),
        ("SITELONG", _GPS_LONGITUDE_REF, _GPS_LONGITUDE, "W"),
    ):
        degrees = _gps_degrees(gps.get(value_tag))
        if degrees is not None:
            meta[key] = -degrees if _exif_text(gps.get(ref_tag)).upper() == negative else degrees
    return meta


def _gps_degrees(value):
    # EXIF GPS angles are (degrees, minutes, seconds) rationals.
    try:
        d, m, s = (float(part) for part in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = d + m / 60 + s / 3600
    return degrees if np.isfinite(degrees) else None


def _exif_text(value):
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return fits_text(str(value).strip("\x00 ").strip())


def _exif_number(value):
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _libraw_message(exc):
    message = exc.args[0] if exc.args else ""
    return message.decode("ascii", "replace") if isinstance(message, bytes) else str(message)


def _naxis(data):
    if data.ndim == 3:
        return {"NAXIS": 3, "NAXIS1": data.shape[1], "NAXIS2": data.shape[0], "NAXIS3": data.shape[2]}
    return {"NAXIS": 2, "NAXIS1": data.shape[1], "NAXIS2": data.shape[0]}
