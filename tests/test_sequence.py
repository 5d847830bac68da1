"""Tests of astroflow.io.sequence: streaming readers of SER files, videos and image-file sequences."""

import datetime as dt
import gc
import logging
import struct
import tracemalloc

import av
import cv2
import numpy as np
import pytest
import tifffile
from astropy.io import fits
from conftest import SHARED_DATA, needs_shared_data
from PIL import Image

from astroflow.io.sequence import Frame, UnreadableSequenceError, open_sequence, write_ser

MOON = SHARED_DATA / "moon-pss"
MOON_AVI = MOON / "short_video.avi"
JUPITER = SHARED_DATA / "jupiter-tensorez"

needs_moon = needs_shared_data("moon-pss", "short_video.avi")
needs_jupiter = needs_shared_data("jupiter-tensorez")

RNG = np.random.default_rng(1)


def read_all(seq, indices=None):
    return list(seq.frames(indices))


def ser_header(colour_id, endian_flag, width, height, depth, count, date_utc=0):
    """A SER v3 header built by hand, independently of write_ser."""
    return (
        b"LUCAM-RECORDER"
        + struct.pack("<7i", 0, colour_id, endian_flag, width, height, depth, count)
        + b"Someone".ljust(40, b"\0")
        + b"ZWO ASI224MC".ljust(40, b"\0")
        + b"C8".ljust(40, b"\0")
        + struct.pack("<2q", date_utc, date_utc)
    )


