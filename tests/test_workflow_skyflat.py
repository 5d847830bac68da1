"""A deep-sky target without flat frames: the sky flat is made from its lights and used, or refused."""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, snakemake

from astroflow.io.fits import is_rejected, read_header

pytestmark = pytest.mark.integration
TARGET = "sim-noflat"
CONFIG = ("--configfile", str(ROOT / "config.yaml"), str(ROOT / "tests" / "configs" / "simulated-noflat.yaml"))


def test_sky_flat_is_made_and_used_then_refused_for_too_few_lights(tmp_path):
    work = tmp_path / "work"
    snakemake(work, f"results/{TARGET}/frames.csv", "--cores", "2", *CONFIG)
    results = Path(work, "results", TARGET)
    header = read_header(results / "masters" / "sky_flat.fits")
    assert not is_rejected(header) and header["FLATTYPE"] == "SKY" and header["NCOMBINE"] == 6
    summary = json.loads((results / "masters" / "sky_flat.json").read_text())
    # the simulated night drifts 40 px: about 20 px between two lights
    assert summary["accepted"] and summary["dither_px"] > 10
    frames = pd.read_csv(results / "frames.csv")
    assert (frames.loc[frames["type"] == "light", "flat"] == "sky").all()
    log = (work / "logs" / "sky_flat" / f"{TARGET}.log").read_text()
    assert "sky flat from 6 lights, median shift between two lights" in log

    # Refusal is a run-time outcome: the placeholder says why, and with flatless auto the
    # flat-correction network takes over for each light.
    light = f"results/{TARGET}/calibrated/light_001.fits"
    few = tmp_path / "few.yaml"
    few.write_text("calibration:\n  sky_flat:\n    min_lights: 50\n")
    snakemake(work, light, "--cores", "2", *CONFIG, str(few))
    header = read_header(results / "masters" / "sky_flat.fits")
    assert is_rejected(header) and "fewer than min_lights = 50" in header["AFREASON"]
    assert not json.loads((results / "masters" / "sky_flat.json").read_text())["accepted"]
    assert read_header(work / light)["FLATUSED"] == "network"
    log = (work / "logs" / "calibrate_light" / TARGET / "light_001.log").read_text()
    assert "sky flat refused: only 6 light(s)" in log
    assert "flat-correction network" in log and "models/flatfield.pt" in log

    # flatless none: no sky flat, no network, the lights go without a flat.
    none = tmp_path / "none.yaml"
    none.write_text("calibration:\n  flatless: none\n")
    snakemake(work, light, "--cores", "2", *CONFIG, str(none))
    assert read_header(work / light)["FLATUSED"] == "none"
