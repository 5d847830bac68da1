"""Bad folders and configurations through the workflow: each costs a frame with its reason in
frames.csv, or stops the run with one clear error before anything half-written is left.

The bad frames are made here from one simulated night (tests/badinputs.py makes bad files):
hostile file names, a duplicate, a light of another size, a dark saved among the lights and
symbolic-link loops share one deep-sky run; the planetary frame folder gets the same names.
"""

import os
import shutil
import subprocess
from pathlib import Path

import badinputs as bad
import jsonschema
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from astropy.io import fits
from conftest import ROOT, snakemake, write_config

from astroflow.io.fits import read_header
from astroflow.simulation import planetary as sp
from astroflow.workflow.discovery import DiscoveryError, find_frames, find_sequence, frame_name

# a name for each trap: spaces, a quote, a leading dash, shell command substitution, unicode
HOSTILE = ["a b", "it's", "-rf", "$(touch x);", "étoile"]


@pytest.fixture
def night(small_night):
    return small_night


def small_fits(path, shape=(48, 64), level=2000, seed=1):
    data = np.random.default_rng(seed).normal(level, 10, shape).astype(np.uint16)
    fits.PrimaryHDU(data).writeto(path)


def symlink_loops(folder):
    os.symlink(".", folder / "loop")  # a folder that contains itself
    os.symlink("b.dng", folder / "a.dng")  # a -> b -> a
    os.symlink("a.dng", folder / "b.dng")


def test_hostile_names_are_safe_frame_names():
    names = [frame_name(f"/data/{name}.fits") for name in HOSTILE]
    assert names == ["a_b", "it_s", "rf", "touch_x", "toile"]
    for name in names:
        assert not name.startswith(("-", ".", "_"))


def test_symlink_loops_are_passed_over_by_discovery(tmp_path):
    folder = tmp_path / "lights"
    folder.mkdir()
    (folder / "real.fits").write_bytes(b"")
    symlink_loops(folder)
    assert find_frames(str(folder), "lights") == {"real": str(folder / "real.fits")}
    with pytest.raises(DiscoveryError, match="no frames found"):
        find_frames(str(folder / "*.dng"), "lights")
    (folder / "f.png").write_bytes(b"")
    assert find_sequence(str(folder), "lights") == [str(folder / "f.png"), str(folder / "real.fits")]


@pytest.mark.integration
def test_bad_deep_sky_folders_cost_frames_not_the_night(night, tmp_path):
    """One run: hostile names, a duplicate light and bias frame, a light and a bias frame of
    another size, a dark in the lights folder, symbolic-link loops; each bad frame is excluded
    with its reason, the masters and the stack are made from the others."""
    data = tmp_path / "data"
    lights, darks, bias = (data / k for k in ("lights", "darks", "bias"))
    for folder in (lights, darks, bias):
        folder.mkdir(parents=True)
    good = sorted((night / "lights").glob("*.dng"))[1:5]  # the first is the cloudy one
    for src, name in zip(good, ["a b", "étoile", "it's", "light_005"], strict=True):
        shutil.copy(src, lights / f"{name}.dng")
    shutil.copy(good[0], lights / "$(touch x);.dng")  # a duplicate of "a b.dng"
    shutil.copy(sorted((night / "darks").glob("*.dng"))[0], lights / "-rf.dng")  # a dark
    small_fits(lights / "small.fits")
    symlink_loops(lights)
    for src in sorted((night / "darks").glob("*.dng")):
        shutil.copy(src, darks)
    for src in sorted((night / "bias").glob("*.dng")):
        shutil.copy(src, bias)
    shutil.copy(bias / "bias_001.dng", bias / "bias copy.dng")
    small_fits(bias / "small bias.fits")

    work = tmp_path / "work"
    target = {"kind": "deep-sky", "lights": str(lights), "darks": str(darks), "bias": str(bias)}
    config = write_config(work, {"bad": target}, calibration={"flatless": "none"})
    results = work / "results" / "bad"
    snakemake(
        work, "results/bad/frames.csv", "results/bad/stack.fits", "--cores", "2",
        "--configfile", str(config),
    )
    frames = pd.read_csv(results / "frames.csv", keep_default_na=False).set_index(["type", "frame"])
    reasons = frames["reason"]
    assert frames.loc[("light", "small"), "status"] == "rejected"
    assert "small.fits: size 64x48 differs from the master bias's 320x240" in reasons[("light", "small")]
    assert f"duplicate of {lights / 'a b.dng'}" in reasons[("light", "touch_x")]
    assert "looks like a dark, not a light" in reasons[("light", "rf")]
    assert f"duplicate of {bias / 'bias_001.dng'}" in reasons[("bias", "bias_copy")]
    assert "size 64x48 differs" in reasons[("bias", "small_bias")]
    for name in ("a_b", "toile", "it_s", "light_005"):  # screening kept them (registration may not)
        assert not any(word in reasons[("light", name)] for word in ("duplicate", "size", "like a dark"))
    # safe frame names, each from its own file, named as the file system spells it
    assert frames.loc[("light", "toile"), "source"] == str(lights / "étoile.dng")
    assert frames.loc[("light", "it_s"), "source"] == str(lights / "it's.dng")
    assert ("light", "a") not in frames.index and ("light", "loop") not in frames.index
    assert read_header(results / "masters" / "bias.fits")["NCOMBINE"] == 2
    used = frames.xs("light")["status"].eq("used")
    assert read_header(results / "stack.fits")["NCOMBINE"] == used.sum() >= 2
    # "$(touch x);" was never run by a shell
    for where in (work, ROOT, Path.cwd()):
        assert not (Path(where) / "x").exists(), where
    assert not list(tmp_path.rglob("x"))