def ticks(moment):
    """100 ns ticks since 0001-01-01 (SER time)."""
    delta = moment - dt.datetime(1, 1, 1)
    return (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def bayer_mosaic(rgb, pattern, shape):
    """The mosaic a sensor with this top-left 2x2 pattern records of a uniform colour."""
    mosaic = np.empty(shape, dtype=np.uint8)
    for k, channel in enumerate(pattern):
        dy, dx = divmod(k, 2)
        mosaic[dy::2, dx::2] = rgb["RGB".index(channel)]
    return mosaic


# --- SER ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, shape, colour",
    [
        (np.uint8, (5, 7, 9), "mono"),
        (np.uint16, (4, 6, 8), "mono"),
        (np.uint8, (3, 5, 6, 3), "rgb"),
        (np.uint16, (3, 5, 6, 3), "rgb"),
    ],
)
def test_ser_round_trip(tmp_path, dtype, shape, colour):
    frames = RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    frames.flat[0] = np.iinfo(dtype).max  # byte order errors would show on 0xFFFF / 0x00FF
    frames.flat[1] = 255
    path = tmp_path / "capture.ser"
    write_ser(path, frames, colour=colour, observer="me", telescope="C8")
    seq = open_sequence([str(path)])
    assert len(seq) == shape[0]
    assert seq.shape == shape[1:]
    assert seq.colour == colour
    assert seq.bit_depth == (8 if dtype == np.uint8 else 16)
    assert seq.source == str(path)
    assert seq.names[2] == "capture.ser#0002"
    assert seq.metadata["observer"] == "me" and seq.metadata["telescope"] == "C8"
    got = read_all(seq)
    assert [f.index for f in got] == list(range(shape[0]))
    for frame, expected in zip(got, frames):
        assert frame.reason == "" and frame.timestamp == ""
        assert frame.image.dtype == np.float32
        np.testing.assert_array_equal(frame.image, expected.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["capture.ser"]  # no temporary file left


def test_ser_16bit_is_written_little_endian_with_flag_0(tmp_path):
    path = tmp_path / "a.ser"
    write_ser(path, np.array([[[0x1234, 2]]], dtype=np.uint16))
    raw = path.read_bytes()
    assert struct.unpack_from("<i", raw, 22)[0] == 0  # LittleEndian field, capture-program usage
    assert struct.unpack_from("<i", raw, 34)[0] == 16
    assert raw[178:182] == b"\x34\x12\x02\x00"


def test_ser_bgr_stored_as_bgr_and_returned_as_rgb(tmp_path):
    frames = np.zeros((2, 4, 5, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 10, 20, 30
    path = tmp_path / "bgr.ser"
    write_ser(path, frames, colour="bgr")
    raw = path.read_bytes()
    assert struct.unpack_from("<i", raw, 18)[0] == 101
    assert raw[178:181] == bytes([30, 20, 10])
    seq = open_sequence([str(path)])
    assert seq.colour == "rgb" and seq.shape == (4, 5, 3)
    for frame in seq.frames():
        np.testing.assert_array_equal(frame.image, frames[0].astype(np.float32))


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "GBRG", "BGGR"])
def test_ser_bayer_debayered_to_the_right_colour(tmp_path, pattern):
    colour = (200, 90, 30)
    mosaic = bayer_mosaic(colour, pattern, (12, 16))
    path = tmp_path / "bayer.ser"
    write_ser(path, [mosaic, mosaic], colour=f"bayer_{pattern.lower()}")
    seq = open_sequence([str(path)])
    assert seq.colour == f"bayer_{pattern.lower()}"
    assert seq.shape == (12, 16, 3) and seq.bit_depth == 8
    for frame in seq.frames():
        assert frame.image.shape == (12, 16, 3) and frame.image.dtype == np.float32
        np.testing.assert_allclose(frame.image, np.broadcast_to(colour, frame.image.shape), atol=0.5)


def test_ser_bayer_16bit_red_only_mosaic(tmp_path):
    mosaic = np.zeros((8, 10), np.uint16)
    mosaic[1::2, 0::2] = 40000  # red at (1, 0) of the cell: GBRG
    path = tmp_path / "gbrg.ser"
    write_ser(path, [mosaic], colour="bayer_gbrg")
    (frame,) = read_all(open_sequence([str(path)]))
    inner = frame.image[2:-2, 2:-2]
    assert inner[..., 0].min() > 10000 and inner[..., 1].max() == 0 and inner[..., 2].max() == 0


def test_ser_timestamps_trailer(tmp_path):
    start = dt.datetime(2024, 5, 1, 21, 13, 5, 123456)
    stamps = [start + dt.timedelta(milliseconds=16.5 * k) for k in range(4)]
    path = tmp_path / "timed.ser"
    write_ser(path, np.zeros((4, 3, 3), np.uint8), timestamps=stamps)
    raw = path.read_bytes()
    assert len(raw) == 178 + 4 * 9 + 4 * 8
    assert struct.unpack_from("<q", raw, 170)[0] == ticks(start)
    seq = open_sequence([str(path)])
    got = [f.timestamp for f in seq.frames()]
    assert got == [s.isoformat(timespec="microseconds") + "Z" for s in stamps]
    assert dt.datetime.fromisoformat(got[1]) == stamps[1].replace(tzinfo=dt.UTC)
    assert seq.metadata["date_utc"] == got[0]
    # An aware datetime in another zone is converted to UTC.
    zone = dt.timezone(dt.timedelta(hours=2))
    write_ser(path, np.zeros((1, 3, 3), np.uint8), timestamps=[dt.datetime(2024, 5, 1, 23, tzinfo=zone)])
    assert read_all(open_sequence([str(path)]))[0].timestamp == "2024-05-01T21:00:00.000000Z"


def test_ser_hand_built_bgr_16bit_big_endian(tmp_path):
    """A SER file made with struct: BGR, 12-bit samples, LittleEndian=1 (big-endian data), trailer."""
    height, width = 2, 3
    rgb = np.arange(2 * height * width * 3, dtype=np.uint16).reshape(2, height, width, 3) * 97 + 5
    rgb[1, 1, 2] = 4095
    stamp = dt.datetime(2023, 1, 2, 3, 4, 5, 600000)
    data = b"".join(f[..., ::-1].astype(">u2").tobytes() for f in rgb)
    trailer = struct.pack("<2q", ticks(stamp), ticks(stamp) + 10_000_000)
    path = tmp_path / "hand made.ser"
    path.write_bytes(ser_header(101, 1, width, height, 12, 2, ticks(stamp)) + data + trailer)
    seq = open_sequence([str(path)])
    assert (len(seq), seq.shape, seq.colour, seq.bit_depth) == (2, (2, 3, 3), "rgb", 16)
    assert seq.metadata["instrument"] == "ZWO ASI224MC" and seq.metadata["pixel_depth"] == 12
    frames = read_all(seq)
    for frame, expected in zip(frames, rgb):
        np.testing.assert_array_equal(frame.image, expected.astype(np.float32))
    assert [f.timestamp for f in frames] == ["2023-01-02T03:04:05.600000Z", "2023-01-02T03:04:06.600000Z"]
    assert [f.name for f in frames] == ["hand made.ser#0000", "hand made.ser#0001"]


def test_ser_hand_built_mono_little_endian_flag_0(tmp_path):
    mono = np.array([[[1, 256], [4660, 65535]]], dtype=np.uint16)
    path = tmp_path / "m.ser"
    path.write_bytes(ser_header(0, 0, 2, 2, 16, 1) + mono.astype("<u2").tobytes())
    (frame,) = read_all(open_sequence([str(path)]))
    np.testing.assert_array_equal(frame.image, mono[0].astype(np.float32))
    assert frame.timestamp == ""


def test_ser_truncated_keeps_the_complete_frames(tmp_path, caplog):
    frames = RNG.integers(0, 255, size=(5, 4, 6), dtype=np.uint8)
    path = tmp_path / "cut.ser"
    write_ser(path, frames)
    path.write_bytes(path.read_bytes()[: 178 + 2 * 24 + 10])  # 2 frames and a bit of the third
    with caplog.at_level(logging.WARNING, logger="astroflow.io.sequence"):
        seq = open_sequence([str(path)])
    assert "truncated" in caplog.text
    assert len(seq) == 5
    got = read_all(seq)
    for k in (0, 1):
        assert got[k].reason == ""
        np.testing.assert_array_equal(got[k].image, frames[k].astype(np.float32))
    for frame in got[2:]:
        assert frame.image is None
        assert frame.reason.startswith("truncated:") and "2 complete frames of the 5" in frame.reason
    assert [f.index for f in seq.frames([4, 0])] == [0, 4]


def test_ser_header_count_zero_reads_the_frames_present(tmp_path):
    frames = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "crashed.ser"
    path.write_bytes(ser_header(0, 0, 4, 3, 8, 0) + frames.tobytes())
    seq = open_sequence([str(path)])
    assert len(seq) == 2
    np.testing.assert_array_equal(read_all(seq)[1].image, frames[1])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"RIFF" + b"\0" * 300, "not a SER file"),
        (b"LUCAM-RECORDER" + b"\0" * 20, "not a SER file"),
        (ser_header(16, 0, 4, 4, 8, 1) + b"\0" * 16, "CYYM"),
        (ser_header(0, 0, 4, 4, 8, 0), "no frames"),
        (ser_header(0, 0, 0, 4, 8, 1), "invalid frame size"),
        (ser_header(0, 0, 4, 4, 20, 1), "PixelDepthPerPlane"),
    ],
)
def test_ser_bad_header_raises_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.ser"
    path.write_bytes(content)
    with pytest.raises(UnreadableSequenceError, match=message) as info:
        open_sequence([str(path)])
    assert str(path) in str(info.value)


