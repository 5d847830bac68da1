"""Planetary targets through the workflow: real Jupiter and Moon data, a SER file, bad input."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from conftest import ROOT, SHARED_DATA, benchmarked_rules, needs_shared_data, snakemake

from astroflow.io.export import tiff_scale
from astroflow.io.fits import read_image
from astroflow.io.sequence import open_sequence, write_ser
from astroflow.planetary import passes as planetary
from astroflow.simulation import planetary as sp

pytestmark = pytest.mark.integration

# The tests run the Jupiter frames and the shorter lunar video of tests/configs/moon-pss.yaml
# (the 101-frame one costs a minute more on 2 cores and runs in benchmarks/planetary.py).
REAL = {
    "jupiter-tensorez": (SHARED_DATA / "jupiter-tensorez", 100),
    "moon-another": (SHARED_DATA / "moon-pss" / "another_short_video.avi", 45),
}


def write_config(work, targets, **extra):
    work.mkdir(parents=True, exist_ok=True)
    path = work / "planetary.yaml"
    path.write_text(yaml.safe_dump({"targets": targets, **extra}))
    return path


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The repository's Jupiter and Moon configs, run together as a user would run them."""
    if not (SHARED_DATA / "jupiter-tensorez").exists():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent")
    targets = {}
    for name in ("jupiter-tensorez.yaml", "moon-pss.yaml"):
        targets.update(yaml.safe_load((ROOT / "tests" / "configs" / name).read_text())["targets"])
    targets = {name: spec for name, spec in targets.items() if name in REAL}
    work = tmp_path_factory.mktemp("planetary-real") / "work"
    # Star removal of a planet is tested elsewhere (test_ser_file_with_darks_is_stacked runs it).
    # The multi-frame deconvolution runs short here (its default is 10 epochs over the best half).
    # On the Moon that is 512 px patches (six, not the default's 24 of 256 px); one torch thread,
    # as the other test worker keeps the second core busy (two threads then run several times
    # slower than one).
    config = write_config(
        work, targets, starless={"enabled": False},
        deconvolution={"multiframe": {"epochs": 2, "max_frames": 16, "patch": 512}},
    )
    proc = snakemake(work, "--cores", "2", "--set-threads", "planetary_deconvolve=1",
                     "--configfile", str(config), timeout=1500)
    return work, proc


@needs_shared_data("jupiter-tensorez")
@pytest.mark.parametrize("target", list(REAL))
def test_real_sequence_is_stacked_sharper_than_the_mean_and_less_noisy_than_the_best(real_run, target):
    work, _ = real_run
    results = work / "results" / target
    for name in ("stack.fits", "stack.tif", "stack_f32.tif", "stack.png", "sharpened.fits",
                 "sharpened.tif", "sharpened_f32.tif", "sharpened.png", "quality.png",
                 "alignment_points.png", "frames.csv"):
        assert (results / name).stat().st_size > 0, name
    source, n_frames = REAL[target]
    frames = pd.read_csv(results / "frames.csv", keep_default_na=False, na_values=[""])
    assert len(frames) == n_frames and frames["sha256"].str.len().eq(64).all()
    assert (frames["status"] == "used").sum() >= 0.25 * n_frames
    stack, header = read_image(results / "stack.fits")
    sharpened, _ = read_image(results / "sharpened.fits")
    assert header["NCOMBINE"] == round(0.25 * (frames["status"] != "rejected").sum())
    sequence = open_sequence(
        sorted(str(p) for p in source.iterdir()) if source.is_dir() else [str(source)]
    )
    mean_all, best = planetary.baselines(sequence, frames, stack.shape[:2])
    measures = planetary.detail_measures(
        {"stack": stack, "sharpened": sharpened, "mean": mean_all, "best": best}
    ).set_index("image")
    print(target, measures.to_dict("index"))
    low, mid = measures["power_0.02-0.08"], measures["power_0.08-0.2"]
    # The lucky stack keeps more detail than the mean of all frames at every scale...
    assert low["stack"] > 1.03 * low["mean"] and mid["stack"] > 1.3 * mid["mean"]
    # ...with a noise floor far below the best single frame's, which is what lets it be sharpened
    # past that frame at the scales of the planet's features.
    assert measures.loc["stack", "noise_floor"] < 0.1 * measures.loc["best", "noise_floor"]
    assert low["sharpened"] > low["best"]


