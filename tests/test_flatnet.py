"""Flat-field correction network: synthetic artifacts, loss, training, inference, shipped weights."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from astroflow.calibration.flatgrid import from_grid, to_grid
from astroflow.calibration.flatnet import correct, heldout_metrics, load_flatnet, ratio_rms
from astroflow.nets.training import FlatFieldLoss, train
from astroflow.nets.unet import FlatFieldNet, WeightsError, load_weights, save_weights
from astroflow.simulation.flatfield import artifact_fields, grid_pair, make_shard, render_sample

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "flatfield.pt"


def _fields_with_donut(shape=(256, 256)):
    for seed in range(100):
        flat, gradient, p = artifact_fields(seed, shape, sky_adu=100.0)
        donuts = [
            m for m in p["motes"]
            if m["kind"] == "donut" and m["depth"] > 0.02 and m["radius_px"] > 6
            and 20 < m["x"] < shape[1] - 20 and 20 < m["y"] < shape[0] - 20
        ]
        if donuts:
            return flat, gradient, p, donuts[0]
    raise AssertionError("no deep donut drawn in 100 seeds")


def test_artifact_fields_flat_mean_one_donut_darker_gradient_smooth():
    flat, gradient, p, mote = _fields_with_donut()
    assert flat.dtype == np.float32 and flat.shape == (256, 256)
    assert abs(float(flat.mean()) - 1.0) < 1e-5
    # the rim of the donut is darker than the flat just outside it
    yy, xx = np.mgrid[0:256, 0:256]
    r = np.hypot(xx - mote["x"], yy - mote["y"]) / mote["radius_px"]
    rim = np.median(flat[(r > 0.7) & (r < 0.9)])
    outside = np.median(flat[(r > 1.6) & (r < 2.2)])
    assert rim < outside * (1 - 0.4 * mote["depth"])
    # gradient: non-negative, minimum 0, no pixel-scale structure (second differences tiny)
    assert gradient.min() == 0.0 and gradient.max() > 0
    g = gradient.astype(np.float64)
    second = max(np.abs(np.diff(g, 2, axis=0))[3:-3, 3:-3].max(), np.abs(np.diff(g, 2, axis=1))[3:-3, 3:-3].max())
    assert second < 0.02 * g.max()


def test_render_sample_follows_the_image_model_and_is_deterministic():
    s = render_sample(3, 128)
    again = render_sample(3, 128)
    np.testing.assert_array_equal(s.observed, again.observed)
    # observed = clean x flat + gradient, up to the gradient's shot noise
    residual = s.observed - (s.clean * s.flat + s.gradient)
    sigma = np.sqrt(s.gradient.max() / s.params["gain"]) + 1.0 / s.params["gain"]
    assert np.abs(residual).max() < 8 * sigma + 1e-3
    assert s.kind in ("synthetic", "hubble")


def test_to_grid_ignores_a_star_and_from_grid_is_smooth():
    plane = np.full((512, 512), 100.0, np.float32)
    plane[200:203, 300:303] = 1e5  # a bright star of 3x3 px
    cells = to_grid(plane, 64)
    np.testing.assert_allclose(cells, 100.0, rtol=1e-6)
    with pytest.raises(ValueError, match="smaller than"):
        to_grid(plane[:32], 64)
    up = from_grid(np.random.default_rng(0).normal(1.0, 0.01, (16, 16)), (256, 256))
    assert up.shape == (256, 256)
    assert np.abs(np.diff(up, axis=0)).max() < 0.01  # no jump larger than between grid cells


def test_physics_loss_is_zero_for_the_truth_and_not_for_no_correction():
    x, target, m = grid_pair(render_sample(11, 128), grid=32)
    t = torch.from_numpy(target)[None]
    loss = FlatFieldLoss()
    terms = loss.terms(t, t)
    assert all(float(v) == 0.0 for v in terms.values())
    # "no artifact" (flat 1, gradient 0) is penalised by the physics term
    xt = torch.from_numpy(x)[None]
    none = torch.cat([torch.ones_like(xt), torch.zeros_like(xt), xt], dim=1)
    assert float(loss.terms(none, t)["physics"]) > 1e-3
    # the target reproduces the input exactly: x = clean flat + gradient
    np.testing.assert_allclose(target[2] * target[0] + target[1], x[0], rtol=1e-5, atol=1e-5)


def test_untrained_network_is_the_identity():
    model = FlatFieldNet(base=4, depth=2, grad_pool=2).eval()
    x = torch.rand(2, 1, 32, 32) + 0.5
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out[:, 0], torch.ones_like(out[:, 0]))
    torch.testing.assert_close(out[:, 1], torch.zeros_like(out[:, 1]))
    torch.testing.assert_close(out[:, 2:], x)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A FlatFieldNet trained for a few seconds on a tiny shard, and its history."""
    folder = tmp_path_factory.mktemp("flatnet")
    make_shard(folder / "train.npz", 12, [1], size=128, grid=32)
    make_shard(folder / "val.npz", 4, [2], size=128, grid=32)
    torch.manual_seed(0)
    model = FlatFieldNet(base=8, depth=2, grad_pool=2)
    loss = FlatFieldLoss()
    with np.load(folder / "val.npz") as data:
        xv, yv = torch.from_numpy(data["observed"]), torch.from_numpy(data["fields"])
    with torch.no_grad():
        before = float(loss(model(xv), yv))
    history = train(model, [folder / "train.npz"], [folder / "val.npz"], epochs=4, steps_per_epoch=20,
                    batch_size=4, crop=32, lr=3e-3, loss=loss, input_key="observed", target_key="fields")
    model.grid = 32
    return model, before, history


