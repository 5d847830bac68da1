"""Load benchmark: a night of many lights and many targets at once, run to the end on few cores.

Two cases, each simulated with :func:`astroflow.simulation.night.simulate_night` into a scratch
folder and run by ``snakemake --cores N`` with the repository's ``config.yaml`` (every stage on:
calibration, registration, stacking, background, deconvolution, star removal):

* ``lights``: one target of ``--lights`` lights (default 500) of ``--size`` px, with 5 darks,
  flats and bias;
* ``targets``: ``--targets`` targets (default 20) of ``--target-lights`` lights each (default 5),
  2 darks, flats and bias each, in one configuration.

For each case it records the wall time of the run, the time Snakemake takes to parse the
workflow and build the DAG (a dry run), the summed wall and CPU time of the jobs of each rule and
the cores left idle, each benchmarked rule's peak memory (the largest ``max_rss`` of its jobs, from
the run's ``results/runtimes.tsv``) against the ``mem_mb`` its jobs declared (from Snakemake's log,
:func:`astroflow.workflow.report.memory_against_declared`), the disk used by ``results/``,
``resources/`` (the simulated frames), ``.snakemake/``, ``logs/`` and ``benchmarks/``, and
whether every stack's ``NCOMBINE`` equals the lights ``frames.csv`` marks as used. The load
average (1 min) is sampled during the run: other work on the machine inflates wall times. It
also times, in fresh processes, the imports of the entry scripts of the per-frame rules
(``ingest_frame``, ``calibrate_light``, ``warp``): what every one of their jobs pays before it
reads a frame.

Usage::

    python benchmarks/load.py --out benchmarks/load_results.json          # both cases
    python benchmarks/load.py --cases targets --targets 3 --target-lights 5 --out /tmp/load.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

from astroflow.io.fits import read_header
from astroflow.simulation.night import simulate_night
from astroflow.workflow.report import declared_resources, memory_against_declared, runtime_table

REPO = Path(__file__).resolve().parents[1]
PER_FRAME_SCRIPTS = ("ingest_frame", "calibrate_light", "warp")
DISK_FOLDERS = ("results", "resources", ".snakemake", "logs", "benchmarks")
FOLDERS = {"lights": "lights", "darks": "darks", "flats": "flats", "bias": "bias"}


def simulate_targets(data, names, *, width, height, n_lights, n_calibration, seed=0):
    """Simulate one night per target under ``data/{name}``; returns the targets' config."""
    targets = {}
    for i, name in enumerate(names):
        night = Path(data, name)
        simulate_night(
            night, seed=seed + i, width=width, height=height, n_lights=n_lights,
            n_darks=n_calibration, n_flats=n_calibration, n_bias=n_calibration,
        )  # fmt: skip
        targets[name] = {"kind": "deep-sky"} | {
            key: str(night / folder) for key, folder in FOLDERS.items()
        }
    return targets


def disk_mb(folder):
    """Apparent size (MB) and file count of everything under a folder (0, 0 if absent)."""
    size, files = 0, 0
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                size += os.path.getsize(path)
                files += 1
    return size / 1e6, files


class LoadSampler:
    """The 1-minute load average, sampled every few seconds in a thread while a run lasts."""

    def __init__(self, every_s=5.0):
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self):
        return {
            "mean": round(sum(self.samples) / max(len(self.samples), 1), 2),
            "max": round(max(self.samples, default=0.0), 2),
        }