def test_write_ser_rejects_bad_input_and_leaves_no_file(tmp_path):
    path = tmp_path / "x.ser"
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_ser(path, np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="needs"):
        write_ser(path, np.zeros((2, 3, 3), np.uint8), colour="rgb")
    with pytest.raises(ValueError, match="unlike the first"):
        write_ser(path, [np.zeros((3, 3), np.uint8), np.zeros((3, 4), np.uint8)])
    with pytest.raises(ValueError, match="timestamps"):
        write_ser(path, np.zeros((2, 3, 3), np.uint8), timestamps=[dt.datetime(2024, 1, 1)])
    with pytest.raises(ValueError, match="colour"):
        write_ser(path, np.zeros((2, 3, 3), np.uint8), colour="cmyk")
    assert list(tmp_path.iterdir()) == []


def test_write_ser_streams_a_generator(tmp_path):
    path = tmp_path / "gen.ser"
    write_ser(path, (np.full((3, 4), k, np.uint8) for k in range(7)))
    seq = open_sequence([str(path)])
    assert len(seq) == 7
    assert [f.image[0, 0] for f in seq.frames([1, 6])] == [1.0, 6.0]


# --- Videos ------------------------------------------------------------------------------------


def encode_video(path, frames, codec="mpeg4", pix_fmt="yuv420p", fmt_in="rgb24", metadata=None):
    with av.open(str(path), "w") as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format=fmt_in)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_colour_video_gives_rgb_frames(tmp_path):
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    frames[..., 0], frames[..., 1] = 200, 40
    path = tmp_path / "colour.avi"
    encode_video(path, list(frames))
    seq = open_sequence([str(path)])
    assert (len(seq), seq.shape, seq.colour, seq.bit_depth) == (5, (32, 48, 3), "rgb", 8)
    got = read_all(seq)
    assert [f.name for f in got] == [f"colour.avi#{k:04d}" for k in range(5)]
    for frame in got:
        assert frame.image.dtype == np.float32
        np.testing.assert_allclose(frame.image.mean(axis=(0, 1)), (200, 40, 0), atol=4)
        assert frame.timestamp == ""