@needs_shared_data("moon-pss")
def test_moon_is_stacked_in_surface_mode_with_many_alignment_points(real_run):
    work, _ = real_run
    log = (work / "logs" / "planetary_align" / "moon-another.log").read_text()
    assert "surface mode" in log
    points = pd.read_csv(work / "results" / "moon-another" / "planetary" / "alignment_points.csv")
    assert len(points) > 200


@needs_shared_data("jupiter-tensorez")
def test_jupiter_moon_survives_in_the_window(real_run):
    """The planet window is padded so that the Galilean moon beside Jupiter is in the stack."""
    work, _ = real_run
    stack, _ = read_image(work / "results" / "jupiter-tensorez" / "stack.fits")
    lum = stack.mean(axis=2)
    assert stack.shape[:2] == (208, 208)
    # The moon: a compact source well outside the disc, on the right, far above the sky noise.
    right = lum[:, 185:]
    sky = np.median(right)
    noise = 1.4826 * np.median(np.abs(right - sky))
    y, x = np.unravel_index(int(np.argmax(right)), right.shape)
    assert right[y, x] - sky > 30 * noise, (right[y, x], sky, noise)
    assert 100 < y < 140  # level with the disc's centre, as in every frame


@pytest.fixture(scope="module")
def synthetic_frames(tmp_path_factory):
    """30 simulated frames of a small planet."""
    truth = sp.planet_truth(128, seed=3, radius_frac=0.25, moon=False)
    seq = sp.simulate_sequence(truth, 30, seed=4, tip_tilt_px=1.5)
    return seq


def test_frame_folder_with_bad_frames_and_more_best_frames_than_exist(synthetic_frames, tmp_path):
    """Frames of another size and a blank frame are excluded with their reasons; a best-N count
    above the number of frames stacks them all, with a warning; names may hold spaces."""
    folder = tmp_path / "my frames"
    folder.mkdir()
    for i, frame in enumerate(synthetic_frames.frames):
        data = np.clip(np.round(frame), 0, 65535).astype(np.uint16)
        if i == 7:
            data = data[:100, :120]  # a frame of another size
        if i == 11:
            data = np.full_like(data, 20)  # lens cap: all dark
        tifffile.imwrite(folder / f"jup {i + 1:02d}.tif", data)
    work = tmp_path / "work"
    config = write_config(
        work,
        {"small": {"kind": "planetary", "lights": str(folder)}},
        planetary={"keep_count": 500, "ap_size": 32},
        deconvolution={"multiframe": {"epochs": 1, "keep_percent": 100.0}},
    )
    snakemake(work, "--cores", "2", "--configfile", str(config))
    frames = pd.read_csv(
        work / "results" / "small" / "frames.csv", keep_default_na=False, na_values=[""]
    ).set_index("frame")
    assert len(frames) == 30
    assert frames.loc["jup 08.tif", "status"] == "rejected"
    assert "120x100 differs" in frames.loc["jup 08.tif", "reason"]
    assert frames.loc["jup 12.tif", "status"] == "rejected"
    assert "blank" in frames.loc["jup 12.tif", "reason"]
    assert (frames["status"] == "used").sum() == 28
    log = (work / "logs" / "planetary_stack" / "small.log").read_text()
    assert "keep_count 500 is more than the 28 usable frames" in log
    _, header = read_image(work / "results" / "small" / "stack.fits")
    assert header["NCOMBINE"] == 28
    assert "jup 08.tif" in (work / "logs" / "planetary_analyse" / "small.log").read_text()
    # The multi-frame deconvolution takes every usable frame and neither excluded one.
    chosen = json.loads((work / "results" / "small" / "planetary" / "mfbd_frames.json").read_text())
    assert len(chosen["frames"]) == 28
    assert "jup 08.tif" not in chosen["frames"] and "jup 12.tif" not in chosen["frames"]
    assert not (work / "results" / "small" / "planetary" / "mfbd_frames.f32").exists()  # temp()