def snakemake_cmd(work, cores, *args):
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(work), "--cores", str(cores), *args,
        "--configfile", str(work / "load.yaml"),
    ]  # fmt: skip


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(work, targets, cores):
    """Dry run then run of the workflow on ``targets`` in ``work``; returns the measurements."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "load.yaml").write_text(yaml.safe_dump({"targets": targets}))
    start = time.perf_counter()
    dry = subprocess.run(
        snakemake_cmd(work, cores, "-n", "--quiet", "rules"), capture_output=True, text=True
    )
    dag_s = time.perf_counter() - start
    if dry.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{dry.stdout[-3000:]}{dry.stderr[-3000:]}")
    load_before = os.getloadavg()[0]
    cpu_before = children_cpu_s()
    with LoadSampler() as load:
        start = time.perf_counter()
        proc = subprocess.run(
            snakemake_cmd(work, cores), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wall_s = time.perf_counter() - start
    (work / "snakemake.log").write_text(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}), see {work / 'snakemake.log'}")
    case = measure(work, targets, proc.stdout, cores=cores, wall_s=wall_s)
    return case | {
        "dag_s": round(dag_s, 2),
        "snakemake_cpu_s": round(children_cpu_s() - cpu_before, 1),
        "load_before": round(load_before, 2),
        "load_during": load.summary(),
    }


def measure(work, targets, log_text, *, cores, wall_s):
    """Time, memory, disk and stacks of a run in ``work``, finished or not.

    Reads every benchmark file under ``work/benchmarks`` (a run cut short has those of its
    finished jobs) and the jobs Snakemake declared in ``log_text``.
    """
    declared = declared_resources(log_text)
    runtimes = runtime_table(sorted((work / "benchmarks").rglob("*.tsv")))
    memory = memory_against_declared(runtimes, declared)
    planned = re.search(r"^total\s+(\d+)\s*$", log_text, re.MULTILINE)
    per_rule = runtimes.groupby("rule", sort=False).agg(s=("s", "sum"), cpu_s=("cpu_time", "sum"))
    job_s = float(runtimes["s"].sum())
    stacks = {}
    for target in targets:
        frames, stack = work / "results" / target / "frames.csv", work / "results" / target / "stack.fits"
        if frames.exists() and stack.exists():
            table = pd.read_csv(frames)
            used = int(((table["type"] == "light") & (table["status"] == "used")).sum())
            stacks[target] = {"used_lights": used, "ncombine": int(read_header(stack)["NCOMBINE"])}
    return {
        "jobs": int(planned.group(1)) if planned else int(len(declared)),
        "jobs_finished": len(re.findall(r"^Finished jobid", log_text, re.MULTILINE)),
        "jobs_per_rule": {rule: int(n) for rule, n in declared["rule"].value_counts().items()},
        "wall_s": round(wall_s, 1),
        "benchmarked_job_s": round(job_s, 1),
        # core-seconds no benchmarked job used: Snakemake's scheduling and the unbenchmarked jobs
        "idle_core_s": round(cores * wall_s - job_s, 1),
        "per_rule_time": {
            rule: {"s": round(row.s, 1), "cpu_s": round(row.cpu_s, 1)}
            for rule, row in per_rule.iterrows()
        },
        "memory": memory.round({"max_rss_mb": 1, "ratio": 3, "s": 1, "cpu_s": 1}).to_dict("records"),
        "unbenchmarked_rules": sorted(set(declared["rule"]) - set(runtimes["rule"]) - {"all"}),
        "within_declared_memory": bool((memory["ratio"] <= 1).all()),
        "disk": {
            folder: dict(zip(("mb", "files"), (round(v, 1) for v in disk_mb(work / folder))))
            for folder in DISK_FOLDERS
        },
        "stacks": stacks,
        "ncombine_equals_used": bool(stacks) and all(
            s["used_lights"] == s["ncombine"] for s in stacks.values()
        ),
    }


def measure_unfinished(work, cores):
    """:func:`measure` of a run still going or cut short: its wall time from the log's stamps."""
    log_text = max((work / ".snakemake" / "log").glob("*.snakemake.log")).read_text()
    stamps = re.findall(r"^\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]$", log_text, re.MULTILINE)
    first, last = (time.mktime(time.strptime(s, "%a %b %d %H:%M:%S %Y")) for s in (stamps[0], stamps[-1]))
    targets = yaml.safe_load((work / "load.yaml").read_text())["targets"]
    return measure(work, targets, log_text, cores=cores, wall_s=last - first) | {
        "load_now": round(os.getloadavg()[0], 2)
    }


def import_cost(script, repeats=3):
    """CPU seconds and peak RSS (MB) of importing what one entry script imports, best of repeats."""
    tree = ast.parse((REPO / "scripts" / f"{script}.py").read_text())
    code = "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    probe = (
        "import resource\n" + code + "\nr = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(r.ru_utime + r.ru_stime, r.ru_maxrss / 1024)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
    best = None
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
        cpu, rss = (float(v) for v in out.stdout.split())
        best = (cpu, rss) if best is None or cpu < best[0] else best
    return {"cpu_s": round(best[0], 3), "maxrss_mb": round(best[1], 1)}


