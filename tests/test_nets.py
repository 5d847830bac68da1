"""Tests of astroflow.nets.unet (ResUNet, weight files) and astroflow.nets.training (data, losses, loop).

Everything is tiny (base 4, depth 2, 32-px crops of 48-px images) so that the whole file runs in
seconds on one CPU thread.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from astroflow.nets.metrics import image_ssim, psnr, ssim
from astroflow.nets.training import (
    HISTORY_COLUMNS,
    CompositeLoss,
    ShardDataset,
    plot_history,
    train,
)
from astroflow.nets.unet import (
    ResUNet,
    WeightsError,
    build_model,
    count_parameters,
    load_weights,
    save_weights,
)

TINY = {"base": 4, "depth": 2}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return ResUNet(3, 3, **{**TINY, **kwargs})


def make_pairs(n, size, rng, channels=3):
    """Starry/starless pairs: a smooth sky with a gradient, plus a few bright Gaussian dots."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    starless = np.empty((n, channels, size, size), np.float32)
    starry = np.empty_like(starless)
    for k in range(n):
        a, b, c = rng.uniform(0.05, 0.2, 3)
        sky = a + b * 0.3 * yy / size + c * 0.3 * xx / size
        stars = np.zeros((size, size), np.float32)
        for _ in range(rng.integers(3, 7)):
            y0, x0 = rng.uniform(2, size - 2, 2)
            stars += rng.uniform(0.4, 0.8) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / 2.0)
        for ch in range(channels):
            starless[k, ch] = sky * (1.0 + 0.1 * ch)
            starry[k, ch] = np.clip(starless[k, ch] + stars, 0.0, 1.0)
    to16 = lambda a: np.round(a * 65535).astype(np.uint16)  # noqa: E731
    return to16(starry), to16(starless)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two training shards of 8 pairs and one validation shard of 4, 48x48 px, uint16."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(1)
    paths = {"train": [], "val": []}
    for split, count, n in (("train", 2, 8), ("val", 1, 4)):
        for i in range(count):
            starry, starless = make_pairs(n, 48, rng)
            path = root / f"{split}_{i}.npz"
            np.savez_compressed(path, starry=starry, starless=starless)
            paths[split].append(path)
    return paths


FAST = {"batch_size": 4, "crop": 32, "lr": 3e-3, "device": "cpu", "steps_per_epoch": 3}


def weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------- nets


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(37, 53), (32, 32), (5, 3), (1, 1)])
def test_resunet_keeps_any_size(channels, size):
    torch.manual_seed(0)
    model = ResUNet(channels, channels, base=4, depth=2, residual_output=False)
    x = torch.rand(2, channels, *size)
    assert model(x).shape == x.shape


def test_resunet_other_output_channels_and_arch():
    model = ResUNet(3, 1, base=4, depth=3, blocks=2, residual_output=False)
    assert model(torch.rand(1, 3, 20, 30)).shape == (1, 1, 20, 30)
    assert model.arch == {
        "name": "ResUNet",
        "in_channels": 3,
        "out_channels": 1,
        "base": 4,
        "depth": 3,
        "blocks": 2,
        "residual_output": False,
    }
    rebuilt = build_model(model.arch)
    assert isinstance(rebuilt, ResUNet) and rebuilt.arch == model.arch
    assert count_parameters(rebuilt) == count_parameters(model)


def test_residual_output_is_identity_at_init_and_needs_equal_channels():
    model = tiny_model()
    x = torch.rand(1, 3, 37, 53)
    assert torch.equal(model(x), x)
    with pytest.raises(ValueError, match="in_channels .* must equal out_channels"):
        ResUNet(3, 1)
    with pytest.raises(ValueError, match="depth"):
        ResUNet(depth=0)
    with pytest.raises(ValueError, match="expects a tensor"):
        model(torch.rand(1, 1, 8, 8))


def test_build_model_rejects_unknown_architectures():
    with pytest.raises(ValueError, match="unknown architecture 'Transformer'"):
        build_model({"name": "Transformer"})
    with pytest.raises(ValueError, match="bad arguments"):
        build_model({"name": "ResUNet", "width": 3})


def test_count_parameters():
    conv = torch.nn.Conv2d(2, 3, 3)
    assert count_parameters(conv) == 2 * 3 * 9 + 3
    assert count_parameters(ResUNet(**TINY)) > 0


