"""Every file of the bad-input corpus (tests/badinputs.py) through every reader of its format.

Each reader either reads the file correctly (the values are checked) or raises its ONE error
class, a ValueError subclass whose message names the file and the problem; never a MemoryError,
a hang, a crash or a bare numpy/astropy exception. A planetary sequence reports a bad frame as
an unusable :class:`Frame` with a reason rather than raising. The memory budget and the decoding
time limit (astroflow.io.limits) are tested at the end.
"""

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import time
import warnings

import badinputs as bad
import numpy as np
import pandas as pd
import pytest

from astroflow.deepsky.frames import frames_table
from astroflow.io import ingest, sequence
from astroflow.io.fits import REASON_KEY, FitsImageError, is_rejected, read_image
from astroflow.io.imagefile import UnreadableImageError, read_finished_header, read_finished_image
from astroflow.io.ingest import UnreadableFrameError, ingest_frame, read_frame
from astroflow.io.limits import (
    DecoderDiedError,
    DecodeTimeoutError,
    call_in_process,
    call_with_timeout,
    check_memory,
    iterate_with_timeout,
)
from astroflow.io.sequence import UnreadableSequenceError, open_sequence
from astroflow.workflow.discovery import source_header


def _sequence(path, **limits):
    seq = open_sequence([str(path)], **limits)
    return seq, list(seq.frames())


#: reader name -> (formats it reads, function(path) -> result, its error class)
READERS = {
    "ingest.read_frame": (("raw", "fits", "tiff"), read_frame, UnreadableFrameError),
    "imagefile.read_finished_image": (("png", "tiff", "fits", "xisf"), read_finished_image, UnreadableImageError),
    "imagefile.read_finished_header": (("png", "tiff", "fits", "xisf"), read_finished_header, UnreadableImageError),
    "sequence.open_sequence": (("ser", "video", "png", "jpeg", "tiff", "fits"), _sequence, UnreadableSequenceError),
    "fits.read_image": (("fits",), read_image, ValueError),
    "discovery.source_header": (("fits",), lambda p: source_header(str(p)), None),
}

CASES = [
    (case, reader)
    for case, (_, fmt) in bad.CORPUS.items()
    for reader, (formats, _, _) in READERS.items()
    if fmt in formats
]


def _values(case):
    """The image a correct reader returns for a corpus file that must read, else None."""
    if case in ("fits_frame", "fits_negative_exptime", "fits_missing_exptime", "fits_bitpix64",
                "fits_compressed", "fits_gzip", "raw_unknown_camera"):
        return bad.pixels().astype(np.float32)
    if case == "fits_some_nan":
        data = bad.pixels().astype(np.float32)
        data[0] = np.nan
        return data
    if case == "fits_scaled":
        return bad.fits_scaled_values()
    if case == "fits_rgb_cube":
        return bad.pixels(3).astype(np.float32)
    if case in ("dng_frame", "dng_unknown_camera"):
        return (bad.pixels() >> 2).astype(np.float32)
    for fmt in ("png", "tiff"):
        variant = case.removeprefix(f"{fmt}_")
        if case.startswith(f"{fmt}_") and variant in bad.IMAGE_VARIANTS:
            channels, dtype = bad.IMAGE_VARIANTS[variant]
            values = bad.pixels(channels, dtype)
            return (values if channels == 1 else values[..., :3]).astype(np.float32)
    if case == "png_palette":
        return bad.palette_rgb().astype(np.float32)
    if case == "tiff_palette":
        return bad.palette_rgb().astype(np.float32) * 257
    if case == "png_grey_alpha":
        return bad.pixels(1, np.uint8).astype(np.float32)
    return None


# Files no reader can use, and a word of the problem every reader must name.
PROBLEMS = {
    "fits_truncated": "truncated",
    "fits_truncated_header": "cannot read FITS",
    "fits_garbage": "cannot read FITS",
    "fits_huge_naxis": "memory budget",
    "fits_nan_filled": "no finite pixel",
    "fits_inf_filled": "no finite pixel",
    "fits_table_only": "no image",
    "fits_compressed_truncated": "truncated",
    "fits_gzip_truncated": "truncated or corrupt gzip stream",
    "xisf_garbage": "XISF",
    "fits_4d": "shape|NAXIS 4",
    "dng_truncated": "cannot read camera RAW",
    "raw_really_jpeg": "not RAW",
    "raw_garbage": "not RAW",
    "ser_absurd_size": "memory budget",
    "ser_zero_size": "invalid frame size",
    "ser_header_only": "not a SER file",
    "ser_not_ser": "not a SER file",
    "ser_bad_depth": "PixelDepthPerPlane",
    "video_truncated": None,  # reads: checked in test_video_cases
    "video_garbage": "cannot open as a video",
    "png_truncated": "cannot|decode",
    "tiff_truncated": "truncated",
    "tiff_huge_claim": "memory budget",
    "jpeg_truncated": "Truncated|cannot",
}
ZERO_BYTES = "file is empty (0 bytes)"