def test_grey_16bit_lossless_video_is_mono_and_exact_with_creation_time(tmp_path):
    base = (np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)
    frames = [base + k for k in range(4)]
    path = tmp_path / "grey16.mkv"
    encode_video(path, frames, codec="ffv1", pix_fmt="gray16le", fmt_in="gray16le",
                 metadata={"creation_time": "2024-05-01T21:00:00.000000Z"})
    seq = open_sequence([str(path)])
    assert (seq.shape, seq.colour, seq.bit_depth) == ((24, 32), "mono", 16)
    got = read_all(seq, [1, 3])
    assert [f.index for f in got] == [1, 3]
    np.testing.assert_array_equal(got[1].image, frames[3].astype(np.float32))
    assert got[0].timestamp == "2024-05-01T21:00:00.100000Z"
    assert got[1].timestamp == "2024-05-01T21:00:00.300000Z"


def test_video_without_video_stream_raises(tmp_path):
    path = tmp_path / "sound only.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(UnreadableSequenceError, match="no video stream") as info:
        open_sequence([str(path)])
    assert str(path) in str(info.value)


def test_random_bytes_video_raises_naming_the_file(tmp_path):
    path = tmp_path / "noise.avi"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(UnreadableSequenceError) as info:
        open_sequence([str(path)])
    assert str(path) in str(info.value) and "video" in str(info.value)


@needs_moon
def test_real_moon_video():
    seq = open_sequence([str(MOON_AVI)])
    assert len(seq) == 101
    assert (seq.shape, seq.colour, seq.bit_depth) == ((960, 1280), "mono", 8)
    assert seq.names[7] == "short_video.avi#0007"
    wanted = [0, 3, 50, 100]
    got = read_all(seq, [100, 50, 3, 0, 3])
    assert [f.index for f in got] == wanted
    assert [f.name for f in got] == [seq.names[k] for k in wanted]
    for frame in got:
        assert frame.reason == "" and frame.source == str(MOON_AVI)
        assert frame.image.shape == (960, 1280) and frame.image.dtype == np.float32
        assert 0 <= frame.image.min() and frame.image.max() <= 255 and frame.image.std() > 5
    assert not np.array_equal(got[0].image, got[3].image)
    # The same frame read alone or in a full pass is identical.
    full = {f.index: f.image for f in seq.frames() if f.index in (3, 50)}
    np.testing.assert_array_equal(full[50], got[2].image)
    with pytest.raises(IndexError):
        seq.frames([101])


@needs_shared_data("moon-pss", "another_short_video.avi")
def test_real_second_moon_video_count():
    seq = open_sequence([str(MOON / "another_short_video.avi")])
    assert len(seq) == 45 and seq.colour == "mono"


@needs_moon
def test_real_video_first_2kb_raises_naming_the_file(tmp_path):
    path = tmp_path / "head.avi"
    path.write_bytes(MOON_AVI.read_bytes()[:2048])
    with pytest.raises(UnreadableSequenceError) as info:
        open_sequence([str(path)])
    assert str(path) in str(info.value)


