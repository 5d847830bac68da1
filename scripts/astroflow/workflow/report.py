"""Tables and pages of the report: run times from Snakemake benchmark files, the configuration."""

from __future__ import annotations

import html
import json
import re
from pathlib import PurePath

import pandas as pd
import yaml

# Benchmark columns kept, all numbers: seconds, MB, MB read/written, % CPU, CPU seconds.
BENCHMARK_COLUMNS = ["s", "cpu_time", "max_rss", "max_vms", "io_in", "io_out", "mean_load"]


def rule_and_job(path):
    """Rule and job name of a benchmark file, from the layout ``benchmarks/{rule}/{job}.tsv``.

    Parameters
    ----------
    path : str or os.PathLike
        A benchmark file; the job part may hold sub-folders (``benchmarks/warp/m42/f001.tsv``).

    Returns
    -------
    rule : str
    job : str
        The rest of the path without ``.tsv``, ``/``-separated.

    Raises
    ------
    ValueError
        If the path has no ``benchmarks`` folder with a rule folder and a file below it.
    """
    parts = PurePath(path).parts
    starts = [i for i, part in enumerate(parts) if part == "benchmarks"]
    if not starts or len(parts) < starts[-1] + 3:
        raise ValueError(f"{path}: not a benchmark file of the form benchmarks/{{rule}}/{{job}}.tsv")
    rule, job = parts[starts[-1] + 1], "/".join(parts[starts[-1] + 2 :])
    return rule, job.removesuffix(".tsv")


def runtime_table(paths):
    """One row per benchmarked job: run time, CPU time and memory, averaged over repeats.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Snakemake benchmark files (tab-separated, one row per repeat, columns ``s``, ``h:m:s``,
        ``max_rss``...), under ``benchmarks/{rule}/``.

    Returns
    -------
    pandas.DataFrame
        Columns ``rule``, ``job``, ``repeats`` and :data:`BENCHMARK_COLUMNS` (the mean over
        repeats; NaN where the platform did not measure it), in the order of ``paths``.
    """
    rows = []
    for path in paths:
        rule, job = rule_and_job(path)
        bench = pd.read_csv(path, sep="\t").reindex(columns=BENCHMARK_COLUMNS)
        means = bench.apply(pd.to_numeric, errors="coerce").mean()
        rows.append({"rule": rule, "job": job, "repeats": len(bench), **means.to_dict()})
    return pd.DataFrame(rows, columns=["rule", "job", "repeats", *BENCHMARK_COLUMNS])


# A job of Snakemake's log: "rule NAME:" or "localrule NAME:", then indented "key: value" lines.
_JOB_START = re.compile(r"^(?:local)?rule (\w+):$")
_JOB_FIELD = re.compile(r"^    (\w+): (.*)$")


def declared_resources(log_text):
    """What Snakemake declared for every job of a run: rule, benchmark file, threads, mem_mb.

    Parameters
    ----------
    log_text : str
        Snakemake's log of a run (its output, or ``.snakemake/log/*.snakemake.log``), where each
        job is printed as ``rule NAME:`` (or ``localrule NAME:``) followed by indented
        ``benchmark:``, ``threads:`` and ``resources: ..., mem_mb=N, ...`` lines.

    Returns
    -------
    pandas.DataFrame
        One row per job, in the order of the log: ``rule``, ``jobid`` (int), ``benchmark`` (the
        job's benchmark file, ``""`` for a rule without one), ``threads`` (int, 1 where not
        printed) and ``mem_mb`` (float, MB; NaN where the job declared none).
    """
    rows = []
    job = None
    for line in log_text.splitlines():
        if match := _JOB_START.match(line):
            job = {"rule": match.group(1), "jobid": -1, "benchmark": "", "threads": 1, "mem_mb": float("nan")}
            rows.append(job)
            continue
        match = _JOB_FIELD.match(line)
        if job is None or not match:
            job = None if not line.startswith("    ") else job
            continue
        key, value = match.groups()
        if key == "jobid":
            job["jobid"] = int(value)
        elif key == "benchmark":
            job["benchmark"] = value.strip()
        elif key == "threads":
            job["threads"] = int(value)
        elif key == "resources":
            if mem := re.search(r"\bmem_mb=(\d+(?:\.\d+)?)", value):
                job["mem_mb"] = float(mem.group(1))
    return pd.DataFrame(rows, columns=["rule", "jobid", "benchmark", "threads", "mem_mb"])


