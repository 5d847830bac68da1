import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
import rawpy
import tifffile

from astroflow.io.fits import read_image
from astroflow.simulation.night import cfa_index, colour_ratios, render_stars, simulate_night, write_dng

SMALL = dict(
    seed=7,
    width=256,
    height=192,
    n_lights=4,
    n_darks=2,
    n_flats=2,
    n_bias=2,
    satellite_frame=2,
    cloudy_frame=3,
    drift_px=20.0,
    star_density=0.004,
)


def tiny(**overrides):
    settings = dict(
        seed=3,
        width=64,
        height=48,
        n_lights=2,
        n_darks=1,
        n_flats=1,
        n_bias=1,
        satellite_frame=2,
        cloudy_frame=None,
        n_dust=1,
    )
    settings.update(overrides)
    return settings


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("night")
    meta = simulate_night(outdir, **SMALL)
    return outdir, meta


def read_raw(path):
    with rawpy.imread(str(path)) as raw:
        return raw.raw_image_visible.astype(np.float64)


def truth(outdir, name):
    return read_image(outdir / "truth" / f"{name}.fits")[0].astype(np.float64)


def calibrated(outdir, frame, exposure_s):
    bias, dark_rate, flat = (truth(outdir, n) for n in ("bias", "dark_rate", "flat"))
    raw = read_raw(outdir / "lights" / f"{frame}.dng")
    return (raw - bias - dark_rate * exposure_s) / flat


def to_frame(row, x, y):
    return (row.m00 * x + row.m01 * y + row.m02, row.m10 * x + row.m11 * y + row.m12)


def measure_star(image, x, y, flux_rgb, half=12, window=0.0):
    """Centroid (x, y) and total flux relative to ``flux_rgb`` of one star in a CFA mosaic."""
    xr, yr = int(round(x)), int(round(y))
    ys, xs = np.mgrid[yr - half : yr + half + 1, xr - half : xr + half + 1]
    stamp = image[ys, xs]
    colours = cfa_index(image.shape)[ys, xs]
    border = np.zeros_like(stamp, dtype=bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    unit = np.empty_like(stamp)
    for c in range(3):
        # The sky gradient is a plane per colour; a constant would bias the centroid.
        sel, fit = colours == c, (colours == c) & border
        design = np.stack([np.ones(fit.sum()), xs[fit], ys[fit]], axis=1)
        coef = np.linalg.lstsq(design, stamp[fit], rcond=None)[0]
        plane = coef[0] + coef[1] * xs[sel] + coef[2] * ys[sel]
        unit[sel] = (stamp[sel] - plane) / flux_rgb[c]
    total = unit.sum()
    cx, cy = (unit * xs).sum() / total, (unit * ys).sum() / total
    for _ in range(30 if window else 0):
        # Gaussian-windowed centroid (SExtractor XWIN-like): converges to the centre of a
        # symmetric profile while ignoring the noisy far pixels.
        weight = unit * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * window**2))
        cx, cy = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
    return cx, cy, total


