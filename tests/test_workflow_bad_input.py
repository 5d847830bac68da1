"""Bad input reaches the user as a clear error, or as one excluded frame with its reason."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rawpy
from astropy.io import fits
from conftest import snakemake, write_config

from astroflow.io.fits import read_header

pytestmark = pytest.mark.integration


def truncate(src, dst, fraction=0.5):
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])


def test_truncated_fits_and_raw_are_excluded_and_run_completes_without_calibration(
    small_night, tmp_path
):
    lights = tmp_path / "data" / "lights"
    lights.mkdir(parents=True)
    good = sorted((small_night / "lights").glob("*.dng"))
    for path in good[:5]:
        shutil.copy(path, lights)
    truncate(good[5], lights / "light_truncated.dng")
    with rawpy.imread(str(good[0])) as raw:
        mosaic = raw.raw_image_visible.copy()
    fits.PrimaryHDU(mosaic.astype(np.uint16)).writeto(tmp_path / "whole.fits")
    truncate(tmp_path / "whole.fits", lights / "light_truncated.fits")

    work = tmp_path / "work"
    config = write_config(work, {"lightsonly": {"kind": "deep-sky", "lights": str(lights)}})
    proc = snakemake(work, "--cores", "2", "--configfile", str(config))
    assert "no bias, dark, flat frames configured" in proc.stdout

    frames = pd.read_csv(work / "results" / "lightsonly" / "frames.csv").set_index("frame")
    for name, source in (("light_truncated", ".dng"), ("light_truncated-2", ".fits")):
        row = frames.loc[name]
        assert row["status"] == "rejected"
        assert f"light_truncated{source}" in row["reason"]
    header = read_header(work / "results" / "lightsonly" / "stack.fits")
    used = frames[(frames["type"] == "light") & (frames["status"] == "used")]
    assert header["NCOMBINE"] == len(used) >= 3
    log = (work / "logs" / "calibrate_light" / "lightsonly" / "light_001.log").read_text()
    assert "bias" in log and "skipped" in log


def test_a_light_of_another_size_is_excluded_by_the_majority_size(small_night, tmp_path):
    """The majority size of the lights wins (astroflow.deepsky.screening, in rule register): the
    odd light is excluded with its size and the majority's, the others are registered (no size
    holding more than half is an error: tests/test_workflow_bad_folders.py)."""
    lights = tmp_path / "lights"
    lights.mkdir()
    for path in sorted((small_night / "lights").glob("*.dng"))[:3]:
        shutil.copy(path, lights)
    rng = np.random.default_rng(1)
    odd = rng.normal(1000, 10, (200, 300)).astype(np.uint16)
    fits.PrimaryHDU(odd).writeto(lights / "odd_size.fits")
    work = tmp_path / "work"
    config = write_config(
        work, {"mixed": {"kind": "deep-sky", "lights": str(lights)}}, calibration={"flatless": "none"}
    )
    snakemake(work, "results/mixed/frames.csv", "--cores", "2", "--configfile", str(config))
    frames = pd.read_csv(work / "results" / "mixed" / "frames.csv").set_index("frame")
    assert frames.loc["odd_size", "status"] == "rejected"
    reason = frames.loc["odd_size", "reason"]
    assert str(lights / "odd_size.fits") in reason
    assert "size 300x200 differs from the size 320x240x3 of 3 of the 4 light frames" in reason
    assert frames.loc["light_001", "status"] == "used"


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "no such folder or file"),
        ("empty", "no frames found"),
        ("unknown_key", "kappa"),
    ],
)
def test_config_errors_stop_before_any_job(tmp_path, case, expected):
    work = tmp_path / "work"
    empty = tmp_path / "empty"
    empty.mkdir()
    target = {"kind": "deep-sky", "lights": str(empty)}
    extra = {}
    if case == "missing":
        target["darks"] = str(tmp_path / "no-such-folder")
        target["lights"] = str(tmp_path / "no-such-folder")
    elif case == "unknown_key":
        (empty / "a.fits").write_bytes(b"")
        extra = {"stacking": {"kappa": 3}}
    config = write_config(work, {"t": target}, **extra)
    proc = snakemake(work, "-n", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert expected in proc.stdout
    assert not (work / "results").exists()
