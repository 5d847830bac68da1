"""The whole workflow on the embedded default, the simulated night, measured against its truth."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import ROOT, snakemake
from scipy.ndimage import zoom

from astroflow.io.export import tiff_scale
from astroflow.io.fits import read_header, read_image
from astroflow.workflow.report import declared_resources, memory_against_declared

pytestmark = pytest.mark.integration
TARGET = "simulated-night"
# the tests measure registered and calibrated frames against the truth: keep them
RUN_CONFIG = ("--configfile", str(ROOT / "config.yaml"), "--config", "keep_intermediates=True")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    work = tmp_path_factory.mktemp("simulated") / "work"
    snakemake(work, "--cores", "2", *RUN_CONFIG)
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


@pytest.mark.parametrize("product", ["stack", "deconvolved", "starless", "stars"])
def test_every_product_is_also_a_16_bit_and_a_float_tiff(night, product):
    image, _ = read_image(results(night, f"{product}.fits"))
    # The float TIFF holds the FITS's ADU scaled to 0..1, the same way up (top row first in both).
    f32 = results(night, f"{product}_f32.tif")
    np.testing.assert_allclose(tifffile.imread(f32) / tiff_scale(f32), image, rtol=1e-6, atol=1e-6)
    with tifffile.TiffFile(results(night, f"{product}.tif")) as tif:
        scaled = tif.asarray()
        description = tif.pages[0].description
    scale = float(re.search(r"ADU = value / (\S+)$", description).group(1))
    assert scaled.dtype == np.uint16 and scaled.shape == image.shape
    expected = np.round(np.clip(np.nan_to_num(image.astype(np.float64)) * scale, 0, 65535))
    np.testing.assert_allclose(scaled, expected, atol=1)


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


def test_every_benchmarked_job_stays_within_the_memory_it_declared(night):
    """max_rss of every job (results/runtimes.tsv) against its mem_mb (the run's Snakemake log):
    a job above it is killed on a cluster, and --resources mem_mb= on a workstation would not keep
    jobs apart."""
    logs = sorted(Path(night, ".snakemake", "log").glob("*.snakemake.log"))
    runtimes = pd.read_csv(Path(night, "results", "runtimes.tsv"), sep="\t")
    declared = declared_resources("\n".join(log.read_text() for log in logs))
    memory = memory_against_declared(runtimes, declared)
    assert set(memory["rule"]) == set(runtimes["rule"]) >= {"calibrate_light", "warp", "stack", "starless"}
    over = memory[memory["ratio"] > 1]
    assert over.empty, f"jobs above their declared mem_mb:\n{over.to_string()}"


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

    # The true trail, mapped into the reference frame: along it the rejection map counts
    # rejected samples, and the stack shows no excess over the frames without the trail.
    reg = pd.read_csv(results(night, "registration.csv")).set_index("frame")
    ends = true.set_index("frame").loc[satellite, ["satellite_x0", "satellite_y0", "satellite_x1", "satellite_y1"]]
    ends_xy1 = [[ends.iloc[0], ends.iloc[2]], [ends.iloc[1], ends.iloc[3]], [1, 1]]
    (x0, x1), (y0, y1) = (affine(reg.loc[satellite]) @ ends_xy1)[:2]
    used = frames.loc[(frames["type"] == "light") & (frames["status"] == "used"), "frame"]
    others = np.stack(
        [read_image(results(night, "registered", f"{f}.fits"))[0] for f in used if f != satellite]
    )
    sky = np.median(others, axis=0).mean(axis=2)
    yy, xx = np.mgrid[: sky.shape[0], : sky.shape[1]]
    distance = np.abs((x1 - x0) * (y0 - yy) - (x0 - xx) * (y1 - y0)) / np.hypot(x1 - x0, y1 - y0)
    clear = np.isfinite(others).all(axis=(0, 3)) & (sky < np.nanpercentile(sky, 90))
    trail, beside = clear & (distance < 1.0), clear & (distance > 6) & (distance < 15)
    rejection, _ = read_image(results(night, "rejection.fits"))
    rejected_on_trail = (rejection.sum(axis=2) > 0)[trail].mean()
    stack, _ = read_image(results(night, "stack.fits"))
    difference = (stack - others.mean(axis=0)).mean(axis=2)
    excess = difference[trail].mean() - difference[beside].mean()
    registered, _ = read_image(results(night, "registered", f"{satellite}.fits"))
    in_frame = (registered.mean(axis=2) - sky)[trail].mean()
    error = difference[beside].std() / np.sqrt(trail.sum())
    print(
        f"satellite trail: {trail.sum()} px, {100 * rejected_on_trail:.1f}% rejected; stack "
        f"excess on the trail {excess:.2f} +- {error:.2f} ADU (the trail in its frame: "
        f"{in_frame:.0f} ADU, {in_frame / len(used):.0f} ADU if averaged in)"
    )
    assert trail.sum() > 500
    assert rejected_on_trail > 0.95
    assert abs(excess) < 5 * error + 0.01 * in_frame / len(used)


def block_means(image, size):
    """Means of size x size blocks (the image cropped to whole blocks)."""
    h, w = (n // size * size for n in image.shape)
    return image[:h, :w].reshape(h // size, size, w // size, size).mean(axis=(1, 3))


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
    large = np.abs(block_means(residual, 32)) / block_means(sky, 32)
    print(
        f"calibrated {frame} vs true sky: relative RMS {rel_rms:.4f}, "
        f"residual / expected noise {noise_ratio:.3f}, large-scale relative error "
        f"median {np.median(large):.4f} max {large.max():.4f}"
    )
    assert noise_ratio < 1.15
    assert np.median(large) < 0.01


def sky_mask(night, shape):
    """Pixels of the reference frame that no true star touches (stars.csv is in light_001's frame)."""
    reg = pd.read_csv(results(night, "registration.csv")).set_index("frame")
    stars = pd.read_csv(truth(night, "stars.csv"))
    to_ref = affine(reg.loc["light_001"])
    x, y, _ = to_ref @ np.vstack([stars["x"], stars["y"], np.ones(len(stars))])
    radius = np.clip(5 + 2.5 * (15 - stars["magnitude"]), 5, 40)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.ones(shape, bool)
    for xs, ys, r in zip(x, y, radius):
        if -r < xs < shape[1] + r and -r < ys < shape[0] + r:
            mask &= (xx - xs) ** 2 + (yy - ys) ** 2 > r**2
    margin = 60
    mask[:margin] = mask[-margin:] = False
    mask[:, :margin] = mask[:, -margin:] = False
    return mask


def sky_background(plane, block=24):
    """Smooth sky: medians of block x block tiles, interpolated back to full size (the gradient
    and vignetting vary over hundreds of px; a 25 px running median took seconds per frame)."""
    h, w = (n // block * block for n in plane.shape)
    tiles = np.median(plane[:h, :w].reshape(h // block, block, w // block, block), axis=(1, 3))
    full = np.pad(zoom(tiles, block, order=1), ((0, plane.shape[0] - h), (0, plane.shape[1] - w)),
                  mode="edge")
    return full


def sky_noise(image, mask):
    """Robust noise (ADU) of the green channel on star-free sky, after removing the gradient."""
    green = np.nan_to_num(image[..., 1])
    residual = (green - sky_background(green))[mask]
    return 1.4826 * np.median(np.abs(residual - np.median(residual)))


def test_stack_noise_follows_sqrt_n(night):
    frames = pd.read_csv(results(night, "frames.csv"))
    used = frames.loc[(frames["type"] == "light") & (frames["status"] == "used"), "frame"]
    stack, _ = read_image(results(night, "stack.fits"))
    mask = sky_mask(night, stack.shape[:2])
    singles = [
        sky_noise(read_image(results(night, "registered", f"{f}.fits"))[0], mask) for f in used
    ]
    stack_noise = sky_noise(stack, mask)
    gain = np.median(singles) / stack_noise
    print(
        f"stack noise {stack_noise:.2f} ADU vs median single frame "
        f"{np.median(singles):.2f} ADU: {gain:.2f}x for N={len(used)} "
        f"(sqrt N = {np.sqrt(len(used)):.2f})"
    )
    assert gain > 0.9 * np.sqrt(len(used))


def test_products_carry_the_stack_header_and_calibrated_frames_lose_camera_levels(night):
    frames = pd.read_csv(results(night, "frames.csv"))
    used = frames[(frames["type"] == "light") & (frames["status"] == "used")]
    stack = read_header(results(night, "stack.fits"))
    ends = pd.to_datetime(used["date_obs"]) + pd.to_timedelta(used["exposure_s"], unit="s")
    assert pd.Timestamp(stack["DATE-END"]) == ends.max()
    assert pd.Timestamp(stack["DATE-OBS"]) == pd.to_datetime(used["date_obs"]).min()
    history = list(stack["HISTORY"])
    # corrected: the stack's history, then gradient removal and colour calibration
    corrected = read_header(results(night, "corrected.fits"))
    assert list(corrected["HISTORY"])[: len(history)] == history
    added = [str(card) for card in list(corrected["HISTORY"])[len(history) :]]
    assert added[0].startswith("astroflow background:")
    assert any(card.startswith("astroflow colour:") for card in added)
    history = list(corrected["HISTORY"])
    steps = {
        "deconvolved": "astroflow deconvolve:",
        "starless": "astroflow starless:",
        "stars": "astroflow starless:",
    }
    for name, step in steps.items():
        header = read_header(results(night, f"{name}.fits"))
        for key in ("NCOMBINE", "EXPTIME", "DATE-OBS", "DATE-END"):
            assert header[key] == stack[key], (name, key)
        assert header["BUNIT"] == "ADU", name
        # the stack's history, then a line of the product's own step
        assert list(header["HISTORY"])[: len(history)] == history, name
        assert str(header["HISTORY"][len(history)]).startswith(step), name
    # The DNG lights' black and white levels describe raw ADU only.
    for frame in used["frame"]:
        calibrated = read_header(results(night, "calibrated", f"{frame}.fits"))
        assert "BLACKLVL" not in calibrated and "WHITELVL" not in calibrated, frame
    assert "BLACKLVL" not in stack and "WHITELVL" not in stack


def test_nothing_to_do_after_a_run_and_stacking_change_reruns_only_stack_and_after(night):
    dry = snakemake(night, "-n", *RUN_CONFIG)
    assert "Nothing to be done" in dry.stdout
    override = night / "sigma.yaml"
    override.write_text("stacking:\n  sigma_high: 2.5\n")
    changed = snakemake(night, "-n", "--configfile", str(ROOT / "config.yaml"), str(override), *RUN_CONFIG[2:])
    # the stack, its deconvolution and star removal, and the report's record of the settings and
    # of the runtimes
    assert planned_jobs(changed.stdout) == {
        "stack": 1,
        "background": 1,
        "deconvolve": 1,
        "deconvolution_plot": 1,
        "starless": 1,
        "effective_config": 1,
        "runtimes": 1,
        "all": 1,
    }
