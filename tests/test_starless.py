"""Star removal around the network: stretch handling, recombination, NaN, baseline, metrics."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from astroflow.io.imagefile import UnreadableImageError, choose_encoding, read_finished_image
from astroflow.nets.unet import ResUNet, WeightsError, save_weights
from astroflow.restoration.starless import (
    classical_star_removal,
    network_stretch,
    remove_stars,
    screen,
    starless_metrics,
)
from astroflow.restoration.starnet import load_starless, predictor


def star_field(shape=(96, 128), n=25, seed=0, sky=100.0, channels=3):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky_img = sky + 20 * np.sin(xx / 17.0) + 10 * np.cos(yy / 23.0)
    stars = np.zeros(shape)
    for _ in range(n):
        y, x = rng.uniform(5, shape[0] - 5), rng.uniform(5, shape[1] - 5)
        stars += rng.uniform(200, 3000) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3**2))
    noise = rng.normal(0, 2, shape)
    base = (sky_img + noise)[:, :, None].repeat(channels, axis=2)
    starry = base + stars[:, :, None]
    return starry.astype(np.float32), base.astype(np.float32), stars > 6


def perfect_predictor(starless_display):
    """A stand-in for the network that returns a known starless display image."""
    return lambda display: starless_display


def test_linear_removal_is_exactly_invertible_and_only_removes_light():
    starry, base, _ = star_field()
    stretch = network_stretch(starry, 0.2)
    # The "network" answers with the true starless image, in the display domain.
    result = remove_stars(starry, perfect_predictor(stretch.apply(base)), encoding="linear")
    assert np.allclose(result.starless + result.stars, starry, rtol=0, atol=1e-3)
    assert (result.starless <= starry + 1e-4).all() and (result.stars >= 0).all()
    # and recovers the true starless image in ADU (the stretch is inverted exactly)
    assert np.abs(result.starless - np.minimum(base, starry)).max() < 0.05


def test_network_stretch_clips_nothing():
    starry, _, _ = star_field()
    stretch = network_stretch(starry, 0.2)
    assert np.allclose(stretch.invert(stretch.apply(starry)), starry, rtol=1e-4, atol=1e-2)
    assert np.median(stretch.apply(starry)) == pytest.approx(0.2, abs=0.02)


def test_display_removal_recombines_by_screen_exactly():
    starry, base, _ = star_field()
    display = np.clip(starry / starry.max(), 0, 1)
    truth = np.clip(base / starry.max(), 0, 1)
    result = remove_stars(display, perfect_predictor(truth), encoding="display")
    assert np.allclose(screen(result.starless, result.stars), display, atol=1e-5)
    assert np.allclose(result.starless, np.minimum(truth, display))


def test_nan_pixels_stay_nan_and_the_rest_is_processed():
    starry, base, _ = star_field()
    starry[10:12, 20:25] = np.nan
    calls = []

    def identity(display):
        calls.append(np.isfinite(display).all())
        return display

    with pytest.warns(UserWarning, match="10 NaN pixels"):
        result = remove_stars(starry, identity, encoding="linear")
    assert calls == [True]  # the network never sees NaN
    assert np.isnan(result.starless[10:12, 20:25]).all() and np.isnan(result.stars[10:12, 20:25]).all()
    finite = np.isfinite(starry)
    assert np.allclose(result.starless[finite], starry[finite], atol=1e-3)


def test_mono_image_keeps_its_shape():
    starry, base, _ = star_field(channels=1)
    result = remove_stars(starry[:, :, 0], lambda d: d * 0.9, encoding="linear")
    assert result.starless.shape == starry.shape[:2] and result.stars.shape == starry.shape[:2]


def test_bad_encoding_and_shape_are_errors():
    with pytest.raises(ValueError, match="unknown encoding"):
        remove_stars(np.zeros((8, 8), np.float32), lambda d: d, encoding="log")
    with pytest.raises(ValueError, match="shape"):
        remove_stars(np.zeros((8, 8, 2), np.float32), lambda d: d, encoding="linear")


def test_classical_baseline_masks_and_inpaints_the_stars():
    starry, base, footprint = star_field(n=15, seed=3)
    display = np.clip(starry / 1500.0, 0, 1)
    truth = np.clip(base / 1500.0, 0, 1)
    out, mask = classical_star_removal(display)
    assert mask[footprint].mean() > 0.8 and mask.mean() < 0.3
    before = starless_metrics(display, truth, display, footprint)
    after = starless_metrics(out, truth, display, footprint)
    assert before["residual_star_flux"] == pytest.approx(1.0)
    assert after["residual_star_flux"] < 0.2
    assert after["psnr"] > before["psnr"] + 5


def test_metrics_of_a_perfect_and_an_untouched_output():
    starry, base, footprint = star_field()
    display = np.clip(starry / starry.max(), 0, 1)
    truth = np.clip(base / starry.max(), 0, 1)
    perfect = starless_metrics(truth, truth, display, footprint)
    assert perfect["residual_star_flux"] == 0.0 and perfect["ssim"] == pytest.approx(1.0)
    untouched = starless_metrics(display, truth, display, footprint)
    assert untouched["residual_star_flux"] == pytest.approx(1.0) and untouched["outside_change"] == 0.0


def test_single_channel_16bit_tiff_is_read_as_mono(tmp_path):
    data = (np.arange(64 * 80).reshape(64, 80) % 65535).astype(np.uint16) + 20000
    tifffile.imwrite(tmp_path / "mono.tif", data)
    image, bits = read_finished_image(tmp_path / "mono.tif")
    assert image.shape == (64, 80) and bits == 16 and image.dtype == np.float32
    assert choose_encoding(image, bits) == "display"
    dark = (data // 100).astype(np.uint16)
    assert choose_encoding(dark.astype(np.float32), 16) == "linear"
    assert choose_encoding(image, 32) == "linear"


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(UnreadableImageError, match="broken.png"):
        read_finished_image(bad)
    Image.fromarray(np.zeros((4, 4, 2), np.uint8)[:, :, 0]).save(tmp_path / "ok.png")
    assert read_finished_image(tmp_path / "ok.png")[0].shape == (4, 4)


def test_weights_of_the_wrong_architecture_are_a_clear_error(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "starless.pt"
    save_weights(path, ResUNet(3, 3, base=4, depth=2), meta={"task": "starless"})
    model, meta = load_starless(path, device="cpu")
    assert meta["task"] == "starless"
    # Edit the stored architecture so that it no longer matches the tensors.
    blob = torch.load(path, weights_only=True)
    blob["arch"]["base"] = 8
    torch.save(blob, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match="wrong.pt.*different architecture"):
        load_starless(tmp_path / "wrong.pt", device="cpu")
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(WeightsError, match="text.pt"):
        load_starless(tmp_path / "text.pt", device="cpu")


def test_predictor_handles_images_smaller_than_a_tile_and_mono():
    torch.manual_seed(0)
    model = ResUNet(3, 3, base=4, depth=2).eval()
    predict = predictor(model, tile=64, overlap=8, batch=2)
    small = np.random.default_rng(0).random((20, 33, 3)).astype(np.float32)
    # An untrained residual U-Net starts as the identity (zero head).
    assert np.allclose(predict(small), small, atol=1e-5)
    mono = small[:, :, :1]
    assert predict(mono).shape == mono.shape
