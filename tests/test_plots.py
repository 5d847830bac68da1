"""Tests of the report's figures and tables (astroflow.workflow.plots, astroflow.workflow.report) on synthetic data."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from astroflow.workflow.plots import MAX_LISTED, QUALITY_PANELS, frame_times, quality_plot, runtime_plot
from astroflow.workflow.report import (
    BENCHMARK_COLUMNS,
    config_page,
    declared_resources,
    memory_against_declared,
    rule_and_job,
    runtime_table,
)

START = pd.Timestamp("2024-03-09T21:30:00")
CADENCE = pd.Timedelta(seconds=135)


def quality(i):
    """FWHM, star count and background of light i."""
    return {"fwhm": 3.0 + 0.1 * i, "n_stars": 300.0 - 10 * i, "background": 800.0 + 5 * i}


def make_frames(n=8, rejected=None, seed=1):
    """A frames.csv table: n lights every 135 s (in shuffled row order) and two darks.

    ``rejected`` maps a light's index to (reason, measured); an unmeasured light has NaN quality,
    as one rejected at ingest does. Light 2 is the reference.
    """
    rng = np.random.default_rng(seed)
    if rejected is None:
        rejected = {5: ("poor seeing/focus: FWHM 7.10 vs median 3.00 px", True)}
    rows = []
    for i in range(n):
        reason, measured = rejected.get(i, ("", True))
        rows.append(
            {
                "frame": f"light_{i + 1:03d}",
                "type": "light",
                "date_obs": (START + i * CADENCE).isoformat(),
                "status": "rejected" if i in rejected else "used",
                "reason": reason or np.nan,
                "reference": i == 2,
                **{k: v if measured else np.nan for k, v in quality(i).items()},
            }
        )
    lights = pd.DataFrame(rows).sample(frac=1.0, random_state=rng.integers(1 << 31))
    darks = pd.DataFrame({"frame": ["dark_001", "dark_002"], "type": "dark", "status": "used"})
    return pd.concat([lights, darks], ignore_index=True)


def panels(fig):
    """The three quality axes, top to bottom, keyed by frames.csv column."""
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    return {column: by_label[label] for column, label in QUALITY_PANELS.items()}


def line(ax, label):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return found


def figure_text(fig):
    texts = [t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text"))]
    return "\n".join(texts)


def test_quality_plot_shows_used_lights_in_time_order_and_marks_the_rejected():
    frames = make_frames(n=8, rejected={5: ("poor seeing", True), 6: ("unreadable file", False)})
    fig = quality_plot(frames, title="m42")
    times = pd.date_range(START, periods=8, freq=CADENCE).to_numpy()
    used = np.array([0, 1, 2, 3, 4, 7])
    for column, ax in panels(fig).items():
        expected = np.array([quality(i)[column] for i in range(8)])
        used_line = line(ax, "used")
        np.testing.assert_array_equal(used_line.get_xdata(), times[used])
        np.testing.assert_allclose(used_line.get_ydata(), expected[used])
        np.testing.assert_array_equal(line(ax, "reference").get_xdata(), times[[2]])
        rejected = line(ax, "rejected")
        np.testing.assert_array_equal(rejected.get_xdata(), times[[5, 6]])
        # measured where it was measured, NaN (nothing drawn) for the unreadable frame
        assert np.isfinite(rejected.get_ydata()[0]) and np.isnan(rejected.get_ydata()[1])
        vlines = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        assert sorted(np.asarray(v.get_xdata())[0] for v in vlines) == list(times[[5, 6]])
    text = figure_text(fig)
    assert "m42: 6 of 8 lights used" in text
    assert re.search(r"1\s+light_006\s+21:41:15\s+poor seeing", text)
    assert re.search(r"2\s+light_007\s+21:43:30\s+unreadable file", text)
    assert "dark_001" not in text


def test_quality_plot_time_axis_is_dated_and_labelled():
    fig = quality_plot(make_frames())
    fig.draw_without_rendering()
    shown = {
        column: [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        for column, ax in panels(fig).items()
    }
    assert shown["fwhm"] == [] and shown["n_stars"] == []
    assert any(re.fullmatch(r"21:\d\d", label) for label in shown["background"]), shown
    assert panels(fig)["background"].get_xlabel() == "DATE-OBS (UTC)"


def test_frame_times_fall_back_to_frame_numbers_when_a_date_is_missing():
    frames = make_frames(n=4, rejected={}).query("type == 'light'")
    x, label = frame_times(frames)
    assert x.dtype.kind == "M" and label.startswith("DATE-OBS")
    frames.loc[frames.index[1], "date_obs"] = np.nan
    x, label = frame_times(frames)
    np.testing.assert_array_equal(x, [1, 2, 3, 4])
    assert "frame number" in label
    fig = quality_plot(frames)
    assert panels(fig)["background"].get_xlabel() == label


def test_frame_times_accept_time_zones_and_compare_in_utc():
    frames = pd.DataFrame({"date_obs": ["2024-03-09T23:30:00+02:00", "2024-03-09T21:31:00Z"]})
    x, _ = frame_times(frames)
    np.testing.assert_array_equal(
        x, np.array(["2024-03-09T21:30:00", "2024-03-09T21:31:00"], dtype="datetime64[ns]")
    )


def test_many_rejected_frames_are_summarised_after_max_listed():
    n = MAX_LISTED + 8
    frames = make_frames(n=n + 2, rejected={i: (f"reason {i}", True) for i in range(n)})
    text = figure_text(quality_plot(frames))
    assert "reason 0" in text and f"reason {MAX_LISTED - 2}" in text
    assert f"reason {MAX_LISTED - 1}" not in text
    assert f"and {n - MAX_LISTED + 1} more: see frames.csv" in text


def test_quality_plot_without_lights_says_so():
    darks = make_frames().query("type == 'dark'")
    fig = quality_plot(darks, title="jupiter")
    assert "jupiter: no light frames" in figure_text(fig)


def test_quality_plot_png_is_not_blank(tmp_path):
    path = tmp_path / "quality.png"
    quality_plot(make_frames(), title="m42").savefig(path, dpi=100)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert pixels.shape[0] > 500 and pixels.shape[1] == 900
    assert (pixels.sum(axis=2) < 600).mean() > 0.01  # drawn, not an empty canvas
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((red > 180) & (green < 80) & (blue < 80)).sum() > 50  # the rejected frame's marks


def write_benchmark(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
    lines = [
        f"{s}\t0:00:0{int(s)}\t{rss}\t300.0\t90.0\t95.0\t0.5\t2.0\t40.0\t{cpu}" for s, rss, cpu in rows
    ]
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_runtime_table_reads_rule_and_job_from_the_path_and_averages_repeats(tmp_path):
    root = tmp_path / "benchmarks"
    paths = [
        write_benchmark(root / "stack" / "m42.tsv", [(3.0, 100.0, 2.0), (5.0, 120.0, 4.0)]),
        write_benchmark(root / "warp" / "m42" / "light_001.tsv", [(1.5, "NA", 1.0)]),
        write_benchmark(root / "warp" / "m42" / "light_002.tsv", [(2.5, 80.0, 2.0)]),
    ]
    table = runtime_table(paths)
    assert list(table.columns) == ["rule", "job", "repeats", *BENCHMARK_COLUMNS]
    assert list(table["rule"]) == ["stack", "warp", "warp"]
    assert list(table["job"]) == ["m42", "m42/light_001", "m42/light_002"]
    assert list(table["repeats"]) == [2, 1, 1]
    np.testing.assert_allclose(table["s"], [4.0, 1.5, 2.5])
    np.testing.assert_allclose(table["cpu_time"], [3.0, 1.0, 2.0])
    assert table["max_rss"].iloc[0] == 110.0 and np.isnan(table["max_rss"].iloc[1])


def test_runtime_table_of_nothing_is_empty_with_its_columns():
    table = runtime_table([])
    assert table.empty and list(table.columns)[:3] == ["rule", "job", "repeats"]


# Two jobs as Snakemake 9 prints them, and one without a benchmark or memory.
SNAKEMAKE_LOG = """\
[Wed Dec  2 03:40:49 2026]
localrule warp:
    input: results/m42/calibrated/light_009.fits, results/m42/registration.csv
    output: results/m42/registered/light_009.fits
    jobid: 47
    benchmark: benchmarks/warp/m42/light_009.tsv
    wildcards: target=m42, frame=light_009
    threads: 2
    resources: tmpdir=/tmp, runtime=5, mem_mb=507, mem=507 MB, mem_mib=484