def star_targets(outdir, meta, row, shape, lo=5e3, hi=8e4, half=12):
    """Bright, unsaturated stars well inside a light, away from hot pixels and brighter stars.

    Yields (x, y, flux_rgb, x_ref, y_ref, others): the frame position predicted by the
    transform, the reference position, and a model of all the other stars of that light
    (rendered at their transformed positions) to subtract before measuring.
    """
    stars = pd.read_csv(outdir / "truth" / "stars.csv")
    flux = stars[["flux_r", "flux_g", "flux_b"]].to_numpy() * row.transparency
    fx, fy = to_frame(row, stars.x.to_numpy(), stars.y.to_numpy())
    beta = meta["settings"]["moffat_beta"]

    def model(sel):
        return render_stars(
            shape, fx[sel], fy[sel], flux[sel], fwhm_px=row.fwhm_px, moffat_beta=beta
        ).astype(np.float64)

    everything = model(slice(None))
    dark_rate = truth(outdir, "dark_rate")
    for i in np.flatnonzero((stars.flux_g > lo) & (stars.flux_g < hi)):
        if not (half + 2 < fx[i] < shape[1] - half - 3 and half + 2 < fy[i] < shape[0] - half - 3):
            continue
        if ((np.hypot(fx - fx[i], fy - fy[i]) < 2 * half) & (stars.flux_g > stars.flux_g[i])).any():
            continue
        xr, yr = int(round(fx[i])), int(round(fy[i]))
        if dark_rate[yr - half : yr + half + 1, xr - half : xr + half + 1].max() > 5.0:
            continue
        yield fx[i], fy[i], flux[i], stars.x[i], stars.y[i], everything - model([i])


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR"])
def test_dng_round_trip_is_lossless_with_metadata(tmp_path, pattern):
    rng = np.random.default_rng(1)
    mosaic = rng.integers(0, 16384, (48, 64)).astype(np.uint16)
    mosaic[0, 0], mosaic[-1, -1] = 0, 16383
    when = dt.datetime(2024, 3, 9, 22, 15, 30)
    path = write_dng(
        tmp_path / "frame.dng",
        mosaic,
        exposure_s=120.0,
        timestamp=when,
        iso=1600,
        black_level_adu=1024,
        white_level_adu=16383,
        pattern=pattern,
        make="TestMake",
        model="TestModel",
    )
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_array_equal(raw.raw_image_visible, mosaic)
        assert raw.black_level_per_channel == [1024] * 4
        assert raw.white_level == 16383
        desc = raw.color_desc.decode()
        assert "".join(desc[i] for i in raw.raw_pattern.ravel()) == pattern
        assert raw.other.iso_speed == 1600
        assert raw.other.shutter_speed == pytest.approx(120.0)
        assert raw.other.timestamp == when
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        assert tags["Make"].value == "TestMake" and tags["Model"].value == "TestModel"
        assert tags["BitsPerSample"].value == 16


@pytest.mark.parametrize(
    "mosaic, message",
    [
        (np.zeros((48, 64), dtype=np.float32), "uint16"),
        (np.zeros((47, 64), dtype=np.uint16), "even"),
        (np.full((48, 64), 16384, dtype=np.uint16), "white level"),
    ],
)
def test_write_dng_rejects_bad_mosaic(tmp_path, mosaic, message):
    path = tmp_path / "bad.dng"
    with pytest.raises(ValueError, match=message) as err:
        write_dng(path, mosaic, exposure_s=1.0, timestamp=dt.datetime(2024, 1, 1))
    assert "bad.dng" in str(err.value)
    assert not path.exists()


def test_night_layout_and_camera_metadata(night):
    outdir, meta = night
    for kind, stem, count in (
        ("lights", "light", 4),
        ("darks", "dark", 2),
        ("flats", "flat", 2),
        ("bias", "bias", 2),
    ):
        names = sorted(p.name for p in (outdir / kind).iterdir())
        assert names == [f"{stem}_{i:03d}.dng" for i in range(1, count + 1)]
    assert json.loads((outdir / "truth" / "meta.json").read_text()) == meta
    camera = meta["camera"]
    with rawpy.imread(str(outdir / "lights" / "light_002.dng")) as raw:
        assert raw.raw_image_visible.shape == (192, 256)
        assert raw.black_level_per_channel == [camera["black_level_adu"]] * 4
        assert raw.white_level == camera["white_level_adu"] == 16383
        assert "".join(raw.color_desc.decode()[i] for i in raw.raw_pattern.ravel()) == "RGGB"
        assert raw.other.shutter_speed == pytest.approx(meta["settings"]["light_exposure_s"])
        assert raw.other.iso_speed == camera["iso"]
    transforms = pd.read_csv(outdir / "truth" / "transforms.csv")
    assert list(transforms.frame) == [f"light_{i:03d}" for i in range(1, 5)]
    assert transforms.fwhm_px.between(2.5, 3.5).all() and transforms.fwhm_px.nunique() == 4
    for name in transforms.frame:
        sky, header = read_image(outdir / "truth" / f"sky_{name}.fits")
        assert sky.shape == (192, 256) and sky.dtype == np.float32 and header["FRAME"] == name


def test_same_seed_same_night_other_seed_differs(tmp_path):
    runs = {}
    for label, seed in (("a", 11), ("b", 11), ("c", 12)):
        simulate_night(tmp_path / label, **tiny(seed=seed))
        runs[label] = {
            p.relative_to(tmp_path / label): p.read_bytes()
            for p in sorted((tmp_path / label).rglob("*"))
            if p.is_file()
        }
    assert runs["a"] == runs["b"]
    assert runs["a"].keys() == runs["c"].keys()
    for name in runs["a"]:
        if name.suffix in (".dng", ".fits") or name.name == "stars.csv":
            assert runs["a"][name] != runs["c"][name], name