def markdown(results):
    lines = [
        "# Load benchmark (benchmarks/load.py)",
        "",
        f"{results['machine']['cpus']} CPUs, `snakemake --cores {results['config']['cores']}`, "
        "the repository's config.yaml (every stage on). Wall times include other work on the "
        "machine: see the load average.",
        "",
    ]
    for name, case in results["cases"].items():
        disk = ", ".join(f"{k} {v['mb']} MB ({v['files']} files)" for k, v in case["disk"].items())
        finished = case.get("jobs_finished", case["jobs"])
        if "load_during" in case:
            timing = [
                f"- {case['jobs']} jobs; wall {case['wall_s']} s (load average {case['load_before']} "
                f"before, {case['load_during']['mean']} mean, {case['load_during']['max']} max during)",
                f"- parse + DAG (dry run): {case['dag_s']} s; jobs' own time "
                f"{case['benchmarked_job_s']} s; idle core-seconds {case['idle_core_s']}; CPU of "
                f"snakemake and its jobs {case['snakemake_cpu_s']} s",
                f"- simulating the frames: {case['simulate_s']} s (not in the wall time)",
            ]
        else:
            timing = [
                f"- NOT FINISHED: {finished} of {case['jobs']} jobs done in {case['wall_s']} s "
                f"(load average {case['load_now']} when measured); jobs' own time "
                f"{case['benchmarked_job_s']} s; idle core-seconds {case['idle_core_s']}",
            ]
        lines += [f"## {name}: {case['description']}", "", *timing]
        lines += [
            f"- every rule within its declared memory: {case['within_declared_memory']}; "
            f"NCOMBINE = used lights for every target: {case['ncombine_equals_used']}",
            f"- disk: {disk}",
            f"- rules without a benchmark (not measured): {', '.join(case['unbenchmarked_rules'])}",
            "",
            "| rule | jobs | peak RSS MB | declared mem_mb | peak / declared | jobs' s | jobs' CPU s |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {m['rule']} | {m['jobs']} | {m['max_rss_mb']} | {m['mem_mb']:.0f} | {m['ratio']} | "
            f"{m['s']} | {m['cpu_s']} |"
            for m in case["memory"]
        ]
        lines.append("")
    lines += [
        "## Start cost of a per-frame job (imports of its entry script, fresh process, best of 3)",
        "",
        "| script | CPU s | RSS MB |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {v['cpu_s']} | {v['maxrss_mb']} |" for s, v in results["imports"].items()]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="lights,targets", help="comma-separated: lights, targets")
    parser.add_argument("--lights", type=int, default=500, help="lights of case 'lights'")
    parser.add_argument("--size", default="320x240", help="frame size WxH, px")
    parser.add_argument("--targets", type=int, default=20, help="targets of case 'targets'")
    parser.add_argument("--target-lights", type=int, default=5, help="lights per target")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "load_results.json")
    parser.add_argument(
        "--update", action="store_true", help="keep the other cases of an existing --out file"
    )
    parser.add_argument(
        "--measure", type=Path, metavar="DIR",
        help="instead of running, measure the run (finished, still going or cut short) of one "
        "case in DIR (a --workdir's case folder) and add it to --out as case --case-name",
    )  # fmt: skip
    parser.add_argument("--case-name", default="lights", help="the case --measure adds")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="astroflow-load-"))
    plans = {
        "lights": (["night"], args.lights, 5, f"1 target of {args.lights} lights, {args.size} px"),
        "targets": (
            [f"t{i:02d}" for i in range(1, args.targets + 1)], args.target_lights, 2,
            f"{args.targets} targets of {args.target_lights} lights, {args.size} px",
        ),
    }  # fmt: skip
    results = {
        "config": {**{k: str(v) for k, v in vars(args).items()}, "cores": args.cores},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "imports": {script: import_cost(script) for script in PER_FRAME_SCRIPTS},
        "cases": {},
    }
    if args.update and args.out.exists():
        results["cases"] = json.loads(args.out.read_text())["cases"]
    if args.measure:
        case = measure_unfinished(args.measure, args.cores)
        description = f"{plans[args.case_name][3]}, measured from {args.measure}"
        results["cases"][args.case_name] = {"description": description} | case
        args.cases = ""
    for name in filter(None, args.cases.split(",")):
        names, n_lights, n_calibration, description = plans[name]
        work = scratch / name
        start = time.perf_counter()
        targets = simulate_targets(
            work / "data", names, width=width, height=height, n_lights=n_lights,
            n_calibration=n_calibration,
        )  # fmt: skip
        simulate_s = time.perf_counter() - start
        print(f"{name}: simulated in {simulate_s:.0f} s, running in {work}", flush=True)
        case = run_case(work, targets, args.cores)
        case["disk"]["data (simulated input)"] = dict(
            zip(("mb", "files"), (round(v, 1) for v in disk_mb(work / "data")))
        )
        results["cases"][name] = {"description": description, "simulate_s": round(simulate_s, 1), **case}
        print(json.dumps({k: case[k] for k in ("jobs", "wall_s", "dag_s", "load_during")}), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
