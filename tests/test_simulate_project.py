"""The simulated multi-night, multi-filter project and its truth checks."""

import glob
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from conftest import ROOT, snakemake
from scipy.integrate import quad

from astroflow.io.fits import read_image
from astroflow.io.ingest import read_frame
from astroflow.simulation.project import (
    FILTERS,
    filter_fluxes,
    line_transmission,
    project_layout,
    simulate_project,
    target_sessions,
)
from astroflow.simulation.truthcheck import dust_residual, frame_transform, star_colour_errors, to_frame_grid


def planned_jobs(output):
    """Rule -> job count from a dry run's 'Job stats' table."""
    jobs, table = {}, False
    for line in output.splitlines():
        table = table or line.startswith("Job stats")
        parts = line.split()
        if table and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs


SMALL = dict(seed=11, width=160, height=128, n_lights=2, n_darks=1, n_flats=2, n_bias=1, n_dust=3)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("project")
    return outdir, simulate_project(outdir, **SMALL)


def truth(outdir, name):
    return read_image(outdir / "truth" / f"{name}.fits")[0].astype(np.float64)


def raw(path):
    return fits.getdata(path).astype(np.float64)


def calibrated_light(outdir, night, band, flat):
    """A light of a night, calibrated with the true bias and dark and the given flat."""
    light = raw(outdir / night / f"lights_{band}" / f"light_{night}_{band}_001.fits")
    return (light - truth(outdir, "bias") - truth(outdir, f"dark_rate_{night}") * 60.0) / flat


def test_files_follow_the_layout_and_settings(project):
    outdir, meta = project
    layout = project_layout(str(outdir), sessions=2, filters=["R", "G"], n_lights=2, n_darks=1, n_flats=2, n_bias=1)
    written = {p for kind in ("light", "dark", "flat", "bias") for p in glob.glob(f"{outdir}/night*/*/{kind}_*.fits")}
    assert written == {p for paths in layout.values() for p in paths}
    assert len(layout) == 2 * (2 + 1 + 2 + 1)
    assert len(layout[os.path.join(str(outdir), "night2", "lights_G")]) == 2
    assert len(layout[os.path.join(str(outdir), "night1", "flats_R")]) == 2
    assert len(layout[os.path.join(str(outdir), "night1", "bias")]) == 1
    assert meta["sessions"] == ["night1", "night2"] and meta["reference_frame"] == "light_night1_R_001"
    frames = pd.read_csv(outdir / "truth" / "frames.csv")
    assert len(frames) == 2 * 2 * 2
    for path in written:
        with fits.open(path) as hdul:
            assert hdul[0].data.dtype == np.uint16 and hdul[0].data.shape == (128, 160)


def test_headers_carry_filter_exposure_type_temperature_binning(project):
    outdir, meta = project
    checks = {
        "night1/lights_G/light_night1_G_002.fits": ("Light Frame", "G", 60.0, -10.0),
        "night2/lights_R/light_night2_R_001.fits": ("Light Frame", "R", 60.0, -15.0),
        "night2/flats_G/flat_night2_G_001.fits": ("Flat Field", "G", meta["flat_exposure_s"]["G"], -15.0),
        "night1/darks/dark_night1_001.fits": ("Dark Frame", None, 60.0, -10.0),
        "night2/bias/bias_night2_001.fits": ("Bias Frame", None, 0.0, -15.0),
    }
    for name, (imagetyp, band, exposure, temperature) in checks.items():
        header = fits.getheader(outdir / name)
        assert header["IMAGETYP"] == imagetyp
        assert header.get("FILTER") == band
        assert header["EXPTIME"] == pytest.approx(exposure)
        assert header["CCD-TEMP"] == temperature and header["XBINNING"] == 1 and header["YBINNING"] == 1
    # the workflow's reader sees the frame as written, with its keywords
    path = outdir / "night2" / "lights_R" / "light_night2_R_001.fits"
    data, frame_meta = read_frame(path)
    np.testing.assert_array_equal(data, raw(path))
    assert frame_meta["FILTER"] == "R" and frame_meta["EXPTIME"] == 60.0 and frame_meta["CCD-TEMP"] == -15.0