[Wed Dec  2 03:40:50 2026]
Finished jobid: 47 (Rule: warp)
rule stack:
    jobid: 3
    benchmark: benchmarks/stack/m42.tsv
    resources: tmpdir=/tmp, mem_mb=2560, mem=2.56 GB
localrule all:
    jobid: 0
    resources: tmpdir=/tmp
"""


def test_declared_resources_reads_each_job_of_a_snakemake_log():
    table = declared_resources(SNAKEMAKE_LOG)
    assert list(table["rule"]) == ["warp", "stack", "all"]
    assert list(table["jobid"]) == [47, 3, 0]
    assert list(table["benchmark"]) == ["benchmarks/warp/m42/light_009.tsv", "benchmarks/stack/m42.tsv", ""]
    assert list(table["threads"]) == [2, 1, 1]
    assert table["mem_mb"].iloc[:2].tolist() == [507.0, 2560.0] and np.isnan(table["mem_mb"].iloc[2])


def test_memory_against_declared_flags_a_job_above_its_mem_mb():
    runtimes = pd.DataFrame(
        {
            "rule": ["warp", "stack"],
            "job": ["m42/light_009", "m42"],
            "max_rss": [600.0, 300.0],
            "s": [1.0, 5.0],
            "cpu_time": [0.5, 4.0],
        }
    )
    table = memory_against_declared(runtimes, declared_resources(SNAKEMAKE_LOG))
    assert list(table["rule"]) == ["warp", "stack"]
    warp, stack = table.to_dict("records")
    assert warp["ratio"] == pytest.approx(600 / 507) and warp["worst_job"] == "m42/light_009"
    assert stack["max_rss_mb"] == 300.0 and stack["mem_mb"] == 2560.0 and stack["ratio"] < 1
    other_run = runtimes.assign(job=["m31/light_001", "m42"])
    with pytest.raises(ValueError, match="m31/light_001"):
        memory_against_declared(other_run, declared_resources(SNAKEMAKE_LOG))


@pytest.mark.parametrize("path", ["stack/m42.tsv", "benchmarks/m42.tsv", "results/x.tsv"])
def test_rule_and_job_rejects_paths_outside_the_benchmark_layout(path):
    with pytest.raises(ValueError, match=re.escape(path)):
        rule_and_job(path)


def test_runtime_plot_sums_each_rule_and_counts_its_jobs():
    table = pd.DataFrame(
        {
            "rule": ["simulate_night", "warp", "warp", "stack"],
            "job": ["simulate_night", "a", "b", "m42"],
            "s": [2.0, 1.0, 3.0, 5.0],
            "max_rss": [100.0, 50.0, 70.0, 300.0],
        }
    )
    fig = runtime_plot(table)
    time_ax, mem_ax = fig.axes
    assert [t.get_text() for t in time_ax.get_yticklabels()] == ["simulate_night", "warp", "stack"]
    np.testing.assert_allclose([b.get_width() for b in time_ax.patches], [2.0, 4.0, 5.0])
    np.testing.assert_allclose([b.get_width() for b in mem_ax.patches], [100.0, 70.0, 300.0])
    assert [t.get_text() for t in time_ax.texts] == ["1 job", "2 jobs", "1 job"]
    assert time_ax.yaxis_inverted()  # pipeline order reads top to bottom


class ConfigDict(dict):
    """Stands in for Snakemake's config object, a dict subclass that YAML cannot dump."""


