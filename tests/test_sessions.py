"""Sessions and filters of deep-sky targets: schema, discovery, filter names, master matching,
and the palette combination of filter stacks (astroflow.deepsky.palette)."""

from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from astropy.io import fits

from astroflow.calibration.calibrate import (
    calibrate_light,
    dark_groups,
    flat_groups,
    master_darks,
    master_flats,
    match_dark,
    match_flat,
)
from astroflow.deepsky.palette import (
    DEFAULT_FILTER,
    PaletteError,
    canonical_filter,
    combine_palette,
    light_filter,
    normalise_channel,
    palette_channels,
)
from astroflow.io.fits import read_headers, read_image, write_image, write_images
from astroflow.workflow.config import session_errors
from astroflow.workflow.discovery import (
    DEFAULT_SESSION,
    DiscoveryError,
    find_sessions,
    shared_masters,
    source_header,
    target_sessions,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
ISSUE_EXAMPLE = {
    "kind": "deep-sky",
    "palette": "LRGB",
    "sessions": {
        "night1": {
            "lights": "/data/n1/L", "darks": "/data/n1/darks", "flats": "/data/n1/flats-L",
            "bias": "/data/n1/bias", "filter": "L",
        },
        "night2": {"lights": "/data/n2/R", "darks": "/data/n2/darks", "flats": "/data/n2/flats-R", "filter": "R"},
    },
}  # fmt: skip


def valid(target):
    try:
        jsonschema.validate({"targets": {"m31": target}}, SCHEMA)
    except jsonschema.ValidationError:
        return False
    return True


# --- schema and configuration errors -------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        ISSUE_EXAMPLE,
        {"kind": "deep-sky", "lights": "x", "darks": "d", "flats": "f", "bias": "b"},
        {"kind": "deep-sky", "lights": "x", "filter": "Ha"},
        {"kind": "deep-sky", "palette": "SHO", "sessions": {"a": {"lights": "x", "filter": "SII"}}},
    ],
)
def test_schema_takes_both_forms(target):
    assert valid(target)
    assert session_errors({"targets": {"m31": target}}) == []


@pytest.mark.parametrize(
    "target,message",
    [
        ({"kind": "deep-sky", "lights": "x", "sessions": {"a": {"lights": "y"}}},
         "either as sessions or directly, not both (move lights into a session)"),
        ({"kind": "deep-sky", "sessions": {}}, "sessions must map session names"),
        ({"kind": "deep-sky", "sessions": {"a": {"lights": "y", "flat": "z"}}},
         "session 'a': unknown key(s) flat"),
        ({"kind": "deep-sky", "sessions": {"a": {"darks": "y"}}}, "session 'a': no lights given"),
    ],
)
def test_malformed_sessions_are_named_before_the_schema(target, message):
    messages = session_errors({"targets": {"m31": target}})
    assert any(message in m and "target 'm31'" in m for m in messages), messages
    assert not valid(target)


@pytest.mark.parametrize(
    "target",
    [
        {"kind": "deep-sky"},  # no lights, no sessions
        {"kind": "deep-sky", "lights": "x", "palette": "RGB"},
        {"kind": "deep-sky", "lights": "x", "filter": "H alpha"},  # not safe for a path
        {"kind": "deep-sky", "sessions": {"night 1": {"lights": "x"}}},
        {"kind": "planetary", "lights": "x", "sessions": {"a": {"lights": "x"}}},
    ],
)
def test_schema_refuses_bad_targets(target):
    assert not valid(target)


# --- discovery ------------------------------------------------------------------------------


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return str(folder)


def test_one_session_keeps_frame_names(tmp_path):
    lights = touch(tmp_path / "L", "a.fits", "b.fits")
    found = find_sessions("t", {"kind": "deep-sky", "lights": lights, "filter": "R"})
    assert list(found) == [DEFAULT_SESSION]
    assert list(found[DEFAULT_SESSION]["light"]) == ["a", "b"]
    assert target_sessions({"lights": lights, "filter": "R"})[DEFAULT_SESSION]["filter"] == "R"


