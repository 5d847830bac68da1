"""Shared fixtures: running the workflow in a scratch working directory."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def needs_shared_data(*parts):
    """Skip marker for tests that read a real data set from ../shared/data."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(
        not path.exists(), reason=f"real data not available: {path} is absent"
    )


def snakemake(workdir, *args, check=True, timeout=1200):
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
        "--snakefile", str(ROOT / "Snakefile"),
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
