"""Inputs are never written: SHA-256 of every real data set before and after a full run.

Hashes every file of every data set folder of ``../shared/data`` (checked against the data's own
``SHA256SUMS.tsv``), runs the whole workflow on all of them at once
(``benchmarks/configs/real-data.yaml``: every deep-sky, planetary and image data set) in a
scratch working directory, then hashes them again and prints, per data set, its files and bytes,
whether every checksum, size, mode and modification time is unchanged, and how each target's
run ended::

    python benchmarks/input_checksums.py --workdir /tmp/real-run --cores 2 --out checksums.json

The run uses ``--keep-going``: a target that fails (the one daylight NEF has no stars to
register) does not hide what the others read. The exit status is 1 when any input changed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CONFIG = ROOT / "benchmarks" / "configs" / "real-data.yaml"


def sha256(path, chunk=1 << 20):
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def snapshot(data):
    """{relative path: (sha256, bytes, mode, mtime_ns)} of every file under ``data``."""
    files = {}
    for path in sorted(data.rglob("*")):
        if path.is_file():
            st = path.stat()
            files[path.relative_to(data).as_posix()] = (sha256(path), st.st_size, st.st_mode, st.st_mtime_ns)
    return files


def listed_sums(data):
    """{relative path: (sha256, bytes)} from the data's SHA256SUMS.tsv."""
    with open(data / "SHA256SUMS.tsv", newline="") as f:
        return {row["path"]: (row["sha256"], int(row["bytes"])) for row in csv.DictReader(f, delimiter="\t")}


def target_outcome(workdir, name, kind):
    """'done' when the target's final product exists, else 'failed'."""
    final = {"planetary": "deconvolved.fits", "image": "starless.fits"}.get(kind, "starless.fits")
    return "done" if (workdir / "results" / name / final).is_file() else "failed"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch working directory")
    parser.add_argument("--configfile", type=Path, default=CONFIG)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    data = args.data.resolve()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # the config names ../shared/data/..., relative to the working directory
    shared = workdir.parent / "shared"
    if not shared.exists():
        shared.symlink_to(data.parent)
    elif (shared / "data").resolve() != data:
        sys.exit(f"{shared} exists and is not {data.parent}: choose another --workdir")

    listed = listed_sums(data)
    before = snapshot(data)
    start = time.perf_counter()
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir), "--cores", str(args.cores), "--keep-going", "--rerun-incomplete",
        "--configfile", str(args.configfile),
    ]
    log = workdir / "input_checksums.snakemake.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = snapshot(data)

    targets = yaml.safe_load(args.configfile.read_text())["targets"]
    rows = []
    for folder in sorted({p.split("/")[0] for p in before if "/" in p}):
        names = [p for p in before if p.startswith(folder + "/")]
        changed = [p for p in names if after.get(p) != before[p]]
        unlisted = [p for p in names if listed.get(p) != after.get(p, ("", 0))[:2]]
        users = [
            name for name, t in targets.items()
            if f"shared/data/{folder}" in json.dumps(t)
        ]
        rows.append({
            "data set": folder,
            "files": len(names),
            "MiB": round(sum(before[p][1] for p in names) / 2**20, 1),
            "unchanged": not changed and not (set(after) - set(before)),
            "changed": changed,
            "after matches SHA256SUMS.tsv": not unlisted,
            "targets": {n: target_outcome(workdir, n, targets[n]["kind"]) for n in users},
        })
    new = sorted(set(after) - set(before))
    figures = {"snakemake_exit": proc.returncode, "wall_s": round(wall, 1), "cores": args.cores,
               "new_files_in_data": new, "data_sets": rows}
    print(f"snakemake exit {proc.returncode}, {wall:.0f} s on {args.cores} cores (log: {log})")
    print("| data set | files | MiB | unchanged after the run | after: matches SHA256SUMS.tsv | targets |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        outcomes = ", ".join(f"{n}: {o}" for n, o in r["targets"].items()) or "not a workflow input"
        print(f"| {r['data set']} | {r['files']} | {r['MiB']} | {'yes' if r['unchanged'] else 'NO'} | "
              f"{'yes' if r['after matches SHA256SUMS.tsv'] else 'NO'} | {outcomes} |")
    if new:
        print("new files in the data folder:", *new)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if all(r["unchanged"] for r in rows) and not new else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