def test_several_sessions_prefix_names_and_share_calibration(tmp_path):
    darks = touch(tmp_path / "darks", "d1.fits")
    settings = {
        "kind": "deep-sky",
        "filter": "L",
        "sessions": {
            "n1": {"lights": touch(tmp_path / "n1", "a.fits"), "darks": darks},
            "n2": {"lights": touch(tmp_path / "n2", "a.fits"), "darks": darks, "filter": "R"},
        },
    }
    found = find_sessions("t", settings)
    assert list(found["n1"]["light"]) == ["n1_a"] and list(found["n2"]["light"]) == ["n2_a"]
    assert list(found["n2"]["dark"]) == ["n2_d1"]
    sessions = target_sessions(settings)
    assert sessions["n1"]["filter"] == "L" and sessions["n2"]["filter"] == "R"


def test_sessions_naming_the_same_calibration_share_its_master():
    sessions = {
        "n1": {"lights": "a", "darks": "lib/darks", "bias": "lib/bias", "flats": "n1/flats"},
        "n2": {"lights": "b", "darks": "lib/darks/", "bias": "lib/bias", "flats": "n2/flats"},
        "n3": {"lights": "c", "darks": "lib/darks", "flats": "n1/flats"},  # no bias: own dark
    }
    owners = shared_masters(sessions)
    assert owners["n1"] == {"bias": "n1", "dark": "n1", "flat": "n1"}
    assert owners["n2"] == {"bias": "n1", "dark": "n1", "flat": "n2"}
    # the same flats but made with another bias (none): not shared
    assert owners["n3"] == {"dark": "n3", "flat": "n3"}


def test_colliding_names_across_sessions_are_an_error(tmp_path):
    # session a, frame b_c and session a_b, frame c both become a_b_c
    settings = {
        "kind": "deep-sky",
        "sessions": {
            "a": {"lights": touch(tmp_path / "x", "b_c.fits")},
            "a_b": {"lights": touch(tmp_path / "y", "c.fits")},
        },
    }
    with pytest.raises(DiscoveryError, match="both get the name 'a_b_c'"):
        find_sessions("t", settings)


# --- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,canonical",
    [
        ("Red", "R"), ("g", "G"), ("BLUE", "B"), ("Lum", "L"), ("Luminance", "L"),
        ("H-alpha", "Ha"), ("Halpha", "Ha"), ("HA", "Ha"), ("O3", "OIII"), ("oiii", "OIII"),
        ("S2", "SII"), ("JohnsonV", "V"), ("JohnsonB", "B"), ("IRCUT", "IRCUT"),
        ("Visible", "Visible"), ("my filter/2", "my_filter_2"), ("", DEFAULT_FILTER), (None, DEFAULT_FILTER),
    ],
)  # fmt: skip
def test_filter_names_have_one_safe_spelling(name, canonical):
    assert canonical_filter(name) == canonical


def test_light_filter_prefers_the_configuration_then_the_header(tmp_path):
    path = tmp_path / "cafos.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.int16), header=fits.Header({"INSFLNAM": "JohnsonV"})).writeto(path)
    header = source_header(str(path))
    assert light_filter(None, header) == "V"  # CAFOS' INSFLNAM
    assert light_filter("Ha", header) == "Ha"
    assert light_filter(None, fits.Header({"FILTER": "Red", "INSFLNAM": "x"})) == "R"
    assert light_filter(None, None) == DEFAULT_FILTER
    assert source_header(str(tmp_path / "missing.fits")) is None
    assert source_header(str(tmp_path / "x.cr2")) is None


# --- master matching ----------------------------------------------------------------------------


def dark(t, temp=-10.0, binning=1):
    return {"EXPTIME": t, "CCD-TEMP": temp, "XBINNING": binning, "YBINNING": binning}


def test_darks_group_by_exposure_temperature_and_binning():
    headers = [
        dark(20), dark(21), dark(60), dark(60), dark(60), dark(20, temp=-20), dark(20, binning=2),
    ]
    groups = dark_groups(headers, exposure_tolerance=0.1, temperature_tolerance=2.0)
    # 60 s largest first; 20/21 s at -10 C share one (21 <= 1.1 * 20), -20 C and 2x2 apart
    assert groups[0] == [2, 3, 4]
    assert sorted(map(sorted, groups[1:])) == [[0, 1], [5], [6]]
    # a tighter tolerance splits 20 and 21 s
    assert [0] in dark_groups(headers, exposure_tolerance=0.01)