@pytest.mark.integration
def test_no_majority_size_is_one_clear_error_naming_files_and_sizes(tmp_path):
    lights = tmp_path / "lights"
    lights.mkdir()
    for i, shape in enumerate([(48, 64), (48, 64), (60, 80), (60, 80)]):
        small_fits(lights / f"light_{i}.fits", shape, seed=i)  # not duplicates of each other
    work = tmp_path / "work"
    config = write_config(work, {"mixed": {"kind": "deep-sky", "lights": str(lights)}})
    proc = snakemake(work, "results/mixed/frames.csv", "--cores", "2", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    # the lights meet in sky_flat (flatless auto: before any light is calibrated), else register
    assert "Error in rule sky_flat" in proc.stdout
    log = (work / "logs" / "sky_flat" / "mixed.log").read_text()
    assert "none is the size of more than half" in log
    assert f"64x48: {lights / 'light_0.fits'}, {lights / 'light_1.fits'}" in log
    assert f"80x60: {lights / 'light_2.fits'}, {lights / 'light_3.fits'}" in log


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("stacking", "sigma_low", -3.0),  # negative kappa
        ("calibration", "sigma_high", 0),
        ("registration", "keep_percent", 150),  # percent above 100
        ("planetary", "keep_percent", 0),
        ("drizzle", "scale", 0),
        ("calibration", "memory_mb", 0),
        ("stacking", "memory_mb", 0),
        ("registration", "model", "rigid"),  # unknown enum
        ("stacking", "percentile_low", 20),  # percent given for a fraction
        ("simulate", "seed", -1),
        ("calibration", "lights_dark_fraction", 1.5),
    ],
)
def test_out_of_range_settings_are_refused_by_the_schema(section, key, value):
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config[section][key] = value
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.validate(config, schema)
    assert list(err.value.absolute_path)[-1] == key


