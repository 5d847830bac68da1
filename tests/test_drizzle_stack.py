"""Deep-sky drizzle through STScI's drizzle package: pixmaps, flux, resolution, Bayer drizzle, outliers."""

import numpy as np
import pytest

from astroflow.calibration.debayer import cfa_channel_map
from astroflow.deepsky.drizzle import upsample
from astroflow.deepsky.drizzle_stack import (
    KERNELS,
    affine_pixmap,
    bayer_pattern,
    drizzle_frames,
    frame_pixmap,
    outlier_mask,
)
from astroflow.deepsky.quality import detect_stars
from astroflow.deepsky.register import warp
from astroflow.simulation.dither import dithered_frames

SHAPE = (64, 64)


def frame_dicts(sim, **extra):
    return [
        {"name": f"f{i}", "data": data, "pixmap": affine_pixmap(m, data.shape), "weight": 1.0, **extra}
        for i, (data, m) in enumerate(zip(sim["frames"], sim["matrices"]))
    ]


def mean_of_warped(sim, shape, interpolation):
    """Warp and average the frames (plain interpolation); the sky where no frame has data."""
    warped = np.array([warp(d, m, shape, interpolation=interpolation) for d, m in zip(sim["frames"], sim["matrices"])])
    count = np.isfinite(warped).sum(axis=0)
    return np.where(count > 0, np.nansum(warped, axis=0) / np.maximum(count, 1), sim["sky_adu"])


def median_fwhm(image):
    stars = detect_stars(np.nan_to_num(image).astype(np.float32))
    return float(np.median(stars.loc[stars["flag"] == 0, "fwhm"]))


def test_pixmap_of_a_known_affine_matrix():
    angle = np.radians(3.0)
    m = np.array([[np.cos(angle), -np.sin(angle), 5.25], [np.sin(angle), np.cos(angle), -2.5], [0, 0, 1]])
    pixmap = affine_pixmap(m, (4, 6))
    assert pixmap.shape == (4, 6, 2)
    for y, x in [(0, 0), (3, 5), (2, 1)]:
        np.testing.assert_allclose(pixmap[y, x], (m @ [x, y, 1])[:2], atol=1e-12)
    # scale 2: a reference pixel centre x lands on (x + 0.5) * 2 - 0.5 of the finer grid
    np.testing.assert_allclose(affine_pixmap(m, (4, 6), 2), (pixmap + 0.5) * 2 - 0.5, atol=1e-12)
    np.testing.assert_allclose(affine_pixmap(np.eye(3), (1, 1), 3)[0, 0], [1.0, 1.0])
    row = {"m00": m[0, 0], "m01": m[0, 1], "m02": m[0, 2], "m10": m[1, 0], "m11": m[1, 1], "m12": m[1, 2]}
    np.testing.assert_allclose(frame_pixmap(row, (4, 6)), pixmap, atol=1e-4)  # (pixel_map is float32)
    with pytest.raises(ValueError, match="finite"):
        affine_pixmap(np.full((3, 3), np.nan), (4, 6))


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("kernel", ["square", "turbo"])
def test_drizzle_of_dithered_frames_conserves_flux(scale, kernel):
    sim = dithered_frames(SHAPE, n_frames=9, sky_adu=0.0, noise_adu=0.0, rotation_deg=1.0, seed=1)
    result = drizzle_frames(frame_dicts(sim), SHAPE, scale=scale, pixfrac=0.7, kernel=kernel)
    assert result.image.shape == (SHAPE[0] * scale, SHAPE[1] * scale)
    # surface brightness kept: the flux is the sum over output pixels / scale**2
    flux = np.nansum(result.image) / scale**2
    truth = sim["truth"](scale).sum() / scale**2
    print(f"{kernel} x{scale}: flux {flux:.1f} vs truth {truth:.1f} ({flux / truth - 1:+.4%})")
    assert flux == pytest.approx(truth, rel=0.01)
    assert truth == pytest.approx(sim["stars"]["flux"].sum(), rel=0.01)


def test_drizzle_gives_narrower_stars_than_interpolation():
    # undersampled (FWHM 1.2 px) and dithered by sub-pixel shifts and small rotations
    sim = dithered_frames((96, 96), n_frames=16, noise_adu=1.0, rotation_deg=0.5, seed=2)
    scale = 2
    drizzled = drizzle_frames(frame_dicts(sim), (96, 96), scale=scale, pixfrac=0.5, kernel="square")
    interpolated = upsample(mean_of_warped(sim, (96, 96), "linear"), scale, method="linear")
    fwhm_drizzle = median_fwhm(drizzled.image - sim["sky_adu"]) / scale
    fwhm_interp = median_fwhm(interpolated - sim["sky_adu"]) / scale
    fwhm_truth = median_fwhm(sim["truth"](scale)) / scale
    print(f"FWHM (input px): truth {fwhm_truth:.3f}, drizzle {fwhm_drizzle:.3f}, interpolation {fwhm_interp:.3f}")
    assert fwhm_truth < fwhm_drizzle < 0.9 * fwhm_interp