def test_a_light_gets_the_matching_master_else_the_nearest_exposure():
    masters = [dark(60), dark(20), dark(20, temp=-20), dark(120, binning=2)]
    assert match_dark(dark(19.5), masters)[0] == 1  # within 10%, nearest temperature
    assert match_dark(dark(20, temp=-19), masters)[0] == 2
    index, note = match_dark(dark(35), masters)  # none within 10%: nearest exposure, scaled
    assert index == 1 and "scaled" in note
    assert match_dark(dark(50), masters)[0] == 0
    assert match_dark(dark(10, binning=2), masters)[0] == 3
    with pytest.raises(ValueError, match="binning 3x3"):
        match_dark(dark(20, binning=3), masters)


def test_flats_group_by_filter_and_a_light_gets_its_filter():
    headers = [{"FILTER": "JohnsonB"}, {"FILTER": "V"}, {"FILTER": "B"}]
    assert flat_groups(headers) == {"B": [0, 2], "V": [1]}
    masters = [{"FILTER": "B"}, {"FILTER": "V"}]
    assert match_flat("V", masters) == 1
    assert match_flat("Ha", [{"FILTER": "B"}]) == 0  # one flat: used for every light
    with pytest.raises(ValueError, match="no master flat of filter Ha"):
        match_flat("Ha", masters, "flat.fits")


def frames(folder, kind, values, **keys):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, value in enumerate(values):
        path = folder / f"{kind}_{i}.fits"
        write_image(path, np.full((8, 8), value, np.float32), {"IMAGETYP": kind.upper(), **keys})
        paths.append(str(path))
    return paths


@pytest.mark.filterwarnings("ignore:light .unnamed.. no master flat")
def test_a_session_with_20_and_60_s_darks_calibrates_each_light_with_its_own(tmp_path):
    bias = (np.full((8, 8), 100, np.float32), fits.Header({"IMAGETYP": "MASTER BIAS"}))
    # dark current 1 ADU/s on a bias of 100, plus a 20 s-only pattern that must not reach 60 s
    darks = frames(tmp_path / "d20", "dark", [120.0, 120.0, 120.0], EXPTIME=20.0, **{"CCD-TEMP": -10.0})
    darks += frames(tmp_path / "d60", "dark", [160.0] * 4, EXPTIME=60.0, **{"CCD-TEMP": -10.0})
    masters = master_darks(darks, bias)
    assert [h["EXPTIME"] for _, h in masters] == [60.0, 20.0]  # the larger group first
    assert [h["NCOMBINE"] for _, h in masters] == [4, 3]
    np.testing.assert_allclose(masters[0][0], 60.0)
    np.testing.assert_allclose(masters[1][0], 20.0)
    # a 58 s light (within 10% of 60 s): the 60 s master, scaled to 58 s; a 30 s light: the
    # nearest exposure (20 s), scaled
    for exposure, chosen in ((58.0, 0), (30.0, 1)):
        header = fits.Header({"EXPTIME": exposure, "CCD-TEMP": -10.0})
        index, _ = match_dark(header, [h for _, h in masters])
        assert index == chosen
        light = np.full((8, 8), 100 + exposure + 500, np.float32)  # bias + dark + sky 500
        calibrated, _ = calibrate_light(light, header, master_bias=bias, master_dark=masters[index])
        np.testing.assert_allclose(calibrated, 500.0, atol=1e-3)
    # one exposure: exactly one master (no DARKGRP)
    one = master_darks(darks[:3], bias)
    assert len(one) == 1 and "DARKGRP" not in one[0][1]


@pytest.mark.filterwarnings("ignore:master flat. no master dark")
def test_flats_of_two_filters_give_one_master_each(tmp_path):
    flats = frames(tmp_path / "fb", "flat", [1000.0, 1100.0], EXPTIME=5.0, FILTER="JohnsonB")
    flats += frames(tmp_path / "fv", "flat", [3000.0], EXPTIME=5.0, FILTER="JohnsonV")
    bias = (np.zeros((8, 8), np.float32), fits.Header({"IMAGETYP": "MASTER BIAS"}))
    masters = master_flats(flats, bias)
    assert [(h["FILTER"], h["NCOMBINE"]) for _, h in masters] == [("B", 2), ("V", 1)]
    assert match_flat("V", [h for _, h in masters]) == 1


