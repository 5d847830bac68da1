"""Tests of astroflow.calibration.calibrate: masters, light calibration, hot pixels, cosmetic correction."""

from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf

from astroflow.calibration.calibrate import (
    CalibrationWarning,
    calibrate_light,
    calibrated_header,
    cosmetic_correction,
    hot_pixel_mask,
    master_bias,
    master_dark,
    master_flat,
)
from astroflow.calibration.debayer import cfa_colour_cells
from astroflow.io.fits import read_image, write_image, write_rejected
from astroflow.io.ingest import ingest_frame

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SBIG = DATA / "sbig-stl1001"
needs_sbig = pytest.mark.skipif(not SBIG.is_dir(), reason=f"real SBIG frames not found at {SBIG}")

SHAPE = (64, 96)
PATTERN = "RGGB"
READ_NOISE = 3.0


def colour_map(shape, pattern, values):
    """Per-pixel value of each CFA colour: values = {'R': .., 'G': .., 'B': ..}."""
    out = np.empty(shape, dtype=np.float64)
    for colour, cells in cfa_colour_cells(pattern).items():
        for dy, dx in cells:
            out[dy::2, dx::2] = values[colour]
    return out


def colour_median(image, pattern, colour):
    cells = cfa_colour_cells(pattern)[colour]
    return np.median(np.concatenate([image[dy::2, dx::2].ravel() for dy, dx in cells]))


class Camera:
    """A seeded synthetic OSC camera: bias structure, dark current with hot pixels, vignetting."""

    def __init__(self, seed=0, shape=SHAPE, pattern=PATTERN):
        self.rng = np.random.default_rng(seed)
        self.shape, self.pattern = shape, pattern
        self.bias = 1000.0 + self.rng.normal(0.0, 4.0, shape)
        self.dark_rate = np.full(shape, 0.2)
        self.hot = (self.rng.integers(2, shape[0] - 2, 12), self.rng.integers(2, shape[1] - 2, 12))
        self.dark_rate[self.hot] = 30.0
        yy, xx = np.indices(shape)
        r2 = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) / (shape[0] ** 2 / 4 + shape[1] ** 2 / 4)
        self.vignetting = 1.0 - 0.35 * r2
        self.flat = self.vignetting * colour_map(shape, pattern, {"R": 0.7, "G": 1.0, "B": 0.5})

    def expose(self, exptime, signal=0.0, bias=True):
        frame = self.dark_rate * exptime + signal * self.flat + self.rng.normal(0.0, READ_NOISE, self.shape)
        return frame + (self.bias if bias else 0.0)

    def write(self, folder, kind, exposures, signal=0.0, bias=True, extra=None):
        paths = []
        for i, exptime in enumerate(exposures):
            header = {
                "EXPTIME": float(exptime),
                "BAYERPAT": self.pattern,
                "IMAGETYP": kind.upper(),
                **(extra or {}),
            }
            path = Path(folder) / f"{kind}{i:03d}.fits"
            write_image(path, self.expose(exptime, signal, bias), header)
            paths.append(path)
        return paths


def sky_image(shape, rng):
    yy, xx = np.indices(shape)
    return 300.0 + 2.0 * xx + 1.0 * yy + rng.uniform(0, 50, shape)


@pytest.fixture
def camera():
    return Camera(seed=42)


def test_calibration_recovers_sky(tmp_path, camera):
    bias = master_bias(camera.write(tmp_path, "bias", [0.0] * 16))
    dark = master_dark(camera.write(tmp_path, "dark", [60.0] * 16), bias)
    flat = master_flat(camera.write(tmp_path, "flat", [2.0] * 16, signal=20000.0), bias, dark)
    sky = sky_image(SHAPE, camera.rng)
    light = camera.expose(120.0) + sky * camera.flat
    calibrated, history = calibrate_light(light, {"EXPTIME": 120.0, "BAYERPAT": PATTERN}, bias, dark, flat)
    assert calibrated.dtype == np.float32 and calibrated.shape == SHAPE
    # The per-colour flat normalisation leaves each colour scaled by its flat median.
    level = colour_map(SHAPE, PATTERN, {c: colour_median(camera.flat, PATTERN, c) for c in "RGB"})
    expected = sky * level
    noise = READ_NOISE * level / camera.flat
    pull = (calibrated - expected) / noise
    assert abs(np.mean(calibrated - expected)) < 0.3
    # Light read noise plus the masters' own noise (dark doubled by the 60 -> 120 s scaling).
    assert 0.9 < np.std(pull) < 1.3
    assert any("scaled to 120.0 s" in line for line in history)


