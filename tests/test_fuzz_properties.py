"""Property tests (hypothesis) of our own parsers, with the crashes fuzzing found as examples.

Each parser either gives a correct result or the project's one clear error naming the input,
never a traceback from deeper code, a hang or a huge allocation:

- the SER reader (:func:`astroflow.io.sequence.open_sequence`): any bytes as a ``.ser`` file;
- FITS header normalisation (:func:`astroflow.io.ingest.ingest_frame`, which a bad frame costs
  one frame, :func:`astroflow.workflow.discovery.source_header`, the light's filter and the dark
  grouping of :mod:`astroflow.calibration.calibrate` on the normalised header);
- configuration loading and validation (:mod:`astroflow.workflow.config`);
- frame naming (:func:`astroflow.workflow.discovery.frame_name`, ``find_frames``,
  ``target_pattern``).

The coverage-guided fuzzer of the same parsers (atheris) is ``make fuzz`` (``tests/fuzz/``), on
the same checks (``tests/fuzz/properties.py``). Every crash found, by these tests, the fuzzer or
probing the parsers by hand, is an ``@example`` here. Settings are small and derandomized: the
file runs in seconds and tries the same examples every time.
"""


import numpy as np
import pytest
import yaml
from fuzz.properties import (
    KEYWORDS,
    SCHEMA,
    check_config,
    check_configfile,
    check_find_frames,
    check_frame_name,
    check_ingest,
    check_ser,
    check_target_pattern,
    fits_bytes,
    ser_bytes,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from astroflow.io.sequence import UnreadableSequenceError, open_sequence, write_ser
from astroflow.workflow.config import ConfigError, configfile_targets, validate_config

# No hypothesis deadline: on a loaded CI machine it fails tests as flaky; a hang fails through
# properties.time_limit instead.
FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# --- SER -----------------------------------------------------------------------------------------

int32 = st.integers(-(2**31), 2**31 - 1)
ser_files = st.one_of(
    st.binary(max_size=400),
    # a real header with any fields, then any data: the parser's branches, not just its magic
    st.builds(
        ser_bytes,
        colour=st.sampled_from([0, 8, 9, 10, 11, 16, 100, 101, 7]) | int32,
        endian=st.sampled_from([0, 1]) | int32,
        width=st.integers(-2, 9) | int32,
        height=st.integers(-2, 9) | int32,
        depth=st.integers(0, 17) | int32,
        count=st.integers(-1, 12) | int32,
        stamp=st.integers(-(2**63), 2**63 - 1),
        tail=st.binary(max_size=700),
    ),
)


# Crashes found: a FrameCount of 2**31 - 1 in a file of one 4x4 frame made the reader list
# 2**31 - 1 frame names (a hang of minutes, then MemoryError; fixed by the believed-count rule,
# MAX_MISSING_FRAMES); with less than one frame in the file, that fix gave a sequence of no
# frames instead of the error.
@example(ser_bytes(count=2**31 - 1, tail=bytes(16)))
@example(ser_bytes(count=2**31 - 1, tail=bytes(15)))
@FUZZ
@given(content=ser_files)
def test_any_bytes_as_ser_read_or_clear_error(scratch, content):
    check_ser(scratch / "any.ser", content)


def test_ser_corrupt_frame_count_reads_the_frames_present(scratch, caplog):
    seq = check_ser(scratch / "count.ser", ser_bytes(count=2**31 - 1, tail=bytes(range(32))))
    assert len(seq) == 2 and "declares 2147483647 frames" in caplog.text
    with pytest.raises(UnreadableSequenceError, match="holds no complete frame of 4x4"):
        open_sequence(_write(scratch / "none.ser", ser_bytes(count=2**31 - 1, tail=bytes(15))))
    # a cut copy still lists its missing frames as truncated
    seq = check_ser(scratch / "cut.ser", ser_bytes(count=7, tail=bytes(32)))
    assert len(seq) == 7 and sum(f.image is None for f in seq.frames()) == 5


def _write(path, content):
    path.write_bytes(content)
    return path


@FUZZ
@given(
    frames=st.integers(1, 3).flatmap(
        lambda n: st.sampled_from([np.uint8, np.uint16]).flatmap(
            lambda dtype: st.tuples(st.integers(1, 5), st.integers(1, 5)).flatmap(
                lambda hw: st.lists(
                    st.binary(min_size=hw[0] * hw[1] * np.dtype(dtype).itemsize,
                              max_size=hw[0] * hw[1] * np.dtype(dtype).itemsize),
                    min_size=n, max_size=n,
                ).map(lambda blobs: [np.frombuffer(b, dtype=dtype).reshape(hw) for b in blobs])
            )
        )
    )
)
def test_ser_written_is_read_back_exactly(scratch, frames):
    path = scratch / "round.ser"
    write_ser(path, frames)
    seq = check_ser(path, path.read_bytes())
    got = [f.image for f in seq.frames()]
    assert len(got) == len(frames)
    for a, b in zip(got, frames, strict=True):
        np.testing.assert_array_equal(a, b.astype(np.float32))


# --- FITS header normalisation ------------------------------------------------------------------

NUMBERS = ["nan", "NAN", "inf", "-inf", "1e400", "-1e400", "-1", "0", "2.5", "1.0E10", "+3", ".5", "1D3", "T", "F"]
TEXTS = ["'RGGB'", "'GBRG    '", "'TOP-DOWN'", "'BOTTOM-UP'", "'0001-01-01T00:00:00+05:00'",
         "'9999-12-31T23:59:59-05:00'", "'2024-03-09'", "'21:30:00'", "'Ha'", "''", "'O''Brien'"]  # fmt: skip
printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=70)
values = st.sampled_from(NUMBERS) | st.sampled_from(TEXTS) | printable | printable.map(lambda t: f"'{t}'")
cards = st.lists(st.tuples(st.sampled_from(KEYWORDS), values), max_size=8)