def test_save_load_round_trip(tmp_path):
    model = tiny_model(residual_output=False)
    x = torch.rand(2, 3, 37, 53)
    path = save_weights(tmp_path / "sub" / "w.pt", model, meta={"psnr": 40.5, "shards": [1, 2]})
    assert path.exists() and not list(path.parent.glob(".*tmp*"))
    loaded, meta = load_weights(path, expected={"name": "ResUNet", "in_channels": 3})
    assert meta == {"psnr": 40.5, "shards": [1, 2]}
    assert loaded.arch == model.arch and not loaded.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_rejects_bad_meta_and_models_without_arch(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_weights(tmp_path / "w.pt", tiny_model(), meta={"x": object()})
    with pytest.raises(ValueError, match="no arch"):
        save_weights(tmp_path / "w.pt", torch.nn.Conv2d(1, 1, 3))
    assert not list(tmp_path.iterdir())


def test_load_weights_of_a_different_architecture(tmp_path):
    path = tmp_path / "mislabelled.pt"
    payload = {"arch": {**tiny_model().arch, "base": 8}, "state_dict": tiny_model().state_dict()}
    torch.save(payload, path)
    with pytest.raises(WeightsError, match="different architecture") as info:
        load_weights(path)
    assert str(path) in str(info.value)


def test_load_weights_expected_mismatch(tmp_path):
    path = save_weights(tmp_path / "w.pt", tiny_model())
    with pytest.raises(WeightsError, match=r"in_channels=3 in the file, expected 1") as info:
        load_weights(path, expected={"in_channels": 1, "base": 4})
    assert str(path) in str(info.value) and "different architecture" in str(info.value)
    with pytest.raises(WeightsError, match="colour absent from the file"):
        load_weights(path, expected={"colour": True})


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a torch file\n", "not a torch weight file"),
        (b"", "not a torch weight file"),
        ("npz", "not a torch weight file"),
        ({"state_dict": {}}, "lacks 'arch'"),
        ({"arch": {"name": "ResUNet"}}, "lacks 'state_dict'"),
        ([1, 2], "holds a list"),
        ({"arch": {"name": "Mystery"}, "state_dict": {}}, "unknown architecture 'Mystery'"),
        ({"arch": {"name": "ResUNet", "depth": -1}, "state_dict": {}}, "unusable architecture"),
    ],
)
def test_load_weights_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, a=np.zeros(3))
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=match) as info:
        load_weights(path)
    assert str(path) in str(info.value)


def test_load_weights_refuses_pickled_code(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tiny_model(), path)  # a whole pickled module, not a state dict
    with pytest.raises(WeightsError, match="not a torch weight file"):
        load_weights(path)


def test_load_weights_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_weights(tmp_path / "nowhere.pt")


