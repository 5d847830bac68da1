"""Synthetic star-removal training data: pairs, physics checks, shards."""

import functools
import json
import logging
import math
import time

import numpy as np
import pytest
import sep
from conftest import SHARED_DATA, needs_shared_data

from astroflow.simulation.realstars import build_stamp_library
from astroflow.simulation.starstamps import (
    StampLibrary,
    extract_stamps,
    paste_stamp,
)
from astroflow.simulation.synthstars import (
    BACKGROUND_KINDS,
    EFFECTS_OFF,
    ENCODINGS,
    PHOTOS,
    invert_display,
    load_shard,
    make_shard,
    render_sample,
)
from astroflow.stretch import MTFStretch

SPARSE = {
    "n_stars": 60,
    "fwhm": 3.0,
    "halo": False,
    "wide_halo": False,
    "saturated_cores": False,
    "spikes": False,
    "coma": False,
    "n_galaxies": 3,
    "n_knots": 0,
    "snr_min": 2.0,
    "flux_slope": 0.7,
}


@functools.cache
def _sample(seed, kind=None, size=256, channels=3, **overrides):
    return render_sample(
        np.random.default_rng([11, seed]),
        size,
        channels=channels,
        kind=kind,
        overrides=overrides or None,
    )


def sample(seed, kind=None, size=256, channels=3, overrides=None):
    return _sample(seed, kind, size, channels, **(overrides or {}))


def noise_sigma(s):
    """Per-pixel background noise sigma (ADU) from the camera parameters."""
    g, rn = s.params["gain"], s.params["read_noise_e"]
    return np.sqrt(np.clip(s.linear_starless, 0.0, None) / g + (rn / g) ** 2)


def inside(s, margin=0):
    size = s.starry.shape[0]
    x, y = s.stars["x"], s.stars["y"]
    return (x >= margin) & (x <= size - 1 - margin) & (y >= margin) & (y <= size - 1 - margin)


# ------------------------------------------------------------------------------------------
# shards


def test_make_shard_deterministic_and_roundtrip(tmp_path):
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "sub" / "c.npz"
    make_shard(a, 3, 7, size=64)
    make_shard(b, 3, 7, size=64)
    make_shard(c, 3, 8, size=64)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.npz", "b.npz", "c.npz", "sub"]
    with np.load(a) as za, np.load(b) as zb, np.load(c) as zc:
        assert set(za.files) == {"starry", "starless", "footprint", "star_flux", "meta"}
        for key in ("starry", "starless", "footprint", "star_flux"):
            assert za[key].dtype == zb[key].dtype
            assert za[key].tobytes() == zb[key].tobytes(), key
        assert not np.array_equal(za["starry"], zc["starry"])
        assert not np.array_equal(za["star_flux"], zc["star_flux"])
        assert za["starry"].dtype == np.uint16 and za["starry"].shape == (3, 3, 64, 64)
        assert za["starless"].dtype == np.uint16 and za["starless"].shape == (3, 3, 64, 64)
        assert za["footprint"].dtype == np.uint8 and za["footprint"].shape == (3, 64, 64)
        assert za["star_flux"].dtype == np.float64 and za["star_flux"].shape == (3,)
        raw_starry = za["starry"]
        meta = json.loads(str(za["meta"]))
    assert meta["seed"] == 7 and meta["size"] == 64 and meta["version"] >= 1
    assert len(meta["stretch"]) == 3 and len(meta["kind"]) == 3

    loaded = load_shard(a)
    assert loaded["starry"].dtype == np.float32 and loaded["starless"].dtype == np.float32
    assert loaded["footprint"].dtype == bool and loaded["footprint"].shape == (3, 64, 64)
    assert loaded["starry"].min() >= 0.0 and loaded["starry"].max() <= 1.0
    np.testing.assert_allclose(loaded["starry"] * 65535.0, raw_starry, atol=1e-2)
    assert loaded["meta"] == meta

    # sample i of the shard is render_sample(default_rng([seed, i]))
    s1 = render_sample(np.random.default_rng([7, 1]), 64)
    np.testing.assert_array_equal(raw_starry[1], np.rint(np.moveaxis(s1.starry, -1, 0) * 65535))
    np.testing.assert_array_equal(loaded["footprint"][1], s1.footprint)
    assert loaded["star_flux"][1] == s1.star_flux_linear
    assert loaded["meta"]["stretch"][1] == s1.stretch


def test_shard_sequence_seed_and_mono(tmp_path):
    path = tmp_path / "mono.npz"
    make_shard(path, 2, [5, 123, 0], size=48, channels=1)
    data = load_shard(path)
    assert data["starry"].shape == (2, 1, 48, 48) and data["starless"].shape == (2, 1, 48, 48)
    assert data["meta"]["seed"] == [5, 123, 0] and data["meta"]["channels"] == 1
    assert data["meta"]["mono"] == [True, True]
    s0 = render_sample(np.random.default_rng([5, 123, 0, 0]), 48, channels=1)
    np.testing.assert_allclose(data["starless"][0, 0], s0.starless[..., 0], atol=1e-5)


def test_rgb_shard_mono_fraction_renders_grey_samples(tmp_path):
    """mono_fraction: those samples are the mono render in three equal channels, the others
    the RGB render they would be without it; the choice is recorded and deterministic."""
    make_shard(tmp_path / "rgb.npz", 12, 4, size=48)
    make_shard(tmp_path / "mix.npz", 12, 4, size=48, mono_fraction=0.5)
    make_shard(tmp_path / "mix2.npz", 12, 4, size=48, mono_fraction=0.5)
    rgb, mix = load_shard(tmp_path / "rgb.npz"), load_shard(tmp_path / "mix.npz")
    assert rgb["meta"]["mono"] == [False] * 12 and rgb["meta"]["mono_fraction"] == 0.0
    mono = np.array(mix["meta"]["mono"])
    assert 0 < mono.sum() < 12 and mix["meta"]["mono"] == load_shard(tmp_path / "mix2.npz")["meta"]["mono"]
    assert mix["starry"].shape == (12, 3, 48, 48)
    for i in range(12):
        spread = np.ptp(mix["starry"][i], axis=0).max()
        if mono[i]:
            assert spread == 0.0
            grey = render_sample(np.random.default_rng([4, i]), 48, channels=1)
            np.testing.assert_allclose(mix["starless"][i, 1], grey.starless[..., 0], atol=1e-5)
        else:
            assert spread > 0.0
            np.testing.assert_array_equal(mix["starry"][i], rgb["starry"][i])
    with pytest.raises(ValueError, match="mono_fraction"):
        make_shard(tmp_path / "bad.npz", 1, 4, size=48, mono_fraction=1.5)