def test_config_page_shows_the_configuration_as_escaped_yaml():
    config = ConfigDict(
        targets={"m42": {"kind": "deep-sky", "lights": "data/<m42>&lights"}},
        stacking={"method": "winsorized", "sigma_low": 3.0},
    )
    page = config_page(config)
    assert page.startswith("<!doctype html>") and "<m42>" not in page
    (pre,) = re.findall(r"<pre[^>]*>(.*)</pre>", page, flags=re.S)
    assert yaml.safe_load(html.unescape(pre)) == dict(config)
    assert html.unescape(pre).index("targets") < html.unescape(pre).index("stacking")


def test_planetary_quality_plot_marks_used_unused_and_rejected_with_reasons():
    from astroflow.workflow.plots import planetary_quality_plot

    frames = pd.DataFrame(
        {
            "frame": [f"f{i}" for i in range(6)],
            "timestamp": [""] * 6,
            "status": ["used", "used", "unused", "rejected", "used", "rejected"],
            "reason": ["", "", "not among the best frames", "no object: frame is blank", "",
                       "object cut by the frame edge"],
            "quality": [3.0, 2.5, 1.0, np.nan, 2.0, np.nan],
            "ap_count": [10, 4, 0, 0, 7, 0],
        }
    )
    fig = planetary_quality_plot(frames, title="jupiter")
    assert fig._suptitle.get_text() == "jupiter: 3 of 6 frames used"
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "frame is blank" in texts and "cut by the frame edge" in texts
    top, bottom = fig.axes[:2]
    labels = [line.get_label() for line in top.get_lines()]
    assert "used (3)" in labels and "not among the best (1)" in labels and "rejected (2)" in labels
    heights = [bar.get_height() for bar in bottom.patches]
    assert heights == [10, 4, 0, 0, 7, 0]