# ---------------------------------------------------------------------------- losses, metrics


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 40, generator=gen)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    values = [
        ssim(x, x + s * torch.randn(x.shape, generator=gen)).item() for s in (0.01, 0.05, 0.2)
    ]
    assert 1.0 > values[0] > values[1] > values[2]
    assert ssim(x[0, 0], x[0, 0] + 0.05).item() < 1.0  # (H, W) input
    assert ssim(x, x, reduction="none").shape == (2,)
    with pytest.raises(ValueError, match="smaller than the 11-px window"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_ssim_is_wang_et_al_and_equals_scikit_image_with_their_settings():
    """One SSIM (11-px Gaussian window, sigma 1.5, population statistics, K = 0.01, 0.03):
    torch, numpy (channels last) and scikit-image with those settings agree."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    truth = rng.random((40, 48, 3)) * 500.0
    image = truth + rng.normal(0.0, 40.0, truth.shape)
    expected = structural_similarity(
        truth, image, data_range=500.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )
    value, smap = image_ssim(truth, image, data_range=500.0, full=True)
    assert value == pytest.approx(expected, abs=1e-10)
    assert smap.shape == (40, 48) and np.isnan(smap[:5]).all() and np.isnan(smap[:, -5:]).all()
    assert np.nanmean(smap) == pytest.approx(value, abs=1e-12)
    tensors = [torch.from_numpy(a.transpose(2, 0, 1) / 500.0).float() for a in (truth, image)]
    assert ssim(*tensors).item() == pytest.approx(expected, abs=1e-5)
    assert image_ssim(truth[..., 0], truth[..., 0], data_range=500.0) == pytest.approx(1.0)


def test_psnr_in_db():
    x = torch.zeros(2, 1, 8, 8)
    assert psnr(x, x + 0.1).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(x, x).item() == pytest.approx(100.0)
    per = psnr(x, torch.stack([x[0] + 0.1, x[1] + 0.01]), reduction="none")
    assert per.tolist() == pytest.approx([20.0, 40.0], abs=1e-3)


def test_composite_loss():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=gen)
    loss = CompositeLoss()
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    y = (x + 0.05 * torch.randn(x.shape, generator=gen)).requires_grad_()
    value = loss(y, x)
    value.backward()
    assert value.item() > 0 and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    terms = loss.terms(y, x)
    assert set(terms) == {"l1", "ssim", "fft"} and all(t.item() > 0 for t in terms.values())
    assert CompositeLoss(1.0, 0.0, 0.0)(y, x).item() == pytest.approx(terms["l1"].item())
    with pytest.raises(ValueError, match="ssim_weight"):
        CompositeLoss(ssim_weight=-1)


# ------------------------------------------------------------------------------------- data


def test_shard_dataset(shards):
    ds = ShardDataset(shards["train"], crop=32)
    assert len(ds) == 16 and ds.shapes == [(8, 3, 48, 48)] * 2
    x, y = ds[9]
    assert x.shape == y.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.all(x >= y - 1e-6)  # stars only add light
    again = ShardDataset(shards["train"], crop=32)
    assert torch.equal(again[9][0], x)  # seeded per (epoch, index)
    assert not torch.equal(ds[(9, 1)][0], x)  # another draw of the same sample
    ds.set_epoch(1)
    assert not torch.equal(ds[9][0], x)
    centre = ShardDataset(shards["val"], crop=32, augment=False)
    with np.load(shards["val"][0]) as data:
        expected = data["starry"][2, :, 8:40, 8:40] / 65535.0
    np.testing.assert_allclose(centre[2][0].numpy(), expected, atol=1e-7)
    assert ShardDataset(shards["val"], crop=None, augment=False)[0][0].shape == (3, 48, 48)
    with pytest.raises(IndexError):
        ds[16]


def test_shard_dataset_float_arrays_and_errors(tmp_path, shards):
    path = tmp_path / "float.npz"
    a = np.full((2, 1, 16, 16), 0.25, np.float32)
    np.savez(path, starry=a, starless=a * 2)
    x, y = ShardDataset([path], crop=8)[1]
    assert torch.all(x == 0.25) and torch.all(y == 0.5)
    with pytest.raises(ValueError, match="has no array 'clean'"):
        ShardDataset([path], crop=8, target_key="clean")
    with pytest.raises(ValueError, match="smaller than the crop"):
        ShardDataset([path], crop=32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, starry=a, starless=a[:, :, :8])
    with pytest.raises(ValueError, match="differ in N, H or W"):
        ShardDataset([bad], crop=8)
    with pytest.raises(FileNotFoundError):
        ShardDataset([tmp_path / "absent.npz"])
    with pytest.raises(ValueError, match="no shards"):
        ShardDataset([])


# ----------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(shards):
    """A tiny network trained for 6 epochs on the toy task, and its history."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_model()
    try:
        history = train(
            model, shards["train"], shards["val"], epochs=6, **{**FAST, "steps_per_epoch": 6}
        )
    finally:
        torch.set_num_threads(threads)
    return model, history


def test_training_learns_to_remove_dots(trained, shards):
    model, history = trained
    assert list(history.columns) == list(HISTORY_COLUMNS)
    assert history["epoch"].tolist() == list(range(1, 7))
    assert (history["steps"] == 6).all()
    assert history["train_loss"].iloc[-1] < 0.6 * history["train_loss"].iloc[0]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    # better than doing nothing (the untrained residual network is the identity)
    val = ShardDataset(shards["val"], crop=32, augment=False)
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.stack([val[i][1] for i in range(len(val))])
    baseline = psnr(x, y).item()
    assert history["val_psnr"].iloc[-1] > baseline + 3.0
    assert history["val_psnr"].iloc[-1] > history["val_psnr"].iloc[0]
    assert history["val_ssim"].between(0, 1).all()
    assert (history["lr"] > 0).all() and history["lr"].iloc[-1] < history["lr"].max()
    assert not model.training


def test_training_logs_each_epoch(shards, caplog):
    logger = logging.getLogger("test_nets.train")
    with caplog.at_level(logging.INFO, logger="test_nets.train"):
        train(tiny_model(), shards["train"], shards["val"], epochs=2, log=logger, **FAST)
    lines = [r.getMessage() for r in caplog.records if r.name == "test_nets.train"]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2") and "PSNR" in lines[1]


def test_training_is_deterministic(shards):
    a, b = tiny_model(), tiny_model()
    ha = train(a, shards["train"], shards["val"], epochs=2, **FAST)
    hb = train(b, shards["train"], shards["val"], epochs=2, **FAST)
    assert weights_equal(a, b)
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))
    c = tiny_model()
    train(c, shards["train"], shards["val"], epochs=2, **{**FAST, "seed": 1})
    assert not weights_equal(a, c)


