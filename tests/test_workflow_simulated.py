"""The whole workflow on the embedded default, the simulated night, measured against its truth."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astroflow.fitsio import read_header, read_image
from astroflow.quality import frame_quality
from conftest import ROOT, snakemake

pytestmark = pytest.mark.integration
TARGET = "simulated-night"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    work = tmp_path_factory.mktemp("simulated") / "work"
    snakemake(work, "--cores", "2", "--configfile", str(ROOT / "config.yaml"))
    return work


def results(work, *parts):
    return Path(work, "results", TARGET, *parts)


def truth(work, name):
    return Path(work, "resources", "simulated", "night", "truth", name)


def planned_jobs(proc_output):
    """Rule -> job count from a dry run's 'Job stats' table."""
    jobs = {}
    in_table = False
    for line in proc_output.splitlines():
        if line.startswith("Job stats"):
            in_table = True
            continue
        match = re.match(r"^(\w+)\s+(\d+)\s*$", line)
        if in_table and match and match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
    return jobs


def affine(row, prefix="m"):
    return np.array(
        [
            [row[f"{prefix}00"], row[f"{prefix}01"], row[f"{prefix}02"]],
            [row[f"{prefix}10"], row[f"{prefix}11"], row[f"{prefix}12"]],
            [0.0, 0.0, 1.0],
        ]
    )


def test_outputs_and_frames_table(night):
    for name in ("stack.fits", "stack.tif", "stack.png", "rejection.fits", "frames.csv"):
        assert results(night, name).stat().st_size > 0
    for master in ("bias", "dark", "flat", "hot_pixels"):
        assert results(night, "masters", f"{master}.fits").exists()
    frames = pd.read_csv(results(night, "frames.csv"))
    assert sorted(frames["type"].unique()) == ["bias", "dark", "flat", "light"]
    assert (frames["sha256"].str.len() == 64).all()
    lights = frames[frames["type"] == "light"]
    assert lights["fwhm"].notna().all() and (lights["n_stars"] > 0).all()
    header = read_header(results(night, "stack.fits"))
    used = lights[lights["status"] == "used"]
    assert header["NCOMBINE"] == len(used)
    assert header["EXPTIME"] == pytest.approx(used["exposure_s"].sum())


def test_registration_matches_true_transforms(night):
    reg = pd.read_csv(results(night, "registration.csv"))
    true = pd.read_csv(truth(night, "transforms.csv")).set_index("frame")
    ref = reg.loc[reg["reference"], "frame"].item()
    sky_to_ref = affine(true.loc[ref])
    ys, xs = np.mgrid[50:700:50, 50:1000:50]
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    errors = []
    for _, row in reg[reg["status"] == "used"].iterrows():
        true_frame_to_ref = sky_to_ref @ np.linalg.inv(affine(true.loc[row["frame"]]))
        diff = (affine(row) @ grid - true_frame_to_ref @ grid)[:2]
        errors.append(np.sqrt(np.mean(np.sum(diff**2, axis=0))))
    rms = float(np.sqrt(np.mean(np.square(errors))))
    print(f"registration RMS error against truth: {rms:.4f} px over {len(errors)} frames")
    assert rms < 0.1


def test_satellite_and_cloudy_frames(night):
    frames = pd.read_csv(results(night, "frames.csv"))
    true = pd.read_csv(truth(night, "transforms.csv"))
    cloudy = true.loc[true["cloudy"], "frame"].item()
    row = frames[frames["frame"] == cloudy].iloc[0]
    assert row["status"] == "rejected" and "cloud" in row["reason"]
    satellite = true.loc[true["satellite"], "frame"].item()
    assert frames.loc[frames["frame"] == satellite, "status"].item() == "used"

    # The trail crosses the whole satellite frame: along it the rejection map counts rejected
    # samples and the stack shows no excess over its surroundings.
    registered, _ = read_image(results(night, "registered", f"{satellite}.fits"))
    others = [
        read_image(results(night, "registered", f"{f}.fits"))[0]
        for f in frames.loc[(frames["type"] == "light") & (frames["status"] == "used"), "frame"]
        if f != satellite
    ]
    excess = registered - np.nanmedian(np.stack(others), axis=0)
    noise = np.nanstd(excess)
    trail = np.nan_to_num(excess.mean(axis=2), nan=0.0) > 20 * noise
    assert trail.sum() > 500, "the satellite trail should be visible in its registered frame"
    rejection, _ = read_image(results(night, "rejection.fits"))
    rejected_on_trail = (rejection.sum(axis=2) > 0)[trail].mean()
    stack, _ = read_image(results(night, "stack.fits"))
    stack_without = np.nanmean(np.stack(others), axis=0)
    print(
        f"satellite trail: {trail.sum()} px, {100 * rejected_on_trail:.1f}% rejected; "
        f"stack excess on trail {np.nanmean((stack - stack_without)[trail]):.2f} ADU "
        f"(trail in its frame {np.nanmean(excess[trail]):.0f} ADU)"
    )
    assert rejected_on_trail > 0.95
    assert abs(np.nanmean((stack - stack_without)[trail])) < 3 * noise / np.sqrt(len(others))