# Crashes found: each stopped ingest_frame with a traceback (so the night's run) instead of
# costing at most the frame.
@example([("EXPTIME", "nan")])  # an unparsable card: astropy's VerifyError escaped ingest
@example([("CCD-TEMP", "1e400")])  # Inf passed on: 'Floating point inf values are not allowed'
@example([("BAYERPAT", "'RGGB'"), ("XBAYROFF", "1e400")])  # OverflowError in int(float('inf'))
@example([("DATE-OBS", "'0001-01-01T00:00:00+05:00'")])  # OverflowError in astimezone
@example([("XBINNING", "2.5"), ("YBINNING", "-1")])  # not binnings
# found by atheris (make fuzz) in the merge of main: BZERO without a value fails astropy's
# scaling, and the except clause meant to reject the frame named an unimported module (NameError)
@example([("BZERO", "")])
@example([("FILTER", "1e400")])  # Inf in a keyword taken as text, the same
@example([("EXPTIME", "'nan'")])  # NaN as a string, converted by float(): the same
@FUZZ
@given(cards=cards)
def test_any_header_values_ingest_or_reject(scratch, cards):
    source = _write(scratch / "frame.fits", fits_bytes(cards))
    check_ingest(source, scratch / "ingested.fits")


def test_bad_header_values_are_omitted_and_the_frame_kept(scratch, caplog):
    cards = [("EXPTIME", "nan"), ("EXPOSURE", "'inf'"), ("CCD-TEMP", "-12.5"), ("XBINNING", "2"),
             ("YBINNING", "0"), ("GAIN", "-5"), ("DATE-OBS", "'0001-01-01T00:00:00+05:00'")]  # fmt: skip
    source = _write(scratch / "bad_values.fits", fits_bytes(cards))
    header = check_ingest(source, scratch / "bad_values_ingested.fits")
    assert header["AFSTATUS"] == "OK" and header["CCD-TEMP"] == -12.5 and header["XBINNING"] == 2
    for key in ("EXPTIME", "YBINNING", "GAIN", "DATE-OBS"):
        assert key not in header
    assert "unparsable header cards EXPTIME" in caplog.text
    assert "EXPOSURE = 'inf' is not a finite number" in caplog.text
    assert "GAIN = -5 is negative" in caplog.text


# --- configuration ------------------------------------------------------------------------------

