"""Synthetic star-removal training data: pairs, physics checks, shards."""

import functools
import json
import math
import time

import numpy as np
import pytest
import sep

from astroflow.simulation.synthstars import (
    BACKGROUND_KINDS,
    PHOTOS,
    invert_display,
    load_shard,
    make_shard,
    render_sample,
)

SPARSE = {
    "n_stars": 60,
    "fwhm": 3.0,
    "halo": False,
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
    s0 = render_sample(np.random.default_rng([5, 123, 0, 0]), 48, channels=1)
    np.testing.assert_allclose(data["starless"][0, 0], s0.starless[..., 0], atol=1e-5)


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
    s = sample(17, overrides={"display": display, "linked": linked})
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
