"""The simulated two-night, two-filter project end to end (issue 14): each night calibrated with
its own flats, the dust of each night absent from the filter stacks, the colour (HOO) combination
against the truth.

The project is ``tests/configs/sim-project.yaml`` (rule simulate_project renders it from its
seed: two nights with their own dust, darks at their own CCD temperature, Ha and OIII flats per
night), made smaller here: 3 lights per night and filter (at 320 px, 16-20 stars a narrowband light,
the OIII lights no longer match the Ha reference).
"""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, snakemake

from astroflow.io.fits import read_image
from astroflow.simulation.truthcheck import dust_residual, star_colour_errors

pytestmark = pytest.mark.integration

NIGHTS, FILTERS = ("night1", "night2"), ("Ha", "OIII")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("project") / "work"
    work.mkdir(parents=True)
    config = yaml.safe_load((ROOT / "tests" / "configs" / "sim-project.yaml").read_text())
    config["simulate"]["project"].update(n_lights=3)
    config.update(starless={"enabled": False}, deconvolution={"enabled": False})
    path = work / "project.yaml"
    path.write_text(yaml.safe_dump(config))
    outputs = ["results/sim-project/stack.fits", "results/sim-project/frames.csv"]
    outputs += [f"results/sim-project/filters/{f}/stack.fits" for f in FILTERS]
    snakemake(work, *outputs, "--cores", "2", "--configfile", str(ROOT / "config.yaml"), str(path))
    return work


def truth(work, name):
    return read_image(work / "resources" / "sim_project" / "truth" / f"{name}.fits")[0]


def test_every_night_has_its_own_masters_and_every_light_is_stacked(project):
    frames = pd.read_csv(project / "results" / "sim-project" / "frames.csv")
    lights = frames[frames["type"] == "light"]
    assert len(lights) == 12 and (lights["status"] == "used").all()
    assert set(lights["filter"]) == set(FILTERS)
    assert set(lights["session"]) == {f"{n}_{f}" for n in NIGHTS for f in FILTERS}
    masters = project / "results" / "sim-project" / "masters"
    for night in NIGHTS:
        for f in FILTERS:
            assert (masters / f"{night}_{f}" / "flat.fits").exists()


@pytest.mark.parametrize("filter_name", FILTERS)
def test_the_dust_of_both_nights_is_gone_from_the_filter_stack(project, filter_name):
    stack, _ = read_image(project / "results" / "sim-project" / "filters" / filter_name / "stack.fits")
    scene = truth(project, f"scene_{filter_name}")
    for night in NIGHTS:
        left = dust_residual(stack, scene, truth(project, f"dust_{night}_reference"))["dust_left"].dropna()
        print(filter_name, night, np.round(left.to_numpy(), 2))
        assert len(left) >= 2
        # 1 would be the dust kept (no flat, or the other night's); its own flats remove it
        assert abs(float(left.median())) < 0.35


def test_hoo_combination_keeps_the_true_star_colours(project):
    stacks = {f: read_image(project / "results" / "sim-project" / "filters" / f / "stack.fits")[0] for f in FILTERS}
    stars = pd.read_csv(project / "resources" / "sim_project" / "truth" / "stars.csv")
    errors = star_colour_errors(stacks, stars, reference="Ha")
    bright = errors.nlargest(4, "flux_Ha")
    print(bright[["x", "y", "ratio_OIII", "true_ratio_OIII", "error_OIII"]])
    assert np.abs(bright["error_OIII"]).max() < 0.05  # OIII/Ha of the stacks against the truth
    colour, header = read_image(project / "results" / "sim-project" / "stack.fits")
    assert colour.shape == stacks["Ha"].shape + (3,)
    np.testing.assert_array_equal(colour[:, :, 1], colour[:, :, 2])  # HOO: OIII in green and blue
    # red follows Ha and green OIII: measured in the colour image, the bright stars' OIII/Ha
    # ratios are the true ones times one common factor (the channel scaling)
    channels = {"Ha": colour[:, :, 0], "OIII": colour[:, :, 1]}
    combined = star_colour_errors(channels, stars, reference="Ha").set_index("id").loc[bright["id"]]
    factor = combined["ratio_OIII"] / combined["true_ratio_OIII"]
    print(combined[["ratio_OIII", "true_ratio_OIII"]], factor)
    assert np.ptp(factor) / np.median(factor) < 0.1


def test_drizzle_of_a_multi_filter_target_is_combined_like_its_stacks(project):
    config = yaml.safe_load((project / "project.yaml").read_text())
    config["drizzle"] = {"enabled": True, "scale": 2}
    path = project / "drizzle.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake(project, "results/sim-project/corrected.fits", "--cores", "2",
              "--configfile", str(ROOT / "config.yaml"), str(path))
    results = project / "results" / "sim-project"
    for f in FILTERS:
        stack, _ = read_image(results / "filters" / f / "stack.fits")
        drizzled, header = read_image(results / "filters" / f / "drizzle.fits")
        assert drizzled.shape == (2 * stack.shape[0], 2 * stack.shape[1])
        assert header["FILTER"] == f  # only that filter's lights were dropped
    colour, header = read_image(results / "drizzle.fits")
    assert colour.shape == drizzled.shape + (3,) and header["PALETTE"] == "HOO"
    np.testing.assert_array_equal(colour[:, :, 1], colour[:, :, 2])
    corrected, _ = read_image(results / "corrected.fits")
    assert corrected.shape == colour.shape  # gradient removal read the drizzle
