import cv2
import numpy as np
import pytest

from astroflow.planetary.wavelets import (
    DEFAULT_GAINS,
    atrous_decompose,
    estimate_noise,
    starlet_noise_ratios,
    wavelet_sharpen,
)


def planet(n=128, seed=2, channels=None, radius=0.4):
    """A textured disk on a dark sky (linear ADU, positive): the sharp truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    disk = np.clip(radius * n - np.hypot(yy - n / 2, xx - n / 2), 0.0, 1.0)
    planes = []
    for _ in range(channels or 1):
        texture = cv2.GaussianBlur(rng.normal(0.0, 1.0, (n, n)), (0, 0), 2.0)
        planes.append(50.0 + disk * 2000.0 * (1.0 + 0.4 * np.tanh(texture / texture.std())))
    image = planes[0] if channels is None else np.stack(planes, axis=-1)
    return image.astype(np.float32)


def blur(image, sigma=1.5):
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def rms(a, b):
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize("n_layers", [1, 4, 6])
def test_decomposition_reconstructs_exactly(channels, n_layers):
    image = planet(channels=channels)
    layers, residual = atrous_decompose(image, n_layers)
    assert len(layers) == n_layers
    for layer in layers + [residual]:
        assert layer.shape == image.shape and layer.dtype == np.float32
    total = np.sum(np.stack(layers).astype(np.float64), axis=0) + residual
    np.testing.assert_allclose(total, image, rtol=0, atol=1e-6 * float(image.max()) * n_layers)
    # every detail layer has zero mean (mirror borders conserve the sum), the residual the mean
    for layer in layers:
        assert abs(float(layer.astype(np.float64).mean())) < 1e-3
    assert float(residual.mean()) == pytest.approx(float(image.mean()), rel=1e-6)


def test_decomposition_float64_and_layer_scales():
    image = np.zeros((129, 129))
    image[64, 64] = 1.0  # an impulse: layer j holds the j-th wavelet, of width ~2**j
    layers, residual = atrous_decompose(image, 5)
    assert all(layer.dtype == np.float64 for layer in layers)
    np.testing.assert_allclose(sum(layers) + residual, image, atol=1e-15)
    widths = [np.count_nonzero(np.abs(layer[64]) > 1e-12) for layer in layers]
    assert widths == [5, 13, 29, 61, 125]  # support of c_j: 1 + 4 * (2**j - 1) pixels
    # the transform of a centred impulse stays centred and symmetric (no shift)
    for layer in layers:
        np.testing.assert_allclose(layer, layer[::-1, ::-1], atol=1e-15)


def test_noise_ratios_match_starck_table():
    ratios = starlet_noise_ratios(7)
    np.testing.assert_allclose(
        ratios, [0.889, 0.200, 0.086, 0.041, 0.020, 0.010, 0.005], atol=2.5e-3
    )
    noise = np.random.default_rng(0).normal(0.0, 10.0, (512, 512))
    layers, _ = atrous_decompose(noise, 6)
    measured = [layer.std() / 10.0 for layer in layers]
    np.testing.assert_allclose(measured, ratios[:6], rtol=0.06)


@pytest.mark.parametrize("channels", [None, 3])
def test_unit_gains_return_the_input(channels):
    image = planet(channels=channels)
    out = wavelet_sharpen(image, (1.0,) * 6)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-3)


def test_sharpening_restores_a_blurred_planet():
    truth = planet(n=256)
    blurred = blur(truth)
    sharp = wavelet_sharpen(blurred, DEFAULT_GAINS)
    # closer to the unblurred truth: measured RMS 147 -> 98 ADU with the default gains
    assert rms(sharp, truth) < 0.7 * rms(blurred, truth)

    # and more high-frequency energy (Laplacian), though not more than the truth has
    def hf(image):
        return float(np.mean(cv2.Laplacian(image.astype(np.float64), cv2.CV_64F) ** 2))

    assert hf(blurred) * 2 < hf(sharp) < hf(truth)
    # a too strong boost of the finest layer overshoots: gains are not "more is better"
    assert rms(wavelet_sharpen(blurred, (6.0, 4.0, 2.0, 1, 1, 1)), truth) > rms(sharp, truth)


def test_sharpening_checkerboard_is_closer_to_the_original():
    yy, xx = np.mgrid[:128, :128]
    truth = np.where((yy // 8 + xx // 8) % 2 == 0, 1000.0, 400.0).astype(np.float32)
    blurred = blur(truth)
    sharp = wavelet_sharpen(blurred, DEFAULT_GAINS)
    assert rms(sharp, truth) < 0.9 * rms(blurred, truth)  # measured 166 -> 141 ADU


@pytest.mark.parametrize("channels", [None, 3])
def test_mean_is_preserved_and_image_is_not_shifted(channels):
    image = blur(planet(channels=channels))
    for gains in (DEFAULT_GAINS, (3.0, 2.0, 1.5, 1.2, 0.8, 0.5), (0.0,) * 6):
        out = wavelet_sharpen(image, gains, clip=False)
        np.testing.assert_allclose(
            out.mean(axis=(0, 1), dtype=np.float64),
            image.mean(axis=(0, 1), dtype=np.float64),
            rtol=1e-6,
        )
    # an off-centre star keeps its centroid
    star = np.full((96, 96), 10.0, np.float32)
    star[40, 57] = 5000.0
    star = blur(star, 1.2)
    out = wavelet_sharpen(star, (2.0, 1.6, 1.25, 1.0, 1.0), clip=False)
    yy, xx = np.mgrid[:96, :96]

    def centroid(a):
        a = a.astype(np.float64) - 10.0
        return (a * yy).sum() / a.sum(), (a * xx).sum() / a.sum()

    np.testing.assert_allclose(centroid(out), centroid(star), atol=1e-3)
    assert np.unravel_index(np.argmax(out), out.shape) == (40, 57)


def test_clip_sets_negative_ringing_to_zero():
    image = np.zeros((64, 64), np.float32)
    image[24:40, 24:40] = 1000.0  # a sharp-edged bright square on a zero background
    unclipped = wavelet_sharpen(image, (3.0, 3.0, 2.0, 1.0, 1.0), clip=False)
    assert unclipped.min() < -10  # ringing below the limb
    clipped = wavelet_sharpen(image, (3.0, 3.0, 2.0, 1.0, 1.0))
    assert clipped.min() == 0.0
    np.testing.assert_array_equal(clipped, np.maximum(unclipped, 0.0))
    assert clipped.max() == unclipped.max()  # no upper clip


def test_denoise_reduces_noise_on_a_flat_field():
    rng = np.random.default_rng(5)
    flat = (1000.0 + rng.normal(0.0, 10.0, (256, 256, 3))).astype(np.float32)
    plain = wavelet_sharpen(flat, DEFAULT_GAINS)
    denoised = wavelet_sharpen(flat, DEFAULT_GAINS, denoise=(3.0, 2.0, 1.0, 0.0, 0.0, 0.0))
    assert plain.std() > 1.5 * flat.std()  # sharpening amplifies noise ...
    assert denoised.std() < 0.5 * flat.std()  # ... denoising removes most of it
    assert wavelet_sharpen(flat, (1.0,) * 6, denoise=3.0).std() < 0.1 * flat.std()
    np.testing.assert_allclose(denoised.mean(axis=(0, 1)), flat.mean(axis=(0, 1)), rtol=1e-4)
    # zero thresholds are no denoising
    np.testing.assert_array_equal(wavelet_sharpen(flat, DEFAULT_GAINS, denoise=0.0), plain)


def test_denoise_on_a_planet_cleans_the_sky_and_lowers_the_error():
    clean = blur(planet(n=256, radius=0.25))
    rng = np.random.default_rng(6)
    noisy = (clean + rng.normal(0.0, 5.0, clean.shape)).astype(np.float32)
    sky = np.s_[:40, :40]
    strong = wavelet_sharpen(noisy, (1.0,) * 6, denoise=(3.0, 2.0, 0, 0, 0, 0))
    assert strong[sky].std() < 0.25 * noisy[sky].std()  # measured 5.07 -> 0.82 ADU
    # a light threshold on layer 1 only lowers the error against the noiseless image
    light = wavelet_sharpen(noisy, (1.0,) * 6, denoise=(1.0, 0, 0, 0, 0, 0))
    assert rms(light, clean) < 0.85 * rms(noisy, clean)  # measured 5.00 -> 3.90 ADU
    # a known noise sigma can be given instead of the estimate, per channel for RGB
    given = wavelet_sharpen(noisy, (1.0,) * 6, denoise=(1.0, 0, 0, 0, 0, 0), noise_sigma=5.0)
    assert rms(given, clean) < 0.85 * rms(noisy, clean)
    rgb = np.stack([noisy, noisy], axis=-1)
    out = wavelet_sharpen(rgb, (1.0,) * 6, denoise=(1.0, 0, 0, 0, 0, 0), noise_sigma=[5.0, 0.0])
    np.testing.assert_allclose(out[..., 0], given, rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], noisy, rtol=1e-5, atol=1e-3)  # sigma 0: untouched
    with pytest.raises(ValueError, match="noise_sigma"):
        wavelet_sharpen(rgb, (1.0,) * 6, denoise=1.0, noise_sigma=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="noise_sigma"):
        wavelet_sharpen(noisy, (1.0,) * 6, denoise=1.0, noise_sigma=-1.0)


def test_noise_estimate():
    rng = np.random.default_rng(7)
    flat = (300.0 + rng.normal(0.0, 10.0, (256, 256, 3))).astype(np.float32)
    np.testing.assert_allclose(estimate_noise(flat), 10.0, rtol=0.03)
    assert isinstance(estimate_noise(flat[..., 0]), float)
    # a planet covering a fifth of the frame biases the estimate up a little (measured 6.6) ...
    small = blur(planet(n=256, radius=0.25)) + rng.normal(0.0, 5.0, (256, 256))
    assert 5.0 < estimate_noise(small) < 7.5
    # ... one covering half of it a lot (measured 14.9): documented limitation
    large = blur(planet(n=256, radius=0.4)) + rng.normal(0.0, 5.0, (256, 256))
    assert estimate_noise(large) > 10.0


def test_nan_input_is_rejected():
    image = planet()
    image[10, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        atrous_decompose(image)
    with pytest.raises(ValueError, match="NaN"):
        wavelet_sharpen(image, DEFAULT_GAINS)


def test_wrong_number_of_gains_or_denoise_values():
    image = planet()
    with pytest.raises(ValueError, match="one value per layer"):
        wavelet_sharpen(image, DEFAULT_GAINS, denoise=(3.0, 2.0))
    with pytest.raises(ValueError, match="gains"):
        wavelet_sharpen(image, ())
    with pytest.raises(ValueError, match="gains"):
        wavelet_sharpen(image, 2.0)
    with pytest.raises(ValueError, match="gains must be finite"):
        wavelet_sharpen(image, (1.0, np.nan, 1.0))
    with pytest.raises(ValueError, match="denoise must be >= 0"):
        wavelet_sharpen(image, (1.0, 1.0), denoise=(-1.0, 0.0))


def test_too_many_layers_for_the_image_size():
    image = np.ones((60, 200), np.float32)
    atrous_decompose(image, 5)  # 2**5 = 32 < 60
    with pytest.raises(ValueError, match="at most 5 layer"):
        atrous_decompose(image, 6)  # the last kernel spans +/-64 > 60 pixels
    with pytest.raises(ValueError, match="6 gains given: .* at most 5 layer"):
        wavelet_sharpen(image, DEFAULT_GAINS)
    wavelet_sharpen(image, DEFAULT_GAINS[:5])
    with pytest.raises(ValueError, match="n_layers"):
        atrous_decompose(image, 0)


def test_bad_image_shapes():
    with pytest.raises(ValueError, match="shape"):
        atrous_decompose(np.ones(100))
    with pytest.raises(ValueError, match="shape"):
        wavelet_sharpen(np.ones((2, 100, 100, 3)), DEFAULT_GAINS)
