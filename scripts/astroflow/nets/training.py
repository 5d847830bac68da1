"""Training of astroflow's image-to-image networks: data shards, the loss, the loop.

Training pairs are stored in ``.npz`` shards, each with an input and a target array of shape
``(N, C, H, W)`` (``uint16`` meaning ``value / 65535``, or float).  :class:`ShardDataset` cuts
random, augmented crops from them; :func:`train` optimises a network with AdamW (Loshchilov &
Hutter 2019) under a linear warm-up and cosine learning-rate schedule (Loshchilov & Hutter 2017,
SGDR, without restarts) on :class:`CompositeLoss` (L1 + SSIM + Fourier amplitude), validates on
held-out shards after every epoch (loss, :func:`astroflow.nets.metrics.psnr` and
:func:`astroflow.nets.metrics.ssim`), and checkpoints so an interrupted run continues exactly
where it stopped.

On the CPU a run is deterministic: the same seed, data and initial weights give bit-identical
weights, and a resumed run ends with the same weights as an uninterrupted one (with the same
number of threads).  The random crops and augmentations of sample ``i`` in epoch ``e`` are drawn
from a generator seeded by ``(seed, e, i)``, and torch's global generator is reseeded at the
start of each epoch, so neither the number of data-loading workers nor an interruption changes
what the network sees.

References
----------
Z. Wang, A. C. Bovik, H. R. Sheikh & E. P. Simoncelli, "Image quality assessment: from error
visibility to structural similarity", IEEE Trans. Image Process. 13 (2004) 600-612 (SSIM).
I. Loshchilov & F. Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
arXiv:1711.05101 (AdamW).
I. Loshchilov & F. Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
arXiv:1608.03983 (cosine annealing).
H. Zhao, O. Gallo, I. Frosio & J. Kautz, "Loss Functions for Image Restoration with Neural
Networks", IEEE Trans. Comput. Imaging 3 (2017) 47-57 (L1 + SSIM losses).
L. Jiang, B. Dai, W. Wu & C. C. Loy, "Focal Frequency Loss for Image Reconstruction and
Synthesis", ICCV 2021, arXiv:2012.12821 (losses on Fourier spectra).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from astroflow.checks import check_float, check_int
from astroflow.io.atomic import atomic_write
from astroflow.nets.metrics import SSIM_SIGMA, SSIM_WINDOW, as_batch, psnr, ssim

__all__ = [
    "HISTORY_COLUMNS",
    "CompositeLoss",
    "FlatFieldLoss",
    "ShardDataset",
    "plot_history",
    "train",
]

#: Columns of the history returned by :func:`train`, in order.
HISTORY_COLUMNS = (
    "epoch",
    "steps",
    "train_loss",
    "val_loss",
    "val_psnr",
    "val_ssim",
    "lr",
    "seconds",
)

_SCALES = {np.dtype(np.uint16): 65535.0, np.dtype(np.uint8): 255.0}
_CHECKPOINT_FORMAT = "astroflow-training-checkpoint"


# --------------------------------------------------------------------------------------------
# data


def _npy_header(path, key):
    """Shape and dtype of array ``key`` in the ``.npz`` file ``path``, without reading its data."""
    with zipfile.ZipFile(path) as archive:
        try:
            member = archive.open(f"{key}.npy")
        except KeyError:
            keys = sorted(n[:-4] for n in archive.namelist() if n.endswith(".npy"))
            raise ValueError(
                f"shard {path} has no array {key!r}; it has {', '.join(map(repr, keys)) or 'none'}"
            ) from None
        with member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
    return tuple(shape), np.dtype(dtype)


def _to_float(array):
    """uint16 / uint8 -> float32 in [0, 1]; float -> float32 unchanged."""
    scale = _SCALES.get(array.dtype)
    if scale is not None:
        return array.astype(np.float32) / np.float32(scale)
    return array.astype(np.float32, copy=False)


class ShardDataset(torch.utils.data.Dataset):
    """Input/target crops from ``.npz`` shards of image pairs.

    Each shard holds two arrays of shape ``(N, C, H, W)``: ``input_key`` (e.g. the starry
    image) and ``target_key`` (e.g. the starless one), with the same ``N, H, W`` (the channel
    counts may differ).  ``uint16`` arrays mean ``value / 65535`` and ``uint8`` ``value / 255``;
    float arrays are used as they are.

    With ``augment=True`` sample ``i`` is a random ``crop x crop`` window, transformed by one of
    the 8 flips/rotations by 90 degrees (the same for input and target), drawn from a generator
    seeded by ``(seed, epoch, i, draw)``: a run is reproducible whatever the number of
    data-loading workers.  With ``augment=False`` it is the central ``crop x crop`` window (the
    whole image when ``crop`` is None).

    Only the arrays of one shard are kept in memory (per worker process): read the samples
    shard by shard (as :func:`train` does) rather than in a random order over all shards, which
    would read a shard for every sample.

    Parameters
    ----------
    shards : sequence of str or os.PathLike
        The ``.npz`` files (written with ``numpy.savez`` or ``numpy.savez_compressed``).
    crop : int or None, optional
        Side of the square crops, at most the smallest ``H`` and ``W``; None for whole images.
    augment : bool, optional
        Random crops, flips and rotations; otherwise central crops.
    input_key, target_key : str, optional
        Names of the arrays in the shards.
    seed : int, optional
        Seed of the augmentations.

    Attributes
    ----------
    shapes : list of tuple
        ``(N, C, H, W)`` of the input array of each shard (read from the file headers).
    epoch : int
        The epoch whose augmentations are drawn; set by :meth:`set_epoch`.

    Raises
    ------
    FileNotFoundError
        A shard does not exist.
    ValueError
        No shards or no samples, a missing array, arrays that are not 4-D, input and target of
        different ``N, H, W``, an unsupported dtype, or a crop larger than an image.

    Notes
    -----
    ``dataset[i]`` (or ``dataset[(i, draw)]``, the form used by :func:`train` to draw sample
    ``i`` again with other augmentations in an epoch longer than the data set) returns
    ``(input, target)``: float32 tensors ``(C, crop, crop)``.
    """

    def __init__(
        self,
        shards,
        *,
        crop=128,
        augment=True,
        input_key="starry",
        target_key="starless",
        seed=0,
    ):
        self.shards = [Path(s) for s in shards]
        if not self.shards:
            raise ValueError("no shards given")
        if crop is not None:
            crop = check_int("crop", crop, 1)
        self.crop, self.augment, self.seed = crop, bool(augment), int(seed)
        self.input_key, self.target_key = input_key, target_key
        self.epoch = 0
        self.shapes = []
        for path in self.shards:
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} does not exist")
            try:
                (si, di), (st, dt) = _npy_header(path, input_key), _npy_header(path, target_key)
            except zipfile.BadZipFile as err:
                raise ValueError(f"shard {path} is not an .npz file: {err}") from err
            for key, shape, dtype in ((input_key, si, di), (target_key, st, dt)):
                if len(shape) != 4:
                    raise ValueError(
                        f"shard {path}: {key!r} must be (N, C, H, W), got shape {shape}"
                    )
                if dtype not in _SCALES and not np.issubdtype(dtype, np.floating):
                    raise ValueError(
                        f"shard {path}: {key!r} has dtype {dtype}; expected uint16 (value / "
                        "65535), uint8 (value / 255) or float"
                    )
            if (si[0],) + si[2:] != (st[0],) + st[2:]:
                raise ValueError(
                    f"shard {path}: {input_key!r} {si} and {target_key!r} {st} differ in N, H or W"
                )
            if crop is not None and min(si[2:]) < crop:
                raise ValueError(
                    f"shard {path}: images of {si[2]}x{si[3]} px are smaller than the crop "
                    f"({crop} px)"
                )
            self.shapes.append(si)
        counts = [s[0] for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.offsets[-1] == 0:
            raise ValueError(f"the shards hold no samples: {[str(s) for s in self.shards]}")
        self._cache = None

    def __len__(self):
        return int(self.offsets[-1])

    def set_epoch(self, epoch):
        """Draw the augmentations of epoch ``epoch`` from now on."""
        self.epoch = int(epoch)

    def locate(self, index):
        """``(shard number, sample number in that shard)`` of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return shard, int(index - self.offsets[shard])

    def _arrays(self, shard):
        if self._cache is None or self._cache[0] != shard:
            self._cache = None  # free the previous shard before reading the next
            with np.load(self.shards[shard]) as data:
                self._cache = (shard, data[self.input_key], data[self.target_key])
        return self._cache[1], self._cache[2]

    def __getstate__(self):
        # worker processes get the dataset without the cached shard
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def __getitem__(self, index):
        index, draw = index if isinstance(index, tuple) else (index, 0)
        index = int(index)
        shard, i = self.locate(index)
        inputs, targets = self._arrays(shard)
        h, w = inputs.shape[2:]
        crop = self.crop
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index, int(draw)])
            ch, cw = (h, w) if crop is None else (crop, crop)
            y = int(rng.integers(0, h - ch + 1))
            x = int(rng.integers(0, w - cw + 1))
            k = int(rng.integers(0, 8))
        else:
            ch, cw = (h, w) if crop is None else (crop, crop)
            y, x, k = (h - ch) // 2, (w - cw) // 2, 0
        pair = []
        for array in (inputs, targets):
            a = _to_float(array[i, :, y : y + ch, x : x + cw])
            if k % 4:
                a = np.rot90(a, k % 4, axes=(1, 2))
            if k >= 4:
                a = a[:, :, ::-1]
            pair.append(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
        return pair[0], pair[1]


class _EpochSampler(torch.utils.data.Sampler):
    """``n`` samples ``(index, draw)`` per epoch, shard by shard, in an order seeded per epoch.

    The shards are visited in a random order and the samples of each in a random order; when an
    epoch needs more samples than the data set has, further passes follow (``draw`` 1, 2, ...).
    """

    def __init__(self, dataset, n, seed):
        self.dataset, self.n, self.seed, self.epoch = dataset, int(n), int(seed), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.n

    def __iter__(self):
        offsets, done, draw = self.dataset.offsets, 0, 0
        while done < self.n:
            rng = np.random.default_rng([self.seed, self.epoch, draw, 7])
            for shard in rng.permutation(len(offsets) - 1):
                for index in offsets[shard] + rng.permutation(offsets[shard + 1] - offsets[shard]):
                    if done == self.n:
                        return
                    yield int(index), draw
                    done += 1
            draw += 1


def _worker_init(worker_id):
    # numpy's global generator is not used for augmentations, but seed it for user code
    np.random.seed(torch.initial_seed() % 2**32)


# --------------------------------------------------------------------------------------------
# loss


class CompositeLoss(nn.Module):
    """``l1_weight * L1 + ssim_weight * (1 - SSIM) + fft_weight * L1(|FFT(x)| - |FFT(y)|)``.

    The L1 term fits pixel values, the SSIM term (Wang et al. 2004) local structure and contrast
    (Zhao et al. 2017 show L1 + SSIM beats L2 for image restoration), and the Fourier-amplitude
    term penalises missing or spurious power at each spatial frequency, e.g. blurred residues of
    stars or the loss of faint fine structure (in the spirit of Jiang et al. 2021).  The
    amplitudes are those of the orthonormal 2-D FFT (``torch.fft.rfft2(norm="ortho")``), on the
    same scale as the pixel values by Parseval's theorem.  No pretrained (perceptual) network is
    involved, so nothing is downloaded.

    Parameters
    ----------
    l1_weight, ssim_weight, fft_weight : float, optional
        Weights of the terms (>= 0; a zero weight skips its term).
    window, sigma : optional
        SSIM window, see :func:`astroflow.nets.metrics.ssim_map`.

    Notes
    -----
    ``loss(prediction, target)`` takes two ``(N, C, H, W)`` tensors and returns a scalar
    float32 tensor, 0 for identical inputs; it is computed in float32 whatever the input dtype
    (call it outside ``torch.autocast``).
    """

    def __init__(
        self, l1_weight=1.0, ssim_weight=0.2, fft_weight=0.1, window=SSIM_WINDOW, sigma=SSIM_SIGMA
    ):
        super().__init__()
        self.l1_weight, self.ssim_weight, self.fft_weight = (
            check_float(f"{name}_weight", value, 0.0)
            for name, value in (("l1", l1_weight), ("ssim", ssim_weight), ("fft", fft_weight))
        )
        self.window, self.sigma = window, sigma

    def terms(self, prediction, target):
        """The unweighted terms: ``{"l1": ..., "ssim": 1 - SSIM, "fft": ...}`` (scalar tensors)."""
        p, t = as_batch(prediction, target, "CompositeLoss")
        out = {"l1": (p - t).abs().mean()}
        if self.ssim_weight:
            out["ssim"] = 1.0 - ssim(p, t, self.window, self.sigma)
        if self.fft_weight:
            fp = torch.fft.rfft2(p, norm="ortho").abs()
            ft = torch.fft.rfft2(t, norm="ortho").abs()
            out["fft"] = (fp - ft).abs().mean()
        return out

    def forward(self, prediction, target):
        terms = self.terms(prediction, target)
        weights = {"l1": self.l1_weight, "ssim": self.ssim_weight, "fft": self.fft_weight}
        return sum(weights[k] * v for k, v in terms.items())

    def extra_repr(self):
        return (
            f"l1_weight={self.l1_weight}, ssim_weight={self.ssim_weight}, "
            f"fft_weight={self.fft_weight}"
        )


class FlatFieldLoss(nn.Module):
    """Loss of the flat-correction network: L1 on the fields plus a physics-consistency term.

    ``prediction`` and ``target`` are ``(N, 3, H, W)``: flat ``F``, zero-mean gradient ``G`` and
    clean image ``C`` (:class:`astroflow.nets.unet.FlatFieldNet`'s output,
    :func:`astroflow.simulation.flatfield.grid_pair`'s target).  The loss is::

        flat_weight |F' - F| + gradient_weight |G' - G| + physics_weight |C F' + G' - (C F + G)|

    (means over pixels): the last, FlatAI's physics-consistency term, asks that the predicted
    flat and gradient reproduce the input from the true clean image, which weighs an error of
    the flat by the brightness it multiplies.  It is 0 for the truth.

    Parameters
    ----------
    flat_weight, gradient_weight, physics_weight : float, optional
        Weights of the terms (>= 0).
    """

    def __init__(self, flat_weight=1.0, gradient_weight=1.0, physics_weight=1.0):
        super().__init__()
        self.weights = {
            name: check_float(f"{name}_weight", value, 0.0)
            for name, value in (("flat", flat_weight), ("gradient", gradient_weight), ("physics", physics_weight))
        }

    def terms(self, prediction, target):
        """The unweighted terms ``{"flat", "gradient", "physics"}`` (scalar tensors)."""
        if prediction.ndim != 4 or prediction.shape[1] != 3 or prediction.shape != target.shape:
            raise ValueError(
                f"FlatFieldLoss takes two (N, 3, H, W) tensors, got {tuple(prediction.shape)} and "
                f"{tuple(target.shape)}"
            )
        flat_p, grad_p = prediction[:, :1], prediction[:, 1:2]
        flat, grad, clean = target[:, :1], target[:, 1:2], target[:, 2:3]
        return {
            "flat": (flat_p - flat).abs().mean(),
            "gradient": (grad_p - grad).abs().mean(),
            "physics": (clean * flat_p + grad_p - (clean * flat + grad)).abs().mean(),
        }

    def forward(self, prediction, target):
        return sum(self.weights[k] * v for k, v in self.terms(prediction, target).items())

    def extra_repr(self):
        return ", ".join(f"{k}_weight={v}" for k, v in self.weights.items())


# --------------------------------------------------------------------------------------------
# training loop


def _epoch_seed(seed, epoch):
    return int(np.random.SeedSequence([int(seed), int(epoch), 11]).generate_state(1)[0])


def _schedule(warmup, total):
    """LR factor at step s: linear warm-up over ``warmup`` steps, then cosine decay to 0."""

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def _evaluate(model, dataset, loss_fn, batch_size, device, autocast):
    """Mean loss, PSNR and SSIM of ``model`` over ``dataset`` (per image, then averaged)."""
    model.eval()
    total = {"loss": 0.0, "psnr": 0.0, "ssim": 0.0}
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            pairs = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            x = torch.stack([p[0] for p in pairs]).to(device)
            y = torch.stack([p[1] for p in pairs]).to(device)
            with autocast():
                pred = model(x)
            pred = pred.float()
            n = len(pairs)
            total["loss"] += float(loss_fn(pred, y)) * n
            total["psnr"] += float(psnr(pred, y, reduction="none").sum())
            if min(y.shape[-2:]) >= SSIM_WINDOW:
                total["ssim"] += float(ssim(pred, y, reduction="none").sum())
            else:
                total["ssim"] = math.nan
    model.train()
    return {k: v / len(dataset) for k, v in total.items()}



def run_checkpoint(weights, key, log=None):
    """The checkpoint file of one training run, with the checkpoints of other runs removed.

    A job killed mid-training resumes from its checkpoint; a checkpoint written with other
    settings (the job reruns because they changed) is stale and is deleted.

    Parameters
    ----------
    weights : str or os.PathLike
        The weight file the run writes; checkpoints sit beside it.
    key : JSON-serialisable
        Everything that defines the run (settings, seed, input shards, initial weights).
    log : logging.Logger, optional
        Where to say which stale checkpoints were removed.

    Returns
    -------
    pathlib.Path
        ``{weights}.{sha1(key)[:12]}.checkpoint`` (it may not exist yet).
    """
    weights = Path(weights)
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]
    checkpoint = weights.with_name(f"{weights.name}.{digest}.checkpoint")
    for stale in weights.parent.glob(weights.name + ".*checkpoint"):
        if stale != checkpoint:
            (log or logging.getLogger(__name__)).info("removing the checkpoint of other settings %s", stale)
            stale.unlink()
    return checkpoint