# Where a reader's behaviour differs from the table above, by design.
OVERRIDES = {
    # fits.read_image reads the workflow's own files: no memory budget (a drizzle may be larger
    # than any input frame), and NaN pixels are data; it still refuses what it cannot read.
    ("fits_huge_naxis", "fits.read_image"): "truncated",
    ("fits_nan_filled", "fits.read_image"): "read",
    ("fits_inf_filled", "fits.read_image"): "read",
    # it reads the primary HDU, as the workflow writes its files; a compressed image is in HDU 1
    ("fits_compressed", "fits.read_image"): "no image data",
    ("fits_compressed_truncated", "fits.read_image"): "no image data",
    ("fits_table_only", "fits.read_image"): "no image data",
    # sequence reads the first image of a folder of frames: a frame it cannot use is a Frame
    # with a reason, the sequence fails only when no frame at all can be used (one file here)
    ("fits_nan_filled", "sequence.open_sequence"): "frame:no finite pixel",
    ("fits_inf_filled", "sequence.open_sequence"): "frame:no finite pixel",
    ("png_truncated", "sequence.open_sequence"): "frame:cannot decode",
    ("tiff_truncated", "sequence.open_sequence"): "frame:truncated",
    ("raw_unknown_camera", "ingest.read_frame"): "read",
}


def _expectation(case, reader):
    if (case, reader) in OVERRIDES:
        return OVERRIDES[(case, reader)]
    if case.startswith("zero_bytes"):
        return ZERO_BYTES
    return PROBLEMS.get(case, "read")


@pytest.mark.parametrize(("case", "reader"), CASES, ids=[f"{c}-{r}" for c, r in CASES])
def test_reader_on_corpus_file(tmp_path, case, reader, caplog):
    make, fmt = bad.CORPUS[case]
    path = make(tmp_path)
    _, read, error = READERS[reader]
    expected = _expectation(case, reader)
    caplog.set_level(logging.CRITICAL)
    with warnings.catch_warnings(record=True):
        # the readers' warnings are logged in a run, not raised: test that behaviour
        warnings.simplefilter("always")
        if reader == "discovery.source_header":
            header = read(path)
            # a parse-time peek never raises: a header, or None for ingest to report
            assert header is None or "NAXIS" in header or "ZNAXIS" in header
            return
        if reader == "imagefile.read_finished_header":
            _check_header_reader(read, path, error, case)
            return
        if expected is None or expected == "read" or expected.startswith("frame:"):
            result = read(path)
        else:
            with pytest.raises(error) as info:
                read(path)
            message = str(info.value)
            assert type(info.value) is error or issubclass(type(info.value), error)
            assert str(path) in message, message
            assert _matches(expected, message), f"{message!r} does not say {expected!r}"
            return
    if reader == "sequence.open_sequence":
        _check_sequence(case, path, result, expected)
        return
    data = result[0]
    assert data.dtype == np.float32
    want = _values(case)
    if want is not None:
        np.testing.assert_array_equal(data, want)
    elif case in ("fits_nan_filled", "fits_inf_filled"):
        assert not np.isfinite(data).any()  # fits.read_image keeps them, as written
    else:
        assert np.isfinite(data).any()


def _matches(expected, message):
    return any(word in message for word in expected.split("|"))


def _check_header_reader(read, path, error, case):
    # a header reader reads keywords only: it may succeed where the pixels are bad, but when it
    # fails it says so with the file's name
    try:
        header = read(path)
    except error as exc:
        assert str(path) in str(exc)
    else:
        if case in ("fits_frame", "fits_scaled", "fits_compressed", "fits_gzip"):
            assert header["EXPTIME"] == 30.0


def _check_sequence(case, path, result, expected):
    seq, frames = result
    assert len(frames) == len(seq)
    for frame in frames:
        assert (frame.image is None) == bool(frame.reason)
    if expected is not None and expected.startswith("frame:"):
        (frame,) = frames
        assert frame.image is None and _matches(expected.removeprefix("frame:"), frame.reason), frame.reason
        return
    if fmt_of(case) in ("ser", "video"):
        _check_container(case, seq, frames)
        return
    (frame,) = frames
    assert frame.reason == "", frame.reason
    want = _values(case)
    if case == "jpeg_image":
        want = bad.pixels(3, np.uint8).astype(np.float32)
        assert np.abs(frame.image - want).mean() < 8  # lossy
    elif want is not None:
        np.testing.assert_array_equal(frame.image, want)