SCHEMA_KEYS = ["targets", "simulate", "calibration", "registration", "stacking", "drizzle",
               "planetary", "kind", "lights", "darks", "flats", "bias", "darkflats", "filter",
               "palette", "sessions", "encoding", "method", "enabled", "scale"]  # fmt: skip
KINDS = ["deep-sky", "planetary", "image", "DEEP-SKY", ""]
scalars = st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats() | st.text(max_size=12)
keys = st.sampled_from(SCHEMA_KEYS) | st.text(max_size=8) | st.integers(-2, 3)
json_like = st.recursive(
    scalars | st.sampled_from(KINDS),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
target_settings = st.dictionaries(
    st.sampled_from(["kind", "lights", "darks", "flats", "bias", "filter", "sessions", "palette"]),
    st.sampled_from(KINDS) | st.sampled_from(["/nonexistent/lights", "*.fits"]) | json_like,
    max_size=5,
)
configs = st.one_of(
    json_like,
    st.dictionaries(st.just("targets"), st.dictionaries(st.text(max_size=6), target_settings, max_size=2)
                    | json_like),
)


# Crashes found: session_errors took targets for a mapping, and the --configfile reading of
# rules/common.smk did too (AttributeError / TypeError tracebacks, not messages).
@example({"targets": [1]})
@example({"targets": "m42"})
@example({"targets": {"m42": [1]}})
@example([1])
@settings(FUZZ, max_examples=25)  # a validation takes 0.15 s (the schema is parsed each time)
@given(config=configs)
def test_any_config_validates_or_gives_a_config_error(config):
    check_config(config)


@example("targets: [1, 2]")
@example("targets: m42")
@example("- a\n- b")
@example("targets: {a: 1")
@example("\x00")
@FUZZ
@given(text=st.text(max_size=80) | st.builds(yaml.safe_dump, json_like))
def test_any_configfile_gives_targets_or_a_config_error(scratch, text):
    check_configfile(scratch / "config.yaml", text)


def test_config_errors_say_what_is_wrong(scratch):
    path = scratch / "list.yaml"
    path.write_text("targets: [m42, m31]\n")
    with pytest.raises(ConfigError, match="list.yaml: targets must map target names to their settings"):
        configfile_targets([path])
    with pytest.raises(ConfigError, match=r"^invalid configuration: targets: \[1\] is not of type 'object'$"):
        validate_config({"targets": [1]}, SCHEMA)
    # a host workflow's skip_validation: the sessions are checked, not the schema
    validate_config({"targets": {"m": {"kind": "unknown"}}}, SCHEMA, skip_schema=True)
    with pytest.raises(ConfigError, match="session 'n1': no lights given"):
        validate_config({"targets": {"m": {"kind": "deep-sky", "sessions": {"n1": {}}}}}, SCHEMA, skip_schema=True)


# --- frame names --------------------------------------------------------------------------------

path_text = st.text(max_size=300) | st.lists(st.text(max_size=40), max_size=4).map("/".join)
extensions = st.sampled_from(["", ".fits", ".FIT.fz", ".cr2", ".tif", ".fits.gz", ".txt"])


@example("/x/.fits")
@example("../../etc/passwd")
@example("-rf *.fits")
@example("İ" * 300 + ".fits")
@example("x" * 251 + ".tif")  # a 255-byte name: with a session prefix and .fits, over 255
@FUZZ
@given(path=st.builds(lambda p, e: p + e, path_text, extensions))
def test_frame_name_is_a_safe_file_name_and_wildcard(path):
    check_frame_name(path)


@example(["M42.fits", "m42.tif"])  # the same file where names ignore case
@example(["a-2.fits", "a.fits", "a_.fits", "a .fits"])
@FUZZ
@given(names=st.lists(st.builds(lambda p, e: p + e, st.text(max_size=30), extensions), max_size=8,
                      unique=True))
def test_find_frames_gives_distinct_files_distinct_names(names):
    check_find_frames(names)


@FUZZ
@given(names=st.lists(st.text(max_size=12), max_size=6), other=st.text(max_size=12))
def test_target_pattern_matches_exactly_its_names(names, other):
    check_target_pattern(names, other)