def train(
    model,
    train_shards,
    val_shards,
    *,
    epochs,
    batch_size=8,
    crop=128,
    lr=2e-3,
    weight_decay=1e-4,
    loss=None,
    device=None,
    amp=None,
    seed=0,
    checkpoint=None,
    resume=True,
    steps_per_epoch=None,
    num_workers=0,
    log=None,
    warmup_steps=None,
    grad_clip=1.0,
    deterministic=None,
    stop_after=None,
    input_key="starry",
    target_key="starless",
    ema_decay=None,
):
    """Train an image-to-image network on ``.npz`` shards; return the per-epoch history.

    Each epoch runs ``steps_per_epoch`` optimiser steps on batches of random augmented crops
    (:class:`ShardDataset`, read shard by shard in an order seeded per epoch), then evaluates
    the network on the central ``crop x crop`` window (the whole image when smaller) of every
    validation sample, logs a line, and writes the checkpoint.  The optimiser is AdamW
    (Loshchilov & Hutter 2019; no weight decay on biases and normalisation parameters); the
    learning rate rises linearly over ``warmup_steps`` and then follows a cosine down to 0 at the
    last step (SGDR without restarts).

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place (moved to ``device``; left there, in eval mode).  Its initial weights
        are not reset: seed its construction (``torch.manual_seed``) for reproducible runs.
    train_shards, val_shards : sequence of path
        ``.npz`` shards (see :class:`ShardDataset`); ``val_shards`` may be empty, leaving the
        validation columns NaN.
    epochs : int
        Total number of epochs of the run (counting those of a resumed checkpoint).
    batch_size : int, optional
        Crops per step (and images per validation batch).
    crop : int, optional
        Side of the training crops (pixels).
    lr : float, optional
        Peak learning rate.
    weight_decay : float, optional
        AdamW's decoupled weight decay.
    loss : torch.nn.Module or callable, optional
        ``loss(prediction, target) -> scalar``; :class:`CompositeLoss` by default.  Computed in
        float32 outside autocast.
    device : str or torch.device, optional
        ``"cuda"`` if available, else ``"cpu"``.
    amp : bool, optional
        Mixed precision with :func:`torch.autocast`: bfloat16 where supported, else float16
        with a gradient scaler.  Default: on for CUDA, off on the CPU.
    seed : int, optional
        Seed of the data order, augmentations and torch's global generator.
    checkpoint : path, optional
        Checkpoint file (model, optimiser, scheduler, scaler, epoch, history, RNG states),
        rewritten atomically after every epoch.
    resume : bool, optional
        Continue from ``checkpoint`` if it exists (its settings must match these); with False an
        existing checkpoint is ignored and overwritten.
    steps_per_epoch : int, optional
        Optimiser steps per epoch; default one pass over the training samples
        (``ceil(samples / batch_size)``, the last batch possibly smaller).
    num_workers : int, optional
        Data-loading worker processes (each caches one shard).
    log : logging.Logger, optional
        Where the per-epoch lines go; this module's logger by default.
    warmup_steps : int, optional
        Linear warm-up length; default 5 % of the steps, at most 1000.
    grad_clip : float or None, optional
        Clip the gradients' global norm to this; None for no clipping.
    deterministic : bool, optional
        ``torch.use_deterministic_algorithms(True, warn_only=True)`` and deterministic cuDNN
        during the run (restored afterwards).  Default: on for the CPU, off for CUDA (where it
        slows training and bilinear upsampling has no deterministic backward pass anyway).
    stop_after : int, optional
        Return after this many epochs in this call (e.g. to fit a job's time limit); a later
        call with ``resume=True`` continues the same schedule.
    input_key, target_key : str, optional
        Array names in the shards.
    ema_decay : float, optional
        Keep an exponential moving average of the weights (Polyak & Juditsky 1992; torch's
        ``AveragedModel`` with ``get_ema_multi_avg_fn``), updated after every optimiser step
        with this decay (e.g. 0.999); validation then scores the average, and ``model`` ends
        with the averaged weights. None (default): no average.

    Returns
    -------
    pandas.DataFrame
        One row per completed epoch (including those before a resume), columns
        :data:`HISTORY_COLUMNS`: ``epoch`` (1-based), ``steps`` (optimiser steps in that epoch),
        ``train_loss`` (mean over the epoch's samples), ``val_loss``, ``val_psnr`` (dB, mean
        over images), ``val_ssim``, ``lr`` (learning rate of the epoch's last step),
        ``seconds`` (wall time of the epoch, including validation).

    Raises
    ------
    ValueError
        Bad arguments or shards (see :class:`ShardDataset`); a checkpoint written with other
        settings or for another model.
    FloatingPointError
        The training loss became NaN or infinite (the checkpoint keeps the last good epoch).
    """
    logger = log if log is not None else logging.getLogger(__name__)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    crop = check_int("crop", crop, 1)
    if steps_per_epoch is not None:
        steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, 1)
    if stop_after is not None:
        stop_after = check_int("stop_after", stop_after, 1)
    lr = check_float("lr", lr, 0.0, strict=True)
    weight_decay = check_float("weight_decay", weight_decay, 0.0)
    num_workers = check_int("num_workers", num_workers, 0)
    if ema_decay is not None:
        ema_decay = check_float("ema_decay", ema_decay, 0.0, strict=True)
        if ema_decay >= 1.0:
            raise ValueError(f"ema_decay must be below 1, got {ema_decay}")

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = (device.type == "cuda") if amp is None else bool(amp)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16
    else:
        amp_dtype = torch.bfloat16
    use_scaler = amp and amp_dtype == torch.float16
    deterministic = (device.type == "cpu") if deterministic is None else bool(deterministic)
    loss_fn = loss if loss is not None else CompositeLoss()
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)

    keys = {"input_key": input_key, "target_key": target_key}
    train_ds = ShardDataset(train_shards, crop=crop, augment=True, seed=seed, **keys)
    val_ds = None
    if val_shards:
        shapes = ShardDataset(val_shards, crop=None, augment=False, **keys).shapes
        val_crop = min(crop, *(min(s[2:]) for s in shapes))
        val_ds = ShardDataset(val_shards, crop=val_crop, augment=False, **keys)
    n_samples = len(train_ds) if steps_per_epoch is None else steps_per_epoch * batch_size
    steps = steps_per_epoch or math.ceil(len(train_ds) / batch_size)
    total_steps = epochs * steps
    if warmup_steps is None:
        warmup_steps = min(1000, max(1, total_steps // 20))
    warmup_steps = check_int("warmup_steps", warmup_steps, 1)

    model.to(device)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(warmup_steps, total_steps))
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    config = {
        "epochs": epochs,
        "batch_size": batch_size,
        "crop": crop,
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "seed": int(seed),
        "steps_per_epoch": steps,
        "warmup_steps": warmup_steps,
        "samples": len(train_ds),
        "ema_decay": ema_decay,
    }
    history = {c: [] for c in HISTORY_COLUMNS}
    ema = None
    if ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    start_epoch = 0
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and resume and checkpoint.exists():
        start_epoch, history = _resume(
            checkpoint, config, model, optimizer, scheduler, scaler, device, ema
        )
        logger.info("resuming %s after epoch %d of %d", checkpoint, start_epoch, epochs)

    sampler = _EpochSampler(train_ds, n_samples, seed)
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp)  # noqa: E731
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    last_epoch = epochs if stop_after is None else min(epochs, start_epoch + stop_after)
    try:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        else:
            torch.backends.cudnn.benchmark = device.type == "cuda"
        model.train()
        for epoch in range(start_epoch, last_epoch):
            began = time.perf_counter()
            torch.manual_seed(_epoch_seed(seed, epoch))
            train_ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                train_ds,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
                worker_init_fn=_worker_init,
                generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch)),
            )
            loss_sum = torch.zeros((), device=device)
            seen, done, last_lr = 0, 0, optimizer.param_groups[0]["lr"]
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                with autocast():
                    pred = model(x)
                value = loss_fn(pred.float(), y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(value).backward()
                    scaler.unscale_(optimizer)
                else:
                    value.backward()
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                last_lr = optimizer.param_groups[0]["lr"]
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += value.detach() * len(x)
                seen += len(x)
                done += 1
            train_loss = float(loss_sum) / seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training diverged in epoch {epoch + 1}: the loss is {train_loss}; lower "
                    f"the learning rate (now {lr})"
                    + (f" and resume from {checkpoint}" if checkpoint is not None else "")
                )
            if val_ds is not None:
                scored = ema.module if ema is not None else model
                metrics = _evaluate(scored, val_ds, loss_fn, batch_size, device, autocast)
            else:
                metrics = {"loss": math.nan, "psnr": math.nan, "ssim": math.nan}
            row = {
                "epoch": epoch + 1,
                "steps": done,
                "train_loss": train_loss,
                "val_loss": metrics["loss"],
                "val_psnr": metrics["psnr"],
                "val_ssim": metrics["ssim"],
                "lr": last_lr,
                "seconds": time.perf_counter() - began,
            }
            for column in HISTORY_COLUMNS:
                history[column].append(row[column])
            logger.info(
                "epoch %d/%d: %d steps, train loss %.5f, val loss %.5f, val PSNR %.2f dB, "
                "val SSIM %.4f, lr %.3g, %.1f s",
                row["epoch"],
                epochs,
                done,
                train_loss,
                row["val_loss"],
                row["val_psnr"],
                row["val_ssim"],
                last_lr,
                row["seconds"],
            )
            if checkpoint is not None:
                state = {
                    "format": _CHECKPOINT_FORMAT,
                    "config": config,
                    "arch": dict(getattr(model, "arch", {}) or {}),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "ema": ema.state_dict() if ema is not None else None,
                    "history": history,
                    "rng": _rng_state(),
                }
                atomic_write(checkpoint, lambda tmp, state=state: torch.save(state, tmp))
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2:]
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    return pd.DataFrame(history, columns=list(HISTORY_COLUMNS))