def test_ser_file_with_darks_is_stacked(synthetic_frames, tmp_path):
    """A 16-bit SER video with a dark SER: the master dark is made and subtracted; the stack and
    its products carry the frames' times and the camera."""
    pedestal = 300.0
    data = np.clip(np.round(synthetic_frames.frames + pedestal), 0, 65535).astype(np.uint16)
    start = dt.datetime(2024, 5, 1, 21, 13, 5)
    stamps = [start + dt.timedelta(seconds=0.1 * i) for i in range(len(data))]
    write_ser(tmp_path / "jupiter.ser", data, timestamps=stamps, instrument="ZWO ASI224MC")
    darks = np.random.default_rng(0).normal(pedestal, 5, (8,) + data.shape[1:])
    write_ser(tmp_path / "dark.ser", np.round(darks).astype(np.uint16))
    work = tmp_path / "work"
    config = write_config(
        work,
        {"ser": {"kind": "planetary", "lights": str(tmp_path / "jupiter.ser"),
                 "darks": str(tmp_path / "dark.ser")}},
        planetary={"ap_size": 32},
        deconvolution={"multiframe": {"epochs": 1, "max_frames": 8}},
    )
    snakemake(work, "--cores", "2", "--configfile", str(config))
    dark, _ = read_image(work / "results" / "ser" / "masters" / "dark.fits")
    assert abs(float(dark.mean()) - pedestal) < 1.0
    stack, header = read_image(work / "results" / "ser" / "stack.fits")
    # The best frames come from anywhere in the 3 s: the span is within it, and every product
    # has the stack's.
    first, last = "2024-05-01T21:13:05", "2024-05-01T21:13:07.900"
    assert first <= header["DATE-OBS"] < header["DATE-END"] <= last
    assert header["INSTRUME"] == "ZWO ASI224MC" and header["BUNIT"] == "ADU"
    for name in ("sharpened", "deconvolved"):
        _, product = read_image(work / "results" / "ser" / f"{name}.fits")
        for key in ("DATE-OBS", "DATE-END", "INSTRUME"):
            assert product[key] == header[key], (name, key)
        assert list(product["HISTORY"])[: len(header["HISTORY"])] == list(header["HISTORY"])
    # Each product is also a 16-bit and a float TIFF, the float one with the FITS's values in 0..1.
    for name in ("stack", "sharpened", "deconvolved"):
        image, _ = read_image(work / "results" / "ser" / f"{name}.fits")
        f32 = work / "results" / "ser" / f"{name}_f32.tif"
        np.testing.assert_allclose(tifffile.imread(f32) / tiff_scale(f32), image, rtol=1e-6, atol=1e-6)
        assert tifffile.imread(work / "results" / "ser" / f"{name}.tif").dtype == np.uint16
    # Dark subtracted: the sky around the planet is back at the simulated 20 e-, not 320.
    corner = stack[:10, :10]
    assert abs(float(np.median(corner)) - 20.0) < 5.0
    frames = pd.read_csv(work / "results" / "ser" / "frames.csv")
    assert len(frames) == 30 and frames["frame"].iloc[0].startswith("jupiter.ser")
    # Every benchmarked planetary rule (master dark included) and star removal are in the run's
    # runtimes table.
    runtimes = pd.read_csv(work / "results" / "runtimes.tsv", sep="\t")
    # (rule background also runs, as a copy: planetary targets are off background.kinds)
    assert set(runtimes["rule"]) == benchmarked_rules(
        [ROOT / "rules" / name for name in ("planetary.smk", "deconvolve.smk", "starless.smk")],
        planetary=True,
    ) | {"background"}


