"""Faults during a run (issue 15, items 4 and 5) on a workstation: read-only inputs stay
byte-identical, a second Snakemake on the same working directory is refused while the first
finishes, and a run killed with SIGKILL (Snakemake and its jobs, as by a power cut or the OOM
killer) is finished by ``--unlock`` and ``--rerun-incomplete`` (README, "Reruns") with results
equal, FITS data checksum for checksum, to those of the undisturbed run.

The SLURM faults (scancel, a node set DOWN) are in tests/test_slurm.py.
"""

import base64
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import ROOT, snakemake

import astroflow.simulation.planetary as sp
from astroflow.io.sequence import write_ser
from astroflow.simulation.night import simulate_night

pytestmark = pytest.mark.integration
TARGETS = {
    "tiny": ["results/tiny/stack.fits", "results/tiny/frames.csv"],
    "planet": ["results/planet/stack.fits", "results/planet/frames.csv"],
}


def file_states(folder):
    """{path: (sha256, size, mode, mtime_ns)} of every file under ``folder``."""
    states = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            st = path.stat()
            states[path] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mode, st.st_mtime_ns)
    return states


def fits_checksums(results):
    """{relative path: [sha256 of each HDU's data]} of every FITS under ``results``."""
    sums = {}
    for path in sorted(Path(results).rglob("*.fits")):
        with fits.open(path) as hdul:
            sums[path.relative_to(results).as_posix()] = [
                hashlib.sha256(np.ascontiguousarray(hdu.data).tobytes()).hexdigest() if hdu.data is not None else None
                for hdu in hdul
            ]
    return sums


def command(work, config, *args):
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(work), "--configfile", str(config), *args,
    ]


def running_outputs(work):
    """Outputs of the jobs running now: Snakemake marks each with a file named by its base64 path."""
    markers = Path(work, ".snakemake", "incomplete")
    names = [m.name for m in markers.iterdir()] if markers.exists() else []
    return [base64.urlsafe_b64decode(n + "==").decode() for n in names]


def wait_for(condition, what, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small deep-sky night and a small planetary SER video with darks, made read-only."""
    base = tmp_path_factory.mktemp("faults")
    data = base / "data"
    simulate_night(data / "night", width=320, height=240, n_lights=4, n_darks=1, n_flats=1, n_bias=1, seed=11)
    seq = sp.simulate_sequence(sp.planet_truth(96, seed=3, radius_frac=0.25, moon=False), 12, seed=4)
    write_ser(data / "planet" / "jupiter.ser", np.clip(np.round(seq.frames + 300), 0, 65535).astype(np.uint16))
    dark = np.random.default_rng(0).normal(300, 5, (3, *seq.frames.shape[1:]))
    write_ser(data / "planet" / "dark.ser", np.round(dark).astype(np.uint16))
    night = {key: str(data / "night" / key) for key in ("lights", "darks", "flats", "bias")}
    config = base / "faults.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {
            "tiny": {"kind": "deep-sky", **night},
            "planet": {"kind": "planetary", "lights": str(data / "planet" / "jupiter.ser"),
                       "darks": str(data / "planet" / "dark.ser")},
        },
        "planetary": {"ap_size": 32},
    }))
    for path in [data, *data.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield {"base": base, "data": data, "config": config, "before": file_states(data)}
    for path in [data, *data.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture(scope="module")
def undisturbed(inputs):
    """The undisturbed run of both targets; while it runs, a second Snakemake on its working
    directory. Returns (work, output of the second, exit status of the first)."""
    work = inputs["base"] / "undisturbed"
    work.mkdir()
    args = command(work, inputs["config"], "--cores", "2", *TARGETS["tiny"], *TARGETS["planet"])
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as first:
        wait_for(lambda: running_outputs(work), "job started", first)
        second = subprocess.run(
            command(work, inputs["config"], "--cores", "1", *TARGETS["tiny"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        )
        first_was_running = first.poll() is None
        output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-4000:]
    return {"work": work, "second": second, "first_was_running": first_was_running}


def test_inputs_are_never_written(inputs, undisturbed):
    """Every input byte, mode and modification time is unchanged after the runs (root ignores
    the read-only modes, so the checksums are what shows it)."""
    assert (undisturbed["work"] / "results" / "planet" / "stack.fits").is_file()
    after = file_states(inputs["data"])
    assert after == inputs["before"]
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            open(next(iter(after)), "ab").close()


def test_second_snakemake_on_the_same_directory_is_refused(undisturbed):
    second = undisturbed["second"]
    assert undisturbed["first_was_running"], "the first run ended before the second was refused"
    assert second.returncode != 0
    # Snakemake refuses by its lock, or, when it first meets the outputs of the job the first run
    # is writing (marked incomplete in .snakemake/), by IncompleteFilesException: which comes
    # first depends on the moment. Either way it stops while building the DAG, running nothing.
    refused = ("LockException" in second.stdout and "cannot be locked" in second.stdout) or (
        "IncompleteFilesException" in second.stdout
    )
    assert refused, second.stdout[-3000:]
    assert "Finished job" not in second.stdout and "Select jobs to execute" not in second.stdout


def test_run_killed_mid_job_recovers_with_equal_results(inputs, undisturbed):
    """SIGKILL of Snakemake's whole process group while calibrated lights are being warped;
    `--unlock` and `--rerun-incomplete` finish the run, and every FITS equals the undisturbed one."""
    work = inputs["base"] / "killed"
    work.mkdir()
    args = command(work, inputs["config"], "--cores", "2", *TARGETS["tiny"])
    with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True) as proc:
        wait_for(lambda: any("/registered/" in path for path in running_outputs(work)), "warp job", proc)
        os.killpg(proc.pid, signal.SIGKILL)
    killed = [path for path in running_outputs(work)]
    assert killed, "a job should have been running when killed"
    # the job's output is absent or whole: written atomically
    for path in killed:
        assert not Path(work, path).exists() or fits.getdata(Path(work, path)) is not None
    # the lock outlives a SIGKILL: refused until unlocked
    refused = snakemake(work, "--configfile", str(inputs["config"]), "--cores", "2", *TARGETS["tiny"], check=False)
    assert refused.returncode != 0 and "LockException" in refused.stdout
    snakemake(work, "--configfile", str(inputs["config"]), "--unlock", *TARGETS["tiny"])
    snakemake(work, "--configfile", str(inputs["config"]), "--cores", "2", "--rerun-incomplete", *TARGETS["tiny"])
    recovered = fits_checksums(work / "results" / "tiny")
    assert "stack.fits" in recovered
    # the killed jobs' temporary files went with their reruns' writes
    assert not [p for p in (work / "results").rglob(".*.tmp*")]
    assert recovered == fits_checksums(undisturbed["work"] / "results" / "tiny")
    print(f"\nkilled while running {sorted(killed)}; {len(recovered)} FITS equal to the undisturbed run")