def test_tiny_training_lowers_the_validation_loss(tiny):
    model, before, history = tiny
    assert history["val_loss"].iloc[-1] < 0.85 * before


def test_correct_changes_only_smooth_fields(tiny):
    model, _, _ = tiny
    s = render_sample(21, 256)
    image = s.observed
    corrected, flat, gradient = correct(image, model)
    assert corrected.shape == flat.shape == gradient.shape == image.shape
    np.testing.assert_allclose(corrected * flat + gradient, image, rtol=1e-4, atol=1e-3 * float(np.median(image)))
    # the fields carry no pixel-scale structure: a 3x3 box blur leaves them as they are
    for f, scale in ((flat, 1.0), (gradient, float(np.median(image)))):
        inner = f[4:-4, 4:-4]
        blurred = cv2.blur(f, (3, 3))[4:-4, 4:-4]
        assert np.abs(inner - blurred).max() < 2e-3 * scale
    # while the image's stars and noise do: the correction cannot have followed them
    assert np.abs(image - cv2.blur(image, (3, 3))).max() > 0.1 * float(np.median(image))
    rgb = np.stack([image, image * 0.8, image * 1.2], axis=-1)
    c3, f3, g3 = correct(rgb, model)
    assert c3.shape == rgb.shape
    np.testing.assert_allclose(f3[..., 0], flat, rtol=1e-5)


def test_correct_rejects_bad_input(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="positive sky"):
        correct(np.zeros((128, 128), np.float32), model)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\)"):
        correct(np.ones((64, 64, 2), np.float32), model)
    bad = np.ones((128, 128), np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        correct(bad, model)


def test_ratio_rms_measures_a_flat_error():
    rng = np.random.default_rng(0)
    reference = rng.normal(1000.0, 5.0, (256, 256))
    yy, xx = np.mgrid[0:256, 0:256]
    error = 1 + 0.02 * np.sin(xx / 40.0)
    assert ratio_rms(reference, reference) < 1e-12
    measured = ratio_rms(reference * error, reference)
    assert 0.012 < measured < 0.016  # RMS of a 2 % sine: 1.41 %


def test_weights_round_trip_and_wrong_kind(tiny, tmp_path):
    model, _, _ = tiny
    path = save_weights(tmp_path / "flat.pt", model, meta={"grid": 32})
    loaded, meta = load_flatnet(path)
    assert loaded.grid == 32 and meta["grid"] == 32
    x = torch.rand(1, 1, 32, 32) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    other = save_weights(tmp_path / "unet.pt", load_weights(path)[0].net)
    with pytest.raises(WeightsError, match="FlatFieldNet"):
        load_flatnet(other)


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/flatfield.pt not shipped")
def test_shipped_weights_reduce_the_error_on_held_out_frames():
    model, meta = load_flatnet(SHIPPED)
    assert meta["task"] == "flatfield" and model.grid == meta["grid"]
    scores = heldout_metrics(model, [[990, i] for i in range(6)], size=512)
    # medians over 6 frames (measured: residual 0.057 against 0.082 of the sky, flat 2.9 % against 3.9 %)
    assert scores["residual_rms"] < 0.85 * scores["residual_rms_uncorrected"]
    assert scores["flat_rms"] < 0.85 * scores["flat_rms_uncorrected"]
