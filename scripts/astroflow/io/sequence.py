"""Streaming readers for planetary lucky-imaging input: videos, SER files and folders of frames.

A lucky-imaging run holds thousands of frames, so nothing here loads a whole sequence: a
:class:`FrameSequence` knows its length, frame names, frame shape and sample depth after
:func:`open_sequence`, and :meth:`FrameSequence.frames` yields one :class:`Frame` at a time.
Memory stays at a few frames whatever the length of the sequence.

Frames that cannot be used (truncated file, undecodable video data, an image file that cannot be
read or whose size differs from the others) are not errors: they come back as a :class:`Frame`
with ``image=None`` and a ``reason``, so that a frame table can list them. Only an input that is
unusable as a whole raises :class:`UnreadableSequenceError`.

Sources of the formats and methods:

- SER: "SER format description version 3", Heiko Wilkens & Grischa Hahn, 2014, read with our own
  ``numpy.memmap`` reader (see :func:`write_ser` and the notes on byte order there).
- Videos: FFmpeg through PyAV (https://pyav.basswood-io.com/), decoded frame by frame, never seeked.
- Image files: PNG and JPEG through OpenCV (``cv2.imdecode``, which keeps 16-bit PNG samples and
  reads any file name), TIFF through tifffile, FITS through astropy.io.fits.
- Bayer interpolation of SER mosaics: OpenCV's bilinear demosaicing (``cv2.cvtColor`` with the
  ``COLOR_Bayer<pattern>2RGB`` codes named by the top-left 2x2 cell; the legacy two-letter codes
  such as ``COLOR_BayerBG2RGB`` name the cell one pixel down and right, see :data:`_DEBAYER_CODES`).
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import operator
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from astroflow.io.atomic import atomic_write
from astroflow.io.formats import SEQUENCE_CONTAINER, SEQUENCE_FRAME, extensions, format_of, readable
from astroflow.io.limits import (
    DECODE_TIMEOUT_S,
    MEMORY_MB,
    DecodeTimeoutError,
    call_with_timeout,
    check_memory,
    iterate_with_timeout,
)

log = logging.getLogger(__name__)


# --- SER (format description version 3, Heiko Wilkens & Grischa Hahn, 2014) -------------------
# FileID, LuID, ColorID, LittleEndian, ImageWidth, ImageHeight, PixelDepthPerPlane, FrameCount,
# Observer, Instrument, Telescope, DateTime, DateTime_UTC: 178 bytes, little-endian integers.
_SER_HEADER = struct.Struct("<14s7i40s40s40sqq")
_SER_FILE_ID = b"LUCAM-RECORDER"
_SER_COLOURS = {
    0: "mono",
    8: "bayer_rggb",
    9: "bayer_grbg",
    10: "bayer_gbrg",
    11: "bayer_bggr",
    100: "rgb",
    101: "bgr",
}
_SER_CMY = {16: "CYYM", 17: "YCMY", 18: "YMCY", 19: "MYYC"}
_SER_COLOUR_IDS = {name: colour_id for colour_id, name in _SER_COLOURS.items()}
# OpenCV's four-letter Bayer codes name the top-left 2x2 cell read row by row, as SER does
# (COLOR_BayerRGGB2RGB is the legacy COLOR_BayerBG2RGB). Checked with synthetic mosaics in
# tests/test_sequence.py.
_DEBAYER_CODES = {
    "bayer_rggb": cv2.COLOR_BayerRGGB2RGB,
    "bayer_grbg": cv2.COLOR_BayerGRBG2RGB,
    "bayer_gbrg": cv2.COLOR_BayerGBRG2RGB,
    "bayer_bggr": cv2.COLOR_BayerBGGR2RGB,
}
# A header's frame count that the file does not hold is believed (the missing frames listed as
# truncated) while the missing frames are at most this many, or at most as many as those
# present: a file cut short of its end. Beyond that the count itself is corrupt and only the
# frames present are listed, so that a 200-byte header claiming 2**31 (or a million) frames
# costs no list of missing frame names (found by fuzzing).
MAX_MISSING_FRAMES = 10_000
# SER times are 100 ns ticks since 0001-01-01 00:00:00.
_TICKS_EPOCH = dt.datetime(1, 1, 1)
_TICKS_PER_SECOND = 10_000_000


class UnreadableSequenceError(ValueError):
    """The input as a whole cannot be used as a frame sequence.

    Raised by :func:`open_sequence` for a missing file, an unknown extension, a video or SER file
    that cannot be opened or decoded at all, a video without a video stream, an input with no
    frames, or videos/SER files mixed with other inputs. The message names the file and the
    problem.
    """


@dataclass
class Frame:
    """One frame of a sequence.

    Attributes
    ----------
    index : int
        0-based position in the sequence.
    name : str
        Name for frame tables: ``"<file name>#<index>"`` for frames of a video or SER file
        (e.g. ``"short_video.avi#0007"``), the file name for image files (e.g.
        ``"frame 0001.png"``).
    source : str
        Path of the file the frame came from.
    image : numpy.ndarray or None
        ``float32`` array, ``(H, W)`` for mono or ``(H, W, 3)`` for RGB, in the file's own units
        (0..255 for 8-bit data, 0..65535 for 16-bit data, sample values as stored for FITS;
        SER data of fewer than 16 significant bits keep their stored range, e.g. 0..4095).
        ``None`` when the frame is unusable.
    reason : str
        ``""`` for a usable frame, else why it is unusable, starting with a keyword:
        ``"truncated: ..."``, ``"undecodable: ..."``, ``"unreadable: ..."``, ``"size ..."``,
        ``"colour ..."`` or ``"bit depth ..."``.
    timestamp : str
        Acquisition time as ISO-8601 UTC (``"2024-05-01T21:13:05.123456Z"``), or ``""`` when
        unknown.
    """

    index: int
    name: str
    source: str
    image: np.ndarray | None
    reason: str = ""
    timestamp: str = ""


class FrameSequence:
    """A sequence of frames read one at a time; made by :func:`open_sequence`.

    Attributes
    ----------
    source : str
        What was opened: the video or SER file, or the folder of the image files (their common
        folder when they come from several).
    names : list of str
        Frame names, one per frame (see :attr:`Frame.name`).
    shape : tuple of int
        ``(H, W)`` or ``(H, W, 3)`` of the usable frames (for image files, the most common one).
    bit_depth : int
        Bits per sample of the stored data: 8 or 16 (32 for floating-point or 32-bit FITS).
    colour : str
        ``"mono"`` or ``"rgb"``; for SER Bayer mosaics the pattern they were recorded with,
        ``"bayer_rggb"``, ``"bayer_grbg"``, ``"bayer_gbrg"`` or ``"bayer_bggr"`` (their frames
        are returned interpolated to RGB, ``(H, W, 3)``). SER files stored as BGR are ``"rgb"``.
    """

    def __init__(self, source, names, shape, bit_depth, colour):
        self.source = str(source)
        self.names = list(names)
        self.shape = tuple(int(n) for n in shape)
        self.bit_depth = int(bit_depth)
        self.colour = colour

    def __len__(self):
        """Number of frames, usable or not."""
        return len(self.names)

    def __iter__(self):
        return self.frames()

    def __repr__(self):
        return (
            f"<{type(self).__name__} {self.source!r}: {len(self)} frames, shape {self.shape}, "
            f"{self.bit_depth}-bit, {self.colour}>"
        )

    def frames(self, indices=None) -> Iterator[Frame]:
        """Yield the frames one at a time, in index order.

        Parameters
        ----------
        indices : iterable of int, optional
            The wanted frame indices (any order, duplicates ignored). Other frames are skipped as
            cheaply as the format allows (not read at all for SER and image files; decoded but not
            converted for videos, whose compressed frames depend on the previous ones). All frames
            when omitted.

        Yields
        ------
        Frame
            One per wanted index, in increasing index order; unusable frames have
            ``image=None`` and a ``reason``. Each yielded image is a new array owned by the caller.

        Raises
        ------
        IndexError
            If an index is outside ``0 .. len(self) - 1`` (raised here, before any frame is read).
        """
        wanted = None
        if indices is not None:
            wanted = sorted({operator.index(i) for i in indices})
            bad = [i for i in wanted if not 0 <= i < len(self)]
            if bad:
                raise IndexError(
                    f"frame indices {bad[:5]} out of range for the {len(self)} frames of {self.source}"
                )
        return self._frames(wanted)

    def _frames(self, wanted):  # pragma: no cover - implemented by the subclasses
        raise NotImplementedError


def open_sequence(paths, memory_mb=MEMORY_MB, decode_timeout_s=DECODE_TIMEOUT_S) -> FrameSequence:
    """Open a video, a SER file or a list of image files as a frame sequence.

    Only headers are read (and, for videos, the compressed packets counted and the first frame
    decoded); frames are read by :meth:`FrameSequence.frames`.

    Parameters
    ----------
    paths : list of str or os.PathLike, or one of them
        One video (``.avi .mov .mp4 .mkv .m4v .webm``) or SER (``.ser``) file; or image files
        (PNG, JPEG, TIFF, FITS, also gzipped or fpacked: :data:`astroflow.io.formats.SEQUENCE_FRAME`,
        any case), which become a sequence in the
        given order (names may contain spaces); or one folder, which stands for its image files in
        natural name order (``frame2`` before ``frame10``).
    memory_mb : float, optional
        Memory budget of one decoded frame (MB, ``ingest.memory_mb``): a SER or video whose
        frames would need more is refused at opening; an image file whose header claims more is
        an unusable frame. Checked on the headers, before any allocation.
    decode_timeout_s : float, optional
        Time limit (s, ``ingest.decode_timeout_s``) of decoding one video frame: a decoder that
        hangs costs the frames from that one on, reported ``"undecodable: ..."``.

    Returns
    -------
    FrameSequence

    Raises
    ------
    UnreadableSequenceError
        Naming the file: for no input, a missing file, an unknown extension, a video or SER file
        given with other inputs, a SER file whose header is not SER or whose colour format is not
        supported, a SER or video whose frames exceed ``memory_mb``, a video that FFmpeg cannot
        open or decode or that has no video stream, no frames at all, or image files none of
        which can be read.

    Notes
    -----
    A video's frame count is the number of compressed video packets; when the container's header
    declares more frames than there are packets (a truncated file), the declared count is used and
    the missing frames are reported as ``"truncated: ..."`` by :meth:`FrameSequence.frames`. The
    same holds for SER files, whose frames present are the complete frames in the file. A
    declared count that misses more frames than the file holds and more than
    :data:`MAX_MISSING_FRAMES` is not believed: only the frames present are listed.
    A video is mono when its pixel format is grey or when the first frame's chroma is neutral
    (YUV with the U and V planes all within 2 of mid-scale, 128 for 8-bit; other formats with R, G
    and B within 2 of each other); mono frames are the luma plane Y as stored, which for most
    8-bit videos is "limited range" (black 16, white 235), not 0..255. Colour videos are
    converted to 8-bit (or, above 8 bits, 16-bit) RGB by FFmpeg. Video frame timestamps are given
    only when the container has a ``creation_time``: that time plus the frame's presentation
    time from the stream start.

    Image files are sized from their headers at opening; the most common (size, channels, bit
    depth) defines :attr:`FrameSequence.shape`, and files that differ, or whose header cannot be
    read, are listed as unusable frames rather than raising. Only the first image of a multi-page
    TIFF and the first image HDU of a FITS file are read; FITS rows are turned top row first
    (stored bottom-up unless ``ROWORDER = 'TOP-DOWN'``, see
    :func:`astroflow.io.fits.top_down_rows`) and ``(3, H, W)`` cubes become ``(H, W, 3)``;
    alpha channels are dropped.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise UnreadableSequenceError("no input files given")
    if len(paths) == 1 and os.path.isdir(paths[0]):
        folder = paths[0]
        paths = sorted(
            (os.path.join(folder, name) for name in os.listdir(folder)
             if readable(name, SEQUENCE_FRAME) and os.path.isfile(os.path.join(folder, name))),
            key=_natural_key,
        )
        if not paths:
            raise UnreadableSequenceError(
                f"{folder}: the folder holds no image files ({' '.join(extensions(SEQUENCE_FRAME))})"
            )
        return _ImageSequence(paths, source=folder, memory_mb=memory_mb)
    kinds = []
    for path in paths:
        if os.path.isdir(path):
            raise UnreadableSequenceError(f"{path}: is a folder; give one folder alone or a list of files")
        if not os.path.isfile(path):
            raise UnreadableSequenceError(f"{path}: no such file")
        if os.path.getsize(path) == 0 and _kind(path) in SEQUENCE_CONTAINER:
            raise UnreadableSequenceError(f"{path}: file is empty (0 bytes)")
        kind = _kind(path)
        if kind is None:
            known = " ".join(extensions(SEQUENCE_CONTAINER + SEQUENCE_FRAME))
            raise UnreadableSequenceError(
                f"{path}: unknown extension {Path(path).suffix!r} (expected one of {known})"
            )
        kinds.append(kind)
    containers = [p for p, k in zip(paths, kinds) if k != "image"]
    if containers:
        if len(paths) > 1:
            raise UnreadableSequenceError(
                f"{containers[0]}: a video or SER file must be the only input, but {len(paths)} "
                "inputs were given (videos and SER files cannot be mixed with each other or with images)"
            )
        path = paths[0]
        if kinds[0] == "ser":
            return _SerSequence(path, memory_mb)
        return _VideoSequence(path, memory_mb, decode_timeout_s)
    return _ImageSequence(paths, source=_common_folder(paths), memory_mb=memory_mb)