def test_alignment_points_plot_draws_one_box_per_point():
    from astroflow.workflow.plots import alignment_points_plot

    points = np.array([[0, 0], [0, 16], [16, 0]])
    fig = alignment_points_plot(np.random.default_rng(0).random((64, 64)), points, 32, title="t")
    ax = fig.axes[0]
    assert len(ax.patches) == 3
    assert [p.get_xy() for p in ax.patches] == [(-0.5, -0.5), (15.5, -0.5), (-0.5, 15.5)]
    assert "3 alignment points of 32 px" in ax.get_title()


def test_deconvolution_plot_draws_both_kinds_of_history():
    from astroflow.workflow.plots import deconvolution_plot

    rl = pd.DataFrame({"method": "richardson-lucy", "cell": [0, 0, 0, 1, 1, 1],
                       "iteration": [1, 2, 3, 1, 2, 3],
                       "relative_change": [0.2, 0.1, 0.05, 0.3, 0.1, 0.02], "chi2": np.nan})
    fig = deconvolution_plot(rl, title="t")
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    assert list(ax.lines[1].get_ydata()) == [0.3, 0.1, 0.02]
    mf = pd.DataFrame({"iteration": np.arange(1, 7), "epoch": [0, 0, 0, 1, 1, 1], "patch": 0,
                       "loss": [4.0, 3.0, 3.5, 2.0, 2.5, 1.5], "data_loss": [3.9, 2.9, 3.4, 1.9, 2.4, 1.4],
                       "tv": 0.5, "seconds": np.arange(6.0)})
    ax = deconvolution_plot(mf).axes[0]
    epoch_means = [line for line in ax.lines if line.get_label() == "total, mean over the epoch"]
    assert len(epoch_means) == 1
    np.testing.assert_allclose(epoch_means[0].get_ydata(), [3.5, 2.0])
    with pytest.raises(ValueError, match="expected"):
        deconvolution_plot(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="empty"):
        deconvolution_plot(pd.DataFrame())