def fmt_of(case):
    return bad.CORPUS[case][1]


def _check_container(case, seq, frames):
    good = [f for f in frames if f.image is not None]
    if case == "ser_file":
        assert len(frames) == 3
        np.testing.assert_array_equal(np.stack([f.image for f in good]), bad.ser_frames(3))
    elif case == "ser_truncated":
        # 3 complete frames of the 100 declared: those read, the 97 others listed as truncated
        assert len(frames) == 100 and len(good) == 3
        np.testing.assert_array_equal(np.stack([f.image for f in good]), bad.ser_frames(3))
        assert all(f.reason.startswith("truncated:") for f in frames[3:])
    elif case == "ser_absurd_count":
        # a FrameCount of 2**31 - 1 over 2 frames: the 2 frames, not 2**31 frame names
        assert len(frames) == 2 and len(good) == 2
    elif case == "video_file":
        assert len(frames) == 12 and len(good) == 12 and seq.shape == (64, 96, 3)
        np.testing.assert_allclose(good[5].image.mean(axis=(0, 1)),
                                   bad.video_frames()[5].mean(axis=(0, 1)), atol=6)
    elif case == "video_truncated":
        # the frames present read, the rest declared by the header listed as truncated
        assert len(frames) == 60 and 0 < len(good) < 60
        assert all(f.reason.startswith(("truncated:", "undecodable:")) for f in frames if f.image is None)
    elif case == "video_broken_stream":
        # FFmpeg's MPEG-4 decoder conceals the damage: every frame decodes (its damaged pixels
        # are garbage, left to the quality rejection of the planetary analysis)
        assert len(frames) == 24 and good
    else:
        pytest.fail(f"no check for {case}")


def test_folder_of_mixed_png_and_tiff_kinds_keeps_the_most_common_and_names_the_others(tmp_path):
    # 8/16-bit, mono/RGB/RGBA, palette PNG and TIFF in one planetary folder: the most common
    # kind (RGB 8-bit: rgb8, rgba8, palette PNG) is the sequence's, the others are unusable
    # frames with the difference as their reason; none crashes
    folder = tmp_path / "frames"
    for variant in bad.IMAGE_VARIANTS:
        bad.png_image(folder, variant)
    bad.png_palette(folder)
    bad.tiff_image(folder, "mono16")
    seq = open_sequence(str(folder))
    assert (seq.shape, seq.bit_depth) == (bad.SHAPE + (3,), 8)
    frames = {f.name: f for f in seq.frames()}
    usable = sorted(name for name, f in frames.items() if f.image is not None)
    assert usable == ["png_palette.png", "png_rgb8.png", "png_rgba8.png"]
    np.testing.assert_array_equal(frames["png_palette.png"].image, bad.palette_rgb())
    np.testing.assert_array_equal(frames["png_rgba8.png"].image, bad.pixels(3, np.uint8))
    assert frames["png_rgb16.png"].reason.startswith("bit depth 16")
    assert frames["png_mono8.png"].reason.startswith("colour mono")
    assert frames["tiff_mono16.tif"].reason.startswith("colour mono")


# --- one case through the deep-sky ingest path, into frames.csv --------------------------------


def test_bad_light_becomes_an_excluded_frame_with_its_reason_in_frames_table(tmp_path):
    lights = tmp_path / "lights"
    sources = [bad.fits_frame(lights, "light_001.fits"), bad.fits_truncated(lights, "light_002.fits"),
               bad.fits_huge_naxis(lights, "light_003.fits"), bad.fits_nan_filled(lights, "light_004.fits")]
    out = [tmp_path / "ingest" / "light" / f"{p.stem}.fits" for p in sources]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        headers = [ingest_frame(src, "light", dst) for src, dst in zip(sources, out, strict=True)]
    assert [is_rejected(h) for h in headers] == [False, True, True, True]
    table = frames_table(out, pd.DataFrame(columns=["frame", "status", "reason"]))
    rows = table.set_index("frame")
    assert rows.loc["light_001", "status"] == "used"
    for frame, word in (("light_002", "truncated FITS"), ("light_003", "memory budget"),
                        ("light_004", "no finite pixel")):
        assert rows.loc[frame, "status"] == "rejected"
        assert word in rows.loc[frame, "reason"] and f"{frame}.fits" in rows.loc[frame, "reason"]
    with pytest.raises(ValueError, match="rejected"):
        read_image(out[1])


