"""Only what changed reruns, checked with Snakemake's own dry run, --summary and --list-changes.

A private copy of the workflow runs a small simulated night once; each test then changes one
thing (a setting, a script, a library module, a new light, a killed job) and reads what
Snakemake plans to rerun.
"""

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import copy_workflow, snakemake
from test_workflow_simulated import planned_jobs

from astroflow.io.fits import read_header
from astroflow.simulation.night import simulate_night

pytestmark = pytest.mark.integration
N_LIGHTS = 5
DOWNSTREAM_OF_REGISTER = {
    "register": 1,
    "warp": N_LIGHTS,
    "stack": 1,
    "frames_table": 1,
    "quality_plot": 1,
}


def with_report(jobs, config_changed):
    """What follows the stack and the report rules add: deconvolution (and its plot) and star
    removal follow a new stack, runtimes follows every benchmarked job (all these changes rerun
    the stack), effective_config follows any setting. Gradient removal (background) sits between
    the stack and both."""
    after_stack = {"background": 1, "deconvolve": 1, "deconvolution_plot": 1, "starless": 1}
    jobs = {**jobs, **after_stack} if "stack" in jobs else dict(jobs)
    return {**jobs, "runtimes": 1, **({"effective_config": 1} if config_changed else {})}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reruns")
    night = base / "data"
    simulate_night(
        night, width=320, height=240, n_lights=N_LIGHTS + 1, n_darks=2, n_flats=2, n_bias=2, seed=3
    )
    spare = base / "spare_light.dng"
    shutil.move(night / "lights" / f"light_{N_LIGHTS + 1:03d}.dng", spare)
    snakefile = copy_workflow(base / "workflow")
    work = base / "work"
    work.mkdir()
    folders = {key: str(night / key) for key in ("lights", "darks", "flats", "bias")}
    config = work / "night.yaml"
    # Kept intermediates: with temp() ones a changed stacking setting recomputes the frames from
    # ingest on (tests/test_workflow_simulated.py checks that the default deletes them).
    config.write_text(
        yaml.safe_dump(
            {"targets": {"tiny": {"kind": "deep-sky", **folders}}, "keep_intermediates": True}
        )
    )

    def smk(*args, **kwargs):
        return snakemake(work, "--configfile", str(config), *args, snakefile=snakefile, **kwargs)

    smk("--cores", "2")
    return {"smk": smk, "work": work, "night": night, "spare": spare, "workflow": snakefile.parent}


def dry_run(run, *extra):
    return planned_jobs(run["smk"]("-n", *extra).stdout)


def override(run, text):
    path = run["work"] / "override.yaml"
    path.write_text(text)
    return ["--configfile", str(run["work"] / "night.yaml"), str(path)]


def test_complete_run_has_nothing_to_do(run):
    assert "Nothing to be done" in run["smk"]("-n").stdout
    summary = run["smk"]("--summary").stdout.splitlines()
    rows = [line.split("\t") for line in summary if line.startswith("results/")]
    assert len(rows) > 20
    assert all(row[4] == "ok" for row in rows), [row for row in rows if row[4] != "ok"]


@pytest.mark.parametrize(
    "setting,expected",
    [
        ("stacking:\n  sigma_high: 2.5\n", {"stack": 1}),
        ("preview:\n  target_background: 0.3\n", {"stack": 1}),
        ("registration:\n  interpolation: cubic\n", {"warp": N_LIGHTS, "stack": 1}),
        ("registration:\n  min_stars: 8\n", DOWNSTREAM_OF_REGISTER),
        (
            "calibration:\n  cosmetic_sigma: 6.0\n",
            {"calibrate_light": N_LIGHTS, **DOWNSTREAM_OF_REGISTER},
        ),
        (
            "calibration:\n  hot_pixel_sigma: 9.0\n",
            {"hot_pixel_map": 1, "calibrate_light": N_LIGHTS, **DOWNSTREAM_OF_REGISTER},
        ),
        (
            "calibration:\n  sigma_high: 4.0\n",
            {
                "master_bias": 1,
                "master_dark": 1,
                "master_flat": 1,
                "hot_pixel_map": 1,
                "calibrate_light": N_LIGHTS,
                **DOWNSTREAM_OF_REGISTER,
            },
        ),
    ],
    ids=lambda v: v.split(":")[0] + "." + v.split("\n")[1].split(":")[0].strip()
    if isinstance(v, str)
    else "",
)
def test_changed_setting_reruns_its_rules_and_descendants(run, setting, expected):
    jobs = dry_run(run, *override(run, setting))
    jobs.pop("all", None)
    print(f"rerun matrix: {setting.strip().replace(chr(10), ' ')} -> {jobs}")
    assert jobs == with_report(expected, config_changed=True)


