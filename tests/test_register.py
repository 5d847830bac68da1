"""Tests of astroflow.deepsky.quality (star detection, frame quality) and astroflow.register."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy.ndimage import map_coordinates
from scipy.special import erf

from astroflow.deepsky.quality import (
    FLAG_EDGE,
    FLAG_SATURATED,
    FLAG_SHARP,
    NoStarsWarning,
    detect_stars,
    frame_quality,
)
from astroflow.deepsky.register import (
    RegistrationError,
    find_transform,
    match_frame,
    pixel_map,
    register_frames,
    transform_matrix,
    warp,
)
from astroflow.io import fits as fitsio

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAPE = (300, 400)
NOISE = 5.0


def similarity(dx=0.0, dy=0.0, rotation_deg=0.0, scale=1.0, centre=(200.0, 150.0)):
    """Frame -> reference matrix: rotate and scale about ``centre``, then shift."""
    t = np.deg2rad(rotation_deg)
    c, s = scale * np.cos(t), scale * np.sin(t)
    cx, cy = centre
    return np.array(
        [
            [c, -s, cx + dx - c * cx + s * cy],
            [s, c, cy + dy - s * cx - c * cy],
            [0.0, 0.0, 1.0],
        ]
    )


def apply(matrix, points):
    return points @ np.asarray(matrix)[:2, :2].T + np.asarray(matrix)[:2, 2]


def grid_rms(estimated, true, shape=SHAPE):
    """RMS distance (px) between two transforms over a grid covering the frame."""
    gx, gy = np.meshgrid(np.linspace(0, shape[1] - 1, 9), np.linspace(0, shape[0] - 1, 7))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    return float(np.sqrt(np.mean(np.sum((apply(estimated, grid) - apply(true, grid)) ** 2, 1))))


def render(shape, x, y, flux, *, fwhm=3.0, beta=None, background=100.0, noise=NOISE, rng):
    """Stars integrated over each pixel: Gaussian (exact, erf) or Moffat (5x5 subsampled)."""
    height, width = shape
    image = np.full(shape, background, dtype=np.float64)
    half = int(np.ceil((4 if beta is None else 10) * fwhm)) + 2
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    for xc, yc, f in zip(x, y, flux):
        i0, j0 = int(round(xc)), int(round(yc))
        xa = np.arange(max(0, i0 - half), min(width, i0 + half + 1))
        ya = np.arange(max(0, j0 - half), min(height, j0 + half + 1))
        if xa.size == 0 or ya.size == 0:
            continue
        if beta is None:
            s = fwhm / (2 * np.sqrt(2 * np.log(2))) * np.sqrt(2)
            gx = 0.5 * (erf((xa + 0.5 - xc) / s) - erf((xa - 0.5 - xc) / s))
            gy = 0.5 * (erf((ya + 0.5 - yc) / s) - erf((ya - 0.5 - yc) / s))
            stamp = np.outer(gy, gx)
        else:
            alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
            dx = xa[None, :, None, None] + sub[None, None, None, :] - xc
            dy = ya[:, None, None, None] + sub[None, None, :, None] - yc
            profile = (beta - 1) / (np.pi * alpha**2) * (1 + (dx**2 + dy**2) / alpha**2) ** -beta
            stamp = profile.mean(axis=(2, 3))
        image[np.ix_(ya, xa)] += f * stamp
    image += rng.normal(0.0, noise, shape)
    return image.astype(np.float32)


class StarField:
    """A sky of stars in reference pixel coordinates, seen through frame transforms."""

    def __init__(self, seed=0, n_stars=120, shape=SHAPE, margin=60):
        self.rng = np.random.default_rng(seed)
        self.shape = shape
        self.x = self.rng.uniform(-margin, shape[1] + margin, n_stars)
        self.y = self.rng.uniform(-margin, shape[0] + margin, n_stars)
        self.flux = 4000.0 + 4000.0 * self.rng.pareto(1.5, n_stars)

    def positions(self, matrix=None):
        """Star positions in the frame whose frame -> reference matrix is ``matrix``."""
        inverse = np.linalg.inv(np.eye(3) if matrix is None else matrix)
        return apply(inverse, np.column_stack([self.x, self.y]))

    def frame(self, matrix=None, *, transparency=1.0, **kwargs):
        x, y = self.positions(matrix).T
        return render(self.shape, x, y, transparency * self.flux, rng=self.rng, **kwargs)


def hot_pixels(shape, n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, shape[0], n), rng.integers(0, shape[1], n), rng.uniform(2e3, 3e4, n)


def nearest_truth(stars, x, y):
    d = np.hypot(stars["x"].to_numpy()[:, None] - x, stars["y"].to_numpy()[:, None] - y)
    k = d.argmin(axis=1)
    return x[k] - stars["x"].to_numpy(), y[k] - stars["y"].to_numpy()


# --- star detection and frame quality -------------------------------------------------------


@pytest.mark.parametrize(
    ("beta", "fwhm"), [(None, 3.0), (None, 5.0), (2.5, 3.0), (4.765, 4.0)], ids=str
)
def test_fwhm_matches_the_true_psf(beta, fwhm):
    field = StarField(seed=1)
    stars = detect_stars(field.frame(fwhm=fwhm, beta=beta))
    clean = stars[stars["flag"] == 0]
    assert len(clean) > 40
    assert np.median(clean["fwhm"]) == pytest.approx(fwhm, abs=0.05 * fwhm)


def test_positions_are_zero_based_pixel_centres():
    field = StarField(seed=2)
    stars = detect_stars(field.frame(fwhm=3.0))
    clean = stars[stars["flag"] == 0]
    ex, ey = nearest_truth(clean, field.x, field.y)
    assert np.median(np.abs(ex)) < 0.03
    assert np.median(np.abs(ey)) < 0.03


def test_hot_pixels_and_saturated_stars_are_flagged():
    field = StarField(seed=3)
    image = field.frame(fwhm=3.0, background=100.0)
    hy, hx, hv = hot_pixels(SHAPE, 40, seed=4)
    image[hy, hx] += hv
    level = 1500.0
    stars = detect_stars(image, saturation=level)
    at_hot = np.hypot(stars["x"].to_numpy()[:, None] - hx, stars["y"].to_numpy()[:, None] - hy)
    on_hot = at_hot.min(axis=1) < 0.5
    assert on_hot.sum() >= 30
    assert (stars.loc[on_hot, "flag"] != 0).all()
    assert ((stars.loc[on_hot, "flag"] & FLAG_SHARP) > 0).mean() > 0.9
    real = stars[~on_hot & ((stars["flag"] & FLAG_EDGE) == 0)]
    saturated = (real["flag"] & FLAG_SATURATED) > 0
    top = real["peak"] + 100.0
    assert saturated[top > level + 30].all() and (top > level + 30).sum() >= 3
    assert not saturated[top < level - 30].any()


def test_rgb_detects_on_channel_mean_and_nan_marks_edges():
    field = StarField(seed=5)
    mono = field.frame(fwhm=3.0)
    rgb = np.stack([0.5 * mono, mono, 1.5 * mono], axis=2)
    from_rgb = detect_stars(rgb)
    from_mono = detect_stars(mono)
    assert len(from_rgb) == len(from_mono)
    assert np.allclose(from_rgb["x"], from_mono["x"], atol=1e-3)
    holed = mono.copy()
    holed[:, 200:] = np.nan
    stars = detect_stars(holed)
    assert (stars["x"] < 200).all()
    near_hole = stars["x"] > 195
    assert near_hole.any()
    assert (stars.loc[near_hole, "flag"] & FLAG_EDGE).all()
    assert np.isnan(holed[:, 200:]).all()


def test_frame_quality_measures_the_frame():
    field = StarField(seed=6)
    sharp = frame_quality(field.frame(fwhm=2.5, background=300.0, noise=8.0))
    soft = frame_quality(field.frame(fwhm=4.0, background=300.0, noise=8.0))
    assert sharp["fwhm"] == pytest.approx(2.5, rel=0.05)
    assert soft["fwhm"] == pytest.approx(4.0, rel=0.05)
    assert sharp["background"] == pytest.approx(300.0, abs=1.0)
    assert sharp["noise"] == pytest.approx(8.0, rel=0.05)
    assert sharp["n_stars"] > 40
    assert 0.0 <= sharp["eccentricity"] < 0.5


@pytest.mark.parametrize("kind", ["noise", "constant", "nan"])
def test_frame_without_stars_warns_and_reports_nothing(kind):
    rng = np.random.default_rng(7)
    image = {
        "noise": 100.0 + rng.normal(0.0, NOISE, SHAPE),
        "constant": np.full(SHAPE, 100.0),
        "nan": np.full(SHAPE, np.nan),
    }[kind].astype(np.float32)
    with pytest.warns(NoStarsWarning):
        quality = frame_quality(image)
    assert quality["n_stars"] == 0
    assert np.isnan(quality["fwhm"])
    assert np.isnan(quality["eccentricity"])


def test_detect_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        detect_stars(np.zeros((10, 10, 4), np.float32))


# --- transforms -------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation_deg", [0.3, -0.3])
def test_find_transform_recovers_shift_and_rotation(rotation_deg):
    field = StarField(seed=8)
    truth = similarity(dx=37.2, dy=-21.6, rotation_deg=rotation_deg)
    reference = detect_stars(field.frame(fwhm=3.0))
    stars = detect_stars(field.frame(truth, fwhm=3.0))
    matrix, n_matches, rms = find_transform(stars, reference)
    assert grid_rms(matrix, truth) < 0.05
    assert n_matches >= 30
    assert rms < 0.1


def test_affine_model_fits_shear_that_similarity_cannot():
    field = StarField(seed=9)
    truth = similarity(dx=12.0, dy=8.0, rotation_deg=0.2) @ np.array(
        [[1.004, 0.003, 0.0], [0.0, 0.997, 0.0], [0.0, 0.0, 1.0]]
    )
    reference = detect_stars(field.frame(fwhm=3.0))
    stars = detect_stars(field.frame(truth, fwhm=3.0))
    affine, _, affine_rms = find_transform(stars, reference, model="affine")
    similar, _, similar_rms = find_transform(stars, reference, model="similarity")
    assert grid_rms(affine, truth) < 0.05
    assert grid_rms(similar, truth) > 0.2
    assert affine_rms < similar_rms


def test_find_transform_fails_clearly():
    ref = StarField(seed=10).positions()
    other = StarField(seed=11).positions()
    with pytest.raises(RegistrationError):
        find_transform(other, ref)
    with pytest.raises(RegistrationError, match="too few stars"):
        find_transform(ref[:2], ref)
    with pytest.raises(ValueError, match="unknown model"):
        find_transform(ref, ref, model="projective")


# --- warp -------------------------------------------------------------------------------------


def test_warp_matches_reference_and_marks_missing_sky():
    field = StarField(seed=12)
    truth = similarity(dx=25.3, dy=-14.7, rotation_deg=0.3)
    reference = field.frame(fwhm=3.0)
    frame = field.frame(truth, fwhm=3.0)
    warped = warp(frame, truth, reference.shape)
    assert warped.dtype == np.float32
    valid = np.isfinite(warped)
    residual = (warped - reference)[valid]
    assert abs(np.mean(residual)) < 0.2
    assert np.std(residual) < 1.1 * np.sqrt(2) * NOISE
    # Where the reference pixel comes from outside the frame (or within ~2 px of its edge) it
    # must be NaN, and everywhere well inside the frame it must be data.
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    source = apply(np.linalg.inv(truth), np.column_stack([xx.ravel(), yy.ravel()]))
    inside = (
        (source[:, 0] >= 4)
        & (source[:, 0] <= SHAPE[1] - 5)
        & (source[:, 1] >= 4)
        & (source[:, 1] <= SHAPE[0] - 5)
    ).reshape(SHAPE)
    outside = (
        (source[:, 0] < 1.5)
        | (source[:, 0] > SHAPE[1] - 2.5)
        | (source[:, 1] < 1.5)
        | (source[:, 1] > SHAPE[0] - 2.5)
    ).reshape(SHAPE)
    assert valid[inside].all()
    assert not valid[outside].any()
    assert outside.mean() > 0.1


def test_warp_keeps_nan_holes_local_and_handles_rgb():
    field = StarField(seed=13)
    frame = field.frame(fwhm=3.0)
    frame[100:110, 150:160] = np.nan
    shift = similarity(dx=10.0, dy=5.0)
    rgb = np.stack([frame, 2 * frame, 3 * frame], axis=2)
    warped = warp(rgb, shift, SHAPE)
    assert warped.shape == SHAPE + (3,)
    hole = ~np.isfinite(warped[..., 0])
    assert hole[105:115, 160:170].all()
    hole[:, :14] = hole[:9] = False  # the strip the shift uncovers
    rows, cols = np.nonzero(hole)
    assert rows.min() >= 105 - 4 and rows.max() <= 114 + 4
    assert cols.min() >= 160 - 4 and cols.max() <= 169 + 4
    mono = warp(frame, shift, SHAPE, interpolation="cubic")
    blue = warp(rgb, shift, SHAPE, interpolation="cubic")[..., 2]
    assert np.allclose(blue, 3 * mono, rtol=1e-5, atol=1e-2, equal_nan=True)
    assert not np.isfinite(frame[100:110, 150:160]).any()
    with pytest.raises(ValueError, match="interpolation"):
        warp(frame, shift, SHAPE, interpolation="sinc")


# --- register_frames ------------------------------------------------------------------------


def test_register_frames_rejects_bad_frames_and_registers_the_rest():
    field = StarField(seed=14)
    truths = {
        "a": np.eye(3),
        "b": similarity(dx=30.0, dy=-12.0, rotation_deg=0.3),
        "c": similarity(dx=-18.0, dy=22.0, rotation_deg=-0.2),
        "d": similarity(dx=8.0, dy=5.0, rotation_deg=0.1),
    }
    frames = [field.frame(truths[n], fwhm=3.0) for n in "abcd"]
    rng = np.random.default_rng(15)
    frames.append((100.0 + rng.normal(0.0, NOISE, SHAPE)).astype(np.float32))
    frames.append(field.frame(truths["b"], fwhm=3.0, transparency=0.01))
    frames.append(field.frame(truths["c"], fwhm=7.5))
    frames.append(StarField(seed=99).frame(fwhm=3.0))
    names = ["a", "b", "c", "d", "blank", "cloudy", "blurred", "elsewhere"]
    table = register_frames(frames, names, reference="a", min_stars=3).set_index("frame")

    reasons = table["reason"]
    assert reasons["blank"].startswith("too few stars")
    assert reasons["cloudy"].startswith("low transparency")
    assert reasons["blurred"].startswith("poor seeing/focus")
    assert reasons["elsewhere"].startswith("registration failed")
    assert (table.loc[["blank", "cloudy", "blurred", "elsewhere"], "status"] == "rejected").all()
    assert (table.loc[["blank", "cloudy", "blurred", "elsewhere"], "weight"] == 0).all()
    for name in "abcd":
        row = table.loc[name]
        assert row["status"] == "used"
        matrix = transform_matrix(row)
        assert grid_rms(matrix, truths[name]) < 0.05
    centre = np.array([[199.5, 149.5]])
    expected = apply(truths["b"], centre)[0] - centre[0]
    assert table.loc["b", ["dx", "dy"]].to_numpy(float) == pytest.approx(expected, abs=0.05)
    assert table.loc["b", "rotation_deg"] == pytest.approx(0.3, abs=0.01)
    assert table.loc["b", "scale"] == pytest.approx(1.0, abs=1e-3)
    assert table.loc["a", "reference"] and table["reference"].sum() == 1


def test_hot_pixels_do_not_lure_registration():
    field = StarField(seed=16)
    hy, hx, hv = hot_pixels(SHAPE, 300, seed=17)
    truths = [np.eye(3), similarity(dx=21.0, dy=-9.0, rotation_deg=0.3)]
    frames = []
    for truth in truths:
        frame = field.frame(truth, fwhm=3.0)
        frame[hy, hx] += hv
        frames.append(frame)
    table = register_frames(frames, ["ref", "moved"], reference="ref")
    row = table.iloc[1]
    assert row["status"] == "used"
    matrix = transform_matrix(row)
    assert grid_rms(matrix, truths[1]) < 0.05


def test_reference_is_the_best_frame_and_weights_follow_noise():
    field = StarField(seed=18)
    shifts = [similarity(dx=4.0 * k, dy=-3.0 * k) for k in range(4)]
    specs = [(3.6, NOISE), (2.6, NOISE), (3.2, NOISE), (3.0, 2 * NOISE)]
    frames = [field.frame(m, fwhm=f, noise=n) for m, (f, n) in zip(shifts, specs)]
    table = register_frames(frames, ["w", "x", "y", "z"], weighting="noise")
    assert table.loc[table["reference"], "frame"].tolist() == ["x"]
    assert (table["status"] == "used").all()
    assert table["weight"].mean() == pytest.approx(1.0)
    assert table["weight"].iloc[3] / table["weight"].iloc[0] == pytest.approx(0.25, rel=0.1)
    flat = register_frames(frames, ["w", "x", "y", "z"], reference="w", weighting="none")
    assert flat.loc[flat["reference"], "frame"].tolist() == ["w"]
    assert (flat["weight"] == 1.0).all()
    with pytest.raises(ValueError, match="'v' is not among"):
        register_frames(frames, ["w", "x", "y", "z"], reference="v")


def test_register_fits_paths_with_placeholder(tmp_path):
    field = StarField(seed=19)
    truth = similarity(dx=-15.0, dy=10.0, rotation_deg=0.2)
    paths = [tmp_path / "l1.fits", tmp_path / "l2.fits", tmp_path / "l3.fits"]
    fitsio.write_image(paths[0], field.frame(fwhm=3.0), {"EXPTIME": 60.0})
    fitsio.write_image(paths[1], field.frame(truth, fwhm=3.0), {"EXPTIME": 60.0})
    fitsio.write_rejected(paths[2], "unreadable raw file")
    table = register_frames(paths, reference="l1")
    assert table["frame"].tolist() == ["l1", "l2", "l3"]
    assert table["status"].tolist() == ["used", "used", "rejected"]
    assert table["reason"].iloc[2] == "unreadable raw file"
    matrix = transform_matrix(table.iloc[1])
    assert grid_rms(matrix, truth) < 0.05
    warped = warp(fitsio.read_image(paths[1])[0], matrix, SHAPE)
    residual = warped - fitsio.read_image(paths[0])[0]
    assert np.nanstd(residual) < 1.1 * np.sqrt(2) * NOISE


def test_size_mismatch_names_the_files(tmp_path):
    rng = np.random.default_rng(20)
    small, large = tmp_path / "small.fits", tmp_path / "large.fits"
    fitsio.write_image(small, rng.normal(100, 5, (50, 60)))
    fitsio.write_image(large, rng.normal(100, 5, (60, 60)))
    with pytest.raises(ValueError, match="differ in size") as info:
        register_frames([small, large])
    assert "small.fits: 50x60" in str(info.value)
    assert "large.fits: 60x60" in str(info.value)


# --- real data --------------------------------------------------------------------------------


@pytest.mark.skipif(not (DATA / "sbig-stl1001").is_dir(), reason=f"real data absent: {DATA}")
def test_sbig_lights_register_after_dark_subtraction():
    folder = DATA / "sbig-stl1001"
    dark = np.median(
        [fits.getdata(p).astype(np.float32) for p in sorted((folder / "dark").glob("*.FIT"))],
        axis=0,
    )
    paths = sorted((folder / "light").glob("*.FIT"))
    assert len(paths) == 13
    lights = [fits.getdata(p).astype(np.float32) - dark for p in paths]
    table = register_frames(lights, [p.stem for p in paths])
    assert (table["status"] == "used").all(), table[["frame", "reason"]]
    shift = np.hypot(table["dx"], table["dy"])
    assert shift.max() > 20.0
    assert np.abs(table["rotation_deg"]).max() > 0.1
    assert (table["rms_residual_px"] < 0.5).all()
    assert (table["n_matches"] >= 20).all()
    assert table["scale"].to_numpy() == pytest.approx(1.0, abs=2e-3)


# --- homography and distortion models -----------------------------------------------------


def projective(dx=12.0, dy=-7.0, tilt=(2e-5, -1.5e-5)):
    """Frame -> reference homography: a similarity with a perspective tilt (wide field)."""
    matrix = similarity(dx=dx, dy=dy, rotation_deg=0.4)
    matrix[2, :2] = tilt
    return matrix


def radial(points, k=6.0, centre=(500.0, 400.0), radius=640.0):
    """Reference -> frame positions under a shift and a cubic radial (barrel) distortion."""
    d = (points - np.asarray(centre)) / radius
    return points + k * d * np.sum(d**2, axis=1, keepdims=True) + np.array([4.0, -3.0])


def field_points(n, shape, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform([0, 0], [shape[1] - 1, shape[0] - 1], (n, 2)), rng


def test_homography_is_recovered_where_affine_is_not():
    shape = (800, 1000)
    ref, rng = field_points(250, shape, 30)
    truth = projective()
    frame = apply_projective(np.linalg.inv(truth), ref) + rng.normal(0, 0.03, ref.shape)
    homography, n, rms = find_transform(frame, ref, model="homography")
    affine, _, rms_affine = find_transform(frame, ref, model="affine")
    gx, gy = np.meshgrid(np.linspace(0, 999, 11), np.linspace(0, 799, 9))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    error = np.hypot(*(apply_projective(homography, grid) - apply_projective(truth, grid)).T)
    error_affine = np.hypot(*(apply(affine, grid) - apply_projective(truth, grid)).T)
    assert n > 200 and rms < 0.06
    assert np.sqrt(np.mean(error**2)) < 0.03
    assert np.sqrt(np.mean(error_affine**2)) > 0.5 and rms_affine > 0.3


def apply_projective(matrix, points):
    mapped = np.column_stack([points, np.ones(len(points))]) @ np.asarray(matrix).T
    return mapped[:, :2] / mapped[:, 2:]


def test_thin_plate_spline_recovers_a_smooth_distortion_affine_cannot():
    shape = (800, 1000)
    ref, rng = field_points(300, shape, 31)
    frame = radial(ref, k=6.0) + rng.normal(0, 0.03, ref.shape)
    gx, gy = np.meshgrid(np.arange(0, 1000, 25.0), np.arange(0, 800, 25.0))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    errors = {}
    for model in ("affine", "tps"):
        result = match_frame(frame, ref, model=model, match_radius=3.0)
        row = {"frame": "f", "model": model, "tps": result["tps"]}
        matrix = result["matrix"]
        row.update({f"m{i}{j}": matrix[i, j] / matrix[2, 2] for i in range(3) for j in range(3)})
        coords = pixel_map(row, shape)
        assert coords.shape == (*shape, 2) and coords.dtype == np.float32
        sampled = coords[grid[:, 1].astype(int), grid[:, 0].astype(int)]
        truth = radial(grid, k=6.0)
        errors[model] = float(np.sqrt(np.mean(np.sum((sampled - truth) ** 2, axis=1))))
        if model == "tps":
            spline = json.loads(result["tps"])
            assert spline["cv_rms"] < 0.1 and len(spline["points"]) == result["n_matches"]
    assert errors["tps"] < 0.1
    assert errors["affine"] > 0.5


def test_warp_through_the_pixel_map_of_a_distorted_frame():
    field = StarField(seed=32, n_stars=150)
    ref_image = field.frame(fwhm=3.0)
    ref_xy = np.column_stack([field.x, field.y])
    x, y = radial(ref_xy, k=3.0, centre=(200.0, 150.0), radius=250.0).T
    distorted = render(SHAPE, x, y, field.flux, fwhm=3.0, rng=field.rng)
    table = register_frames(
        [ref_image, distorted], ["ref", "distorted"], reference="ref", model="tps"
    ).set_index("frame")
    row = table.loc["distorted"]
    assert row["model"] == "tps" and row["n_matches"] > 40 and row["rms_residual_px"] < 0.15
    warped = warp(distorted, transform_matrix(row), SHAPE, coordinates=pixel_map(row, SHAPE))
    plain = warp(distorted, transform_matrix(row), SHAPE)
    crop = np.s_[20:-20, 20:-20]
    residual = np.nanstd((warped - ref_image)[crop])
    assert residual < 1.15 * np.sqrt(2) * NOISE
    assert np.nanstd((plain - ref_image)[crop]) > 1.5 * residual


def test_register_frames_records_weights_selection_and_residuals():
    field = StarField(seed=33)
    shifts = [similarity(dx=3.0 * k, dy=-2.0 * k) for k in range(6)]
    fwhms = [2.6, 3.0, 3.2, 3.4, 2.8, 3.1]
    frames = [field.frame(m, fwhm=f) for m, f in zip(shifts, fwhms)]
    frames.append(field.frame(shifts[1], fwhm=3.0, background=3000.0))
    names = list("abcdefg")
    table = register_frames(
        frames,
        names,
        reference="a",
        model="homography",
        weighting="psf_signal",
        outlier_sigma={"fwhm": 5.0, "eccentricity": 5.0, "background": 5.0, "n_stars": 5.0},
        keep_percent=60,
    ).set_index("frame")
    for column in ("weight_noise", "weight_psf", "weight_psf_signal", "flux_ratio",
                   "n_matches", "rms_residual_px", "m20", "m21", "model"):
        assert column in table
    assert table.loc["g", "reason"].startswith("background outlier")
    kept = table.index[table["status"] == "used"].tolist()
    # 60 % of the six registered frames: the four sharpest (FWHM 2.6, 2.8, 3.0, 3.1 px)
    assert kept == ["a", "b", "e", "f"]
    assert table.loc["d", "reason"].startswith("not among the best 60% by weight_psf_signal")
    assert table.loc["e", "weight"] > table.loc["b", "weight"] > table.loc["f", "weight"]
    assert table.loc[kept, "weight"].mean() == pytest.approx(1.0)
    assert (table.loc[["c", "d", "g"], "weight"] == 0).all()
    assert (table.loc[kept, "rms_residual_px"] < 0.1).all()
    assert table.loc["b", "flux_ratio"] == pytest.approx(1.0, abs=0.05)


def test_pixel_map_of_a_homography_row_warps_as_the_matrix_does():
    field = StarField(seed=34)
    truth = projective(dx=5.0, dy=3.0, tilt=(4e-5, -3e-5))
    image = field.frame(truth, fwhm=3.0)
    row = {f"m{i}{j}": truth[i, j] for i in range(3) for j in range(3)}
    row.update(frame="f", model="homography", tps="")
    coords = pixel_map(row, SHAPE)
    # the map sends every reference pixel to the frame position the inverse matrix gives
    assert coords[100, 250] == pytest.approx(apply_projective(np.linalg.inv(truth), [[250, 100]])[0],
                                             abs=1e-3)
    by_map = warp(image, np.eye(3), SHAPE, coordinates=coords)
    by_matrix = warp(image, transform_matrix(row), SHAPE)
    both = np.isfinite(by_map) & np.isfinite(by_matrix)
    assert both.mean() > 0.9
    assert np.max(np.abs(by_map - by_matrix)[both]) < 0.02 * np.nanmax(image)
    assert transform_matrix(row)[2, :2] == pytest.approx([4e-5, -3e-5])


def test_forward_pixel_map_inverts_the_backward_one_for_drizzle():
    shape = (400, 500)
    ref, rng = field_points(200, shape, 35)
    frame = radial(ref, k=4.0, centre=(250.0, 200.0), radius=320.0) + rng.normal(0, 0.03, ref.shape)
    result = match_frame(frame, ref, model="tps", match_radius=3.0)
    matrix = result["matrix"]
    row = {f"m{i}{j}": matrix[i, j] for i in range(3) for j in range(3)}
    row.update(frame="f", model="tps", tps=result["tps"])
    to_frame = pixel_map(row, shape)
    to_reference = pixel_map(row, shape, to="reference")
    # a reference pixel sent into the frame and back lands where it started (interior)
    ys, xs = np.mgrid[40:360:10, 40:460:10]
    there = to_frame[ys, xs]
    back = np.stack(
        [map_coordinates(to_reference[..., axis], [there[..., 1], there[..., 0]], order=1)
         for axis in (0, 1)], axis=-1,
    )
    error = np.hypot(back[..., 0] - xs, back[..., 1] - ys)
    assert np.sqrt(np.mean(error**2)) < 0.005
    with pytest.raises(ValueError, match="to must be"):
        pixel_map(row, shape, to="sky")