def test_negative_or_missing_exposure_is_omitted_not_passed_on(tmp_path):
    for make in (bad.fits_negative_exptime, bad.fits_missing_exptime):
        _, meta = read_frame(make(tmp_path))
        assert "EXPTIME" not in meta
    assert read_frame(bad.fits_frame(tmp_path))[1]["EXPTIME"] == 30.0


# --- memory budget -------------------------------------------------------------------------------


def test_check_memory_names_file_claim_and_budget():
    check_memory("a.fits", "a 10 x 10 image", 100, 6, 1)  # 600 bytes: within 1 MB
    with pytest.raises(UnreadableFrameError, match=r"a\.fits: the header claims a 1000 x 1000 image, "
                       r"which needs 6 MB .* budget of 5 MB"):
        check_memory("a.fits", "a 1000 x 1000 image", 10**6, 6, 5, UnreadableFrameError)


def test_complete_fits_beyond_the_budget_is_refused_before_reading(tmp_path):
    # a sparse 2048 x 2048 float32 file: complete, so only the budget can refuse it (32 MB
    # needed with its float32 copy)
    path = bad.fits_huge_sparse(tmp_path, shape=(2048, 2048))
    for read, error in ((read_frame, UnreadableFrameError), (read_finished_image, UnreadableImageError)):
        with pytest.raises(error, match="memory budget of 16 MB"):
            read(path, memory_mb=16)
    seq = open_sequence([str(path), str(bad.fits_frame(tmp_path))], memory_mb=16)
    assert "memory budget" in next(seq.frames([0])).reason
    data, _ = read_frame(path, memory_mb=64)
    assert data.shape == (2048, 2048) and not data.any()


def test_ser_and_video_frames_beyond_the_budget_are_refused_at_opening(tmp_path):
    ser = bad.ser_file(tmp_path)
    video = bad.video_file(tmp_path)
    assert len(open_sequence(str(ser))) == 3
    for path in (ser, video):
        with pytest.raises(UnreadableSequenceError, match="memory budget") as info:
            open_sequence(str(path), memory_mb=0.001)
        assert str(path) in str(info.value)