STACK_OUTPUTS = {
    "stack.fits", "rejection.fits", "stack.tif", "stack_f32.tif", "stack.png", "rejection.png",
    "rejection_low.fits", "rejection_high.fits", "rejection_low.png", "rejection_high.png",
}  # fmt: skip


def test_summary_marks_exactly_the_outputs_whose_params_changed(run):
    # (--list-changes params lists every output in Snakemake 9.27: it iterates the files of a
    # ParamsChange whether or not it holds a change; --summary's status column is right.)
    summary = run["smk"]("--summary", *override(run, "stacking:\n  method: sigma_clip\n"))
    changed = [
        line.split("\t")[0] for line in summary.stdout.splitlines() if "params changed" in line
    ]
    assert {Path(p).name for p in changed if p.startswith("results/tiny/")} == STACK_OUTPUTS
    assert {p for p in changed if not p.startswith("results/tiny/")} == {
        "results/config.yaml",
        "results/config.html",
    }


@pytest.mark.parametrize(
    "path,expected",
    [
        ("scripts/stack.py", {"stack": 1}),
        # calibrate_light now imports the sky flat (star matching: quality) and the flat
        # network (star metrics: stretch), so their code digest is part of its own
        ("scripts/astroflow/stretch.py", {"calibrate_light": N_LIGHTS, **DOWNSTREAM_OF_REGISTER}),
        (
            # calibrate_light no longer imports the sky flat module (and through it quality.py)
            "scripts/astroflow/deepsky/quality.py",
            {"warp": N_LIGHTS, **DOWNSTREAM_OF_REGISTER},
        ),
        ("scripts/astroflow/calibration/debayer.py", None),
    ],
)
def test_changed_code_reruns_the_rules_that_use_it(run, path, expected):
    source = run["workflow"] / path
    original, stat = source.read_text(), source.stat()
    try:
        source.write_text(original + "\n# a changed line\n")
        jobs = dry_run(run)
        if path.startswith("scripts/") and "/astroflow/" not in path:
            code = run["smk"]("--list-changes", "code").stdout.split()
            assert {Path(p).name for p in code if p.startswith("results/")} == STACK_OUTPUTS
    finally:
        # Snakemake reruns a script's rule when the script is newer than its outputs (mtime);
        # library modules are compared by content (the code digest param)
        source.write_text(original)
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    jobs.pop("all", None)
    print(f"rerun matrix: edit {path} -> {jobs}")
    if expected is None:
        # debayer is used by ingest (patterns) and calibrate_light: everything from ingest on
        assert jobs["ingest_frame"] == 2 * 3 + N_LIGHTS and "master_flat" in jobs
    else:
        assert jobs == with_report(expected, config_changed=False)
    assert "Nothing to be done" in run["smk"]("-n").stdout


def test_new_light_reruns_what_depends_on_it_not_the_masters(run):
    added = run["night"] / "lights" / run["spare"].name
    shutil.copy(run["spare"], added)
    try:
        jobs = dry_run(run)
    finally:
        added.unlink()
    jobs.pop("all", None)
    print(f"rerun matrix: new light -> {jobs}")
    assert jobs == with_report(
        {"ingest_frame": 1, "calibrate_light": 1, **DOWNSTREAM_OF_REGISTER, "warp": N_LIGHTS + 1},
        config_changed=False,
    )


def test_interrupted_job_is_not_trusted_and_rerun_incomplete_completes_it(run):
    work = run["work"]
    args = override(run, "stacking:\n  sigma_high: 2.5\n")
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(run["workflow"] / "Snakefile"),
        "--directory", str(work), "--cores", "1", *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    markers = work / ".snakemake" / "incomplete"

    def stack_running():
        # Snakemake marks each output of a running job: a file named by its base64 path
        names = [m.name for m in markers.iterdir()] if markers.exists() else []
        return any(b"stack.fits" in base64.urlsafe_b64decode(n + "==") for n in names)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not stack_running():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert stack_running(), "the stack job should have been running when killed"
    # a killed Snakemake leaves its lock, as after a power cut: the user unlocks
    run["smk"]("--unlock")

    stack = work / "results" / "tiny" / "stack.fits"
    dry = run["smk"]("-n", *args, check=False)
    if stack.exists():
        # the job died after Snakemake started it: its output must not be trusted
        assert dry.returncode != 0 and "incomplete" in dry.stdout.lower()
    else:
        assert planned_jobs(dry.stdout).get("stack") == 1
    run["smk"]("--cores", "2", "--rerun-incomplete", *args)
    assert read_header(stack)["NCOMBINE"] >= 3
    assert "Nothing to be done" in run["smk"]("-n", *args).stdout