def test_rerun_removes_stale_frames_only(tmp_path):
    simulate_night(tmp_path, **tiny(n_lights=3))
    (tmp_path / "lights" / "notes.txt").write_text("mine")
    simulate_night(tmp_path, **tiny(n_lights=2))
    assert sorted(p.name for p in (tmp_path / "lights").iterdir()) == [
        "light_001.dng",
        "light_002.dng",
        "notes.txt",
    ]
    assert not (tmp_path / "truth" / "sky_light_003.fits").exists()


@pytest.mark.parametrize(
    "bad",
    [
        dict(width=255),
        dict(n_lights=0),
        dict(satellite_frame=3),
        dict(light_exposure_s=0.0),
        dict(black_level_adu=20000),
    ],
)
def test_invalid_settings_raise(tmp_path, bad):
    with pytest.raises(ValueError, match="simulate_night"):
        simulate_night(tmp_path, **tiny(**bad))


def test_dark_signal_scales_with_exposure(tmp_path):
    signal = {}
    for exposure in (30.0, 120.0):
        outdir = tmp_path / f"d{exposure:g}"
        simulate_night(
            outdir,
            **tiny(
                width=128,
                height=96,
                n_lights=1,
                n_darks=3,
                n_flats=0,
                n_bias=0,
                satellite_frame=None,
                dark_exposure_s=exposure,
                hot_pixel_fraction=0.01,
            ),
        )
        bias, rate = truth(outdir, "bias"), truth(outdir, "dark_rate")
        darks = np.mean([read_raw(p) for p in sorted((outdir / "darks").glob("*.dng"))], axis=0)
        hot = (rate > 2.0) & (rate * 120.0 + bias < 15000)
        assert hot.sum() > 50
        signal[exposure] = (darks - bias)[hot].sum()
        np.testing.assert_allclose(signal[exposure], (rate * exposure)[hot].sum(), rtol=0.02)
    assert signal[120.0] / signal[30.0] == pytest.approx(4.0, rel=0.03)


def test_true_flat_normalised_vignetted_and_dusty(night):
    outdir, meta = night
    flat = truth(outdir, "flat")
    colours = cfa_index(flat.shape)
    for c in range(3):
        assert np.median(flat[colours == c]) == pytest.approx(1.0, abs=1e-6)
    h, w = flat.shape
    corners = [flat[:8, :8], flat[:8, -8:], flat[-8:, :8], flat[-8:, -8:]]
    assert (
        max(c.mean() for c in corners)
        < 0.9 * flat[h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8].mean()
    )
    yy, xx = np.mgrid[0:h, 0:w]
    dust = pd.read_csv(outdir / "truth" / "dust.csv")
    assert len(dust) == meta["settings"]["n_dust"]
    for mote in dust.itertuples():
        r = np.hypot(xx - mote.x, yy - mote.y) / mote.radius_px
        rim, outside = flat[(r > 0.6) & (r < 0.95)].mean(), flat[(r > 1.5) & (r < 2.2)].mean()
        assert rim < outside * (1 - 0.5 * mote.depth)
    flats = np.mean([read_raw(p) for p in sorted((outdir / "flats").glob("*.dng"))], axis=0)
    green = (flats - truth(outdir, "bias"))[colours == 1]
    assert np.median(green) == pytest.approx(0.4 * (16383 - 2048), rel=0.03)
    ratio = (flats - truth(outdir, "bias")) / (
        np.asarray(meta["flat_level_adu_rgb"])[colours] * flat
    )
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02) and np.std(ratio) < 0.02