def test_bayer_drizzle_puts_each_cfa_colour_in_its_own_channel():
    pattern = "GRBG"
    channels = cfa_channel_map(SHAPE, pattern)
    rng = np.random.default_rng(3)
    frames = []
    for i in range(12):
        # only the red pixels see light (100 ADU); green and blue pixels read 7 and 0
        mosaic = np.choose(channels, [100.0, 7.0, 0.0]).astype(np.float32)
        shift = rng.uniform(-2, 2, 2)
        m = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1.0]])
        pixmap = affine_pixmap(m, SHAPE)
        frames.append({"name": f"f{i}", "data": mosaic, "pixmap": pixmap, "weight": 1.0, "pattern": pattern})
    result = drizzle_frames(frames, SHAPE, scale=2, pixfrac=1.0, kernel="square")
    assert result.image.shape == (128, 128, 3) and result.weight.shape == (128, 128, 3)
    inner = (slice(8, -8), slice(8, -8))
    for c, value in enumerate([100.0, 7.0, 0.0]):
        plane = result.image[inner + (c,)]
        covered = np.isfinite(plane)
        assert covered.mean() > 0.95
        np.testing.assert_allclose(plane[covered], value, atol=1e-3)
    # green has twice the pixels of red and blue: twice the weight
    weights = result.weight[inner].mean(axis=(0, 1))
    assert weights[1] == pytest.approx(2 * weights[0], rel=0.1)
    assert weights[2] == pytest.approx(weights[0], rel=0.1)


def test_bayer_drizzle_refuses_mono_data_with_a_clear_error():
    mono = np.zeros(SHAPE, np.float32)
    assert bayer_pattern(mono, {"BAYERPAT": "RGGB"}, "a.fits") == "RGGB"
    with pytest.raises(ValueError, match=r"b\.fits: a mono image .* set drizzle\.bayer: false"):
        bayer_pattern(mono, {}, "b.fits")
    with pytest.raises(ValueError, match="c.fits: a colour image"):
        bayer_pattern(np.zeros(SHAPE + (3,)), {"BAYERPAT": "RGGB"}, "c.fits")
    placeholder = {"AFREASON": "a mono light has no CFA mosaic for Bayer drizzle"}
    with pytest.raises(ValueError, match="d.fits: a mono light has no CFA mosaic"):
        bayer_pattern(None, placeholder, "d.fits")


def test_bayer_drizzle_refuses_a_colour_image():
    frame = {"name": "rgb", "data": np.zeros(SHAPE + (3,)), "pixmap": affine_pixmap(np.eye(3), SHAPE),
             "weight": 1.0, "pattern": "RGGB"}
    with pytest.raises(ValueError, match="CFA mosaic"):
        drizzle_frames([frame], SHAPE, scale=2, pixfrac=1.0, kernel="square")