def test_ser_frames_are_memory_mapped_not_read(tmp_path, monkeypatch):
    # the SER reader maps the file: np.fromfile / read() of the frame data would load it whole
    calls = []
    real = np.memmap

    def spy(*args, **kwargs):
        calls.append(kwargs.get("shape"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sequence.np, "memmap", spy)
    seq = open_sequence(str(bad.ser_file(tmp_path, count=5)))
    assert sum(f.image is not None for f in seq.frames()) == 5
    assert calls == [(5, *bad.SHAPE)]


# --- decoding time limit -------------------------------------------------------------------------


def test_call_with_timeout_returns_raises_and_gives_up():
    assert call_with_timeout(lambda x: x + 1, 5, 1) == 2
    with pytest.raises(KeyError):
        call_with_timeout({}.__getitem__, 5, "missing")
    start = time.monotonic()
    with pytest.raises(DecodeTimeoutError, match="still decoding after 0.2 s"):
        call_with_timeout(time.sleep, 0.2, 30)
    assert time.monotonic() - start < 5


def test_iterate_with_timeout_stops_at_the_slow_item():
    def items():
        yield 1
        yield 2
        time.sleep(30)
        yield 3

    got = []
    with pytest.raises(DecodeTimeoutError):
        for item in iterate_with_timeout(items, 0.3):
            got.append(item)
    assert got == [1, 2]
    assert list(iterate_with_timeout(lambda: iter(range(5)), 5)) == [0, 1, 2, 3, 4]


class _BrokenRaw:
    """A rawpy handle whose decoding goes wrong as LibRaw's does on some damaged files: it hangs
    releasing the GIL (a sleep), hangs holding it (a C call through ctypes.PyDLL, which keeps
    the GIL: no Python thread can run, so no thread-based time limit could stop it), or crashes
    (SIGSEGV)."""

    def __init__(self, raw, how):
        self._raw, self._how = raw, how

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def unpack(self):
        if self._how == "sleeps":
            time.sleep(60)
        elif self._how == "holds the GIL":
            ctypes.PyDLL(ctypes.util.find_library("c")).sleep(60)
        else:
            os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.parametrize(("how", "reason"), [
    ("sleeps", "time limit"), ("holds the GIL", "time limit"), ("crashes", "killed by SIGSEGV"),
])  # fmt: skip
def test_raw_decoder_that_hangs_or_crashes_costs_one_frame(tmp_path, monkeypatch, how, reason):
    """LibRaw decodes in a child process: one that hangs is killed at ingest.decode_timeout_s,
    one that crashes ends only the child; the frame is excluded with the reason, the caller
    goes on, and no child process is left behind."""
    good = bad.dng_frame(tmp_path)
    real_imread = ingest.rawpy.imread
    monkeypatch.setattr(ingest.rawpy, "imread", lambda path: _BrokenRaw(real_imread(path), how))
    start = time.monotonic()
    header = ingest_frame(good, "light", tmp_path / "out.fits", decode_timeout_s=1.0)
    assert time.monotonic() - start < 20
    assert is_rejected(header)
    assert reason in header[REASON_KEY] and "dng_frame.dng" in header[REASON_KEY], header[REASON_KEY]
    assert multiprocessing.active_children() == []
    monkeypatch.undo()
    assert read_frame(good, decode_timeout_s=30)[0].shape == bad.SHAPE


def test_call_in_process_returns_raises_and_kills():
    assert call_in_process(divmod, 5, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        call_in_process(divmod, 5, 1, 0)
    start = time.monotonic()
    with pytest.raises(DecodeTimeoutError, match="after 0.5 s"):
        call_in_process(ctypes.PyDLL(ctypes.util.find_library("c")).sleep, 0.5, 60)
    assert time.monotonic() - start < 10
    with pytest.raises(DecoderDiedError, match="exit status 3"):
        call_in_process(os._exit, 5, 3)
    assert multiprocessing.active_children() == []


def test_video_decoder_that_hangs_costs_the_frames_from_there(tmp_path, monkeypatch):
    path = bad.video_file(tmp_path)
    real = sequence._VideoSequence._make_frame

    def slow(self, index, frame):
        if index == 4:
            time.sleep(30)
        return real(self, index, frame)

    seq = open_sequence(str(path), decode_timeout_s=0.5)
    monkeypatch.setattr(sequence._VideoSequence, "_make_frame", slow)
    frames = list(seq.frames())
    assert len(frames) == 12
    assert all(f.image is not None for f in frames[:4])
    assert all(f.image is None and "time limit" in f.reason for f in frames[4:])


def test_fits_image_error_is_a_value_error_naming_the_file(tmp_path):
    path = bad.fits_truncated(tmp_path)
    with pytest.raises(FitsImageError, match="truncated") as info:
        read_image(path)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)


# The parse-time check of an image or planetary target's one file (discovery.probe_input) reads
# headers only. It must refuse, naming the file and the problem, every file whose header shows
# what the full reader refuses; the problems only the data show are left to the job.
PROBE_FORMATS = ("png", "tiff", "fits", "xisf", "ser", "video")
PROBE_CASES = [case for case, (_, fmt) in bad.CORPUS.items() if fmt in PROBE_FORMATS]
DATA_ONLY_PROBLEMS = {
    "fits_nan_filled", "fits_inf_filled", "png_truncated",
}  # fmt: skip


@pytest.mark.parametrize("case", PROBE_CASES)
def test_parse_time_probe_refuses_what_the_header_shows(tmp_path, case, caplog):
    from astroflow.workflow.discovery import DiscoveryError, probe_input

    make, fmt = bad.CORPUS[case]
    path = make(tmp_path)
    container = fmt in ("ser", "video")
    full = "sequence.open_sequence" if container else "imagefile.read_finished_image"
    expected = _expectation(case, full)
    caplog.set_level(logging.CRITICAL)
    refused = not (expected is None or expected == "read" or expected.startswith("frame:"))
    if refused and case not in DATA_ONLY_PROBLEMS:
        with pytest.raises(DiscoveryError) as info:
            probe_input(str(path), "target 't', lights", 4096)
        message = str(info.value)
        assert message.startswith("target 't', lights: ") and str(path) in message, message
        assert _matches(expected, message), f"{message!r} does not say {expected!r}"
        return
    shape = probe_input(str(path), "target 't', lights", 4096)
    if refused:  # a problem of the data: the full reader finds it in the job
        with pytest.raises(READERS[full][2]):
            READERS[full][1](path)
        return
    if container:
        seq, _ = _sequence(path)
        assert tuple(shape) == seq.shape[:2]
    else:
        data, _ = read_finished_image(path)
        assert tuple(shape[:2]) == data.shape[:2]
        assert shape[2] >= (data.shape[2] if data.ndim == 3 else 1)
