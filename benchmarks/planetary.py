"""Planetary lucky imaging: wall time and peak memory per rule, per 100 frames, on the real data.

    python benchmarks/planetary.py [--repeat 5] [--cores 1]

Runs the workflow (in a scratch folder) on the real Jupiter frames and both lunar videos from
../shared/data, and on the Jupiter frames repeated ``--repeat`` times (500 frames by default) to
show that memory does not grow with the number of frames. Prints, per target and rule, the
wall time and peak resident memory from Snakemake's benchmark files, and the detail measures of
the stack against the mean of all frames and the best frame. Not run by the tests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from astroflow.io.fits import read_image
from astroflow.io.sequence import open_sequence
from astroflow.planetary import passes as planetary

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

RULES = ["planetary_analyse", "planetary_align", "planetary_stack"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="Jupiter frames repeated this many times")
    parser.add_argument("--cores", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="astroflow-planetary-bench-"))
    many = work / "jupiter-many"
    many.mkdir()
    jupiter = sorted((DATA / "jupiter-tensorez").glob("*.png"))
    for k in range(args.repeat):
        for i, path in enumerate(jupiter):
            (many / f"frame_{k * len(jupiter) + i + 1:05d}.png").symlink_to(path)
    sources = {
        "jupiter-tensorez": DATA / "jupiter-tensorez",
        "moon-short": DATA / "moon-pss" / "short_video.avi",
        "moon-another": DATA / "moon-pss" / "another_short_video.avi",
        f"jupiter-x{args.repeat}": many,
    }
    config = work / "bench.yaml"
    config.write_text(
        yaml.safe_dump({"targets": {t: {"kind": "planetary", "lights": str(s)} for t, s in sources.items()}})
    )
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
         str(work), "--cores", str(args.cores), "--configfile", str(config), "--quiet"],
        check=True,
    )
    rows = []
    for target in sources:
        n = len(pd.read_csv(work / "results" / target / "frames.csv"))
        for rule in RULES:
            bench = pd.read_csv(work / "benchmarks" / rule / f"{target}.tsv", sep="\t").iloc[0]
            rows.append(
                dict(target=target, frames=n, rule=rule, wall_s=bench["s"],
                     s_per_100_frames=100 * bench["s"] / n, max_rss_mb=bench["max_rss"])
            )
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".1f"))
    totals = table.groupby(["target", "frames"], sort=False).agg(
        wall_s=("wall_s", "sum"), max_rss_mb=("max_rss_mb", "max")
    ).reset_index()
    totals["s_per_100_frames"] = 100 * totals["wall_s"] / totals["frames"]
    print()
    print(totals.to_markdown(index=False, floatfmt=".1f"))
    for target, source in list(sources.items())[:3]:
        results = work / "results" / target
        frames = pd.read_csv(results / "frames.csv", keep_default_na=False, na_values=[""])
        stack, _ = read_image(results / "stack.fits")
        sharpened, _ = read_image(results / "sharpened.fits")
        paths = sorted(str(p) for p in source.iterdir()) if source.is_dir() else [str(source)]
        mean_all, best = planetary.baselines(open_sequence(paths), frames, stack.shape[:2])
        measures = planetary.detail_measures(
            {"stack": stack, "sharpened": sharpened, "mean of all frames": mean_all, "best frame": best}
        )
        print(f"\n{target}: {stack.shape} stack\n")
        print(measures.to_markdown(index=False, floatfmt=".3g"))
    print(f"\n(work folder: {work})")


if __name__ == "__main__":
    main()