def test_outliers_are_masked_against_the_blotted_stack_and_do_not_survive():
    sim = dithered_frames(SHAPE, n_frames=8, noise_adu=3.0, rotation_deg=0.5, seed=4)
    frames = frame_dicts(sim)
    hit = frames[3]["data"].copy()
    # On the sky: a hit on the core of a star is within the derivative allowance (deriv_scale) of
    # an undersampled core, as in DrizzlePac, and stays.
    sky_pixels = np.argwhere(hit[5:59, 5:59] < sim["sky_adu"] + 15) + 5
    ys, xs = sky_pixels[np.random.default_rng(5).choice(len(sky_pixels), 30, replace=False)].T
    hit[ys, xs] += 5000.0  # cosmic rays
    trail = hit[30, 10:54] < sim["sky_adu"] + 15
    hit[30, 10:54][trail] += 800.0  # a satellite trail
    frames[3] = {**frames[3], "data": hit}
    # the rejection stack: frames warped and median-combined
    warped = np.array([warp(f["data"], m, SHAPE) for f, m in zip(frames, sim["matrices"])])
    stack = np.median(np.where(np.isfinite(warped), warped, sim["sky_adu"]), axis=0)
    clean = drizzle_frames(frame_dicts(sim), SHAPE, scale=2, pixfrac=0.8, kernel="square", stack=stack)
    masked = drizzle_frames(frames, SHAPE, scale=2, pixfrac=0.8, kernel="square", stack=stack)
    kept = drizzle_frames(frames, SHAPE, scale=2, pixfrac=0.8, kernel="square")
    rejected = [f["rejected"] for f in masked.frames]
    n_clean = [f["rejected"] for f in clean.frames]
    print(f"outlier pixels per frame: {rejected}; clean frames: {n_clean}")
    assert rejected[3] >= 30 + trail.sum()
    assert max(n_clean) < 0.002 * hit.size * 9  # grown by 1 px: a 3x3 block per false hit
    # On the sky: where a star is, leaving out one frame's sample of an undersampled core moves the
    # weighted mean by itself (each frame samples the core at another phase).
    sky = clean.image < sim["sky_adu"] + 10 * 3.0
    excess_kept = np.nanmax(np.abs(kept.image - clean.image)[sky])
    excess_masked = np.nanmax(np.abs(masked.image - clean.image)[sky])
    flux = np.nansum(masked.image - sim["sky_adu"]) / np.nansum(clean.image - sim["sky_adu"])
    print(
        f"largest change on the sky from the outliers: kept {excess_kept:.1f} ADU, masked "
        f"{excess_masked:.1f} ADU (noise 3 ADU); star flux masked / clean {flux:.4f}"
    )
    assert excess_kept > 100 and excess_masked < 5
    assert flux == pytest.approx(1.0, abs=0.005)


def test_outlier_mask_spares_stars_of_a_frame_with_worse_seeing():
    sharp = dithered_frames(SHAPE, n_frames=1, n_stars=8, fwhm_px=1.5, noise_adu=3.0, seed=6)
    soft = dithered_frames(SHAPE, n_frames=1, n_stars=8, fwhm_px=1.9, noise_adu=3.0, seed=6)
    # the model: the noise-free sharper field (frame 0 is the reference), its sky 3 ADU lower
    model = sharp["truth"](1) + sharp["sky_adu"] - 3.0
    mask, offset, noise = outlier_mask(soft["frames"][0], model)
    assert offset[0] == pytest.approx(3.0, abs=1.0) and 3.0 <= noise[0] < 4.0
    print(f"worse seeing: offset {offset[0]:.2f} ADU, noise {noise[0]:.2f} ADU, {mask.sum()} pixels masked")
    assert mask.sum() == 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_drizzles(kernel):
    sim = dithered_frames(SHAPE, n_frames=4, n_stars=3, noise_adu=1.0, seed=7)
    result = drizzle_frames(frame_dicts(sim), SHAPE, scale=2, pixfrac=1.0, kernel=kernel)
    inner = result.image[16:-16, 16:-16]
    assert np.isfinite(inner).mean() > 0.5 if kernel == "point" else np.isfinite(inner).all()
    assert np.nanmedian(inner) == pytest.approx(sim["sky_adu"], abs=1.0)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"scale": 4}, "scale"),
        ({"pixfrac": 0.0}, "pixfrac"),
        ({"pixfrac": 1.5}, "pixfrac"),
        ({"kernel": "box"}, "kernel"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    sim = dithered_frames(SHAPE, n_frames=1, seed=8)
    kwargs = {"scale": 2, "pixfrac": 0.9, "kernel": "square", **settings}
    with pytest.raises(ValueError, match=message):
        drizzle_frames(frame_dicts(sim), SHAPE, **kwargs)


def test_frame_pixmap_follows_a_homography_and_the_affine_pixmap():
    from astroflow.deepsky.drizzle_stack import affine_pixmap, frame_pixmap

    affine = {"frame": "a", "m00": 1.0, "m01": -0.01, "m02": 3.2, "m10": 0.01, "m11": 1.0, "m12": -1.5}
    np.testing.assert_allclose(frame_pixmap(affine, (40, 50), 2), affine_pixmap(
        [[1.0, -0.01, 3.2], [0.01, 1.0, -1.5], [0, 0, 1]], (40, 50), 2), atol=1e-3)
    homography = dict(affine, m20=1e-4, m21=-2e-4)
    pixmap = frame_pixmap(homography, (40, 50), 1)
    x, y = 30.0, 20.0
    w = 1e-4 * x - 2e-4 * y + 1
    assert pixmap[20, 30, 0] == pytest.approx((x - 0.01 * y + 3.2) / w, abs=1e-3)
    assert pixmap[20, 30, 1] == pytest.approx((0.01 * x + y - 1.5) / w, abs=1e-3)