def test_deterministic_by_seed_and_stable_under_frame_counts(project, tmp_path):
    outdir, _ = project
    again = tmp_path / "again"
    simulate_project(again, **SMALL)
    name = "night2/lights_G/light_night2_G_002.fits"
    np.testing.assert_array_equal(raw(again / name), raw(outdir / name))
    assert (again / "truth" / "stars.csv").read_text() == (outdir / "truth" / "stars.csv").read_text()
    other = tmp_path / "other"
    simulate_project(other, **{**SMALL, "seed": 12})
    assert not np.array_equal(raw(other / name), raw(outdir / name))
    # more lights: the sky, the sensor and the dust stay as they were
    more = tmp_path / "more"
    simulate_project(more, **{**SMALL, "n_lights": 3})
    for name in ("flat_night2", "dust_night1", "scene_R", "bias"):
        np.testing.assert_array_equal(truth(more, name), truth(outdir, name))
    assert (more / "night1" / "lights_R" / "light_night1_R_003.fits").exists()
    # the random streams follow the filters' names: another order gives the same frames (but
    # the one reference light, the first of the first filter)
    swapped = tmp_path / "swapped"
    simulate_project(swapped, **{**SMALL, "filters": ["G", "R"]})
    for name in ("night2/lights_G/light_night2_G_002.fits", "night1/flats_R/flat_night1_R_002.fits"):
        np.testing.assert_array_equal(raw(swapped / name), raw(outdir / name))


def test_the_dust_moved_between_nights(project):
    outdir, _ = project
    one, two = (pd.read_csv(outdir / "truth" / f"dust_night{k}.csv") for k in (1, 2))
    assert len(one) == len(two) == 3
    gap = np.hypot(
        one.x.to_numpy()[:, None] - two.x.to_numpy()[None], one.y.to_numpy()[:, None] - two.y.to_numpy()[None]
    )
    assert (gap > one.radius_px.to_numpy()[:, None] + two.radius_px.to_numpy()[None]).all()
    # the flats share vignetting and PRNU: apart from the dust they are the same
    ratio = (
        truth(outdir, "flat_night1")
        / truth(outdir, "dust_night1")
        / (truth(outdir, "flat_night2") / truth(outdir, "dust_night2"))
    )
    assert np.ptp(ratio) < 1e-5 * ratio.mean()


def test_flats_of_a_night_hold_that_nights_dust(project):
    outdir, meta = project
    for night, other in (("night1", "night2"), ("night2", "night1")):
        for band in ("R", "G"):
            flat = raw(outdir / night / f"flats_{band}" / f"flat_{night}_{band}_001.fits")
            exposure = meta["flat_exposure_s"][band]
            flat = flat - truth(outdir, "bias") - truth(outdir, f"dark_rate_{night}") * exposure
            # divided by the night's true flat without its dust: what is left is the dust
            flat /= truth(outdir, f"flat_{night}") / truth(outdir, f"dust_{night}")
            zero = np.zeros_like(flat)
            own = dust_residual(flat, zero, truth(outdir, f"dust_{night}"), scale=0.0, offset=0.0)
            foreign = dust_residual(flat, zero, truth(outdir, f"dust_{other}"), scale=0.0, offset=0.0)
            assert len(own) == 3
            np.testing.assert_allclose(own.dust_left, 1.0, atol=0.1)
            np.testing.assert_allclose(foreign.dust_left, 0.0, atol=0.1)


def test_lights_calibrate_to_the_truth_with_their_own_flat_only(project):
    outdir, _ = project
    sky = truth(outdir, "sky_light_night2_G_001")
    flat = truth(outdir, "flat_night2")
    own = calibrated_light(outdir, "night2", "G", flat)
    wrong = calibrated_light(outdir, "night2", "G", truth(outdir, "flat_night1"))
    noise = np.sqrt(flat * sky + truth(outdir, "dark_rate_night2") * 60.0 + 25.0) / flat
    assert abs(np.mean((own - sky) / noise)) < 0.05
    assert np.std((own - sky) / noise) == pytest.approx(1.0, abs=0.1)
    dust = truth(outdir, "dust_night2")
    # in the motes, the own flat leaves noise only; the other night's flat leaves the dust
    motes = (1.0 - dust) > 0.01
    z_own, z_wrong = ((image - sky) / noise for image in (own, wrong))
    assert abs(z_own[motes].mean()) < 4.0 / np.sqrt(motes.sum())
    assert z_wrong[motes].mean() < -0.3
    left = dust_residual(wrong, sky, dust).dust_left - dust_residual(own, sky, dust).dust_left
    assert (left > 0.7).all()


