"""Coverage-guided fuzzing (atheris, libFuzzer) of our parsers: one target per run.

Usage::

    python tests/fuzz/targets.py TARGET CORPUS_DIR [libFuzzer options, e.g. -max_total_time=60]

TARGET is one of ``ser`` (any bytes as a SER file), ``fits_header`` (FITS header cards, as
keyword/value pairs or whole card images, through ingest), ``config`` (YAML text as a
configuration and as a ``--configfile``) and ``names`` (file names through frame naming and
the target wildcard). Each input goes through the checks of ``tests/fuzz/properties.py``; an
exception other than the parser's own clear error is a crash, which libFuzzer saves as
``crash-<sha1>`` under ``-artifact_prefix``. ``tests/fuzz/run.py`` (``make fuzz``) runs every
target for a bounded time, from seed inputs made by code.

The fuzzer is atheris (https://github.com/google/atheris), Google's libFuzzer engine for
Python: it instruments the bytecode of ``astroflow`` for coverage and mutates the inputs that
reach new branches.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["astroflow"]):
    import yaml
    from fuzz import properties

SCRATCH = Path(tempfile.gettempdir())  # main() makes a folder of its own


def fuzz_ser(data):
    properties.check_ser(SCRATCH / "input.ser", data)


def fuzz_fits_header(data):
    fdp = atheris.FuzzedDataProvider(data)
    cards = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        text = "".join(chr(32 + b % 95) for b in fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80)))
        if fdp.ConsumeBool():
            cards.append(text)  # a whole card image: keyword, indicator and value as they come
        else:
            cards.append((properties.KEYWORDS[fdp.ConsumeIntInRange(0, len(properties.KEYWORDS) - 1)], text))
    source = SCRATCH / "frame.fits"
    source.write_bytes(properties.fits_bytes(cards))
    properties.check_ingest(source, SCRATCH / "ingested.fits")


def fuzz_config(data):
    text = data.decode("utf-8", "replace")
    properties.check_configfile(SCRATCH / "config.yaml", text)
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    properties.check_config(config)


def fuzz_names(data):
    fdp = atheris.FuzzedDataProvider(data)
    names = fdp.ConsumeUnicodeNoSurrogates(400).split("\n")
    for name in names:
        properties.check_frame_name(name)
    properties.check_find_frames(names)
    properties.check_target_pattern(names[1:], names[0])


TARGETS = {"ser": fuzz_ser, "fits_header": fuzz_fits_header, "config": fuzz_config, "names": fuzz_names}


def keep_crashes(target, prefix):
    """``target``, writing an input that raises to ``{prefix}crash-<sha1>`` before re-raising:
    libFuzzer writes it too, but not always (once it printed the traceback and wrote nothing)."""

    def guarded(data):
        try:
            target(data)
        except Exception:
            path = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
            Path(path).write_bytes(data)
            print(f"crash input written to {path}", file=sys.stderr, flush=True)
            raise

    return guarded


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} CORPUS_DIR [libFuzzer options]")
    global SCRATCH
    target = TARGETS[sys.argv.pop(1)]
    SCRATCH = Path(tempfile.mkdtemp(prefix="astroflow-fuzz-"))
    properties.TIME_LIMIT = None  # libFuzzer's -timeout catches hangs (its own SIGALRM)
    logging.disable(logging.CRITICAL)  # the readers' warnings about bad input, once per input
    warnings.simplefilter("ignore")
    prefix = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("-artifact_prefix=")), "./")
    atheris.Setup(sys.argv, keep_crashes(target, prefix))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