def test_mono_sample():
    s = sample(1, "nebula", channels=1, overrides=SPARSE)
    for image in (s.starry, s.starless, s.linear_starry, s.linear_starless):
        assert image.shape == (256, 256, 1) and image.dtype == np.float32
    assert s.footprint.shape == (256, 256) and s.stars["flux"].shape[1] == 1
    assert s.star_flux_linear > 0 and s.footprint.any()


def test_shapes_dtypes_ranges_and_determinism():
    for kind in BACKGROUND_KINDS:
        s = sample(2, kind, size=96)
        assert s.kind == kind
        for image in (s.starry, s.starless):
            assert image.shape == (96, 96, 3) and image.dtype == np.float32
            assert image.min() >= 0.0 and image.max() <= 1.0
        assert s.linear_starry.dtype == np.float32 and s.footprint.dtype == bool
        assert isinstance(s.star_flux_linear, float)
        json.dumps(s.stretch), json.dumps(s.params)
        again = render_sample(np.random.default_rng([11, 2]), 96, kind=kind)
        np.testing.assert_array_equal(again.starry, s.starry)
        np.testing.assert_array_equal(again.linear_starless, s.linear_starless)
    assert sample(2, "photo", size=96).params["photo"] in PHOTOS
    assert "hubble_deep_field" not in PHOTOS


def test_invalid_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        render_sample(rng, 64, kind="galaxy")
    with pytest.raises(ValueError):
        render_sample(rng, 64, channels=2)
    with pytest.raises(ValueError):
        render_sample(rng, 64, overrides={"n_starz": 3})
    with pytest.raises(ValueError):
        make_shard("/tmp/never.npz", 0, 1)


# ------------------------------------------------------------------------------------------
# physics


def _detections(image):
    data = np.ascontiguousarray(image, dtype=np.float64)
    bkg = sep.Background(data, bw=32, bh=32)
    objects = sep.extract(data - bkg.back(), 5.0, err=bkg.globalrms, minarea=4)
    return objects["x"], objects["y"]


def _matched(x, y, dx, dy, radius=2.5):
    if len(dx) == 0:
        return np.zeros(len(x), dtype=bool)
    d2 = (x[:, None] - dx[None, :]) ** 2 + (y[:, None] - dy[None, :]) ** 2
    return d2.min(axis=1) < radius**2


def test_starless_has_no_stars():
    s = sample(3, "dark", overrides=SPARSE)
    bright = inside(s, 8) & (s.stars["peak_snr"] > 15)
    assert bright.sum() >= 8
    x, y = s.stars["x"][bright], s.stars["y"][bright]
    starry_x, starry_y = _detections(s.linear_starry[..., 1])
    starless_x, starless_y = _detections(s.linear_starless[..., 1])
    print(f"detections: starry {len(starry_x)}, starless {len(starless_x)}; bright {bright.sum()}")
    assert _matched(x, y, starry_x, starry_y).mean() >= 0.9
    assert _matched(x, y, starless_x, starless_y).mean() <= 0.05
    assert len(starry_x) >= len(starless_x) + 0.8 * bright.sum()
    # the star residual is compact: concentrated at the catalogue positions
    resid = s.linear_starry[..., 1] - s.linear_starless[..., 1]
    peaks = resid[np.rint(y).astype(int), np.rint(x).astype(int)]
    assert np.all(peaks > 5 * noise_sigma(s)[np.rint(y).astype(int), np.rint(x).astype(int), 1])


def test_footprint_covers_stars_and_is_small_for_sparse_fields():
    for seed in (3, 4):
        s = sample(seed, "dark", overrides=SPARSE)
        visible = inside(s) & (s.stars["peak_snr"] > 3)
        assert visible.sum() >= 10
        ix = np.rint(s.stars["x"][visible]).astype(int)
        iy = np.rint(s.stars["y"][visible]).astype(int)
        assert s.footprint[iy, ix].all()
        print(f"sparse footprint fraction: {s.footprint.mean():.4f}")
        assert 0.001 < s.footprint.mean() < 0.06
    crowded = sample(5, "nebula", overrides={"n_stars": 1500, "fwhm": 2.0})
    assert crowded.footprint.mean() > 3 * s.footprint.mean()


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_starless_equals_starry_outside_footprint(seed):
    s = sample(seed)
    sigma = noise_sigma(s)
    z = (s.linear_starry - s.linear_starless) / sigma
    outside = ~s.footprint
    assert outside.mean() > 0.05
    print(
        f"{s.kind}: z outside {z[outside].mean():.3f} +- {z[outside].std():.3f}, inside "
        f"{z[~outside].mean():.2f}"
    )
    # outside: only star light below 0.5 sigma and its shot noise; the same background noise
    # realisation in both (an independent one would give a scatter of 1.41)
    assert 0.0 <= z[outside].mean() < 0.5
    assert z[outside].std() < 0.3
    assert (np.abs(z[outside]) > 3).mean() < 1e-3
    # and inside the footprint the stars are there
    assert z[s.footprint].mean() > 0.5


SATURATING = {**SPARSE, "n_stars": 30, "snr_min": 3.0, "dynamic_range": 1e6, "flux_slope": 0.5}


