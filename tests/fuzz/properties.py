"""What our parsers promise for any input: shared by the property tests and the atheris fuzzer.

``tests/test_fuzz_properties.py`` (hypothesis, in the suite) and the coverage-guided targets
``tests/fuzz/fuzz_*.py`` (atheris, ``make fuzz``) feed inputs to the same checks: each returns
normally for a correct result or the project's clear error, and raises ``AssertionError`` (or
lets any other exception through) when a parser breaks its promise.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import signal
import struct
from pathlib import Path

import numpy as np

from astroflow.calibration.calibrate import dark_groups, match_dark
from astroflow.deepsky.palette import light_filter
from astroflow.io.fits import iso_date
from astroflow.io.ingest import ingest_frame
from astroflow.io.sequence import UnreadableSequenceError, open_sequence
from astroflow.workflow.config import ConfigError, configfile_targets, validate_config
from astroflow.workflow.discovery import (
    FRAME_NAME_LENGTH,
    DiscoveryError,
    find_frames,
    find_sessions,
    frame_name,
    source_header,
    target_pattern,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
#: the frame wildcard of rules/common.smk
FRAME_WILDCARD = re.compile(r"[A-Za-z0-9_.-]+")


#: seconds one parse may take (hypothesis runs); None under libFuzzer, whose -timeout decides
TIME_LIMIT = 30


@contextlib.contextmanager
def time_limit():
    """Fail, instead of stalling, when a parser hangs (the SER file of 2**31 - 1 frames)."""
    seconds = TIME_LIMIT
    if seconds is None:
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"still parsing after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- SER -----------------------------------------------------------------------------------------

SER_HEADER = struct.Struct("<14s7i40s40s40sqq")


def ser_bytes(colour=0, endian=0, width=4, height=4, depth=8, count=1, stamp=0, tail=b""):
    """A SER file: a header with these fields (FileID right), then ``tail`` as its data."""
    fields = (b"LUCAM-RECORDER", 0, colour, endian, width, height, depth, count, b"", b"", b"", stamp, stamp)
    return SER_HEADER.pack(*fields) + tail


def check_ser(path, content):
    """``content`` as a SER file: a sequence whose frames are all readable or truncated, or an
    ``UnreadableSequenceError`` naming the file. Returns the sequence (None after the error)."""
    Path(path).write_bytes(content)
    try:
        with time_limit():
            seq = open_sequence(path)
    except UnreadableSequenceError as err:
        assert str(path) in str(err), err
        return None
    assert len(seq) >= 1 and len(seq.names) == len(seq) == len(set(seq.names))
    with time_limit():
        frames = list(seq.frames())
    assert [f.index for f in frames] == list(range(len(seq)))
    for frame in frames:
        if frame.image is None:
            assert frame.reason.startswith("truncated:"), frame.reason
        else:
            assert frame.image.dtype == np.float32 and frame.image.shape == seq.shape
            assert frame.image.min() >= 0 and frame.image.max() < 2**seq.bit_depth
        assert frame.timestamp == "" or frame.timestamp.endswith("Z")
    return seq


# --- FITS header normalisation ------------------------------------------------------------------

#: keywords that ingest normalises or that decide how a frame is read
KEYWORDS = [
    "EXPTIME", "EXPOSURE", "ISOSPEED", "GAIN", "EGAIN", "CCD-TEMP", "SET-TEMP", "XBINNING",
    "YBINNING", "XPIXSZ", "FOCALLEN", "BLACKLVL", "WHITELVL", "SATURATE", "FILTER", "INSFLNAM",
    "OBJECT", "INSTRUME", "RA", "DEC", "DATE-OBS", "DATE_OBS", "TIME-OBS", "BAYERPAT",
    "COLORTYP", "XBAYROFF", "YBAYROFF", "ROWORDER", "AFSTATUS", "BZERO", "BSCALE",
]  # fmt: skip


def fits_bytes(cards, rows=4, cols=4):
    """A 16-bit FITS image whose header holds ``cards``: (keyword, value text) as written, or
    whole 80-character card images (a str)."""
    head = ["SIMPLE  =                    T", "BITPIX  =                   16", "NAXIS   =                    2",
            f"NAXIS1  = {cols:>20}", f"NAXIS2  = {rows:>20}"]  # fmt: skip
    head += [card if isinstance(card, str) else f"{card[0]:<8}= {card[1]}" for card in cards]
    head = [card[:80] for card in head] + ["END"]
    text = "".join(card.ljust(80) for card in head)
    text = text.ljust(-(-len(text) // 2880) * 2880)
    data = np.arange(rows * cols, dtype=">i2").tobytes()
    return text.encode("ascii") + data.ljust(2880, b"\0")


def check_ingest(source, out):
    """Ingest of a FITS light: a frame whose normalised keywords are sane, or a rejected
    placeholder whose reason names the file; never an exception. Then what later rules do with
    the header: its filter, dark grouping and matching, the parse-time source header."""
    header = ingest_frame(source, "light", out)
    assert header["AFSTATUS"] in ("OK", "REJECTED")
    if header["AFSTATUS"] == "REJECTED":
        assert str(source) in header["AFREASON"], header["AFREASON"]
        return header
    for key in ("EXPTIME", "ISOSPEED", "GAIN", "EGAIN", "CCD-TEMP", "SET-TEMP", "XBINNING", "YBINNING",
                "XPIXSZ", "FOCALLEN", "BLACKLVL", "WHITELVL"):  # fmt: skip
        if key in header:
            value = header[key]
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
            assert math.isfinite(value), (key, value)  # ints of any size (ISOSPEED = 1E30) too
    for key in ("EXPTIME", "ISOSPEED", "GAIN", "EGAIN", "WHITELVL", "FOCALLEN"):
        assert header.get(key, 0) >= 0, (key, header[key])
    for key in ("XBINNING", "YBINNING"):
        assert isinstance(header.get(key, 1), int) and header.get(key, 1) >= 1, (key, header[key])
    assert header.get("BAYERPAT", "RGGB") in ("RGGB", "GRBG", "GBRG", "BGGR")
    if "DATE-OBS" in header:
        assert iso_date(header["DATE-OBS"]) == header["DATE-OBS"]
    assert FRAME_WILDCARD.fullmatch(light_filter(None, header))
    groups = dark_groups([header, header])
    assert sorted(i for g in groups for i in g) == [0, 1]
    assert match_dark(header, [header])[0] == 0
    raw = source_header(str(source))
    assert raw is None or FRAME_WILDCARD.fullmatch(light_filter(None, raw))
    return header


# --- configuration ------------------------------------------------------------------------------


def check_config(config):
    """A configuration (any Python value, as YAML loads it): valid, after which discovery of its
    missing folders raises ``DiscoveryError`` naming the target, or a ``ConfigError``."""
    config = copy.deepcopy(config)
    try:
        validate_config(config, SCHEMA)
    except ConfigError as err:
        assert str(err).startswith("invalid configuration:"), err
        return False
    for target, entries in config["targets"].items():
        if entries["kind"] == "deep-sky":
            try:
                find_sessions(target, entries)
            except DiscoveryError as err:
                assert f"target '{target}'" in str(err), err
    return True


def check_configfile(path, text):
    """``text`` as a ``--configfile``: its targets (a mapping) or a ``ConfigError`` naming it."""
    Path(path).write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        targets = configfile_targets([path])
    except ConfigError as err:
        assert str(path) in str(err), err
        return None
    assert isinstance(targets, dict)
    return targets


# --- frame names --------------------------------------------------------------------------------


def check_frame_name(path):
    """A frame name: a wildcard value, a safe file name with room for a session prefix, a repeat
    suffix and an extension, and the name of its own intermediate file."""
    name = frame_name(path)
    assert FRAME_WILDCARD.fullmatch(name) and not name.startswith("."), name
    assert len(name) <= FRAME_NAME_LENGTH
    assert len(f"{'s' * 40}_{name}-99.fits".encode()) <= 255
    assert frame_name(f"/some/folder/{name}.fits") == name
    return name


def check_find_frames(names):
    """Distinct file names of one folder get distinct frame names (also ignoring case), each a
    wildcard value, mapping back to every file."""
    folder = "/planned/lights"
    paths = [f"{folder}/{n}" for n in dict.fromkeys(names)]
    try:
        frames = find_frames(folder, "lights", planned={folder: paths})
    except DiscoveryError:
        assert not paths
        return {}
    assert sorted(frames.values()) == sorted(paths)
    assert len({n.lower() for n in frames}) == len(paths)
    assert all(FRAME_WILDCARD.fullmatch(n) for n in frames)
    return frames


def check_target_pattern(names, other):
    """The target wildcard matches exactly the target names."""
    pattern = target_pattern(names)
    for name in names:
        assert re.fullmatch(pattern, name, flags=re.DOTALL), (pattern, name)
    assert bool(re.fullmatch(pattern, other, flags=re.DOTALL)) == (other in names)