def _believed_count(path, present, declared):
    """The frame count of a container: ``declared``, unless so many are missing that the count is corrupt."""
    missing = declared - present
    if missing > max(present, MAX_MISSING_FRAMES):
        log.warning("%s: the header declares %d frames but the file holds %d; the count is not "
                    "believed, listing those", path, declared, present)
        return present
    return declared


def _kind(path):
    fmt = format_of(path)
    if fmt in SEQUENCE_CONTAINER:
        return fmt
    if fmt in SEQUENCE_FRAME:
        return "image"
    return None


def _natural_key(path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", os.path.basename(path))]


def _common_folder(paths):
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if len(folders) == 1:
        return os.path.dirname(paths[0]) or "."
    return os.path.commonpath(sorted(folders))


def _container_names(path, count):
    width = max(4, len(str(max(count - 1, 0))))
    base = os.path.basename(path)
    return [f"{base}#{i:0{width}d}" for i in range(count)]


def _iso_utc(moment):
    """ISO-8601 text of an aware or naive-UTC datetime, with a ``Z`` suffix."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


# --- SER -----------------------------------------------------------------------------------------


def _ticks_to_iso(ticks):
    ticks = int(ticks)
    if ticks <= 0:
        return ""
    try:
        return _iso_utc(_TICKS_EPOCH + dt.timedelta(microseconds=ticks // 10))
    except OverflowError:
        return ""


def _datetime_to_ticks(moment):
    if not isinstance(moment, dt.datetime):
        raise TypeError(f"SER timestamps must be datetime objects, got {type(moment).__name__}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    delta = moment - _TICKS_EPOCH
    return (delta.days * 86_400 + delta.seconds) * _TICKS_PER_SECOND + delta.microseconds * 10


def _ser_text(raw):
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


class _SerSequence(FrameSequence):
    """Frames of a SER file, read through a ``numpy.memmap`` of its image data."""

    def __init__(self, path, memory_mb=MEMORY_MB):
        self._path = path
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            raw = fh.read(_SER_HEADER.size)
        if len(raw) < _SER_HEADER.size or not raw.startswith(_SER_FILE_ID):
            found = raw[:14]
            raise UnreadableSequenceError(
                f"{path}: not a SER file (it does not start with a 178-byte SER header: the first "
                f"14 bytes are {found!r}, expected {_SER_FILE_ID!r})"
            )
        (_, _lu_id, colour_id, endian_flag, width, height, depth, declared,
         observer, instrument, telescope, date_local, date_utc) = _SER_HEADER.unpack(raw)
        if colour_id in _SER_CMY:
            raise UnreadableSequenceError(
                f"{path}: SER colour format {colour_id} (Bayer {_SER_CMY[colour_id]}, a CMY mosaic) "
                "is not supported; only mono, RGGB/GRBG/GBRG/BGGR Bayer, RGB and BGR are"
            )
        if colour_id not in _SER_COLOURS:
            raise UnreadableSequenceError(f"{path}: unknown SER ColorID {colour_id} in the header")
        if width <= 0 or height <= 0:
            raise UnreadableSequenceError(f"{path}: SER header gives an invalid frame size {width}x{height}")
        if not 1 <= depth <= 16:
            raise UnreadableSequenceError(
                f"{path}: SER header gives an invalid PixelDepthPerPlane of {depth} (expected 1..16)"
            )
        if declared < 0:
            raise UnreadableSequenceError(f"{path}: SER header gives a negative FrameCount of {declared}")
        kind = _SER_COLOURS[colour_id]
        planes = 3 if kind in ("rgb", "bgr") else 1
        if depth <= 8:
            dtype = np.dtype(np.uint8)
        else:
            # Byte order: see write_ser. 0 = little-endian (what capture programs write), else big.
            dtype = np.dtype("<u2") if endian_flag == 0 else np.dtype(">u2")
        frame_bytes = width * height * planes * dtype.itemsize
        # One frame is mapped, then held as float32 (and, for a Bayer mosaic, as uint16 and as
        # float32 RGB): refuse an absurd size before any of that.
        per_pixel = (dtype.itemsize + 2 + 12) if kind in _DEBAYER_CODES else planes * (dtype.itemsize + 4)
        check_memory(path, f"{width} x {height} px frames of {depth} bits ({kind})", width * height,
                     per_pixel, memory_mb, UnreadableSequenceError)
        complete = (size - _SER_HEADER.size) // frame_bytes
        if declared == 0:
            if complete == 0:
                raise UnreadableSequenceError(f"{path}: the SER file holds no frames (FrameCount 0)")
            # A capture that crashed before updating the header: the data tell how many there are.
            log.warning("%s: SER header says FrameCount 0 but the file holds %d frames; reading those",
                        path, complete)
            declared = complete
        declared = _believed_count(path, complete, declared)
        if declared == 0:  # an absurd FrameCount and not one complete frame (found by fuzzing)
            raise UnreadableSequenceError(
                f"{path}: the SER file holds no complete frame of {width}x{height} ({size} bytes)"
            )
        complete = min(complete, declared)
        if complete < declared:
            log.warning("%s: the SER file is truncated: it holds %d complete frames of the %d its "
                        "header declares", path, complete, declared)
        data_end = _SER_HEADER.size + declared * frame_bytes
        self._trailer_offset = data_end if size >= data_end + 8 * declared else None
        self._dtype = dtype
        self._frame_shape = (height, width, 3) if planes == 3 else (height, width)
        self._declared = declared
        self._complete = complete
        self._kind = kind
        self.metadata = {
            "observer": _ser_text(observer),
            "instrument": _ser_text(instrument),
            "telescope": _ser_text(telescope),
            "date_utc": _ticks_to_iso(date_utc),
            "date_local": _ticks_to_iso(date_local).rstrip("Z"),
            "pixel_depth": depth,
            "little_endian_flag": endian_flag,
        }
        shape = (height, width) if kind == "mono" else (height, width, 3)
        super().__init__(
            path, _container_names(path, declared), shape, 8 if depth <= 8 else 16,
            "rgb" if kind == "bgr" else kind,
        )

    def _timestamps(self):
        if self._trailer_offset is None:
            return None
        return np.fromfile(self._path, dtype="<i8", count=self._declared, offset=self._trailer_offset)

    def _frames(self, wanted):
        stamps = self._timestamps()
        data = None
        if self._complete:
            data = np.memmap(self._path, dtype=self._dtype, mode="r", offset=_SER_HEADER.size,
                             shape=(self._complete, *self._frame_shape))
        try:
            for i in range(len(self)) if wanted is None else wanted:
                stamp = "" if stamps is None else _ticks_to_iso(stamps[i])
                if i >= self._complete:
                    reason = (f"truncated: the file ends after {self._complete} complete frames of "
                              f"the {self._declared} its header declares")
                    yield Frame(i, self.names[i], self._path, None, reason, stamp)
                    continue
                yield Frame(i, self.names[i], self._path, self._convert(data[i]), "", stamp)
        finally:
            del data

    def _convert(self, raw):
        if self._kind in _DEBAYER_CODES:
            mosaic = np.array(raw, dtype=np.uint16)  # native byte order, as OpenCV needs
            if raw.dtype.itemsize == 1:
                # Interpolate 8-bit mosaics with 8 extra bits so that averages keep their fractions.
                mosaic <<= 8
                rgb = cv2.cvtColor(mosaic, _DEBAYER_CODES[self._kind]).astype(np.float32)
                rgb *= np.float32(1 / 256)
                return rgb
            return cv2.cvtColor(mosaic, _DEBAYER_CODES[self._kind]).astype(np.float32)
        if self._kind == "bgr":
            return np.array(raw[..., ::-1], dtype=np.float32, order="C")
        return np.array(raw, dtype=np.float32)


def write_ser(path, frames, *, colour="mono", timestamps=None, observer="", instrument="",
              telescope="") -> None:
    """Write frames to a SER file (format version 3).

    Frames are written one at a time, so ``frames`` may be a generator longer than memory. The
    file appears at ``path`` only when complete (:func:`astroflow.io.atomic.atomic_write`).

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.ser`` file.
    frames : iterable of numpy.ndarray, or numpy.ndarray
        ``(N, H, W)`` or ``(N, H, W, 3)`` array, or an iterable of ``(H, W)`` / ``(H, W, 3)``
        frames, all ``uint8`` or all ``uint16`` (written with PixelDepthPerPlane 8 or 16) and of
        one shape. ``(H, W, 3)`` frames are in R, G, B order.
    colour : {"mono", "rgb", "bgr", "bayer_rggb", "bayer_grbg", "bayer_gbrg", "bayer_bggr"}
        SER ColorID to write. ``"mono"`` and the Bayer patterns (top-left 2x2 cell read row by row)
        need ``(H, W)`` frames; ``"rgb"`` and ``"bgr"`` need ``(H, W, 3)`` frames in R, G, B order,
        which ``"bgr"`` stores as B, G, R.
    timestamps : sequence of datetime.datetime, optional
        One UTC time per frame (naive datetimes are taken as UTC), written as the SER trailer of
        100 ns ticks since 0001-01-01; the first also fills the header's DateTime and
        DateTime_UTC (the local time zone being unknown, both get the UTC time). Without it, both
        header times are 0 and there is no trailer.
    observer, instrument, telescope : str, optional
        Header text fields, Latin-1, cut to 40 bytes.

    Raises
    ------
    ValueError
        For an unknown ``colour``, no frames, frames of another dtype or of a shape that does not
        fit ``colour`` or differs between frames, or a ``timestamps`` count that differs from the
        frame count. No file is left behind.
    TypeError
        If a timestamp is not a ``datetime``.

    Notes
    -----
    The header's ``LittleEndian`` field is written as 0 with little-endian 16-bit data. The SER
    specification says 1 means little-endian, but the early capture programs (FireCapture, Lucam
    Recorder) wrote it the other way round, and readers followed them: Siril's ``src/io/ser.h``
    defines ``SER_LITTLE_ENDIAN = 0, SER_BIG_ENDIAN = 1`` ("later programs, like Siril and GoQat,
    have also decided to implement this header in opposite meaning to the specification"), and
    Chris Garry's ser-player / PIPP (``pipp_ser.cpp``) read data as little-endian when the field
    is 0 and swap bytes when it is 1; PlanetarySystemStacker ignores the field and always reads
    little-endian. The reader (:func:`open_sequence`) therefore takes 0 as little-endian and any
    other value as big-endian, so that files written here and by capture programs round-trip.
    """
    colour = str(colour).lower()
    if colour not in _SER_COLOUR_IDS:
        raise ValueError(f"unknown SER colour {colour!r}: expected one of {', '.join(_SER_COLOUR_IDS)}")
    planes = 3 if colour in ("rgb", "bgr") else 1
    ticks = None if timestamps is None else [_datetime_to_ticks(t) for t in timestamps]

    def write(tmp):
        count, dtype, shape = 0, None, None
        with open(tmp, "wb") as fh:
            fh.write(b"\0" * _SER_HEADER.size)
            for frame in frames:
                frame = np.asarray(frame)
                if dtype is None:
                    if frame.dtype not in (np.uint8, np.uint16):
                        raise ValueError(f"SER frames must be uint8 or uint16, got {frame.dtype}")
                    wanted_ndim = 3 if planes == 3 else 2
                    if frame.ndim != wanted_ndim or (planes == 3 and frame.shape[2] != 3):
                        need = "(H, W, 3)" if planes == 3 else "(H, W)"
                        raise ValueError(f"SER colour {colour!r} needs {need} frames, got shape {frame.shape}")
                    dtype, shape = frame.dtype, frame.shape
                elif frame.dtype != dtype or frame.shape != shape:
                    raise ValueError(
                        f"frame {count} is {frame.dtype} {frame.shape}, unlike the first frame's {dtype} {shape}"
                    )
                if colour == "bgr":
                    frame = frame[..., ::-1]
                fh.write(np.ascontiguousarray(frame, dtype=dtype.newbyteorder("<")).tobytes())
                count += 1
            if count == 0:
                raise ValueError("no frames to write")
            if ticks is not None:
                if len(ticks) != count:
                    raise ValueError(f"{len(ticks)} timestamps given for {count} frames")
                fh.write(np.asarray(ticks, dtype="<i8").tobytes())
            start = ticks[0] if ticks else 0
            header = _SER_HEADER.pack(
                _SER_FILE_ID, 0, _SER_COLOUR_IDS[colour], 0, shape[1], shape[0],
                8 if dtype == np.uint8 else 16, count,
                _ser_field(observer), _ser_field(instrument), _ser_field(telescope), start, start,
            )
            fh.seek(0)
            fh.write(header)

    atomic_write(path, write)


def _ser_field(text):
    return str(text).encode("latin-1", "replace")[:40].ljust(40, b"\0")


# --- Videos (PyAV) -------------------------------------------------------------------------------


def _import_av():
    import av  # imported here: only videos need it

    return av


def _plane_array(plane, bits, big_endian=False):
    """The samples of one planar video plane as a (height, width) view, without padding."""
    if bits <= 8:
        dtype = np.dtype(np.uint8)
    else:
        dtype = np.dtype(">u2" if big_endian else "<u2")
    flat = np.frombuffer(plane, dtype=dtype)
    per_line = plane.line_size // dtype.itemsize
    return flat[: per_line * plane.height].reshape(plane.height, per_line)[:, : plane.width]


def probe_container(path, memory_mb=MEMORY_MB):
    """Check from its header alone that :func:`open_sequence` can open a video or SER file.

    A check made before any job runs (on a planetary target's file, when the workflow is
    parsed): it reads the SER header, or opens the video's container and its first video
    stream, without demuxing or decoding, so it finds empty, mislabelled and oversized files
    and videos without a video stream, not damaged frames (which cost only themselves).

    Parameters
    ----------
    path : str or os.PathLike
        A video (``.avi .mov .mp4 .mkv .m4v .webm``) or SER file.
    memory_mb : float, optional
        Memory budget of one decoded frame (MB, ``ingest.memory_mb``).

    Returns
    -------
    tuple of int
        ``(height, width)`` of the frames, as the header gives them.

    Raises
    ------
    UnreadableSequenceError
        Naming the file and the problem: missing, empty, not a video or SER file, a SER header
        :func:`open_sequence` refuses, no video stream, or frames larger than ``memory_mb``.
    """
    path = os.fspath(path)
    kind = _kind(path)
    if kind not in SEQUENCE_CONTAINER:
        raise UnreadableSequenceError(f"{path}: not a video or SER file")
    if not os.path.isfile(path):
        raise UnreadableSequenceError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UnreadableSequenceError(f"{path}: file is empty (0 bytes)")
    if kind == "ser":
        return _SerSequence(path, memory_mb).shape[:2]
    with _open_video(_import_av(), path) as container:
        stream = _video_stream(container, path, memory_mb)
        return int(stream.height), int(stream.width)


def _open_video(av, path):
    """An open PyAV container of ``path``, or UnreadableSequenceError naming it."""
    try:
        return av.open(path)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableSequenceError(f"{path}: cannot open as a video: {exc}") from exc


def _video_stream(container, path, memory_mb):
    """The first video stream of an open container, refused when there is none or its frames
    would exceed the memory budget (decoded as RGB of up to 16 bits, then float32)."""
    if not container.streams.video:
        raise UnreadableSequenceError(f"{path}: the file has no video stream")
    stream = container.streams.video[0]
    width, height = int(stream.width or 0), int(stream.height or 0)
    check_memory(path, f"{width} x {height} px video frames", width * height * 3, 2 + 4,
                 memory_mb, UnreadableSequenceError)
    return stream


class _VideoSequence(FrameSequence):
    """Frames of a video file, decoded in order with PyAV."""

    def __init__(self, path, memory_mb=MEMORY_MB, timeout_s=DECODE_TIMEOUT_S):
        av = _import_av()
        self._path = path
        self._timeout = timeout_s
        errors = (av.error.FFmpegError, OSError, ValueError)
        container = _open_video(av, path)
        try:
            stream = _video_stream(container, path, memory_mb)
            declared = max(int(stream.frames or 0), 0)
            packets = 0
            try:
                for packet in container.demux(stream):
                    if packet.size:
                        packets += 1
            except errors as exc:
                log.warning("%s: reading the video stopped after %d frames: %s", path, packets, exc)
            if packets == 0:
                raise UnreadableSequenceError(
                    f"{path}: the video holds no frames"
                    + (f" (its header declares {declared})" if declared else "")
                )
            start = stream.start_time
            self._start = float(start * stream.time_base) if start is not None and stream.time_base else 0.0
            self._creation = _creation_time(container.metadata.get("creation_time", ""))
        finally:
            container.close()
        if declared > packets:
            log.warning("%s: the video holds %d frames but its header declares %d (truncated file?)",
                        path, packets, declared)
        declared = _believed_count(path, packets, declared)
        self._packets = packets
        try:
            first = call_with_timeout(self._first_frame, timeout_s, av)
        except DecodeTimeoutError as exc:
            raise UnreadableSequenceError(
                f"{path}: the decoder was {exc} decoding the first video frame, the time limit "
                "(ingest.decode_timeout_s)"
            ) from None
        self._mode, bits = _video_mode(first)
        height, width = first.height, first.width
        shape = (height, width) if self._mode in ("plane", "rgb_as_mono") else (height, width, 3)
        self._rgb_format = "rgb24" if bits <= 8 else "rgb48le"
        self._big_endian = bool(first.format.is_big_endian)
        self._bits = bits
        count = max(packets, declared)
        super().__init__(path, _container_names(path, count), shape, 8 if bits <= 8 else 16,
                         "mono" if len(shape) == 2 else "rgb")

    def _first_frame(self, av):
        try:
            with av.open(self._path) as container:
                for frame in container.decode(video=0):
                    return frame
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise UnreadableSequenceError(f"{self._path}: cannot decode the first video frame: {exc}") from exc
        raise UnreadableSequenceError(f"{self._path}: the decoder returned no video frame")

    def _image(self, frame):
        if self._mode == "plane":
            return np.array(_plane_array(frame.planes[0], self._bits, self._big_endian), dtype=np.float32)
        rgb = frame.to_ndarray(format=self._rgb_format)
        if self._mode == "rgb_as_mono":
            return rgb[..., 1].astype(np.float32)
        return rgb.astype(np.float32)

    def _timestamp(self, frame):
        if self._creation is None or frame.time is None:
            return ""
        return _iso_utc(self._creation + dt.timedelta(seconds=float(frame.time) - self._start))

    def _make_frame(self, index, frame):
        name = self.names[index]
        stamp = self._timestamp(frame)
        if frame.is_corrupt:
            return Frame(index, name, self._path, None,
                         "undecodable: the decoder flagged the frame as corrupt "
                         "(incomplete or damaged data, e.g. a truncated file)", stamp)
        size = (frame.height, frame.width)
        if size != self.shape[:2]:
            return Frame(index, name, self._path, None,
                         f"size {size[1]}x{size[0]} differs from the sequence's "
                         f"{self.shape[1]}x{self.shape[0]}", stamp)
        return Frame(index, name, self._path, self._image(frame), "", stamp)

    def _frames(self, wanted):
        last = -1
        try:
            for frame in iterate_with_timeout(lambda: self._decoded(wanted), self._timeout):
                last = frame.index
                yield frame
        except DecodeTimeoutError as exc:
            log.warning("%s: decoding stopped after frame %d: the decoder was %s", self._path, last, exc)
            reason = (f"undecodable: the decoder was {exc} before this frame, the time limit "
                      "(ingest.decode_timeout_s)")
            for i in range(len(self)) if wanted is None else wanted:
                if i > last:
                    yield Frame(i, self.names[i], self._path, None, reason)

    def _decoded(self, wanted):
        """The frames, decoded in this (the decoding) thread; see :meth:`_frames`."""
        av = _import_av()
        errors = (av.error.FFmpegError, OSError, ValueError)
        want = None if wanted is None else set(wanted)
        last = len(self) - 1 if wanted is None else wanted[-1]
        index, error, container, decoder = 0, None, None, None
        try:
            try:
                container = av.open(self._path)
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                decoder = stream.codec_context
                for packet in container.demux(stream):
                    for frame in packet.decode():
                        if index <= last and (want is None or index in want):
                            yield self._make_frame(index, frame)
                        index += 1
                    if index > last:
                        break
            except errors as exc:
                error = exc
            if error is not None:
                if decoder is not None:
                    # With frame threading the decoder still holds frames of packets sent before
                    # the failure; they are good, so drain them.
                    try:
                        for frame in decoder.decode(None):
                            if index <= last and (want is None or index in want):
                                yield self._make_frame(index, frame)
                            index += 1
                    except errors:
                        pass
                log.warning("%s: decoding stopped after %d frames: %s", self._path, index, error)
        finally:
            if container is not None:
                container.close()
        if index <= last and index < self._packets and error is None:
            log.warning("%s: the decoder returned %d frames for %d video packets",
                        self._path, index, self._packets)
        for i in range(index, last + 1):
            if want is None or i in want:
                yield Frame(i, self.names[i], self._path, None, self._missing_reason(i, error))

    def _missing_reason(self, index, error):
        if index >= self._packets:
            return (f"truncated: the file holds only {self._packets} of the {len(self)} frames its "
                    "header declares (cut short, or damaged data the demuxer skipped)")
        if error is not None:
            return f"undecodable: decoding stopped before this frame: {error}"
        return "undecodable: the decoder returned no image for this frame"


def _creation_time(text):
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


def _video_mode(frame):
    """How to turn the decoded frames into arrays, chosen from the first frame.

    Returns ``(mode, bits)``: ``"plane"`` (grey pixel format, or YUV with neutral chroma: the
    luma plane as is), ``"rgb_as_mono"`` (other grey content: the green channel of the RGB
    conversion) or ``"rgb"``; ``bits`` is the sample depth of the pixel format.
    """
    fmt = frame.format
    bits = max((c.bits for c in fmt.components), default=8)
    name = fmt.name
    if bits > 16 or "f32" in name or "f16" in name:
        bits = 16  # float formats: converted through 16-bit RGB
    big_endian = bool(fmt.is_big_endian)
    if name.startswith("gray") and len(frame.planes) == 1 and "f" not in name[4:]:
        return "plane", bits
    tolerance = 2 << max(bits - 8, 0)
    if name.startswith("yuv") and len(frame.planes) >= 3 and not fmt.is_rgb:
        centre = 1 << (bits - 1)
        neutral = all(
            np.abs(_plane_array(frame.planes[k], bits, big_endian).astype(np.int32) - centre).max() <= tolerance
            for k in (1, 2)
        )
        return ("plane" if neutral else "rgb"), bits
    rgb = frame.to_ndarray(format="rgb24" if bits <= 8 else "rgb48le").astype(np.int32)
    neutral = (np.abs(rgb[..., 0] - rgb[..., 1]).max() <= tolerance
               and np.abs(rgb[..., 2] - rgb[..., 1]).max() <= tolerance)
    return ("rgb_as_mono" if neutral else "rgb"), bits


# --- Image files ---------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class _ImageKind:
    height: int
    width: int
    channels: int  # 1 or 3
    bits: int


def _probe_image(path, memory_mb):
    """Size, channels and sample depth of an image file from its header alone.

    Raises ValueError (its message naming the problem) for a file that cannot be used, among
    them one whose header claims more than ``memory_mb``.
    """
    fmt = format_of(path)
    if os.path.getsize(path) == 0:
        raise ValueError("file is empty (0 bytes)")
    if fmt == "png":
        with open(path, "rb") as fh:
            head = fh.read(33)
        if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
            raise ValueError("not a PNG file (no PNG signature and IHDR header)")
        width, height, depth, colour_type = struct.unpack(">IIBB", head[16:26])
        channels = 1 if colour_type in (0, 4) else 3
        check_memory(path, f"a {width} x {height} px PNG image", width * height * (channels + 1),
                     (2 if depth == 16 else 1) + 4, memory_mb)
        return _ImageKind(height, width, channels, 16 if depth == 16 else 8)
    if fmt == "jpeg":
        from PIL import Image

        with Image.open(path) as image:
            if image.format != "JPEG":
                raise ValueError(f"not a JPEG file (PIL reads it as {image.format})")
            width, height = image.size
            check_memory(path, f"a {width} x {height} px JPEG image", width * height * 3, 1 + 4, memory_mb)
            return _ImageKind(height, width, 1 if image.mode in ("L", "I", "I;16") else 3, 8)
    if fmt == "tiff":
        import tifffile

        from astroflow.io.tiff import tiff_layout

        with tifffile.TiffFile(path) as tif:
            height, width, samples, bits = tiff_layout(tif.pages.first)
        check_memory(path, f"a {width} x {height} px TIFF image", width * height * max(samples, 3),
                     bits // 8 + 4, memory_mb)
        return _ImageKind(height, width, 3 if samples >= 3 else 1, bits)
    # FITS
    from astroflow.io.fits import input_image_hdu, open_input

    with open_input(path) as hdul:
        header = input_image_hdu(hdul, path, memory_mb).header
        naxis = header.get("NAXIS", 0)
        planes = header.get("NAXIS3", 1) if naxis >= 3 else 1
        if naxis > 3 or planes not in (1, 3):
            raise ValueError(f"unsupported FITS image of NAXIS {naxis} with {planes} planes (expected 1 or 3)")
        bitpix = header["BITPIX"]
        bits = 8 if bitpix == 8 else 16 if bitpix == 16 else 32
        return _ImageKind(header["NAXIS2"], header["NAXIS1"], 1 if planes == 1 else 3, bits)


def _read_image(path, kind, memory_mb):
    """Pixel data of an image file as float32 (H, W) or (H, W, 3)."""
    fmt = format_of(path)
    if fmt in ("png", "jpeg"):
        # Mapped, not read: a file with gigabytes after its image costs only the pages decoded.
        image = cv2.imdecode(np.memmap(path, dtype=np.uint8, mode="r"), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError("OpenCV cannot decode the file")
        if image.ndim == 3:
            if kind.channels == 1:
                image = image[..., 0]  # grey stored with alpha or expanded to 3 channels
            else:
                image = image[..., 2::-1]  # BGR(A) -> RGB
    elif fmt == "tiff":
        from astroflow.io.tiff import read_tiff

        image = read_tiff(path, memory_mb)
        if image.ndim == 3:
            image = image[..., 0] if kind.channels == 1 else image[..., :3]
    else:
        from astroflow.io.fits import input_image_hdu, open_input, top_down_rows

        with open_input(path) as hdul:
            hdu = input_image_hdu(hdul, path, memory_mb)
            image = top_down_rows(np.asarray(hdu.data), hdu.header)
        if image.ndim == 3:
            image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    if image.ndim not in (2, 3):
        raise ValueError(f"unexpected image array of shape {image.shape}")
    image = np.array(image, dtype=np.float32, order="C")
    if not np.isfinite(image).any():
        raise ValueError("the image holds no finite pixel (all NaN or infinite)")
    return image


def _kind_difference(kind, common):
    if (kind.height, kind.width) != (common.height, common.width):
        return (f"size {kind.width}x{kind.height} differs from the sequence's "
                f"{common.width}x{common.height}")
    if kind.channels != common.channels:
        name = {1: "mono", 3: "rgb"}
        return f"colour {name[kind.channels]} differs from the sequence's {name[common.channels]}"
    if kind.bits != common.bits:
        return f"bit depth {kind.bits} differs from the sequence's {common.bits}"
    return ""


class _ImageSequence(FrameSequence):
    """Frames stored one per image file."""

    def __init__(self, paths, source, memory_mb=MEMORY_MB):
        self._paths = list(paths)
        self._memory_mb = memory_mb
        self._kinds, self._reasons = [], []
        for path in self._paths:
            try:
                kind = _probe_image(path, self._memory_mb)
                reason = ""
            except Exception as exc:  # any failure of a reader on a bad file
                kind, reason = None, f"unreadable: {_message(exc)}"
            self._kinds.append(kind)
            self._reasons.append(reason)
        counts = collections.Counter(k for k in self._kinds if k is not None)
        if not counts:
            raise UnreadableSequenceError(
                f"{self._paths[0]}: none of the {len(self._paths)} image files can be read "
                f"(first: {self._reasons[0]})"
            )
        common = counts.most_common(1)[0][0]  # ties: the kind met first
        for k, kind in enumerate(self._kinds):
            if kind is not None:
                self._reasons[k] = _kind_difference(kind, common)
        self._common = common
        names = [os.path.basename(p) for p in self._paths]
        if len(set(names)) < len(names):
            folder = os.path.abspath(source)
            names = [os.path.relpath(os.path.abspath(p), folder) for p in self._paths]
        shape = (common.height, common.width) + ((3,) if common.channels == 3 else ())
        super().__init__(source, names, shape, common.bits, "rgb" if common.channels == 3 else "mono")

    def _frames(self, wanted):
        for i in range(len(self)) if wanted is None else wanted:
            path, reason, image = self._paths[i], self._reasons[i], None
            if not reason:
                try:
                    image = _read_image(path, self._common, self._memory_mb)
                except Exception as exc:  # any failure of a reader on a bad file
                    reason = f"unreadable: {_message(exc)}"
                else:
                    if image.shape != self.shape:
                        found = _ImageKind(image.shape[0], image.shape[1],
                                           3 if image.ndim == 3 else 1, self._common.bits)
                        reason = _kind_difference(found, self._common) or (
                            f"unreadable: pixel data of shape {image.shape} instead of {self.shape}"
                        )
                        image = None
            yield Frame(i, self.names[i], path, image, reason, "")


def _message(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