def test_resume_gives_the_weights_of_an_uninterrupted_run(shards, tmp_path):
    whole = tiny_model()
    h_whole = train(whole, shards["train"], shards["val"], epochs=2, **FAST)
    ck = tmp_path / "run.ckpt"
    first = tiny_model()
    h_first = train(
        first, shards["train"], shards["val"], epochs=2, checkpoint=ck, stop_after=1, **FAST
    )
    assert len(h_first) == 1 and ck.exists() and not weights_equal(first, whole)
    resumed = tiny_model(seed=5)  # other initial weights: they come from the checkpoint
    h_resumed = train(resumed, shards["train"], shards["val"], epochs=2, checkpoint=ck, **FAST)
    assert weights_equal(resumed, whole)
    pd.testing.assert_frame_equal(
        h_resumed.drop(columns="seconds"), h_whole.drop(columns="seconds")
    )
    # a finished run returns its history without training further
    done = tiny_model(seed=6)
    h_done = train(done, shards["train"], shards["val"], epochs=2, checkpoint=ck, **FAST)
    assert weights_equal(done, whole) and len(h_done) == 2
    with pytest.raises(ValueError, match=r"other settings \(epochs 2 -> 3\)"):
        train(tiny_model(), shards["train"], shards["val"], epochs=3, checkpoint=ck, **FAST)
    with pytest.raises(ValueError, match="another network"):
        train(tiny_model(base=8), shards["train"], shards["val"], epochs=2, checkpoint=ck, **FAST)
    fresh = tiny_model()
    train(fresh, shards["train"], shards["val"], epochs=3, checkpoint=ck, resume=False, **FAST)
    assert torch.load(ck, weights_only=True)["epoch"] == 3


def test_training_without_validation_and_full_pass(shards):
    history = train(
        tiny_model(), shards["train"], [], epochs=1, **{**FAST, "steps_per_epoch": None}
    )
    assert history["steps"].tolist() == [4]  # 16 samples in batches of 4
    assert history[["val_loss", "val_psnr", "val_ssim"]].isna().all().all()


def test_training_restores_global_flags(shards):
    before = torch.are_deterministic_algorithms_enabled()
    train(tiny_model(), shards["train"], shards["val"], epochs=1, **FAST)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_plot_history(trained):
    _, history = trained
    fig = plot_history(history)
    assert isinstance(fig, Figure)
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert labels == ["train loss", "val loss", "val PSNR", "val SSIM"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), history["train_loss"])
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), history["val_psnr"])
    fig.savefig(__import__("io").BytesIO(), format="png")
    with pytest.raises(ValueError, match="empty"):
        plot_history(history.iloc[:0])


def test_worker_processes_do_not_change_the_result(shards):
    a, b = tiny_model(), tiny_model()
    train(a, shards["train"], shards["val"], epochs=1, **FAST)
    train(b, shards["train"], shards["val"], epochs=1, num_workers=2, **FAST)
    assert weights_equal(a, b)


def test_training_with_bfloat16_autocast_on_the_cpu(shards):
    history = train(tiny_model(), shards["train"], shards["val"], epochs=1, amp=True, **FAST)
    assert np.isfinite(history[["train_loss", "val_loss", "val_psnr"]].to_numpy()).all()


def test_ema_weights_are_the_average_of_the_trajectory(shards, tmp_path):
    plain = tiny_model()
    train(plain, shards["train"], shards["val"], epochs=2, **FAST)
    averaged = tiny_model()
    history = train(averaged, shards["train"], shards["val"], epochs=2, ema_decay=0.9, **FAST)
    # same trajectory (same seed), but the returned weights are the moving average
    assert not weights_equal(plain, averaged)
    assert np.isfinite(history["val_psnr"]).all()
    # resuming keeps the average: one epoch, then the second, equals two at once
    ck = tmp_path / "ema.ck"
    first = tiny_model()
    train(first, shards["train"], shards["val"], epochs=2, stop_after=1, checkpoint=ck, ema_decay=0.9, **FAST)
    resumed = tiny_model()
    train(resumed, shards["train"], shards["val"], epochs=2, checkpoint=ck, ema_decay=0.9, **FAST)
    assert weights_equal(resumed, averaged)
    with pytest.raises(ValueError, match="ema_decay"):
        train(tiny_model(), shards["train"], shards["val"], epochs=1, ema_decay=1.0, **FAST)


def test_run_checkpoint_is_stable_per_run_and_removes_other_runs(tmp_path):
    from astroflow.nets.training import run_checkpoint

    weights = tmp_path / "starless.pt"
    first = run_checkpoint(weights, [{"lr": 1e-3}, 5])
    assert first.parent == tmp_path and first.name.startswith("starless.pt.") and first.suffix == ".checkpoint"
    first.write_bytes(b"x")
    assert run_checkpoint(weights, [{"lr": 1e-3}, 5]) == first and first.exists()
    other = run_checkpoint(weights, [{"lr": 2e-3}, 5])
    assert other != first and not first.exists()
