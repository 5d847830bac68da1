"""Sessions and filters end to end on real frames: CAFOS NGC 2420 in B and V (one session per
filter, each with its own flat, the filter from INSFLNAM), reduced to its 60 s lights so that
the run stays short."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import needs_shared_data, snakemake
from scipy.spatial import cKDTree

from astroflow.deepsky.quality import detect_stars
from astroflow.io.fits import read_header, read_image

pytestmark = [pytest.mark.integration, needs_shared_data("caha-cafos-ngc2420")]
DATA = "../shared/data/caha-cafos-ngc2420"
TARGET = "ngc2420"


def session(lights, band):
    return {
        "lights": f"{DATA}/science/NGC2420/{band}/{lights}",
        "flats": f"{DATA}/calib/flat/{band}",
        "bias": f"{DATA}/calib/bias",
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    work = root / "work"
    config = root / "sessions.yaml"
    sessions = {"blue": session("uamA_002[6-8].fits", "B"), "visual": session("uamA_003[1-3].fits", "V")}
    config.write_text(yaml.safe_dump({"targets": {TARGET: {"kind": "deep-sky", "sessions": sessions}}}))
    outputs = [f"results/{TARGET}/stack.fits", f"results/{TARGET}/frames.csv"]
    snakemake(work, *outputs, "--cores", "2", "--configfile", str(config))
    return work


def results(work, *parts):
    return work.joinpath("results", TARGET, *parts)


def test_each_session_has_its_own_flat_and_the_common_bias_is_made_once(run):
    for name, band in (("blue", "B"), ("visual", "V")):
        flat, header = read_image(results(run, "masters", name, "flat.fits"))
        assert np.median(flat) == pytest.approx(1.0, abs=1e-3)
        assert header["FILTER"] == f"Johnson{band}"
    # both sessions name the same bias folder: one master, in the first session's folder
    assert results(run, "masters", "blue", "bias.fits").exists()
    assert not results(run, "masters", "visual", "bias.fits").exists()
    assert not results(run, "masters", "bias.fits").exists()
    frames = pd.read_csv(results(run, "frames.csv"))
    bias = frames[frames["type"] == "bias"]
    assert len(bias) == 2 and set(bias["session"]) == {"blue"}


def test_frames_table_has_sessions_and_filters_from_the_headers(run):
    frames = pd.read_csv(results(run, "frames.csv"))
    lights = frames[frames["type"] == "light"]
    assert len(lights) == 6 and (lights["status"] == "used").all(), lights[["frame", "reason"]]
    assert lights.set_index("frame")["filter"].to_dict() == {
        **{f"blue_uamA_002{i}": "B" for i in (6, 7, 8)},
        **{f"visual_uamA_003{i}": "V" for i in (1, 2, 3)},
    }
    assert set(frames["session"]) == {"blue", "visual"}
    flats = frames[frames["type"] == "flat"].set_index("session")["filter"]
    assert flats.to_dict() == {"blue": "B", "visual": "V"}
    # one common reference for both filters
    assert lights["reference"].sum() == 1


def test_filter_stacks_are_aligned_and_stack_fits_is_one_of_them(run):
    b, hb = read_image(results(run, "filters", "B", "stack.fits"))
    v, hv = read_image(results(run, "filters", "V", "stack.fits"))
    assert hb["NCOMBINE"] == 3 and hv["NCOMBINE"] == 3
    stars_b, stars_v = (detect_stars(s, threshold_sigma=10) for s in (b, v))
    xy_b = stars_b.loc[stars_b["flag"] == 0, ["x", "y"]].to_numpy()
    xy_v = stars_v.loc[stars_v["flag"] == 0, ["x", "y"]].to_numpy()
    distance, index = cKDTree(xy_v).query(xy_b, distance_upper_bound=3.0)
    matched = np.isfinite(distance)
    assert matched.sum() >= 30
    offset = np.median(xy_b[matched] - xy_v[index[matched]], axis=0)
    print(f"B-V: {matched.sum()} stars matched, median offset {offset} px")
    assert np.hypot(*offset) < 0.5
    # palette none, a tie of 3 and 3 frames: the first filter of the configuration
    stack, header = read_image(results(run, "stack.fits"))
    np.testing.assert_array_equal(stack, b)
    assert "palette none" in " ".join(read_header(results(run, "stack.fits"))["HISTORY"])


def test_one_session_form_keeps_its_paths(tmp_path):
    config = tmp_path / "one.yaml"
    target = {"kind": "deep-sky", **session("uamA_003[1-3].fits", "V")}
    config.write_text(yaml.safe_dump({"targets": {"one": target}}))
    proc = snakemake(tmp_path / "work", "-n", "--cores", "1", "--configfile", str(config))
    assert "results/one/masters/bias.fits" in proc.stdout
    assert "results/one/masters/flat.fits" in proc.stdout
    assert "results/one/stack.fits" in proc.stdout
    assert "results/one/ingest/light/uamA_0031.fits" in proc.stdout
    assert "filters/" not in proc.stdout and "masters/default" not in proc.stdout


@pytest.mark.parametrize(
    "target,message",
    [
        ({"kind": "deep-sky", "palette": "SHO",
          "sessions": {"b": session("uamA_0026.fits", "B"), "v": {**session("uamA_0031.fits", "V"), "filter": "Ha"}}},
         "target 'bad': palette SHO needs filter(s) OIII, SII; the target has B, Ha"),
        ({"kind": "deep-sky", "lights": f"{DATA}/science/NGC2420/B", "sessions": {"b": session("*.fits", "B")}},
         "target 'bad': give the frames either as sessions or directly, not both"),
    ],
)  # fmt: skip
def test_bad_sessions_and_palettes_stop_before_any_job(tmp_path, target, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"targets": {"bad": target}}))
    proc = snakemake(tmp_path / "work", "-n", "--cores", "1", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert message in proc.stdout