def test_master_flat_normalised_per_colour(tmp_path, camera):
    bias = master_bias(camera.write(tmp_path, "bias", [0.0] * 8))
    levels = [5000.0, 12000.0, 20000.0, 9000.0, 15000.0, 7000.0]
    paths = [camera.write(tmp_path / f"f{i}", "flat", [1.0], signal=s)[0] for i, s in enumerate(levels)]
    with pytest.warns(CalibrationWarning, match="no master dark"):
        data, header = master_flat(paths, bias)
    for colour in "RGB":
        assert colour_median(data, PATTERN, colour) == pytest.approx(1.0, abs=1e-6)
    # The lamp colour is gone, the vignetting is left.
    expected = camera.vignetting / np.median(camera.vignetting)
    assert np.max(np.abs(data - expected)) < 0.02
    assert header["IMAGETYP"] == "MASTER FLAT" and header["NCOMBINE"] == 6 and header["BAYERPAT"] == PATTERN


def test_master_dark_scales_exposures_to_common(tmp_path, camera):
    bias = master_bias(camera.write(tmp_path, "bias", [0.0] * 12))
    dark, header = master_dark(camera.write(tmp_path, "dark", [30.0] * 4 + [60.0] * 6), bias)
    assert header["EXPTIME"] == 60.0 and header["BIASSUB"] is True and header["NCOMBINE"] == 10
    np.testing.assert_allclose(dark[camera.hot], 30.0 * 60.0, atol=5.0)
    assert abs(np.median(dark) - 0.2 * 60.0) < 0.5


def test_master_dark_uses_black_level_without_bias(tmp_path, camera):
    camera.bias = np.full(SHAPE, 512.0)
    paths = camera.write(tmp_path, "dark", [30.0] * 3 + [10.0] * 2, extra={"BLACKLVL": 512.0})
    dark, header = master_dark(paths)
    assert header["BIASSUB"] is True and header["EXPTIME"] == 30.0
    np.testing.assert_allclose(dark[camera.hot], 900.0, atol=10.0)


def test_master_dark_without_bias_cannot_scale(tmp_path, camera):
    paths = camera.write(tmp_path, "dark", [30.0] * 3 + [60.0] * 5)
    with pytest.warns(CalibrationWarning) as caught:
        dark, header = master_dark(paths)
    messages = " ".join(str(w.message) for w in caught)
    assert "cannot be scaled" in messages and "left out" in messages
    assert header["BIASSUB"] is False and header["NCOMBINE"] == 5 and header["EXPTIME"] == 60.0
    assert abs(np.median(dark) - (1000.0 + 12.0)) < 1.0

    light = camera.expose(60.0) + 100.0
    with pytest.warns(CalibrationWarning) as caught:
        calibrated, history = calibrate_light(light, {"EXPTIME": 60.0}, None, (dark, header), None)
    # The dark takes the bias with it: only the missing flat is worth a warning.
    assert [str(w.message) for w in caught] == [
        "light (unnamed): no master flat: vignetting and dust not corrected"
    ]
    assert abs(np.median(calibrated) - 100.0) < 1.0
    with pytest.warns(CalibrationWarning) as caught:
        calibrate_light(camera.expose(120.0), {"EXPTIME": 120.0}, None, (dark, header), None)
    assert any("cannot be scaled" in str(w.message) for w in caught)


def test_flat_with_bias_and_scaled_dark(tmp_path, camera):
    # Like the real SBIG set: 10 s flats, only 20 s darks.
    camera.dark_rate *= 50.0
    bias = master_bias(camera.write(tmp_path, "bias", [0.0] * 8))
    dark = master_dark(camera.write(tmp_path, "dark", [20.0] * 8), bias)
    flat, header = master_flat(camera.write(tmp_path, "flat", [10.0] * 8, signal=3000.0), bias, dark)
    assert any("scaled to 10.0 s" in line for line in header["HISTORY"])
    expected = camera.vignetting / np.median(camera.vignetting)
    # Hot pixels at 1500 ADU/s would dominate the flat if the dark were not scaled right.
    assert np.max(np.abs(flat - expected)) < 0.03