def test_star_flux_is_the_added_light():
    """star_flux = sum(starry - starless) up to the stars' shot noise (and, in saturated
    pixels, the background noise that saturation replaced)."""
    cases = [sample(seed, size=128) for seed in range(9, 15)]
    cases.append(sample(18, "dark", overrides={**SATURATING, "saturation_snr": 300.0}))
    zs, n_saturated = [], 0
    for s in cases:
        p = s.params
        diff = (s.linear_starry.astype(np.float64) - s.linear_starless).sum()
        saturated = s.linear_starry == np.float32(p["saturation_adu"])
        n_saturated += saturated.sum()
        var = s.star_flux_linear / p["gain"] + (noise_sigma(s)[saturated] ** 2).sum()
        var += s.linear_starry.size * (0.01 * p["saturation_adu"] / 2**24) ** 2  # float32
        zs.append((diff - s.star_flux_linear) / math.sqrt(var))
        assert s.star_flux_linear > 0
    print("z of sum(starry - starless) - star_flux:", np.round(zs, 2))
    assert n_saturated > 100  # the accounting includes the clipped light
    assert np.all(np.abs(zs) < 5)
    assert abs(np.mean(zs)) < 5 / math.sqrt(len(zs))


def test_galaxies_and_knots_are_in_both_images():
    s = sample(16, "nebula", overrides={**SPARSE, "n_galaxies": 4, "n_knots": 4, "n_stars": 20})
    sigma = noise_sigma(s)[..., 1].mean()
    size = s.starry.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    checked = 0
    for obj in s.objects:
        if obj["peak_snr"] < 10:
            continue
        ix, iy = int(round(obj["x"])), int(round(obj["y"]))
        r = np.hypot(xx - obj["x"], yy - obj["y"])
        ring = (r > 2 * obj["radius"] + 6) & (r < 2 * obj["radius"] + 12)
        for lin, disp in ((s.linear_starless, s.starless), (s.linear_starry, s.starry)):
            excess = lin[iy - 1 : iy + 2, ix - 1 : ix + 2].mean(axis=(0, 1)) - np.median(
                lin[ring], 0
            )
            assert excess.max() > 4 * sigma, obj
            assert disp[iy, ix].max() > np.median(disp[ring], 0).max() + 0.02
        checked += 1
        # not a star: outside the footprint unless a star happens to be near
        near = np.hypot(s.stars["x"] - obj["x"], s.stars["y"] - obj["y"]) < 25
        if not (near & (s.stars["peak_snr"] > 0.3)).any():
            assert not s.footprint[iy, ix]
    assert checked >= 3


@pytest.mark.parametrize("display, linked", [("mtf", False), ("mtf", True), ("none", False)])
def test_display_transform_inverts_exactly(display, linked):
    s = sample(17, overrides={"display": display, "linked": linked, "encoding": "float"})
    assert s.stretch["kind"] == display
    json.dumps(s.stretch)
    for disp, lin in ((s.starry, s.linear_starry), (s.starless, s.linear_starless)):
        unclipped = (disp > 1e-4) & (disp < 1 - 1e-4)
        assert unclipped.mean() > 0.9
        back = invert_display(disp, s.stretch)
        err = np.abs(back - lin)[unclipped] / noise_sigma(s)[unclipped]
        assert err.max() < 1e-3
    if display == "mtf":  # computed from the starry image, applied to both
        lows = s.linear_starry.min(axis=(0, 1)) if not linked else s.linear_starry.min()
        np.testing.assert_allclose(s.stretch["low"], np.broadcast_to(lows, (3,)))
        assert s.stretch["high"][1] <= float(s.linear_starry.max())
        med = np.median(s.starry, axis=(0, 1))
        if not linked:
            np.testing.assert_allclose(med, s.stretch["target_background"], atol=0.02)
    else:
        white = np.percentile(s.linear_starry, s.params["white_percentile"])
        # lowered only where the sky would otherwise display below 0.08 (crowded fields)
        black, median = s.stretch["black"], float(np.median(s.linear_starry))
        white = min(white, black + (median - black) / 0.08)
        assert s.stretch["white"] >= white * (1 - 1e-6)


def _spike_profile(s, star):
    p = s.params
    x0, y0 = s.stars["x"][star], s.stars["y"][star]
    resid = (s.linear_starry - s.linear_starless).sum(axis=2)
    dist = np.arange(4, 13) * p["fwhm"]
    out = []
    for offset in (0.0, math.pi / 4):
        vals = []
        for k in range(4):
            a = p["spike_angle"] + offset + k * math.pi / 2
            xs = np.rint(x0 + dist * math.cos(a)).astype(int)
            ys = np.rint(y0 + dist * math.sin(a)).astype(int)
            vals.append(resid[ys, xs])
        out.append(np.median(np.concatenate(vals)))
    return out


def test_diffraction_spikes_when_asked():
    base = {
        **SATURATING,
        "ellipticity": 0.0,
        "n_galaxies": 0,
        "spike_strength": 0.03,
        "spike_kind": "newtonian",
    }
    with_spikes = sample(18, "dark", overrides={**base, "spikes": True})
    without = sample(18, "dark", overrides={**base, "spikes": False})
    ok = inside(with_spikes, 45)
    star = np.flatnonzero(ok)[np.argmax(with_spikes.stars["peak_snr"][ok])]
    assert with_spikes.stars["peak_snr"][star] > 1000
    np.testing.assert_array_equal(with_spikes.stars["x"], without.stars["x"])
    along, across = _spike_profile(with_spikes, star)
    along0, across0 = _spike_profile(without, star)
    sigma = noise_sigma(with_spikes).mean() * math.sqrt(3)
    print(
        f"spikes: along {along / sigma:.1f} sigma, across {across / sigma:.1f}; without: "
        f"{along0 / sigma:.1f}, {across0 / sigma:.1f}"
    )
    assert along > 3 * sigma and along > 5 * max(across, 0.2 * sigma)
    assert abs(along0 - across0) < 1.0 * sigma


def test_saturation_flat_tops_bright_cores():
    s = sample(18, "dark", overrides={**SATURATING, "saturation_snr": 300.0})
    sat = np.float32(s.params["saturation_adu"])
    flat = (s.linear_starry == sat).all(axis=2)
    assert flat.sum() >= 9  # at least one 3x3 plateau
    assert s.linear_starry.max() == sat and s.linear_starless.max() < sat


def test_render_speed():
    render_sample(np.random.default_rng(0), 256)  # warm-up (photo cache)
    times = []
    for seed in range(6):
        t0 = time.perf_counter()
        render_sample(np.random.default_rng([99, seed]), 256)
        times.append(time.perf_counter() - t0)
    print(f"256x256 RGB sample: mean {np.mean(times):.3f} s, max {np.max(times):.3f} s")
    assert np.mean(times) < 2.0