@needs_shared_data("jupiter-tensorez")
@pytest.mark.parametrize("target", list(REAL))
def test_real_sequence_multiframe_deconvolution_adds_detail_and_keeps_flux(real_run, target):
    work, _ = real_run
    results = work / "results" / target
    stack, _ = read_image(results / "stack.fits")
    deconvolved, header = read_image(results / "deconvolved.fits")
    assert deconvolved.shape == stack.shape and np.isfinite(deconvolved).all()
    import torch

    # A GPU where torch sees one (the rule asks for gpu=1), the CPU otherwise.
    assert header["NCOMBINE"] == 16
    assert header["MFBDDEV"] == ("cuda" if torch.cuda.is_available() else "cpu")
    # PSFs normalised, one per frame; the history has a loss for every step.
    from astropy.io import fits

    psfs = fits.getdata(results / "planetary" / "mfbd_psfs.fits")
    assert psfs.shape[0] == 16 and np.allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert (psfs >= 0).all()
    history = pd.read_csv(results / "planetary" / "mfbd_history.csv")
    assert np.isfinite(history["loss"]).all() and history["epoch"].nunique() == 2
    assert (results / "deconvolution.png").stat().st_size > 0
    # Flux is kept (normalised PSFs), and detail at the planet's scales grows.
    assert float(deconvolved.sum()) == pytest.approx(float(stack.sum()), rel=0.03)
    measures = planetary.detail_measures({"stack": stack, "deconvolved": deconvolved}).set_index("image")
    print(target, measures.to_dict("index"))
    for band in ("power_0.02-0.08", "power_0.08-0.2"):
        assert measures.loc["deconvolved", band] > measures.loc["stack", band]


def test_sequence_of_one_frame_is_stacked_and_deconvolved_with_a_warning(tmp_path):
    truth = sp.planet_truth(128, seed=3, radius_frac=0.25, moon=False)
    frame = sp.simulate_sequence(truth, 1, seed=1).frames[0]
    folder = tmp_path / "one"
    folder.mkdir()
    tifffile.imwrite(folder / "only.tif", np.clip(np.round(frame), 0, 65535).astype(np.uint16))
    work = tmp_path / "work"
    config = write_config(work, {"one": {"kind": "planetary", "lights": str(folder)}},
                          planetary={"ap_size": 32}, starless={"enabled": False})
    snakemake(work, "--cores", "2", "--configfile", str(config))
    stack, _ = read_image(work / "results" / "one" / "stack.fits")
    deconvolved, _ = read_image(work / "results" / "one" / "deconvolved.fits")
    assert deconvolved.shape == stack.shape and np.isfinite(deconvolved).all()
    log = (work / "logs" / "planetary_deconvolve" / "one.log").read_text()
    assert "SingleFrameWarning" in log and "only one frame" in log


def test_corrupt_video_is_a_clear_error_naming_the_file(tmp_path):
    video = tmp_path / "broken.avi"
    video.write_bytes(np.random.default_rng(1).bytes(50_000))
    work = tmp_path / "work"
    config = write_config(work, {"broken": {"kind": "planetary", "lights": str(video)}})
    proc = snakemake(work, "--cores", "1", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    # checked from its header while the workflow is parsed (discovery.probe_input): no job ran
    assert f"target 'broken', lights: {video}: cannot open as a video" in proc.stdout, proc.stdout[-2000:]
    assert not (work / "logs").exists()


def test_planetary_target_rejects_calibration_folders(tmp_path):
    work = tmp_path / "work"
    config = write_config(
        work, {"p": {"kind": "planetary", "lights": str(tmp_path), "flats": str(tmp_path)}}
    )
    proc = snakemake(work, "-n", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert "planetary target takes lights and optional darks, not flats" in proc.stdout