def _rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _resume(path, config, model, optimizer, scheduler, scaler, device, ema=None):
    """Load a checkpoint into the training objects; return (completed epochs, history)."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete it or pass "
            "resume=False to start again"
        ) from err
    if not isinstance(ck, Mapping) or ck.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of astroflow.training.train")
    differ = {k: (ck["config"].get(k), v) for k, v in config.items() if ck["config"].get(k) != v}
    if differ:
        text = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differ.items())
        raise ValueError(
            f"checkpoint {path} was written with other settings ({text}); delete it or pass "
            "resume=False to start again"
        )
    arch = dict(getattr(model, "arch", {}) or {})
    if ck.get("arch") != arch:
        raise ValueError(
            f"checkpoint {path} is for another network ({ck.get('arch')}, not {arch}); delete "
            "it or pass resume=False"
        )
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not fit the model: {err}") from err
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    if ema is not None:
        ema.load_state_dict(ck["ema"])
    rng = ck.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    history = {c: list(ck["history"].get(c, [])) for c in HISTORY_COLUMNS}
    return int(ck["epoch"]), history


# --------------------------------------------------------------------------------------------
# plots


def plot_history(history, *, title="training"):
    """Learning curves: train/val loss, and validation PSNR and SSIM, against the epoch.

    Parameters
    ----------
    history : pandas.DataFrame or dict of lists
        As returned by :func:`train` (columns ``epoch``, ``train_loss``, ``val_loss``,
        ``val_psnr``, ``val_ssim``).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: the losses (log scale when positive) with lines labelled ``train loss`` and
        ``val loss``; ``val PSNR`` (dB, left axis) and ``val SSIM`` (right axis).

    Raises
    ------
    ValueError
        An empty history or missing columns.
    """
    frame = pd.DataFrame(history)
    needed = ["epoch", "train_loss", "val_loss", "val_psnr", "val_ssim"]
    missing = [c for c in needed if c not in frame]
    if missing:
        raise ValueError(f"history lacks the column(s) {missing}")
    if frame.empty:
        raise ValueError("history is empty: no epoch to plot")
    epoch = frame["epoch"].to_numpy(float)
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_loss, ax_psnr = fig.subplots(1, 2)
    ax_loss.plot(epoch, frame["train_loss"], "o-", color="tab:blue", label="train loss")
    ax_loss.plot(epoch, frame["val_loss"], "s-", color="tab:orange", label="val loss")
    losses = frame[["train_loss", "val_loss"]].to_numpy(float)
    if np.all(losses[np.isfinite(losses)] > 0) and np.isfinite(losses).any():
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_psnr.plot(epoch, frame["val_psnr"], "o-", color="tab:green", label="val PSNR")
    ax_psnr.set_xlabel("epoch")
    ax_psnr.set_ylabel("val PSNR (dB)", color="tab:green")
    ax_psnr.grid(alpha=0.3)
    ax_ssim = ax_psnr.twinx()
    ax_ssim.plot(epoch, frame["val_ssim"], "s--", color="tab:purple", label="val SSIM")
    ax_ssim.set_ylabel("val SSIM", color="tab:purple")
    handles = ax_psnr.get_lines() + ax_ssim.get_lines()
    ax_psnr.legend(handles, [h.get_label() for h in handles], loc="lower right")
    for ax in (ax_loss, ax_psnr):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    return fig