def test_calibrated_light_against_true_sky(night):
    meta = json.loads(truth(night, "meta.json").read_text())
    true = pd.read_csv(truth(night, "transforms.csv"))
    frame = true.loc[~true["satellite"] & ~true["cloudy"], "frame"].iloc[0]
    calibrated, header = read_image(results(night, "calibrated", f"{frame}.fits"))
    sky, _ = read_image(truth(night, f"sky_{frame}.fits"))
    assert calibrated.shape == sky.shape + (3,)
    # Demosaicing keeps each recorded sample: read the calibrated mosaic back from its colours.
    channel = {"R": 0, "G": 1, "B": 2}
    pattern = meta["camera"]["pattern"]
    mosaic = np.empty_like(sky)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        mosaic[dy::2, dx::2] = calibrated[dy::2, dx::2, channel[colour]]
    residual = mosaic - sky
    gain, read_noise = meta["camera"]["gain_e_per_adu"], meta["camera"]["read_noise_e"]
    expected = np.sqrt(np.clip(sky, 0, None) / gain + (read_noise / gain) ** 2)
    bright = sky > np.percentile(sky, 99.5)
    ok = ~bright
    rel_rms = np.sqrt(np.mean(residual[ok] ** 2)) / np.mean(sky[ok])
    noise_ratio = np.sqrt(np.mean(residual[ok] ** 2) / np.mean(expected[ok] ** 2))
    # large scales: the flat, dark and bias errors, not the noise
    h, w = (s // 32 * 32 for s in sky.shape)
    blocks = lambda a: a[:h, :w].reshape(h // 32, 32, w // 32, 32).mean(axis=(1, 3))  # noqa: E731
    large = np.abs(blocks(residual)) / blocks(sky)
    print(
        f"calibrated {frame} vs true sky: relative RMS {rel_rms:.4f}, "
        f"residual / expected noise {noise_ratio:.3f}, large-scale relative error "
        f"median {np.median(large):.4f} max {large.max():.4f}"
    )
    assert noise_ratio < 1.15
    assert np.median(large) < 0.01


def test_stack_noise_follows_sqrt_n(night):
    frames = pd.read_csv(results(night, "frames.csv"))
    used = frames[(frames["type"] == "light") & (frames["status"] == "used")]
    stack, _ = read_image(results(night, "stack.fits"))
    one, _ = read_image(results(night, "registered", f"{used['frame'].iloc[0]}.fits"))
    valid = np.isfinite(one).all(axis=2)
    rows, cols = np.where(valid)
    crop = np.s_[rows.min() + 8 : rows.max() - 8, cols.min() + 8 : cols.max() - 8]
    gain = frame_quality(one[crop])["noise"] / frame_quality(stack[crop])["noise"]
    print(f"stack noise gain {gain:.2f} for N={len(used)} (sqrt N = {np.sqrt(len(used)):.2f})")
    assert gain > 0.85 * np.sqrt(len(used))


def test_nothing_to_do_after_a_run_and_stacking_change_reruns_only_stack(night):
    config = ["--configfile", str(ROOT / "config.yaml")]
    dry = snakemake(night, "-n", *config)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    changed = snakemake(night, "-n", *config, "--config", 'stacking={"kappa_high": 2.5}')
    assert planned_jobs(changed.stdout) == {"stack": 1, "all": 1}