def test_star_colours_follow_their_temperature(tmp_path):
    # without the nebula the scene is stars only: their measured flux ratios are the true ones
    meta = simulate_project(tmp_path, **{**SMALL, "n_lights": 1, "filters": ["B", "G", "R"], "nebula_adu_per_s": 0.0})
    stars = pd.read_csv(tmp_path / "truth" / "stars.csv")
    images = {band: truth(tmp_path, f"scene_{band}") for band in meta["filters"]}
    errors = star_colour_errors(images, stars, reference="G")
    assert len(errors) >= 3
    np.testing.assert_allclose(errors[["error_R", "error_B"]], 0.0, atol=2e-3)
    np.testing.assert_allclose(
        stars.flux_R / stars.flux_G,
        filter_fluxes(stars.temperature_k, ["R"])["R"] / filter_fluxes(stars.temperature_k, ["G"])["G"],
    )
    # a stack that halves one filter is off by a constant: normalise removes it
    halved = star_colour_errors({**images, "R": images["R"] / 2}, stars, reference="G", normalise=True)
    np.testing.assert_allclose(halved.error_R, 0.0, atol=2e-3)


def test_filter_fluxes_integrate_plancks_law():
    def photons(lam_nm, t):
        return lam_nm**-4 / math.expm1(1.438777e7 / (lam_nm * t))

    for temperature in (3500.0, 5800.0, 12000.0):
        expected = {}
        for band in ("B", "R", "Ha"):
            lo, hi, peak = FILTERS[band]
            expected[band] = peak * quad(photons, lo, hi, args=(temperature,))[0]
        lo, hi, peak = FILTERS["G"]
        g = peak * quad(photons, lo, hi, args=(temperature,))[0]
        got = filter_fluxes([temperature], ["B", "R", "Ha"], 2.0)
        for band, value in expected.items():
            assert got[band][0] == pytest.approx(2.0 * value / g, rel=1e-4)
    fluxes = filter_fluxes([12000.0, 3500.0], ["B", "R"])
    blue_to_red = fluxes["B"] / fluxes["R"]
    assert blue_to_red[0] > 1 > blue_to_red[1]
    with pytest.raises(ValueError, match="unknown filters"):
        filter_fluxes([5000.0], ["V"])


def test_nebula_lines_reach_the_filters_that_pass_them(tmp_path):
    meta = simulate_project(
        tmp_path,
        **{
            **SMALL,
            "n_lights": 1,
            "sessions": 1,
            "filters": ["Ha", "OIII", "R", "G"],
            "star_density": 1e-5,
            "mag_bright": 29.0,
            "mag_faint": 30.0,
        },
    )
    assert line_transmission("R", "Ha") > 0 and line_transmission("G", "Ha") == 0
    assert line_transmission("G", "OIII") > 0 and line_transmission("B", "OIII") > 0
    assert line_transmission("Ha", "OIII") == 0 and line_transmission("L", "SII") > 0
    scenes = {band: truth(tmp_path, f"scene_{band}") for band in meta["filters"]}
    # R holds Ha and SII; Ha holds Ha only: where Ha is brightest R is at least as bright
    peak = np.unravel_index(np.argmax(scenes["Ha"]), scenes["Ha"].shape)
    assert scenes["R"][peak] >= scenes["Ha"][peak] * FILTERS["R"][2] / FILTERS["Ha"][2] * 0.99
    # the Ha and OIII regions are different places
    assert np.corrcoef(scenes["Ha"].ravel(), scenes["OIII"].ravel())[0, 1] < 0.5
    np.testing.assert_allclose(scenes["G"], scenes["OIII"] * FILTERS["G"][2] / FILTERS["OIII"][2], rtol=1e-4, atol=1e-3)


