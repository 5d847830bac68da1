"""Frame screening: sizes by majority, duplicates, darks among the lights (astroflow.deepsky.screening)."""

import numpy as np
import pandas as pd
import pytest

from astroflow.deepsky.screening import ScreeningError, excluded_reason, screen_frames, screen_lights, usable_paths
from astroflow.io.ingest import frame_statistics

ONE = {"default": {"bias": "default", "dark": "default"}}


def record(frame, ftype="light", size=(320, 240), sha=None, median=3000.0, noise=30.0, session="default", **extra):
    header = {
        "NAXIS": 2, "NAXIS1": size[0], "NAXIS2": size[1], "SRCFILE": f"/data/{frame}.dng",
        "SRCSHA": sha or f"sha-{ftype}-{frame}", "AFMEDIAN": median, "AFNOISE": noise, **extra,
    }
    return {"frame": frame, "type": ftype, "session": session, "header": header}


def status(table, frame, ftype="light"):
    row = table[(table["frame"] == frame) & (table["type"] == ftype)].iloc[0]
    return row["status"], row["reason"]


def test_the_majority_size_wins_and_the_odd_frames_are_named():
    records = [record(f"light_{i}") for i in range(4)] + [record("odd", size=(64, 48))]
    records += [record(f"bias_{i}", "bias", median=2048) for i in range(3)]
    records += [record("bias_odd", "bias", size=(64, 48), median=2048)]
    table = screen_frames(records, ONE)
    state, reason = status(table, "odd")
    assert state == "rejected"
    assert "/data/odd.dng" in reason and "64x48" in reason and "320x240 of 4 of the 5 light" in reason
    assert status(table, "bias_odd", "bias")[0] == "rejected"
    assert (table["status"] == "used").sum() == 7


def test_no_clear_majority_is_an_error_naming_every_file_and_size():
    records = [record("a"), record("b"), record("c", size=(64, 48)), record("d", size=(64, 48))]
    with pytest.raises(ScreeningError, match=r"320x240: /data/a.dng, /data/b.dng; 64x48: /data/c.dng, /data/d.dng"):
        screen_frames(records, {"default": {}})


def test_lights_and_masters_of_different_sizes_are_an_error():
    records = [record("a"), record("b"), record("bias_1", "bias", size=(640, 480), median=2048)]
    with pytest.raises(ScreeningError, match=r"lights are 320x240 but the bias frames .* 640x480"):
        screen_frames(records, {"default": {"bias": "default"}})


def test_duplicates_are_excluded_after_their_first_copy():
    records = [record("a", sha="same"), record("b"), record("c", sha="same"), record("d_dark", "dark", sha="same")]
    table = screen_frames(records, {"default": {"dark": "default"}})
    assert status(table, "a")[0] == "used"
    state, reason = status(table, "c")
    assert state == "rejected" and "duplicate of /data/a.dng" in reason
    # the same file among the darks is a mistake of another kind: not a duplicate light
    assert status(table, "d_dark", "dark")[0] == "used"


def test_a_dark_among_the_lights_is_excluded_by_its_level():
    records = [record(f"l{i}", median=3000 + i) for i in range(5)]
    records += [record("capped", median=2055, EXPTIME=120.0)]
    records += [record(f"d{i}", "dark", median=2054, noise=5) for i in range(3)]
    table = screen_frames(records, {"default": {"dark": "default"}})
    state, reason = status(table, "capped")
    assert state == "rejected"
    assert "looks like a dark" in reason and "2054.0" in reason and "exposure 120 s" in reason
    assert (table[table["type"] == "light"]["status"] == "used").sum() == 5
    # off, or nothing to compare with: kept
    assert status(screen_frames(records, {"default": {"dark": "default"}}, dark_fraction=0), "capped")[0] == "used"
    lights = [r for r in records if r["type"] == "light"]
    assert status(screen_frames(lights, {"default": {}}), "capped")[0] == "used"


def test_a_darker_sky_is_not_a_dark():
    # the moon set: half the sky signal, still far above the darks
    records = [record(f"l{i}", median=3000) for i in range(4)] + [record("moonset", median=2500)]
    records += [record("d0", "dark", median=2054)]
    assert status(screen_frames(records, {"default": {"dark": "default"}}), "moonset")[0] == "used"


def test_usable_paths_and_reasons_by_ingested_path(tmp_path):
    table = pd.DataFrame([
        {"frame": "odd", "type": "light", "status": "rejected", "reason": "size 64x48 differs"},
        {"frame": "odd", "type": "bias", "status": "used", "reason": ""},
    ])
    light, bias = "results/t/ingest/light/odd.fits", "results/t/ingest/bias/odd.fits"
    assert excluded_reason(light, table) == "size 64x48 differs"
    assert excluded_reason(bias, table) is None
    assert usable_paths([light, bias], table) == [bias]


def test_frame_statistics_are_robust_and_skip_nan():
    rng = np.random.default_rng(0)
    data = rng.normal(1000, 10, (200, 300)).astype(np.float32)
    data[:20] = np.nan
    data[50, 50] = 65535
    stats = frame_statistics(data)
    assert stats["AFMEDIAN"] == pytest.approx(1000, abs=0.5)
    assert stats["AFNOISE"] == pytest.approx(10, rel=0.05)
    assert frame_statistics(np.full((4, 4), np.nan, np.float32)) == {}


def test_lights_are_screened_against_the_calibration_table():
    calibration = screen_frames(
        [record(f"d{i}", "dark", median=2054, noise=5) for i in range(3)]
        + [record("d_copy", "dark", sha="sha-dark-d0", median=2054)],
        {"default": {"dark": "default"}},
    )
    assert status(calibration, "d_copy", "dark")[0] == "rejected"
    lights = [record(f"l{i}", median=3000) for i in range(4)]
    lights += [record("capped", median=2054), record("zcopy", sha="sha-light-l0")]
    lights += [record("gone", AFSTATUS="REJECTED", AFREASON="truncated")]
    excluded = screen_lights(lights, calibration, {"default": {"dark": "default"}})
    assert set(excluded) == {"capped", "zcopy"}  # ingest's own rejection is not repeated
    assert "dark frames' level 2054.0" in excluded["capped"]