def test_truth_sky_matches_calibrated_lights(night):
    outdir, meta = night
    camera, settings = meta["camera"], meta["settings"]
    gain, exposure = camera["gain_e_per_adu"], settings["light_exposure_s"]
    flat, rate = truth(outdir, "flat"), truth(outdir, "dark_rate")
    colours = cfa_index(flat.shape)
    for name in meta["frames"]["lights"]:
        sky = truth(outdir, f"sky_{name}")
        raw = read_raw(outdir / "lights" / f"{name}.dng")
        signal = flat * sky + rate * exposure
        variance = signal / gain + camera["read_noise_adu"] ** 2 + 1 / 12
        z = (calibrated(outdir, name, exposure) - sky) * flat / np.sqrt(variance)
        ok = raw < camera["white_level_adu"]
        assert ok.mean() > 0.99
        assert abs(z[ok].mean()) < 0.03 and z[ok].std() == pytest.approx(1.0, abs=0.03)
        for c in range(3):
            assert abs(z[ok & (colours == c)].mean()) < 0.05


def test_star_counts_colours_and_saturation(night):
    outdir, meta = night
    s = meta["settings"]
    stars = pd.read_csv(outdir / "truth" / "stars.csv")
    np.testing.assert_allclose(
        stars.flux_g, s["light_exposure_s"] * 10 ** (-0.4 * (stars.magnitude - s["zero_point_mag"]))
    )
    m = np.linspace(s["mag_bright"] + 1.5, s["mag_faint"] - 0.5, 12)
    counts = np.array([(stars.magnitude < v).sum() for v in m])
    slope = np.polyfit(m, np.log10(counts), 1)[0]
    assert slope == pytest.approx(s["count_slope"], abs=0.04)
    hot, cool = colour_ratios([10000.0, 3500.0])
    assert hot[2] / hot[0] > 1.5 * cool[2] / cool[0]
    order = np.argsort(stars.temperature_k.to_numpy())
    assert np.all(np.diff((stars.flux_b / stars.flux_r).to_numpy()[order]) >= 0)
    # A few stars saturate, many sit near the noise (green sky noise ~ 31 ADU per pixel).
    saturated = (stars.flux_g * 0.07 > 16383 - 2048).sum()
    assert 1 <= saturated <= 0.05 * len(stars)
    assert (stars.flux_g < 1000).mean() > 0.4
    row = pd.read_csv(outdir / "truth" / "transforms.csv").iloc[0]
    raw = read_raw(outdir / "lights" / "light_001.dng")
    fx, fy = to_frame(row, stars.x, stars.y)
    brightest = stars.flux_g.where((fx > 3) & (fx < 252) & (fy > 3) & (fy < 188)).idxmax()
    assert raw[int(round(fy[brightest])), int(round(fx[brightest]))] == 16383


def test_transforms_move_stars_to_where_they_are_rendered(night):
    outdir, meta = night
    transforms = pd.read_csv(outdir / "truth" / "transforms.csv")
    np.testing.assert_allclose(
        transforms.iloc[0][["m00", "m01", "m02", "m10", "m11", "m12"]].to_numpy(float),
        [1, 0, 0, 0, 1, 0],
    )
    centre = np.array([255 / 2, 191 / 2])
    for row in transforms.itertuples():
        moved = np.array(to_frame(row, *centre))
        np.testing.assert_allclose(moved - centre, [row.dx, row.dy], atol=1e-9)
        assert np.degrees(np.arctan2(row.m10, row.m00)) == pytest.approx(row.rotation_deg)
    row = transforms.iloc[3]
    assert abs(row.rotation_deg) > 0.2
    exposure = meta["settings"]["light_exposure_s"]
    sky = truth(outdir, "sky_light_004")
    light = calibrated(outdir, "light_004", exposure)
    targets = list(star_targets(outdir, meta, row, sky.shape))
    assert len(targets) >= 3
    in_light = 0
    for x, y, flux, x_ref, y_ref, others in targets:
        assert np.hypot(x - x_ref, y - y_ref) > 5
        cx, cy, total = measure_star(sky - others, x, y, flux)
        assert np.hypot(cx - x, cy - y) < 0.02 and total == pytest.approx(1.0, abs=0.01)
        if flux[1] > 1.2e4:
            # Bright enough that shot and read noise move the centroid by < 0.05 px.
            cx, cy, _ = measure_star(light - others, x, y, flux, window=1.5)
            assert np.hypot(cx - x, cy - y) < 0.1
            in_light += 1
    assert in_light >= 2