# ------------------------------------------------------------------------------------------
# realism effects (issue 12)

# a clean sparse field: one effect at a time is switched on over it
CLEAN = {**SPARSE, **EFFECTS_OFF, "ellipticity": 0.0, "chromatic": False, "psf": "moffat"}
ALL_ON = {
    "saturated_cores": True,
    "wide_halo": True,
    "trail": True,
    "dispersion": True,
    "blue_bloat": True,
    "spikes": True,
    "spike_kind": "jwst",
    "crowded": True,
    "bright_nebula": True,
    "encoding": "jpeg",
    "stamps": True,
}


def _isolated_bright(s, margin=20, min_snr=30, max_snr=None, isolation=12.0):
    """Catalogue indices of bright stars well inside the frame with no comparable neighbour."""
    x, y, snr = s.stars["x"], s.stars["y"], s.stars["peak_snr"]
    ok = inside(s, margin) & (snr > min_snr)
    if max_snr is not None:
        ok &= snr < max_snr
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    crowd = ((d < isolation) & (snr[None, :] > 0.02 * snr[:, None])).any(axis=1)
    return np.flatnonzero(ok & ~crowd)


def _moments(image, x0, y0, r):
    """Centroid and second moments (xx, yy, xy) of ``image`` in a disc of radius r."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    w = np.where(np.hypot(xx - x0, yy - y0) <= r, np.clip(image, 0, None), 0.0)
    t = w.sum()
    cx, cy = (w * xx).sum() / t, (w * yy).sum() / t
    mxx = (w * (xx - cx) ** 2).sum() / t
    myy = (w * (yy - cy) ** 2).sum() / t
    mxy = (w * (xx - cx) * (yy - cy)).sum() / t
    return cx, cy, mxx, myy, mxy


def test_effects_are_drawn_per_sample_and_off_switch_is_exact():
    drawn = [render_sample(np.random.default_rng([12, i]), 64).params for i in range(40)]
    for key in ("saturated_cores", "wide_halo", "trail", "dispersion", "crowded", "bright_nebula"):
        frac = np.mean([d[key] for d in drawn])
        assert 0.0 < frac < 1.0, key  # on by default, in a fraction of the samples
    assert {d["encoding"] for d in drawn} == set(ENCODINGS)
    assert {d["spike_kind"] for d in drawn} == {"newtonian", "jwst"}
    # the effects have their own random stream: switching them off, or changing the
    # parameters of an effect that is off, leaves the rest of the sample unchanged
    a = sample(20, "nebula", size=96, overrides=EFFECTS_OFF)
    b = sample(20, "nebula", size=96, overrides={**EFFECTS_OFF, "wide_halo_fraction": 0.09})
    np.testing.assert_array_equal(a.starry, b.starry)
    c = sample(20, "nebula", size=96, overrides={**EFFECTS_OFF, "wide_halo": True})
    np.testing.assert_array_equal(a.stars["x"], c.stars["x"])
    np.testing.assert_array_equal(a.linear_starless, c.linear_starless)
    assert not np.array_equal(a.linear_starry, c.linear_starry)
    with pytest.raises(ValueError):
        render_sample(np.random.default_rng(0), 64, overrides={"encoding": "png"})
    with pytest.raises(ValueError):
        render_sample(np.random.default_rng(0), 64, overrides={"spike_kind": "hubble"})


def test_saturated_cores_are_white_with_coloured_rims():
    over = {**EFFECTS_OFF, "saturated_cores": True, "display": "mtf", "linked": False}
    over.update({"n_galaxies": 0, "halo": False, "spikes": False, "psf": "moffat", "coma": False})
    s = sample(1, "dark", overrides=over)
    p = s.params
    assert p["saturation_snr"] == p["heavy_saturation_snr"] and p["n_bright_stars"] >= 1
    sat = np.float32(p["saturation_adu"])
    white = (s.starry == 1.0).all(axis=2)
    yy, xx = np.mgrid[0:256, 0:256]
    spread = s.starry.max(axis=2) - s.starry.min(axis=2)
    rims, n_white = [], 0
    for i in np.flatnonzero(inside(s, 20)):
        ix, iy = int(round(s.stars["x"][i])), int(round(s.stars["y"][i]))
        if not (s.linear_starry[iy, ix] == sat).all():
            continue
        n_white += 1
        assert white[iy, ix]  # saturation, then stretch: the core is white in every channel
        near = np.hypot(xx - s.stars["x"][i], yy - s.stars["y"][i]) < 25
        n_core = (near & white).sum()
        rim = near & ~white & (s.starry.max(axis=2) > 0.5) & (s.starry.max(axis=2) < 0.98)
        rims.append((spread[rim].mean(), n_core))
    print("saturated stars:", n_white, "rim colour spread, core px:", rims)
    assert n_white >= 3
    assert max(n for _, n in rims) >= 100  # bloated: a broad white disc
    assert max(c for c, _ in rims) > 0.1  # the rim keeps the star's colour
    assert np.all(spread[white] == 0)


def test_wide_halo_adds_faint_broad_light():
    base = {**CLEAN, **SATURATING, **EFFECTS_OFF, "wide_halo_fraction": 0.1, "wide_halo_beta": 1.5}
    base["wide_halo_fwhm"] = 8.0
    on = sample(18, "dark", overrides={**base, "wide_halo": True})
    off = sample(18, "dark", overrides={**base, "wide_halo": False})
    resid_on = (on.linear_starry - on.linear_starless).sum(axis=2)
    resid_off = (off.linear_starry - off.linear_starless).sum(axis=2)
    star = _isolated_bright(off, margin=40, min_snr=100, isolation=20)[0]
    x0, y0, fwhm = off.stars["x"][star], off.stars["y"][star], off.params["fwhm"]
    yy, xx = np.mgrid[0:256, 0:256]
    r = np.hypot(xx - x0, yy - y0)
    ring = (r > 5 * fwhm) & (r < 10 * fwhm)
    sigma = noise_sigma(off)[..., 1].mean() * math.sqrt(3) / math.sqrt(ring.sum())
    gain = resid_on[ring].mean() - resid_off[ring].mean()
    print(f"wide halo: ring excess {gain:.2f} ADU, noise of the mean {sigma:.2f}")
    assert gain > 5 * sigma
    # the halo is faint: the core is unchanged to a few per cent
    core = r < fwhm
    assert abs(resid_on[core].sum() / resid_off[core].sum() - 1) < 0.1
    assert on.star_flux_linear > off.star_flux_linear


def test_trailing_elongates_stars_along_the_guiding_error():
    base = {**CLEAN, "fwhm": 3.0, "trail_length": 3.0, "trail_angle": 0.5, "trail_wobble": 0.0}
    on = sample(3, "dark", overrides={**base, "trail": True})
    off = sample(3, "dark", overrides={**base, "trail": False})
    checked = 0
    for star in _isolated_bright(off, margin=20, min_snr=15, max_snr=2000, isolation=15)[:5]:
        x0, y0 = off.stars["x"][star], off.stars["y"][star]
        shapes = []
        for s in (on, off):
            resid = (s.linear_starry - s.linear_starless).sum(axis=2)
            _, _, mxx, myy, mxy = _moments(resid, x0, y0, 10)
            angle = 0.5 * math.atan2(2 * mxy, mxx - myy)
            half = math.hypot(0.5 * (mxx - myy), mxy)
            ratio = math.sqrt((0.5 * (mxx + myy) + half) / (0.5 * (mxx + myy) - half))
            shapes.append((angle, ratio))
        (angle, ratio), (_, ratio0) = shapes
        print(f"trail: angle {angle:.2f} rad, axis ratio {ratio:.2f} (untrailed {ratio0:.2f})")
        assert abs(angle - 0.5) < 0.15 and ratio > 1.4 and ratio0 < 1.2
        checked += 1
    assert checked >= 2
    assert on.params["trail"] and np.all(on.stars["peak_snr"] < off.stars["peak_snr"])


def test_chromatic_dispersion_moves_channel_centroids():
    over = {**CLEAN, "dispersion": True, "dispersion_px": 1.2, "dispersion_angle": 0.0}
    s = sample(4, "dark", overrides=over)
    resid = s.linear_starry - s.linear_starless
    offsets = []
    for star in _isolated_bright(s, min_snr=30, max_snr=2000):
        x0, y0 = s.stars["x"][star], s.stars["y"][star]
        cents = [_moments(resid[..., c], x0, y0, 6)[:2] for c in range(3)]
        offsets.append([cents[0][0] - cents[2][0], cents[0][1] - cents[2][1], cents[1][0] - x0])
    offsets = np.asarray(offsets)
    print("R - B centroid (x, y), G - true x:", np.median(offsets, axis=0).round(3), len(offsets))
    assert len(offsets) >= 3
    assert abs(np.median(offsets[:, 0]) - 1.2) < 0.2  # R and B apart along the dispersion
    assert abs(np.median(offsets[:, 1])) < 0.1
    assert abs(np.median(offsets[:, 2])) < 0.1  # G where the star is
    # and the colours fringe: R on one side, B on the other
    off = sample(4, "dark", overrides={**over, "dispersion": False})
    resid0 = off.linear_starry - off.linear_starless
    star = _isolated_bright(s, min_snr=30, max_snr=2000)[0]
    ix, iy = int(round(s.stars["x"][star])), int(round(s.stars["y"][star]))
    fringe = resid[iy, ix + 2, 0] / resid[iy, ix + 2, 2]
    fringe0 = resid0[iy, ix + 2, 0] / resid0[iy, ix + 2, 2]
    assert fringe > 1.3 * fringe0


def test_chromatic_blue_bloat_broadens_the_blue_channel():
    over = {**CLEAN, "blue_bloat": True, "blue_bloat_scale": 0.4}
    s = sample(4, "dark", overrides=over)
    resid = s.linear_starry - s.linear_starless
    ratios = []
    for star in _isolated_bright(s, min_snr=30, max_snr=2000):
        x0, y0 = s.stars["x"][star], s.stars["y"][star]
        size = [(lambda m: m[2] + m[3])(_moments(resid[..., c], x0, y0, 8)) for c in (1, 2)]
        ratios.append(math.sqrt(size[1] / size[0]))
    print("blue / green size:", np.round(ratios, 2))
    assert len(ratios) >= 3 and 1.2 < np.median(ratios) < 1.6


def _arm_profile(s, star, angles):
    """Median star residual along the given directions, 4-12 FWHM from the star."""
    x0, y0, fwhm = s.stars["x"][star], s.stars["y"][star], s.params["fwhm"]
    resid = (s.linear_starry - s.linear_starless).sum(axis=2)
    dist = np.arange(4, 13) * fwhm
    vals = []
    for a in angles:
        xs = np.rint(x0 + dist * math.cos(a)).astype(int)
        ys = np.rint(y0 + dist * math.sin(a)).astype(int)
        vals.append(resid[ys, xs])
    return float(np.median(np.concatenate(vals)))


def test_spike_kinds_newtonian_and_jwst():
    base = {**CLEAN, **SATURATING, **EFFECTS_OFF, "spikes": True, "spike_strength": 0.03}
    base.update({"ellipticity": 0.0, "n_galaxies": 0, "spike_minor": 0.3})
    jwst = sample(18, "dark", overrides={**base, "spike_kind": "jwst"})
    newt = sample(18, "dark", overrides={**base, "spike_kind": "newtonian"})
    refr = sample(18, "dark", overrides={**base, "spikes": False})
    ok = inside(jwst, 45)
    star = np.flatnonzero(ok)[np.argmax(jwst.stars["peak_snr"][ok])]
    a0 = jwst.params["spike_angle"]
    six = [a0 + k * math.pi / 3 for k in range(6)]
    between = [a0 + math.pi / 6 + k * math.pi / 3 for k in (0, 2, 3, 5)]  # not the minor pair
    four = [a0 + k * math.pi / 2 for k in range(4)]
    sigma = noise_sigma(jwst).mean() * math.sqrt(3)
    j6, jb = _arm_profile(jwst, star, six), _arm_profile(jwst, star, between)
    n4, n6 = _arm_profile(newt, star, four), _arm_profile(newt, star, six[1:3] + six[4:])
    r4 = _arm_profile(refr, star, four)
    print(f"jwst 6 arms {j6 / sigma:.1f} sigma, between {jb / sigma:.1f}; newtonian 4 arms "
          f"{n4 / sigma:.1f}, at 60 deg {n6 / sigma:.1f}; refractor {r4 / sigma:.1f}")
    assert j6 > 3 * sigma and j6 > 5 * max(jb, 0.2 * sigma)
    assert n4 > 3 * sigma and n4 > 5 * max(n6, 0.2 * sigma)
    assert abs(r4) < sigma
    # JWST's minor pair, perpendicular to the first spike
    minor = _arm_profile(jwst, star, [a0 + math.pi / 2, a0 - math.pi / 2])
    assert minor > 2 * sigma


def test_encodings_uint8_and_jpeg():
    over = {**CLEAN, "n_stars": 40, "jpeg_quality": 75}
    f = sample(5, "nebula", overrides={**over, "encoding": "float"})
    u = sample(5, "nebula", overrides={**over, "encoding": "uint8"})
    j = sample(5, "nebula", overrides={**over, "encoding": "jpeg"})
    for s in (u, j):  # 8-bit values, in both images
        for image in (s.starry, s.starless):
            assert image.dtype == np.float32
            assert np.abs(image * 255 - np.rint(image * 255)).max() < 1e-3
    np.testing.assert_allclose(u.starry, f.starry, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(u.linear_starry, f.linear_starry)  # only the file changes
    diff = np.abs(j.starry - u.starry)
    print(f"jpeg - uint8: mean {diff.mean():.4f}, max {diff.max():.3f}")
    assert 0.001 < diff.mean() < 0.03 and diff.max() < 0.3
    # the target went through the same encoder: away from the stars it is the input itself
    blocks = f.footprint.reshape(16, 16, 16, 16).any(axis=(1, 3))
    blocks = np.pad(blocks, 1)
    busy = np.zeros((16, 16), dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            busy |= blocks[dy : dy + 16, dx : dx + 16]
    free = np.repeat(np.repeat(~busy, 16, axis=0), 16, axis=1)
    assert free.mean() > 0.1
    same = (j.starry == j.starless).all(axis=2)[free].mean()
    print(f"star-free JPEG blocks: {free.mean():.2f} of the frame, identical pixels {same:.3f}")
    assert same > 0.9
    close = (np.abs(u.starry - u.starless) <= 1.0 / 255 + 1e-6).all(axis=2)[~f.footprint].mean()
    print(f"8-bit: outside the footprint {close:.3f} of the pixels within 1 level")
    assert close > 0.95
    mono = sample(5, "nebula", channels=1, overrides={**over, "encoding": "jpeg"})
    assert mono.starry.shape == (256, 256, 1)


def test_crowded_field_has_the_requested_star_count():
    want = 3000
    s = sample(6, "nebula", overrides={**EFFECTS_OFF, "crowded": True, "n_stars": want})
    n = int(inside(s).sum())
    print(f"crowded: {n} stars in the frame for {want}; fwhm {s.params['fwhm']:.2f}")
    assert abs(n - want) < 5 * math.sqrt(want)
    assert np.median(s.stars["peak_snr"][inside(s)]) < 5  # most of them faint
    assert s.params["fwhm"] == s.params["crowded_fwhm"] <= 3.5
    drawn = sample(6, "nebula", overrides={**EFFECTS_OFF, "crowded": True})
    assert inside(drawn).sum() >= 0.8 * min(1500, 0.5 * 256**2 / drawn.params["fwhm"] ** 2)
    assert drawn.footprint.mean() > 0.02


def test_stars_over_bright_nebulosity():
    over = {**CLEAN, "n_stars": 200, "bright_nebula": True, "nebula_boost": 10.0}
    bright = sample(7, "nebula", overrides=over)
    dim = sample(7, "nebula", overrides={**over, "bright_nebula": False})
    np.testing.assert_array_equal(bright.stars["x"], dim.stars["x"])
    sky = bright.params["sky_adu"]
    assert bright.params["nebula_gain"] == 10.0
    neb_b = np.median(bright.linear_starless) - sky
    neb_d = np.median(dim.linear_starless) - sky
    assert neb_b > 5 * neb_d
    # stars on the bright nebula are there in the input and gone from the target
    on_neb = inside(bright, 4) & (bright.stars["peak_snr"] > 10)
    ix = np.rint(bright.stars["x"]).astype(int)
    iy = np.rint(bright.stars["y"]).astype(int)
    level = bright.linear_starless.mean(axis=2)[np.clip(iy, 0, 255), np.clip(ix, 0, 255)]
    on_neb &= level > 3 * sky
    assert on_neb.sum() >= 5
    assert bright.footprint[iy[on_neb], ix[on_neb]].all()
    lift = (bright.starry - bright.starless).max(axis=2)[iy[on_neb], ix[on_neb]]
    assert np.median(lift) > 0.02


def test_noise_is_stretched_with_the_stars():
    """The noise is added in the linear domain, before the display transform: the stars carry
    their own shot noise, and the display is the stretch of the noisy data (nothing is added
    after it)."""
    over = {**CLEAN, "fwhm": 8.0, "beta": 5.0, "n_stars": 40, "display": "mtf", "snr_min": 3.0}
    over.update({"dynamic_range": 3000.0, "flux_slope": 0.5})
    s = sample(3, "dark", overrides=over)
    stretched = np.clip(
        MTFStretch(
            *(np.asarray(s.stretch[k]).reshape(1, 1, -1) for k in ("low", "high", "shadows", "midtones"))
        ).apply(s.linear_starry),
        0.0,
        1.0,
    )
    np.testing.assert_array_equal(stretched, s.starry)
    # the star residual (starry - starless: the background noise cancels) is noisy with the
    # star's shot noise: its Laplacian, where the profile's own curvature vanishes
    # (r = sqrt(2) sigma), has the variance 20 S / gain of Poisson noise on S
    resid = (s.linear_starry.astype(np.float64) - s.linear_starless)[..., 1]
    lap = 4 * resid[1:-1, 1:-1] - resid[:-2, 1:-1] - resid[2:, 1:-1] - resid[1:-1, :-2] - resid[1:-1, 2:]
    yy, xx = np.mgrid[1:255, 1:255]
    ratios = []
    sigma_psf = 8.0 / 2.3548
    for star in _isolated_bright(s, margin=30, min_snr=50, max_snr=3000, isolation=20):
        r = np.hypot(xx - s.stars["x"][star], yy - s.stars["y"][star])
        ring = np.abs(r - math.sqrt(2) * sigma_psf) < 0.7
        expected = 20 * resid[1:-1, 1:-1][ring] / s.params["gain"]
        ratios.append(np.mean(lap[ring] ** 2) / np.mean(expected))
    print("Laplacian variance / shot-noise expectation:", np.round(ratios, 2))
    # (0 if the noise were added after the stretch; >> 1 with independent background noise)
    assert len(ratios) >= 3
    assert 0.6 < np.median(ratios) < 2.0


def test_extract_stamps_from_a_synthetic_frame():
    rng = np.random.default_rng(3)
    h, w, fwhm = 180, 260, 3.0
    sig = fwhm / 2.3548
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    truth = [(40.3, 40.7, 6000.0), (110.6, 45.2, 4000.0), (200.1, 40.5, 8000.0),
             (50.8, 130.4, 5000.0), (130.2, 120.9, 3000.0), (215.5, 135.1, 7000.0)]
    image = 100.0 + 0.05 * xx + 0.03 * yy
    for x, y, f in truth:
        image += f / (2 * math.pi * sig**2) * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sig**2)
    # a close pair, a star at the edge, a hot pixel and a saturated star
    for x, y, f in ((160.0, 90.0, 5000.0), (166.0, 92.0, 4000.0), (3.0, 90.0, 6000.0)):
        image += f / (2 * math.pi * sig**2) * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sig**2)
    image[90, 230] += 3000.0
    sat_star = 80.0 / (2 * math.pi * sig**2) * 1e3 * np.exp(
        -0.5 * ((xx - 90.4) ** 2 + (yy - 150.3) ** 2) / sig**2
    )
    image += sat_star
    saturated = image > 2000.0
    image = np.minimum(image, 2000.0)
    image += rng.normal(0.0, 1.0, image.shape)
    lib = extract_stamps(image, size=31, saturated=saturated)
    print(f"{len(lib)} stamps, FWHM {np.round(lib.fwhm, 2)}, saturated {lib.saturated}")
    # the 6 isolated stars and the saturated one; not the pair, the edge star, the hot pixel
    assert len(lib) == 7 and lib.saturated.sum() == 1
    assert lib.stamps.shape == (7, 31, 31, 3) and lib.stamps.dtype == np.float32
    np.testing.assert_allclose(lib.stamps.sum(axis=(1, 2)), 1.0, atol=1e-5)  # unit flux
    # zero background: the local sky (with its gradient) is gone; the edge ring is empty
    r = np.hypot(*np.meshgrid(np.arange(31) - 15, np.arange(31) - 15))
    assert np.all(lib.stamps[:, r > 14.5] == 0)
    g = np.arange(31) - 15.0
    for k in np.flatnonzero(~lib.saturated):
        dx, dy = lib.offset[k]
        model = np.exp(-0.5 * ((g[None, :] - dx) ** 2 + (g[:, None] - dy) ** 2) / sig**2)
        model /= model.sum()
        err = np.abs(lib.stamps[k, ..., 0] - model).max() / model.max()
        assert err < 0.03, err
        assert abs(lib.fwhm[k] - fwhm) < 0.3
    fractions = sorted(np.round(np.abs(lib.offset[~lib.saturated]) * 10) / 10, key=tuple)
    expected = sorted(np.round(np.abs([(x - round(x), y - round(y)) for x, y, _ in truth]) * 10) / 10,
                      key=tuple)
    np.testing.assert_allclose(fractions, expected, atol=0.11)
    assert lib.noise.max() < 0.002  # ~ 1 ADU over thousands


def test_stamp_library_save_load_and_concatenate(tmp_path):
    lib = _synthetic_library()
    path = tmp_path / "stamps.npz"
    lib.save(path)
    back = StampLibrary.load(path)
    np.testing.assert_array_equal(back.stamps, lib.stamps)
    assert back.sources == lib.sources and back.digest() == lib.digest()
    both = StampLibrary.concatenate([lib, StampLibrary.empty(31), back])
    assert len(both) == 2 * len(lib) and both.sources == lib.sources
    assert len(StampLibrary.concatenate([])) == 0
    with pytest.raises(ValueError):
        np.savez(tmp_path / "other.npz", x=np.zeros(3))
        StampLibrary.load(tmp_path / "other.npz")


@functools.cache
def _synthetic_library():
    """Stamps of Gaussian stars of FWHM 3 px (a mono frame), as a real library would hold."""
    rng = np.random.default_rng(5)
    h, w = 200, 200
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.full((h, w), 50.0)
    sig = 3.0 / 2.3548
    for k in range(9):
        x, y = 30 + 70 * (k % 3) + rng.uniform(-0.5, 0.5), 30 + 70 * (k // 3) + rng.uniform(-0.5, 0.5)
        q = 0.75  # elongated, unlike the synthetic PSFs
        u, v = (xx - x), (yy - y)
        image += 2e4 / (2 * math.pi * sig**2 / q) * np.exp(-0.5 * (q * u**2 + v**2 / q) / sig**2)
    image += rng.normal(0.0, 1.0, image.shape)
    lib = extract_stamps(image, size=31, source="gauss")
    assert len(lib) == 9
    return lib


def test_paste_stamp_adds_its_flux_at_the_position():
    lib = _synthetic_library()
    canvas = np.zeros((100, 120, 3))
    flux = np.array([100.0, 50.0, 20.0])
    added = paste_stamp(canvas, lib.stamps[0], 50.3, 40.7, flux, scale=1.5, angle=0.7,
                        flip=True, offset=lib.offset[0])
    np.testing.assert_allclose(canvas.sum(axis=(0, 1)), flux, rtol=1e-5)
    assert added == pytest.approx(flux.sum(), rel=1e-5)
    cx, cy, mxx, myy, _ = _moments(canvas[..., 0], 50.3, 40.7, 20)
    assert abs(cx - 50.3) < 0.05 and abs(cy - 40.7) < 0.05
    cx0, cy0, mxx0, myy0, _ = _moments(lib.stamps[0, ..., 0], 15 + lib.offset[0, 0],
                                       15 + lib.offset[0, 1], 14)
    assert math.sqrt((mxx + myy) / (mxx0 + myy0)) == pytest.approx(1.5, rel=0.08)
    # at the edge only the part inside is added
    edge = np.zeros((40, 40, 1))
    part = paste_stamp(edge, lib.stamps[1], 0.0, 20.0, 10.0)
    assert 3.0 < part < 7.0 and edge.sum() == pytest.approx(part)


def test_render_with_real_stamps_pastes_them_in_the_linear_domain():
    lib = _synthetic_library()
    over = {**CLEAN, "stamps": True, "stamp_fraction": 1.0, "fwhm": 4.0, "n_stars": 30}
    s = render_sample(np.random.default_rng([11, 3]), 256, kind="dark", overrides=over, stamps=lib)
    pasted = s.stars["stamp"] >= 0
    assert pasted.sum() >= 10 and (~pasted).sum() >= 1
    resid = (s.linear_starry.astype(np.float64) - s.linear_starless).sum(axis=2)
    sigma = noise_sigma(s)[..., 1].mean()
    yy, xx = np.mgrid[0:256, 0:256]
    checked = 0
    for i in np.flatnonzero(pasted & inside(s, 30)):
        d = np.hypot(s.stars["x"] - s.stars["x"][i], s.stars["y"] - s.stars["y"][i])
        d[i] = np.inf
        total = s.stars["flux"].sum(axis=1)
        if ((d < 30) & (total > 0.05 * total[i])).any() or s.stars["peak_snr"][i] < 5:
            continue
        disc = np.hypot(xx - s.stars["x"][i], yy - s.stars["y"][i]) < 24
        got, want = resid[disc].sum(), s.stars["flux"][i].sum()
        err = math.sqrt(disc.sum() * 3 * 2 * sigma**2 + want / s.params["gain"])
        assert abs(got - want) < 5 * err, (got, want, err)
        # elongated like the stamps (q = 0.75), not round like the synthetic PSFs
        _, _, mxx, myy, mxy = _moments(resid, s.stars["x"][i], s.stars["y"][i], 10)
        half = math.hypot(0.5 * (mxx - myy), mxy)
        assert (0.5 * (mxx + myy) + half) / (0.5 * (mxx + myy) - half) > 1.2
        checked += 1
    assert checked >= 2
    # deterministic, and without stamps (or with an empty library) the synthetic PSFs are used
    again = render_sample(np.random.default_rng([11, 3]), 256, kind="dark", overrides=over, stamps=lib)
    np.testing.assert_array_equal(again.starry, s.starry)
    none = render_sample(np.random.default_rng([11, 3]), 256, kind="dark", overrides=over)
    empty = render_sample(np.random.default_rng([11, 3]), 256, kind="dark", overrides=over,
                          stamps=StampLibrary.empty())
    assert (none.stars["stamp"] < 0).all()
    np.testing.assert_array_equal(none.starry, empty.starry)
    np.testing.assert_array_equal(none.stars["x"], s.stars["x"])


def test_all_effects_deterministic_and_shard_with_stamps(tmp_path):
    lib = _synthetic_library()
    a = render_sample(np.random.default_rng([3, 1]), 128, kind="photo", overrides=ALL_ON, stamps=lib)
    b = render_sample(np.random.default_rng([3, 1]), 128, kind="photo", overrides=ALL_ON, stamps=lib)
    c = render_sample(np.random.default_rng([3, 2]), 128, kind="photo", overrides=ALL_ON, stamps=lib)
    for key in ("starry", "starless", "linear_starry", "footprint"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes(), key
    assert not np.array_equal(a.starry, c.starry)
    json.dumps(a.params)
    path = tmp_path / "stamps.npz"
    lib.save(path)
    make_shard(tmp_path / "a.npz", 4, 9, size=64, stamps=path)
    make_shard(tmp_path / "b.npz", 4, 9, size=64, stamps=lib)
    za, zb = load_shard(tmp_path / "a.npz"), load_shard(tmp_path / "b.npz")
    np.testing.assert_array_equal(za["starry"], zb["starry"])
    assert za["meta"] == zb["meta"]
    assert za["meta"]["stamps"]["n"] == len(lib) and len(za["meta"]["stamp_stars"]) == 4
    assert set(za["meta"]["encoding"]) <= set(ENCODINGS)
    s2 = render_sample(np.random.default_rng([9, 2]), 64, stamps=lib)
    np.testing.assert_allclose(
        za["starry"][2] * 65535.0, np.rint(np.moveaxis(s2.starry, -1, 0) * 65535), atol=1e-2
    )


def test_stamp_library_fallback_when_data_absent(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="astroflow"):
        lib = build_stamp_library(sbig=tmp_path / "no-sbig", seestar=tmp_path / "no-seestar")
    assert len(lib) == 0 and lib.stamps.shape == (0, 31, 31, 3)
    assert "absent" in caplog.text and "synthetic PSFs" in caplog.text
    path = tmp_path / "empty.npz"
    lib.save(path)
    with caplog.at_level(logging.INFO, logger="astroflow"):
        make_shard(tmp_path / "s.npz", 1, 4, size=48, stamps=path)
    assert "synthetic PSFs only" in caplog.text
    assert load_shard(tmp_path / "s.npz")["meta"]["stamps"]["n"] == 0


@needs_shared_data("sbig-stl1001")
def test_stamps_from_the_real_sbig_light():
    lib = build_stamp_library(sbig=SHARED_DATA / "sbig-stl1001", max_lights=1)
    print("SBIG stamps:", lib.summary())
    assert len(lib) >= 5 and lib.sources == ("sbig",)
    np.testing.assert_allclose(lib.stamps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    np.testing.assert_array_equal(lib.stamps[..., 0], lib.stamps[..., 2])  # mono
    assert not lib.saturated.any()
    assert 2.0 < np.median(lib.fwhm) < 4.5  # the night's ~2.8 px seeing
    assert np.all(lib.fwhm >= 1.2) and np.all(np.abs(lib.offset) <= 0.5 + 1e-9)
    assert np.median(lib.noise) < 0.01