def test_calibrate_light_warns_for_each_skipped_step(camera):
    light = camera.expose(10.0)
    with pytest.warns(CalibrationWarning) as caught:
        out, history = calibrate_light(light, {"EXPTIME": 10.0, "SRCFILE": "m42_001.cr2"})
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3 and all("m42_001.cr2" in m for m in messages)
    for step in ("bias", "dark", "flat"):
        assert any(f"no master {step}" in m for m in messages)
    np.testing.assert_allclose(out, light, rtol=1e-6)
    assert len(history) == 3 and light is not out

    with pytest.warns(CalibrationWarning) as caught:
        out, history = calibrate_light(light, {"EXPTIME": 10.0, "BLACKLVL": 1000.0})
    assert len(caught) == 2 and "bias: BLACKLVL subtracted" in history
    np.testing.assert_allclose(out, light - 1000.0, atol=1e-3)


def test_calibrate_light_per_cfa_black_levels():
    light = np.zeros((4, 6), np.float32) + colour_map((4, 6), PATTERN, {"R": 600.0, "G": 512.0, "B": 520.0})
    header = {"BLACKLVL": 536.0, "BLACK00": 600.0, "BLACK01": 512.0, "BLACK10": 512.0, "BLACK11": 520.0}
    with pytest.warns(CalibrationWarning):
        out, _ = calibrate_light(light, header)
    np.testing.assert_array_equal(out, 0.0)


def test_calibrated_header_drops_the_camera_levels():
    from astropy.io import fits

    header = fits.Header()
    levels = {"BLACKLVL": 536.0, "BLACK00": 600.0, "BLACK01": 512.0, "BLACK10": 512.0, "BLACK11": 520.0}
    for key, value in {**levels, "WHITELVL": 16383, "EXPTIME": 30.0, "BAYERPAT": PATTERN}.items():
        header[key] = value
    with pytest.warns(CalibrationWarning):
        _, history = calibrate_light(np.full((4, 6), 700.0, np.float32), header)
    assert any("BLACKLVL" in line for line in history)
    calibrated = calibrated_header(header)
    assert not set(levels) & set(calibrated) and "WHITELVL" not in calibrated
    assert calibrated["EXPTIME"] == 30.0 and calibrated["BAYERPAT"] == PATTERN
    # the light's own header is left as it was
    assert header["BLACKLVL"] == 536.0


def test_shape_mismatch_names_light_and_master(camera):
    bias = (np.zeros((10, 10), np.float32), {"IMAGETYP": "MASTER BIAS"})
    with pytest.raises(ValueError, match=r"light night/l1\.fits.*master bias"):
        calibrate_light(camera.expose(1.0), {"SRCFILE": "night/l1.fits"}, bias, None, None)


def test_rejected_placeholders_skipped(tmp_path, camera):
    paths = camera.write(tmp_path, "bias", [0.0] * 5)
    for path in paths[:2]:
        write_rejected(path, f"{path}: truncated FITS")
    data, header = master_bias(paths)
    assert header["NCOMBINE"] == 3 and header["NSKIPPED"] == 2
    assert abs(np.mean(data - camera.bias)) < 1.0
    for path in paths:
        write_rejected(path, "bad")
    with pytest.raises(ValueError, match="no usable bias"):
        master_bias(paths)


def test_frames_of_other_shape_named(tmp_path, camera):
    paths = camera.write(tmp_path, "bias", [0.0] * 3)
    write_image(paths[1], np.zeros((8, 8)), {"BAYERPAT": PATTERN})
    with pytest.raises(ValueError, match=str(paths[1])):
        master_bias(paths)


