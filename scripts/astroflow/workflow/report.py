"""Tables and pages of the report: run times from Snakemake benchmark files, the configuration."""

from __future__ import annotations

import html
import json
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