def test_several_masters_in_one_file_round_trip(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "dark.fits"
    write_images(path, [(a, {"EXPTIME": 20.0}), (2 * a, {"EXPTIME": 60.0})])
    assert [h["EXPTIME"] for h in read_headers(path)] == [20.0, 60.0]
    np.testing.assert_array_equal(read_image(path)[0], a)
    np.testing.assert_array_equal(read_image(path, hdu=1)[0], 2 * a)


# --- palettes -----------------------------------------------------------------------------------


def test_normalise_channel_by_hand():
    image = np.full((50, 50), 100.0, np.float32)
    image[:5, :5] = 300.0  # 1% of pixels: the 99.5th percentile is in it
    residual, background, scale = normalise_channel(image)
    assert background == pytest.approx(100.0)
    assert scale == pytest.approx(200.0)
    assert residual[0, 0] == pytest.approx(200.0) and residual[-1, -1] == pytest.approx(0.0)


def field(background, signal, shape=(40, 40)):
    image = np.full(shape, background, np.float32)
    image[:4, :10] = background + signal  # 40 of 1600 pixels: 2.5%, scale = signal
    image[20, 20] = background + signal / 2  # a fainter star
    return image


def test_sho_maps_sii_ha_oiii_to_red_green_blue_with_a_common_scale():
    stacks = {"SII": field(50, 100), "Ha": field(200, 1000), "OIII": field(80, 400)}
    image, used = combine_palette(stacks, "SHO")
    assert used == {"red": "SII", "green": "Ha", "blue": "OIII"}
    # reference: red (SII), background 50, scale 100: every channel becomes 50 + 100 * signal / scale
    np.testing.assert_allclose(image[-1, -1], [50, 50, 50], atol=1e-3)
    np.testing.assert_allclose(image[0, 0], [150, 150, 150], atol=1e-3)
    np.testing.assert_allclose(image[20, 20], [100, 100, 100], atol=1e-3)


def test_hoo_puts_oiii_in_green_and_blue():
    ha, oiii = field(100, 200), field(100, 400)
    oiii[30, 30] = 100 + 800  # an OIII-only region: twice the OIII scale
    image, used = combine_palette({"Ha": ha, "OIII": oiii}, "HOO")
    assert used == {"red": "Ha", "green": "OIII", "blue": "OIII"}
    # reference Ha (background 100, scale 200); OIII scaled by 200/400
    np.testing.assert_allclose(image[30, 30], [100, 100 + 400, 100 + 400], atol=1e-3)


def test_lrgb_keeps_colour_ratios_and_takes_the_luminance():
    r, g, b = field(10, 100), field(10, 100), field(10, 100)
    r[30, 30], g[30, 30], b[30, 30] = 10 + 60, 10 + 30, 10 + 30  # a reddish star
    lum = field(20, 200)
    lum[30, 30] = 20 + 160
    image, used = combine_palette({"R": r, "G": g, "B": b, "L": lum}, "LRGB")
    assert used == {"red": "R", "green": "G", "blue": "B", "luminance": "L"}
    # on the L scale (background 20, scale 200) the star's R, G, B are 120, 60, 60: Y = 80;
    # L' = 160, pedestal p = 20 (L's background): ratio (160 + 20) / (80 + 20) = 1.8,
    # channel = rgb * ratio + 20; the colour ratios 2:1:1 stay
    np.testing.assert_allclose(image[30, 30], [120 * 1.8 + 20, 60 * 1.8 + 20, 60 * 1.8 + 20], rtol=1e-5)
    np.testing.assert_allclose(image[-1, -1], [20, 20, 20], atol=1e-3)  # sky stays neutral
    plain, used = combine_palette({"R": r, "G": g, "B": b}, "LRGB")  # no L: plain RGB
    assert "luminance" not in used
    np.testing.assert_allclose(plain[30, 30], [70, 40, 40], atol=1e-3)


def test_missing_filters_are_named():
    with pytest.raises(PaletteError, match=r"palette SHO needs filter\(s\) OIII, SII; the target has Ha"):
        palette_channels("SHO", ["Ha"])
    with pytest.raises(PaletteError, match="needs filter"):
        combine_palette({"R": field(1, 1), "G": field(1, 1)}, "LRGB")


@pytest.mark.parametrize("name", ["caha-cafos-ngc2420.yaml", "sbig-two-sessions.yaml", "seestar-m94.yaml"])
def test_session_configs_are_valid(name):
    config = yaml.safe_load((ROOT / "tests" / "configs" / name).read_text())
    assert session_errors(config) == []
    jsonschema.validate(config, SCHEMA)
    for target in config["targets"].values():
        assert len(target_sessions(target)) == 2