def memory_against_declared(runtimes, declared):
    """Each benchmarked rule's peak memory against the memory its jobs declared.

    Parameters
    ----------
    runtimes : pandas.DataFrame
        :func:`runtime_table` of the run (``results/runtimes.tsv``): ``rule``, ``job``,
        ``max_rss`` (MB), ``s``, ``cpu_time``.
    declared : pandas.DataFrame
        :func:`declared_resources` of the same run (or of the runs that wrote the benchmark
        files: a job printed more than once counts as its last).

    Returns
    -------
    pandas.DataFrame
        One row per rule with a benchmark, largest peak first by ratio: ``rule``, ``jobs``,
        ``max_rss_mb`` (the largest ``max_rss`` of its jobs), ``mem_mb`` (that job's declared
        memory), ``ratio`` (``max_rss_mb / mem_mb``; above 1 the job exceeded what it declared),
        ``worst_job``, ``max_mem_mb`` (the largest any job of the rule declared), ``s`` and
        ``cpu_s`` (summed over its jobs, seconds).

    Raises
    ------
    ValueError
        If a benchmarked job of ``runtimes`` is not among the jobs of ``declared`` (another run's
        benchmark file, or a log cut short).
    """
    jobs = declared[declared["benchmark"] != ""].copy()
    jobs["key"] = [rule_and_job(path) for path in jobs["benchmark"]]
    mem = dict(zip(jobs["key"], jobs["mem_mb"]))
    table = runtimes.copy()
    table["key"] = list(zip(table["rule"], table["job"]))
    missing = sorted(set(table["key"]) - set(mem))
    if missing:
        shown = ", ".join("/".join(key) for key in missing[:5])
        raise ValueError(f"{len(missing)} benchmarked jobs not in the Snakemake log: {shown}")
    table["mem_mb"] = table["key"].map(mem)
    table["ratio"] = table["max_rss"] / table["mem_mb"]
    rows = []
    for rule, group in table.groupby("rule", sort=False):
        worst = group.loc[group["max_rss"].idxmax()]
        rows.append(
            {
                "rule": rule,
                "jobs": len(group),
                "max_rss_mb": float(worst["max_rss"]),
                "mem_mb": float(worst["mem_mb"]),
                "ratio": float(group["ratio"].max()),
                "worst_job": worst["job"],
                "max_mem_mb": float(group["mem_mb"].max()),
                "s": float(group["s"].sum()),
                "cpu_s": float(group["cpu_time"].sum()),
            }
        )
    result = pd.DataFrame(rows)
    return result.sort_values("ratio", ascending=False, ignore_index=True)


def plain(config):
    """The configuration as plain dicts, lists, strings and numbers (for YAML and JSON).

    Parameters
    ----------
    config : mapping
        Snakemake's ``config`` or any JSON-compatible mapping (subclasses of dict allowed).

    Returns
    -------
    dict
    """
    return json.loads(json.dumps(config))


def config_page(config, *, title="astroflow configuration"):
    """A small HTML page showing the configuration as YAML, for the report to display.

    Parameters
    ----------
    config : mapping
        The effective configuration (JSON-compatible).
    title : str, optional
        Page title and heading.

    Returns
    -------
    str
        A self-contained HTML document; the YAML is escaped inside a ``<pre>``.
    """
    text = yaml.safe_dump(plain(config), sort_keys=False, default_flow_style=False)
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>\n"
        "<body style=\"font-family: sans-serif; margin: 1.5em\">\n"
        f"<h1 style=\"font-size: 1.3em\">{html.escape(title)}</h1>\n"
        f"<pre style=\"font-size: 0.9em\">{html.escape(text)}</pre>\n</body>\n</html>\n"
    )