@pytest.mark.integration
def test_out_of_range_setting_stops_the_run_before_any_job(night, tmp_path):
    work = tmp_path / "work"
    target = {"kind": "deep-sky", "lights": str(night / "lights")}
    config = write_config(work, {"t": target}, registration={"keep_percent": 150})
    proc = snakemake(work, "--cores", "1", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert "invalid configuration" in proc.stdout and "150" in proc.stdout
    assert not (work / "results").exists() and not (work / "logs").exists()


def mounted_tmpfs(folder, options):
    folder.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (mount -o {options}: {proc.stderr.strip()}); needs root")


@pytest.mark.integration
@pytest.mark.parametrize("case", ["read-only", "full"])
def test_unwritable_results_folder_is_one_clear_error_and_nothing_half_written(night, tmp_path, case):
    """A results folder on a read-only file system, and one on a full disk (a 1 MiB tmpfs: three
    of the four ingested 320x240 lights fit)."""
    lights = tmp_path / "lights"
    lights.mkdir()
    for src in sorted((night / "lights").glob("*.dng"))[:4]:
        shutil.copy(src, lights)
    work = tmp_path / "work"
    results = work / "results"
    mounted_tmpfs(results, "ro,size=1m" if case == "read-only" else "size=1m")
    try:
        config = write_config(work, {"t": {"kind": "deep-sky", "lights": str(lights)}})
        proc = snakemake(work, "results/t/registration.csv", "--cores", "2", "--configfile", str(config), check=False)
        assert proc.returncode != 0
        files = [p for p in results.rglob("*") if p.is_file()]
        if case == "read-only":
            assert "Read-only file system" in proc.stdout and "results/t" in proc.stdout
            assert files == []
        else:
            assert "Error in rule ingest_frame" in proc.stdout
            logs = "".join(p.read_text() for p in (work / "logs" / "ingest_frame").rglob("*.log"))
            assert "Not enough space on disk" in logs or "No space left on device" in logs
            # what is there is whole: no temporary file left, every FITS complete
            assert not [p for p in files if ".tmp" in p.name]
            for path in (p for p in files if p.suffix == ".fits"):
                with fits.open(path) as hdul:
                    assert hdul[0].data.shape == (240, 320)
            assert not (results / "t" / "registration.csv").exists()
    finally:
        subprocess.run(["umount", str(results)], check=True)


@pytest.mark.integration
def test_planetary_frame_folder_with_hostile_names_a_duplicate_and_an_odd_size(tmp_path):
    truth = sp.planet_truth(96, seed=3, radius_frac=0.25, moon=False)
    seq = sp.simulate_sequence(truth, 12, seed=4, tip_tilt_px=1.0)
    folder = tmp_path / "frames"
    folder.mkdir()
    names = []
    for i, frame in enumerate(seq.frames):
        data = np.clip(np.round(frame), 0, 65535).astype(np.uint16)
        name = f"{HOSTILE[i % len(HOSTILE)]} {i:02d}.tif"
        if i == 5:
            data = data[:80, :90]
        tifffile.imwrite(folder / name, data)
        names.append(name)
    shutil.copy(folder / names[0], folder / "zz duplicate.tif")
    symlink_loops(folder)
    work = tmp_path / "work"
    config = write_config(
        work, {"planet": {"kind": "planetary", "lights": str(folder)}},
        planetary={"ap_size": 32},
    )
    snakemake(
        work, "results/planet/frames.csv", "results/planet/stack.fits", "--cores", "2",
        "--configfile", str(config),
    )
    frames = pd.read_csv(work / "results" / "planet" / "frames.csv", keep_default_na=False).set_index("frame")
    assert set(names) <= set(frames.index)
    assert "90x80 differs" in frames.loc[names[5], "reason"]
    assert frames.loc["zz duplicate.tif", "status"] == "rejected"
    assert "duplicate" in frames.loc["zz duplicate.tif", "reason"]
    assert read_header(work / "results" / "planet" / "stack.fits")["NCOMBINE"] <= 11
    assert not list(tmp_path.rglob("x"))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("kind", "make", "problem"),
    [
        ("image", bad.tiff_huge_claim, "memory budget"),
        ("planetary", bad.video_garbage, "cannot open as a video"),
    ],
    ids=["oversized-tiff", "garbage-video"],
)
def test_bad_one_file_target_is_one_clear_error_before_any_job(tmp_path, kind, make, problem):
    """An image or planetary target whose one file is bad stops the run while the workflow is
    parsed, naming the target, the file and the problem, next to a good target: no job runs.
    (Every corpus file through the same check: tests/test_bad_inputs.py.)"""
    folder = tmp_path / "in"
    folder.mkdir()
    path = make(folder)
    good = bad.png_image(folder, "rgb8")
    work = tmp_path / "work"
    config = write_config(work, {"good": {"kind": "image", "lights": str(good)},
                                 "bad": {"kind": kind, "lights": str(path)}})
    proc = snakemake(work, "--cores", "1", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert f"target 'bad', lights: {path}:" in proc.stdout, proc.stdout[-2000:]
    assert problem in proc.stdout
    assert not (work / "results").exists() and not (work / "logs").exists()