def test_satellite_and_cloudy_frames_are_what_they_claim(night):
    outdir, meta = night
    s = meta["settings"]
    transforms = pd.read_csv(outdir / "truth" / "transforms.csv")
    assert list(transforms.satellite) == [False, True, False, False]
    assert list(transforms.cloudy) == [False, False, True, False]
    ends = transforms[["satellite_x0", "satellite_y0", "satellite_x1", "satellite_y1"]].to_numpy()
    assert np.isnan(ends[[0, 2, 3]]).all()
    x0, y0, x1, y1 = ends[1]
    h, w = 192, 256
    for x, y in ((x0, y0), (x1, y1)):
        assert (
            np.isclose(x, -0.5)
            or np.isclose(x, w - 0.5)
            or np.isclose(y, -0.5)
            or np.isclose(y, h - 0.5)
        )
    assert np.hypot(x1 - x0, y1 - y0) > 0.5 * h

    t = np.linspace(0.1, 0.9, 60)
    nx, ny = -(y1 - y0), x1 - x0
    nx, ny = 8 * nx / np.hypot(nx, ny), 8 * ny / np.hypot(nx, ny)
    px, py = x0 + t * (x1 - x0), y0 + t * (y1 - y0)

    def excess(image):
        def at(x, y):
            return image[
                np.round(y).astype(int).clip(0, h - 1), np.round(x).astype(int).clip(0, w - 1)
            ]

        return np.median(at(px, py) - 0.5 * (at(px + nx, py + ny) + at(px - nx, py - ny)))

    exposure = s["light_exposure_s"]
    assert excess(truth(outdir, "sky_light_002")) > 0.3 * s["satellite_adu"]
    assert excess(calibrated(outdir, "light_002", exposure)) > 0.3 * s["satellite_adu"]
    assert abs(excess(truth(outdir, "sky_light_001"))) < 20

    clear, cloudy = transforms.iloc[0], transforms.iloc[2]
    assert cloudy.transparency == s["cloudy_transparency"] and clear.transparency == 1.0
    sky_clear, sky_cloudy = truth(outdir, "sky_light_001"), truth(outdir, "sky_light_003")
    assert np.median(sky_cloudy) > 1.5 * np.median(sky_clear)
    for row, image, expected in (
        (clear, sky_clear, 1.0),
        (cloudy, sky_cloudy, s["cloudy_transparency"]),
    ):
        totals = [
            measure_star(image - others, x, y, flux / row.transparency)[2]
            for x, y, flux, _, _, others in star_targets(outdir, meta, row, image.shape, lo=2e4)
        ]
        assert len(totals) >= 2
        assert np.median(totals) == pytest.approx(expected, rel=0.05)


def test_render_stars_flux_centroid_fwhm_and_colour_layouts():
    x, y = np.array([30.3, 10.0]), np.array([20.7, 40.0])
    mono = render_stars((64, 64), x[:1], y[:1], [1e4], fwhm_px=3.0, moffat_beta=3.0)
    assert mono.dtype == np.float32 and mono.shape == (64, 64)
    assert mono.sum() == pytest.approx(1e4, rel=2e-3)
    yy, xx = np.mgrid[0:64, 0:64]
    assert (mono * xx).sum() / mono.sum() == pytest.approx(30.3, abs=0.01)
    assert (mono * yy).sum() / mono.sum() == pytest.approx(20.7, abs=0.01)
    for beta in (2.5, 4.765):
        row = render_stars((64, 64), [32.0], [32.0], [1e4], fwhm_px=8.0, moffat_beta=beta)[32]
        half = row.max() / 2
        right = 32 + np.interp(half, row[32:45][::-1], np.arange(13)[::-1])
        assert 2 * (right - 32) == pytest.approx(8.0, abs=0.1)
    flux = np.array([[1000.0, 2000.0, 3000.0], [500.0, 500.0, 500.0]])
    rgb = render_stars((64, 64), x, y, flux, pattern=None)
    assert rgb.shape == (64, 64, 3)
    np.testing.assert_allclose(rgb.sum(axis=(0, 1)), flux.sum(axis=0), rtol=3e-3)
    mosaic = render_stars((64, 64), x[:1], y[:1], flux[:1])
    colours = cfa_index((64, 64))
    np.testing.assert_allclose(
        [mosaic[colours == c].sum() for c in range(3)], flux[0] * [0.25, 0.5, 0.25], rtol=0.03
    )
    with pytest.raises(ValueError):
        render_stars((64, 64), x, y, [1.0])