def test_truth_carried_onto_another_lights_grid(project):
    outdir, _ = project
    frames = pd.read_csv(outdir / "truth" / "frames.csv")
    matrix = frame_transform(frames, "light_night2_R_002")
    stars = pd.read_csv(outdir / "truth" / "stars.csv")
    dust, moved = to_frame_grid(truth(outdir, "dust_night2_reference"), matrix, stars)
    # the night's dust on the reference grid, carried back, is its dust on the sensor (smeared
    # only by the dither of the night's lights)
    sensor = truth(outdir, "dust_night2")
    assert np.corrcoef(1 - dust.ravel(), 1 - sensor.ravel())[0, 1] > 0.9
    # the brightest star well inside that light sits where the carried table puts it
    sky = truth(outdir, "sky_light_night2_R_002")
    inside = moved[(moved.x > 10) & (moved.x < 150) & (moved.y > 10) & (moved.y < 118)]
    star = inside.loc[inside.flux_R.idxmax()]
    x0, y0 = int(round(star.x)), int(round(star.y))
    stamp = sky[y0 - 4 : y0 + 5, x0 - 4 : x0 + 5]
    stamp = stamp - np.median(sky[y0 - 8 : y0 + 9, x0 - 8 : x0 + 9])
    yy, xx = np.mgrid[y0 - 4 : y0 + 5, x0 - 4 : x0 + 5]
    assert (stamp * xx).sum() / stamp.sum() == pytest.approx(star.x, abs=0.3)
    assert (stamp * yy).sum() / stamp.sum() == pytest.approx(star.y, abs=0.3)
    with pytest.raises(KeyError, match="not among"):
        frame_transform(frames, "light_night9_R_001")


def test_dust_residual_on_a_synthetic_stack():
    yy, xx = np.mgrid[0:120, 0:120]
    dust = 1.0 - 0.08 * (np.hypot(xx - 40, yy - 60) < 10) - 0.05 * (np.hypot(xx - 85, yy - 50) < 8)
    scene = 500.0 * np.exp(-((xx - 70) ** 2 + (yy - 80) ** 2) / 50.0)
    rng = np.random.default_rng(0)
    clean = 1000.0 + scene + rng.normal(0, 2.0, dust.shape)
    kept = (1000.0 + scene) * dust + rng.normal(0, 2.0, dust.shape)
    half = (1000.0 + scene) * (0.5 + 0.5 * dust) + rng.normal(0, 2.0, dust.shape)
    for image, left in ((clean, 0.0), (kept, 1.0), (half, 0.5)):
        result = dust_residual(image, scene, dust)
        assert len(result) == 2
        np.testing.assert_allclose(result.dust_left, left, atol=0.05)
    np.testing.assert_allclose(dust_residual(kept, scene, dust).sort_values("x").deficit, [0.08, 0.05])
    with pytest.raises(ValueError, match="one shape"):
        dust_residual(clean, scene[:-1], dust)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown filters"):
        simulate_project(tmp_path, **{**SMALL, "filters": ["R", "V"]})
    with pytest.raises(ValueError, match="n_lights"):
        simulate_project(tmp_path, **{**SMALL, "n_lights": 0})


def test_example_target_names_the_project_folders():
    config = yaml.safe_load((ROOT / "tests" / "configs" / "sim-project.yaml").read_text())
    settings = config["simulate"]["project"]
    sessions = config["targets"]["sim-project"]["sessions"]
    assert sessions == target_sessions(
        settings["outdir"],
        sessions=settings["sessions"],
        filters=settings["filters"],
        n_darks=settings["n_darks"],
        n_flats=settings["n_flats"],
        n_bias=settings["n_bias"],
    )
    planned = project_layout(
        settings["outdir"],
        **{k: settings[k] for k in ("sessions", "filters", "n_lights", "n_darks", "n_flats", "n_bias")},
    )
    for entry in sessions.values():
        for key in ("lights", "darks", "flats", "bias"):
            assert os.path.normpath(entry[key]) in planned


def test_meta_is_json_with_the_target_sessions(project):
    outdir, meta = project
    assert json.loads((outdir / "truth" / "meta.json").read_text()) == meta
    assert set(meta["target_sessions"]) == {"night1_R", "night1_G", "night2_R", "night2_G"}


@pytest.mark.integration
def test_workflow_plans_the_project_for_a_target_naming_its_folders(tmp_path):
    # the one-session target form on one night and filter of the project: its folders do not
    # exist yet, and the workflow knows that rule simulate_project makes them
    config = tmp_path / "night1-R.yaml"
    folders = target_sessions("resources/sim_project", sessions=1, filters=["R"], n_darks=2, n_flats=2, n_bias=2)
    entry = {key: value for key, value in folders["night1_R"].items() if key != "filter"}
    config.write_text(yaml.safe_dump({"targets": {"sim-night1-R": {"kind": "deep-sky", **entry}}}))
    dry = snakemake(tmp_path / "work", "-n", "--configfile", str(config))
    jobs = planned_jobs(dry.stdout)
    assert jobs["simulate_project"] == 1 and "simulate_night" not in jobs
    # 3 lights, 2 darks, 2 flats, 2 bias: the schema's defaults
    assert jobs["ingest_frame"] == 9 and jobs["calibrate_light"] == 3