def test_sigma_clipping_and_memory_limit(tmp_path, camera):
    paths = camera.write(tmp_path, "bias", [0.0] * 9)
    data, header = read_image(paths[4])
    data[10, 20] = 60000.0
    write_image(paths[4], data, header)
    clipped, _ = master_bias(paths)
    tiled, _ = master_bias(paths, memory_mb=0.05)
    assert abs(clipped[10, 20] - camera.bias[10, 20]) < 5.0
    np.testing.assert_allclose(tiled, clipped, atol=1e-3)
    unclipped, _ = master_bias(paths, sigma_low=None, sigma_high=None)
    assert unclipped[10, 20] > camera.bias[10, 20] + 5000


def test_rgb_frames_combine_per_channel(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i in range(4):
        frame = np.stack([np.full((6, 8), 100.0 * (c + 1)) for c in range(3)], axis=2) + rng.normal(
            0, 1, (6, 8, 3)
        )
        paths.append(tmp_path / f"rgbflat{i}.fits")
        write_image(paths[-1], frame, {"EXPTIME": 1.0})
    with pytest.warns(CalibrationWarning):
        flat, _ = master_flat(paths)
    assert flat.shape == (6, 8, 3)
    np.testing.assert_allclose(np.median(flat, axis=(0, 1)), 1.0, atol=1e-6)


def test_hot_pixel_mask_finds_hot_pixels(camera):
    yy, xx = np.indices(SHAPE)
    dark = 1000.0 + 0.2 * xx + camera.dark_rate * 60 + camera.rng.normal(0, 2.0, SHAPE)
    mask = hot_pixel_mask(dark, PATTERN, sigma=5.0)
    assert mask.dtype == bool and mask.shape == SHAPE
    assert mask[camera.hot].all()
    assert mask.sum() <= len(set(zip(*camera.hot))) + 2


def gaussian_star(shape, y, x, flux, fwhm):
    """Pixel-integrated circular Gaussian star."""
    s = fwhm / (2 * np.sqrt(2 * np.log(2))) * np.sqrt(2)

    def profile(n, c):
        edges = np.arange(n + 1) - 0.5
        return np.diff(0.5 * erf((edges - c) / s))

    return flux * np.outer(profile(shape[0], y), profile(shape[1], x))


@pytest.mark.parametrize("pattern", [None, "RGGB", "GBRG"])
@pytest.mark.parametrize("fwhm", [2.5, 3.0])
def test_cosmetic_correction_removes_defects_keeps_stars(pattern, fwhm):
    rng = np.random.default_rng(7)
    shape = (128, 128)
    colour = (
        np.ones(shape) if pattern is None else colour_map(shape, pattern, {"R": 1.3, "G": 1.0, "B": 0.45})
    )
    background = 200.0 + 0.5 * np.indices(shape)[1]
    stars = np.zeros(shape)
    positions = [
        (y + rng.uniform(-0.5, 0.5), x + rng.uniform(-0.5, 0.5))
        for y in (20, 52, 84, 112)
        for x in (20, 60, 100)
    ]
    fluxes = rng.uniform(500, 40000, len(positions))
    for (y, x), flux in zip(positions, fluxes, strict=True):
        stars += gaussian_star(shape, y, x, flux, fwhm)
    clean = (background + stars) * colour + rng.normal(0, 5.0, shape)
    image = clean.copy()
    hot = [(36, 37), (36, 80), (70, 10), (100, 40), (5, 120)]
    cold = [(40, 100), (68, 70), (120, 8)]
    for y, x in hot:
        image[y, x] += 3000.0
    for y, x in cold:
        image[y, x] = 0.0

    corrected, n_hot, n_cold = cosmetic_correction(image, pattern)
    assert corrected.dtype == np.float32 and image[hot[0]] == clean[hot[0]] + 3000.0
    assert len(hot) <= n_hot <= len(hot) + 2 and len(cold) <= n_cold <= len(cold) + 2
    for y, x in hot + cold:
        assert abs(corrected[y, x] - clean[y, x]) < 40.0
    yy, xx = np.indices(shape)
    for y, x in positions:
        aperture = (yy - y) ** 2 + (xx - x) ** 2 <= 6.0**2
        before = np.sum((clean - background * colour)[aperture])
        after = np.sum((corrected - background * colour)[aperture])
        assert after == pytest.approx(before, rel=0.01)


def test_cosmetic_correction_applies_hot_mask():
    rng = np.random.default_rng(8)
    image = 100.0 + rng.normal(0, 3.0, (32, 32))
    image[10, 10] += 12.0  # warm: below the detection threshold, but in the mask
    mask = np.zeros((32, 32), bool)
    mask[10, 10] = True
    unmasked, n_hot, _ = cosmetic_correction(image, "BGGR")
    masked, n_hot_masked, _ = cosmetic_correction(image, "BGGR", mask)
    assert unmasked[10, 10] == pytest.approx(image[10, 10])
    assert abs(masked[10, 10] - 100.0) < 6.0 and n_hot_masked == n_hot + 1
    with pytest.raises(ValueError, match="mask"):
        cosmetic_correction(image, "BGGR", np.zeros((4, 4), bool))


@pytest.fixture(scope="module")
def sbig_masters(tmp_path_factory):
    if not SBIG.is_dir():
        pytest.skip(f"real SBIG frames not found at {SBIG}")
    out = tmp_path_factory.mktemp("sbig")
    ingested = {}
    for kind in ("bias", "dark", "flat"):
        ingested[kind] = []
        for i, src in enumerate(sorted((SBIG / kind).glob("*.FIT"))):
            ingest_frame(src, kind, out / f"{kind}{i:02d}.fits")
            ingested[kind].append(out / f"{kind}{i:02d}.fits")
    bias = master_bias(ingested["bias"])
    dark = master_dark(ingested["dark"], bias)
    flat = master_flat(ingested["flat"], bias, dark)
    return bias, dark, flat


@needs_sbig
def test_real_sbig_master_flat(sbig_masters):
    bias, dark, (flat, header) = sbig_masters
    assert dark[1]["EXPTIME"] == 20.0 and dark[1]["BIASSUB"] is True
    assert header["NCOMBINE"] == 10 and header["IMAGETYP"] == "MASTER FLAT"
    assert np.median(flat) == pytest.approx(1.0, abs=1e-6)
    assert any("20.0 s scaled to 10.0 s" in line for line in header["HISTORY"])
    # Dome flats of a CCD vary by a few percent, not by factors.
    assert 0.9 < np.percentile(flat, 1) and np.percentile(flat, 99) < 1.1


@needs_sbig
def test_real_sbig_light_cosmetics_keep_stars(tmp_path, sbig_masters):
    import sep

    bias, dark, flat = sbig_masters
    src = sorted((SBIG / "light").glob("*.FIT"))[0]
    ingest_frame(src, "light", tmp_path / "light.fits")
    light, header = read_image(tmp_path / "light.fits")
    calibrated, history = calibrate_light(light, header, bias, dark, flat)
    assert len(history) == 3
    mask = hot_pixel_mask(dark[0], sigma=5.0)
    assert mask.sum() > 100
    corrected, n_hot, n_cold = cosmetic_correction(calibrated, hot_mask=mask)
    assert n_hot >= 100
    image = calibrated.astype(np.float64)
    background = sep.Background(image)
    sources = sep.extract(image - background.back(), 10, err=background.globalrms, minarea=5)
    fwhm = 2 * np.sqrt(np.log(2) * (sources["a"] ** 2 + sources["b"] ** 2))
    stars = sources[(fwhm > 2.4) & (sources["peak"] < 30000)]
    assert len(stars) >= 10
    before, _, _ = sep.sum_circle(image - background.back(), stars["x"], stars["y"], 6.0)
    after, _, _ = sep.sum_circle(
        corrected.astype(np.float64) - background.back(), stars["x"], stars["y"], 6.0
    )
    np.testing.assert_allclose(after, before, rtol=0.01)


def test_bayer_pattern_mismatch_named(camera):
    flat = (np.ones(SHAPE, np.float32), {"BAYERPAT": "BGGR"})
    with pytest.raises(ValueError, match=r"light a\.cr2 has Bayer pattern RGGB but the master flat has BGGR"):
        calibrate_light(
            camera.expose(1.0), {"SRCFILE": "a.cr2", "BAYERPAT": "RGGB", "BLACKLVL": 0}, None, None, flat
        )
