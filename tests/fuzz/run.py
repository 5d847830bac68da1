"""Run every fuzz target of ``tests/fuzz/targets.py`` for a bounded time: ``make fuzz``.

Usage::

    python tests/fuzz/run.py [--seconds 60] [--workdir /tmp/astroflow-fuzz] [TARGET ...]

Each target gets a corpus folder ``WORKDIR/corpus/TARGET`` (seeded by :func:`seeds`, kept
between runs so that a later run starts from what earlier ones found) and runs under libFuzzer
with ``-max_total_time=SECONDS``, ``-timeout=10`` (an input parsed for longer is a hang) and
``-rss_limit_mb=2048``. A crashing input is saved as ``WORKDIR/TARGET-crash-<sha1>``; the
summary gives, per target, the executions libFuzzer made and the crash, and the exit status is
1 when any target crashed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz.properties import ser_bytes  # noqa: E402 (after the path)

HERE = Path(__file__).resolve().parent
TARGETS = ("ser", "fits_header", "config", "names")


def seeds(target):
    """Seed inputs of a target, made by code: {file name: bytes}."""
    if target == "ser":
        return {
            "mono8": ser_bytes(tail=bytes(range(32))),
            "bayer16": ser_bytes(colour=8, depth=12, count=2, tail=bytes(64)),
            "rgb_stamps": ser_bytes(colour=100, width=2, height=2, tail=bytes(12) + bytes(8)),
            "cut": ser_bytes(count=5, tail=bytes(20)),
        }
    if target == "fits_header":
        return {
            "plain": b"\x00",
            "keywords": bytes([3, 0, 20]) + b"1.5" + bytes([1, 0, 6]) + b"'RGGB'" + bytes([0, 1, 30]) + b"X" * 30,
        }
    if target == "config":
        return {
            "deep_sky": b"targets:\n  m42: {kind: deep-sky, lights: /nowhere/lights, darks: /nowhere/darks}\n",
            "sessions": b"targets:\n  m31:\n    kind: deep-sky\n    sessions:\n      n1: {lights: /x, filter: Ha}\n",
            "planetary": b"targets: {jup: {kind: planetary, lights: /x/j.ser}}\nstacking: {method: median}\n",
        }
    if target == "names":
        return {"names": b"M 42 #1.fits\nm42_1.FIT\nIC 434 (Ha).cr2\n../x.tif\n-rf.fits"}
    raise KeyError(target)


def seed(target, corpus):
    corpus.mkdir(parents=True, exist_ok=True)
    for name, content in seeds(target).items():
        (corpus / f"seed-{name}").write_bytes(content)


def run(target, seconds, workdir):
    corpus = workdir / "corpus" / target
    seed(target, corpus)
    log = workdir / f"{target}.log"
    command = [
        sys.executable, str(HERE / "targets.py"), target, str(corpus),
        f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
        f"-artifact_prefix={workdir}/{target}-", "-print_final_stats=1",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text) or re.findall(r"Done (\d+) runs", text)
    crash = re.findall(r"(?:Test unit written to|crash input written to) (\S+)", text)
    error = re.findall(r"=== Uncaught Python exception: ===\n(.*)", text)
    return {
        "target": target,
        "runs": int(runs[-1]) if runs else None,
        "status": proc.returncode,
        "crash": crash[-1] if crash else "",
        "error": error[0] if (crash and error) else "",
        "log": str(log),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"some of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target (default 60)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/astroflow-fuzz"))
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = [run(t, args.seconds, args.workdir.resolve()) for t in (args.targets or TARGETS)]
    print(f"{'target':<12} {'executions':>10}  result")
    for r in results:
        result = f"CRASH {r['crash']}: {r['error']}" if r["crash"] or r["status"] else "no crash"
        print(f"{r['target']:<12} {r['runs'] if r['runs'] is not None else '?':>10}  {result}  (log {r['log']})")
    sys.exit(1 if any(r["crash"] or r["status"] for r in results) else 0)


if __name__ == "__main__":
    main()
