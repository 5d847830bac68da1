"""Shared fixtures: running the workflow in a scratch working directory."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Torch's OpenMP threads spin while waiting unless told otherwise (see scripts/starless.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:
    import torch
except ImportError:  # the library tests that need torch import it themselves
    torch = None
if torch is not None:
    # pytest-xdist runs three workers on the 2 CI cores: torch's intra-op threads of one worker
    # competing with the others made the torch tests up to 15x slower than one thread.
    torch.set_num_threads(1)
SHARED_DATA = ROOT.parent / "shared" / "data"


def debian_package(command, *packages):
    """Path of a program, installed from Debian packages with apt-get when it is missing.

    Parameters
    ----------
    command : str
        The program to find on PATH (``"chromium"``, ``"siril-cli"``).
    *packages : str
        The Debian packages that bring it (installed without their recommends).

    Returns
    -------
    str
        The program's path.

    Skips the calling test, saying why, when the program is missing and this is not a root
    Debian machine with apt-get, or when apt-get cannot install the packages; fails it when
    apt-get installs them but the program is still not on PATH.
    """
    found = shutil.which(command)
    if found:
        return found
    names = " ".join(packages)
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not (root and Path("/etc/debian_version").exists() and shutil.which("apt-get")):
        pytest.skip(f"{command} is not installed, and this is not a root Debian machine to install {names}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    install = [*apt, "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        # a fresh machine has no package lists yet
        subprocess.run([*apt, "update", "-q"], env=env, capture_output=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"apt-get cannot install {names}: {proc.stderr.strip()[-600:]}")
    return shutil.which(command) or pytest.fail(f"apt-get installed {names}, but {command} is not on PATH")


def needs_shared_data(*parts):
    """Skip marker for tests that read a real data set from ../shared/data."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(
        not path.exists(), reason=f"real data not available: {path} is absent"
    )


WORKFLOW_PARTS = (
    "Snakefile", "config.yaml", "rules", "scripts", "schemas", "envs", "report", "models",
)


def copy_workflow(dest):
    """A private copy of the workflow (to change its code in a test); returns its Snakefile."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest / "Snakefile"


def snakemake(workdir, *args, check=True, timeout=1200, snakefile=None):
    """Run the workflow of this repository in ``workdir``; return the CompletedProcess.

    Snakemake's messages (on stdout and stderr) are all in ``.stdout``.

    ``workdir/../shared`` is linked to the real shared folder so that the repository's configs,
    which name ``../shared/data/...``, work unchanged.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shared = workdir.parent / "shared"
    if not shared.exists() and SHARED_DATA.parent.exists():
        shared.symlink_to(SHARED_DATA.parent)
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(snakefile or ROOT / "Snakefile"),
        "--directory", str(workdir),
        *args,
    ]
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
        )
    return proc


def benchmarked_rules(files=None, *, planetary=False):
    """Rules that have a benchmark: directive, from the rule files (all but the planetary and
    training ones, which tests/test_workflow_planetary.py and test_workflow_starless.py check).

    Rules named ``planetary_*`` run only for planetary targets and are left out unless
    ``planetary`` is true; then the rules that planetary targets never run (the single-image
    ``deconvolve``) are left out instead.
    """
    names = set()
    others = ("planetary.smk", "training.smk")  # checked on planetary and training runs
    files = files or [p for p in (ROOT / "rules").glob("*.smk") if p.name not in others]
    for smk in files:
        rule = None
        for line in smk.read_text().splitlines():
            if m := re.match(r"^rule (\w+):", line):
                rule = m.group(1)
            elif rule and re.match(r"^    benchmark:\s*$", line):
                if rule.startswith("planetary_") == planetary or (planetary and rule == "starless"):
                    names.add(rule)
    return names


# The longest test files, longest first: with `-n 3 --dist loadfile --no-loadscope-reorder` (the
# Makefile) a worker takes whole files in collection order, so starting the long ones first keeps
# the workers busy to the end. (xdist's default order, most tests first, left the SLURM night,
# three tests and four minutes, to run alone at the end.) The order is that of the files' summed
# test durations in a clean-clone run with three workers (2026-12-03: 373 s for test_slurm.py down
# to 73 s for test_workflow_skyflat.py).
LONG_FIRST = [
    "test_slurm.py",
    "test_reruns.py",
    "test_workflow_simulated.py",
    "test_workflow_planetary.py",
    "test_workflow_starless.py",
    "test_workflow_sbig.py",
    "test_workflow_project.py",
    "test_workflow_bad_folders.py",
    "test_report.py",
    "test_workflow_sessions.py",
    "test_workflow_drizzle.py",
    "test_workflow_bad_input.py",
    "test_faults.py",
    "test_workflow_formats.py",
    "test_workflow_skyflat.py",
    "test_module.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


def write_config(work, targets, **extra):
    """Write ``{"targets": targets, **extra}`` as ``work/night.yaml`` (made if needed); its path."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    path = work / "night.yaml"
    path.write_text(yaml.safe_dump({"targets": targets, **extra}))
    return path


@pytest.fixture(scope="session")
def small_night(tmp_path_factory):
    """A small simulated night (320x240 DNG: 6 lights, 2 darks, flats and bias) to build bad
    folders from; read only by the tests, which copy what they change."""
    from astroflow.simulation.night import simulate_night

    out = tmp_path_factory.mktemp("small-night")
    simulate_night(out, width=320, height=240, n_lights=6, n_darks=2, n_flats=2, n_bias=2, seed=7)
    return out