@needs_moon
def test_real_video_truncated_to_60_percent(tmp_path, caplog):
    data = MOON_AVI.read_bytes()
    path = tmp_path / "cut.avi"
    path.write_bytes(data[: len(data) * 6 // 10])
    with caplog.at_level(logging.WARNING, logger="astroflow.io.sequence"):
        seq = open_sequence([str(path)])
    assert "truncated" in caplog.text
    assert len(seq) == 101  # as declared: the missing frames are listed, not dropped
    got = read_all(seq)
    assert [f.index for f in got] == list(range(101))
    good = [f for f in got if f.image is not None]
    assert 40 <= len(good) < 101
    assert [f.index for f in good] == list(range(len(good)))  # good frames first, then the rest
    for frame in got[len(good):]:
        assert frame.reason.startswith(("truncated:", "undecodable:"))
    assert got[-1].reason.startswith("truncated:")
    original = read_all(open_sequence([str(MOON_AVI)]), [10])[0].image
    np.testing.assert_array_equal(good[10].image, original)


@needs_moon
def test_real_video_damaged_in_the_middle(tmp_path):
    data = bytearray(MOON_AVI.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    for start in (len(data) // 3, len(data) // 2):
        data[start:start + len(noise)] = noise
    path = tmp_path / "damaged.avi"
    path.write_bytes(bytes(data))
    seq = open_sequence([str(path)])
    assert len(seq) == 101
    got = read_all(seq)
    assert [f.index for f in got] == list(range(101))
    bad = [f for f in got if f.image is None]
    assert 0 < len(bad) < 20
    assert all(f.reason.startswith(("undecodable:", "truncated:")) for f in bad)
    assert all(f.reason == "" and f.image.shape == (960, 1280) for f in got if f.image is not None)


class _FailingPacket:
    def __init__(self, packet, fail):
        self._packet, self._fail = packet, fail

    def decode(self):
        if self._fail:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return self._packet.decode()


class _FailingContainer:
    """A PyAV container whose decoder fails from the given packet on."""

    def __init__(self, path, fail_at):
        self._container, self._fail_at = av.open(path), fail_at
        self.streams = self._container.streams

    def demux(self, stream):
        for k, packet in enumerate(self._container.demux(stream)):
            yield _FailingPacket(packet, k >= self._fail_at)

    def close(self):
        self._container.close()


def test_decode_error_keeps_earlier_frames_and_reports_the_rest(tmp_path, monkeypatch, caplog):
    import types

    import astroflow.io.sequence as sequence

    path = tmp_path / "v.mkv"
    encode_video(path, [np.full((16, 16), 10 * k, np.uint8) for k in range(8)],
                 codec="ffv1", pix_fmt="gray", fmt_in="gray")
    seq = open_sequence([str(path)])
    assert len(seq) == 8
    fake = types.SimpleNamespace(error=av.error, open=lambda p: _FailingContainer(p, fail_at=3))
    monkeypatch.setattr(sequence, "_import_av", lambda: fake)
    with caplog.at_level(logging.WARNING, logger="astroflow.io.sequence"):
        got = read_all(seq)
    assert "decoding stopped after 3 frames" in caplog.text
    assert [f.index for f in got] == list(range(8))
    assert [f.image[0, 0] for f in got[:3]] == [0.0, 10.0, 20.0]
    for frame in got[3:]:
        assert frame.image is None
        assert frame.reason.startswith("undecodable:") and "Invalid data" in frame.reason


@needs_moon
def test_memory_does_not_grow_with_the_number_of_frames():
    seq = open_sequence([str(MOON_AVI)])
    frame_bytes = 960 * 1280 * 4

    def peak(indices):
        gc.collect()
        tracemalloc.start()
        try:
            count = 0
            for frame in seq.frames(indices):
                assert frame.image is not None
                count += 1
            return count, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, peak_few = peak(range(5))
    all_, peak_all = peak(None)
    assert (few, all_) == (5, 101)
    assert peak_all < 3 * frame_bytes
    assert peak_all < peak_few + frame_bytes // 2


def test_ser_memory_does_not_grow_with_the_number_of_frames(tmp_path):
    path = tmp_path / "long.ser"
    shape = (64, 2000, 256)  # 64 frames of 2 MB float32 each
    write_ser(path, (np.full(shape[1:], k, np.uint8) for k in range(shape[0])))
    seq = open_sequence([str(path)])
    tracemalloc.start()
    try:
        total = sum(float(f.image[0, 0]) for f in seq.frames())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == sum(range(64))
    assert peak < 3 * shape[1] * shape[2] * 4


# --- Image files -------------------------------------------------------------------------------


def write_png(path, rgb):
    Image.fromarray(rgb).save(path)


def test_png_files_with_spaces_in_names_in_given_order(tmp_path):
    images = RNG.integers(0, 256, size=(3, 8, 10, 3), dtype=np.uint8)
    paths = [tmp_path / f"frame {k:04d}.png" for k in (3, 1, 2)]
    for path, image in zip(paths, images):
        write_png(path, image)
    seq = open_sequence([str(p) for p in paths])
    assert (len(seq), seq.shape, seq.colour, seq.bit_depth) == (3, (8, 10, 3), "rgb", 8)
    assert seq.names == ["frame 0003.png", "frame 0001.png", "frame 0002.png"]
    assert seq.source == str(tmp_path)
    for frame, image, path in zip(seq.frames(), images, paths):
        assert frame.source == str(path) and frame.reason == ""
        np.testing.assert_array_equal(frame.image, image.astype(np.float32))  # RGB order kept


def test_folder_opens_its_images_in_natural_order(tmp_path):
    for k in (10, 2, 1):
        Image.fromarray(np.full((4, 5), k, np.uint8)).save(tmp_path / f"f{k}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    seq = open_sequence([str(tmp_path)])
    assert seq.names == ["f1.png", "f2.png", "f10.png"]
    assert seq.colour == "mono" and seq.shape == (4, 5) and seq.source == str(tmp_path)
    assert [f.image[0, 0] for f in seq.frames()] == [1.0, 2.0, 10.0]


def test_frame_of_another_size_is_excluded_with_a_reason(tmp_path):
    paths = []
    for k, size in enumerate([(6, 8), (6, 8), (5, 8), (6, 8)]):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(np.full(size, 50 + k, np.uint8)).save(paths[-1])
    seq = open_sequence([str(p) for p in paths])
    assert seq.shape == (6, 8) and len(seq) == 4
    got = read_all(seq)
    assert got[2].image is None
    assert got[2].reason == "size 8x5 differs from the sequence's 8x6"
    for k in (0, 1, 3):
        assert got[k].reason == "" and got[k].image[0, 0] == 50 + k


def test_mono_frame_among_rgb_is_excluded(tmp_path):
    paths = [tmp_path / f"{k}.png" for k in range(3)]
    write_png(paths[0], np.zeros((4, 4, 3), np.uint8))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(paths[1])
    write_png(paths[2], np.zeros((4, 4, 3), np.uint8))
    got = read_all(open_sequence([str(p) for p in paths]))
    assert got[1].image is None and got[1].reason == "colour mono differs from the sequence's rgb"


def test_rgba_png_loses_alpha(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 1, 2, 3, 128
    path = tmp_path / "a.png"
    Image.fromarray(rgba).save(path)
    (frame,) = read_all(open_sequence([str(path)]))
    assert frame.image.shape == (4, 4, 3)
    np.testing.assert_array_equal(frame.image[0, 0], [1, 2, 3])


def test_unreadable_png_among_good_ones(tmp_path):
    paths = [tmp_path / f"{k}.png" for k in range(3)]
    for k in (0, 2):
        write_png(paths[k], np.full((4, 4, 3), k, np.uint8))
    paths[1].write_bytes(b"this is not a png")
    good = (tmp_path / "0.png").read_bytes()
    cut = tmp_path / "3.png"
    cut.write_bytes(good[: len(good) // 2])  # valid header, truncated data
    seq = open_sequence([str(p) for p in [*paths, cut]])
    got = read_all(seq)
    assert got[1].image is None and got[1].reason.startswith("unreadable:")
    assert got[3].image is None and got[3].reason.startswith("unreadable:")
    assert got[0].reason == got[2].reason == ""
    assert got[2].image[0, 0, 0] == 2


def test_16bit_png_keeps_its_values(tmp_path):
    image = np.array([[0, 300], [40000, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), image)
    seq = open_sequence([str(path)])
    assert seq.bit_depth == 16 and seq.colour == "mono"
    np.testing.assert_array_equal(read_all(seq)[0].image, image)


def test_16bit_tiff_frames_mono_and_rgb(tmp_path):
    mono = RNG.integers(0, 65536, size=(2, 6, 7), dtype=np.uint16)
    paths = [tmp_path / f"m{k}.tif" for k in range(2)]
    for path, image in zip(paths, mono):
        tifffile.imwrite(path, image)
    seq = open_sequence([str(p) for p in paths])
    assert (seq.shape, seq.colour, seq.bit_depth) == ((6, 7), "mono", 16)
    for frame, image in zip(seq.frames(), mono):
        np.testing.assert_array_equal(frame.image, image.astype(np.float32))
    rgb = RNG.integers(0, 65536, size=(6, 7, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tiff", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tiff", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    seq = open_sequence([str(tmp_path / "c.tiff"), str(tmp_path / "planar.tiff")])
    assert (seq.shape, seq.colour, seq.bit_depth) == ((6, 7, 3), "rgb", 16)
    for frame in seq.frames():
        np.testing.assert_array_equal(frame.image, rgb.astype(np.float32))


def test_fits_frames_uint16_mono_and_float_rgb_cube(tmp_path):
    mono = np.array([[0, 1000], [40000, 65535]], np.uint16)
    fits.PrimaryHDU(mono).writeto(tmp_path / "a.fits")
    # An image in an extension, after an empty primary HDU.
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(mono + 1)]).writeto(tmp_path / "b.fit")
    # Rows stored bottom-up, the FITS way, unless the file says TOP-DOWN.
    top_down = fits.ImageHDU(mono + 2)
    top_down.header["ROWORDER"] = "TOP-DOWN"
    fits.HDUList([fits.PrimaryHDU(), top_down]).writeto(tmp_path / "c.fit")
    seq = open_sequence([str(tmp_path / name) for name in ("a.fits", "b.fit", "c.fit")])
    assert (seq.shape, seq.colour, seq.bit_depth) == ((2, 2), "mono", 16)
    got = read_all(seq)
    np.testing.assert_array_equal(got[0].image, mono[::-1].astype(np.float32))
    np.testing.assert_array_equal(got[1].image, (mono + 1)[::-1].astype(np.float32))
    np.testing.assert_array_equal(got[2].image, (mono + 2).astype(np.float32))
    cube = np.stack([np.full((3, 4), v, np.float32) for v in (0.25, 0.5, 0.75)])  # (3, H, W)
    fits.PrimaryHDU(cube).writeto(tmp_path / "c.fts")
    seq = open_sequence([str(tmp_path / "c.fts")])
    assert (seq.shape, seq.colour, seq.bit_depth) == ((3, 4, 3), "rgb", 32)
    (frame,) = read_all(seq)
    np.testing.assert_array_equal(frame.image[1, 2], [0.25, 0.5, 0.75])


def test_jpeg_frames(tmp_path):
    Image.fromarray(np.full((8, 8), 120, np.uint8)).save(tmp_path / "g.jpg", quality=95)
    seq = open_sequence([str(tmp_path / "g.jpg")])
    assert seq.colour == "mono" and seq.shape == (8, 8)
    assert abs(read_all(seq)[0].image.mean() - 120) < 2


@needs_jupiter
def test_real_jupiter_pngs():
    paths = sorted(str(p) for p in JUPITER.glob("*.png"))
    seq = open_sequence(paths)
    assert (len(seq), seq.shape, seq.colour, seq.bit_depth) == (100, (512, 512, 3), "rgb", 8)
    got = read_all(seq, [99, 0])
    assert [f.name for f in got] == ["00000001.png", "00000100.png"]
    with Image.open(paths[99]) as image:
        expected = np.asarray(image.convert("RGB"), dtype=np.float32)
    np.testing.assert_array_equal(got[1].image, expected)
    assert all(f.reason == "" for f in got)


# --- open_sequence input checks ----------------------------------------------------------------


def test_missing_file_raises_naming_it(tmp_path):
    path = tmp_path / "nowhere.ser"
    with pytest.raises(UnreadableSequenceError, match="no such file") as info:
        open_sequence([str(path)])
    assert str(path) in str(info.value)


def test_unknown_extension_raises(tmp_path):
    path = tmp_path / "frame.bmp"
    path.write_bytes(b"BM")
    with pytest.raises(UnreadableSequenceError, match="unknown extension") as info:
        open_sequence([str(path)])
    assert str(path) in str(info.value)


def test_video_mixed_with_images_raises(tmp_path):
    ser = tmp_path / "a.ser"
    write_ser(ser, np.zeros((1, 2, 2), np.uint8))
    png = tmp_path / "b.png"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(png)
    with pytest.raises(UnreadableSequenceError, match="only input") as info:
        open_sequence([str(png), str(ser)])
    assert str(ser) in str(info.value)


def test_no_readable_image_raises(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"garbage")
    with pytest.raises(UnreadableSequenceError, match="none of the 1 image files"):
        open_sequence([str(path)])
    with pytest.raises(UnreadableSequenceError, match="no input"):
        open_sequence([])


def test_frame_dataclass_defaults():
    frame = Frame(0, "a", "a.png", None)
    assert frame.reason == "" and frame.timestamp == ""
