"""Image-to-image neural networks (star removal, later deconvolution) and their weight files.

The network is a residual U-Net: the encoder-decoder with skip connections of Ronneberger et al.
(2015), whose convolution pairs are residual blocks (He et al. 2016).  Star-removal tools such as
StarNet (StarNet++) and nox use networks of this U-Net family.  Images go in and come out as
``float32`` tensors ``(N, C, H, W)`` of linear (or stretched) pixel values scaled to about [0, 1].

Weight files are written by :func:`save_weights` as a plain dictionary ``{"arch", "state_dict",
"meta"}`` with :func:`torch.save` and read back by :func:`load_weights` with
``torch.load(..., weights_only=True)``: no pickled code is ever executed when loading a file, and
the architecture is rebuilt from the ``arch`` dictionary stored next to the weights, so a file
says by itself which network it belongs to.

References
----------
O. Ronneberger, P. Fischer & T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, arXiv:1505.04597.
K. He, X. Zhang, S. Ren & J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385.
Y. Wu & K. He, "Group Normalization", ECCV 2018, arXiv:1803.08494.
S. Elfwing, E. Uchibe & K. Doya, "Sigmoid-weighted linear units for neural network function
approximation in reinforcement learning", Neural Networks 107 (2018) (SiLU).
A. Odena, V. Dumoulin & C. Olah, "Deconvolution and Checkerboard Artifacts", Distill (2016)
(upsampling by interpolation and convolution instead of transposed convolutions).
N. Misiura, StarNet (StarNet++), https://github.com/nekitmm/starnet (star removal).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from astroflow.checks import check_int
from astroflow.io.atomic import atomic_write

__all__ = [
    "ARCHITECTURES",
    "FlatFieldNet",
    "ResBlock",
    "ResUNet",
    "WeightsError",
    "build_model",
    "count_parameters",
    "load_weights",
    "receptive_field",
    "save_weights",
]

#: Most groups of a GroupNorm layer (fewer when the channel count is not a multiple of 8).
MAX_GROUPS = 8


class WeightsError(ValueError):
    """A weight file that cannot be used: unreadable, incomplete, or for another network."""


def _groups(channels):
    """The largest divisor of ``channels`` that is at most :data:`MAX_GROUPS`."""
    return max(g for g in range(1, MAX_GROUPS + 1) if channels % g == 0)



class ResBlock(nn.Module):
    """Residual block: ``x + SiLU(GN(conv3x3(SiLU(GN(conv3x3(x))))))``.

    The two 3x3 convolutions keep the channel count and the size, so the identity shortcut of He
    et al. (2016) needs no projection.  GroupNorm (Wu & He 2018) rather than BatchNorm keeps the
    block independent of the batch size (small batches of large crops in training, any batch in
    inference).

    Parameters
    ----------
    channels : int
        Number of input and output channels.

    Notes
    -----
    Input and output are ``(N, channels, H, W)`` tensors of the same shape and dtype.
    """

    def __init__(self, channels):
        super().__init__()
        check_int("channels", channels, 1)
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
        )

    def forward(self, x):
        return x + self.body(x)


def _pad_reflect(x, multiple):
    """Pad the last two axes of ``x`` to multiples of ``multiple`` by mirroring (no edge repeat).

    Returns the padded tensor and the ``(top, left)`` offset of the original inside it.  Pads
    larger than the image (tiny inputs) are done in several mirror steps; a 1-pixel axis, which
    cannot be mirrored, is repeated.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = ph // 2, pw // 2
    bottom, right = ph - top, pw - left
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        # one mirror step pads at most size - 1 pixels on each side
        st, sb = min(top, h - 1), min(bottom, h - 1)
        sl, sr = min(left, w - 1), min(right, w - 1)
        if h == 1 or w == 1:
            st, sb = (top, bottom) if h == 1 else (st, sb)
            sl, sr = (left, right) if w == 1 else (sl, sr)
            x = F.pad(x, (sl, sr, st, sb), mode="replicate")
        else:
            x = F.pad(x, (sl, sr, st, sb), mode="reflect")
        top, bottom, left, right = top - st, bottom - sb, left - sl, right - sr
    return x, (ph // 2, pw // 2)


class ResUNet(nn.Module):
    """Residual U-Net for image-to-image tasks (star removal, deconvolution).

    A U-Net (Ronneberger et al. 2015) built of residual blocks (He et al. 2016)::

        stem    conv3x3 in_channels -> base
        encoder level 0..depth: `blocks` ResBlocks at base * 2**level channels;
                between levels a stride-2 conv3x3 halves H and W and doubles the channels
        decoder level depth-1..0: bilinear 2x upsampling + conv3x3 (halves the channels),
                concatenation with the encoder's output at that level, conv1x1 back to
                base * 2**level channels, `blocks` ResBlocks
        head    conv3x3 base -> out_channels

    With ``residual_output=True`` the network returns ``input - head(features)``: it predicts the
    layer to *subtract* (the stars, for star removal), which is sparse and easier to learn than
    the whole starless image.  The head is then initialised to zero, so an untrained network is
    the identity.

    Any ``H, W`` is accepted: the input is padded by mirroring to multiples of ``2**depth`` and
    the output cropped back, so the output always has the input's spatial size.

    Parameters
    ----------
    in_channels, out_channels : int, optional
        Channels of the input and output images (3 for RGB, 1 for mono).
    base : int, optional
        Channels at full resolution; level ``l`` has ``base * 2**l``.
    depth : int, optional
        Number of 2x downsamplings (>= 1).  The receptive field grows with it: about
        ``15 * 2**depth`` pixels for ``blocks=1`` (:func:`receptive_field`).
    blocks : int, optional
        Residual blocks per level in the encoder and in the decoder.
    residual_output : bool, optional
        Output ``input - head(features)``; requires ``in_channels == out_channels``.

    Attributes
    ----------
    arch : dict
        The constructor arguments and ``"name": "ResUNet"``; :func:`build_model` rebuilds the
        network from it and :func:`save_weights` stores it with the weights.

    Raises
    ------
    ValueError
        A non-positive or non-integer size, or ``residual_output`` with ``in_channels !=
        out_channels``.

    Notes
    -----
    ``forward(x)`` takes a floating tensor ``(N, in_channels, H, W)`` and returns
    ``(N, out_channels, H, W)`` of the same dtype.  GroupNorm normalises over the whole input, so
    the output of a pixel depends slightly on the statistics of the tile it is in: tile an image
    (:func:`astroflow.tiling.predict_tiled`) with tiles of about the training crop size or
    larger.

    ``ResUNet(3, 3, base=32, depth=4)`` has 11.2 million parameters (:func:`count_parameters`).
    """

    def __init__(
        self, in_channels=3, out_channels=3, base=32, depth=4, blocks=1, residual_output=True
    ):
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("base", base, 1)
        check_int("depth", depth, 1)
        check_int("blocks", blocks, 1)
        if not isinstance(residual_output, bool):
            raise ValueError(f"residual_output must be True or False, got {residual_output!r}")
        if residual_output and in_channels != out_channels:
            raise ValueError(
                f"residual_output=True subtracts the prediction from the input, so in_channels "
                f"({in_channels}) must equal out_channels ({out_channels})"
            )
        self.arch = {
            "name": "ResUNet",
            "in_channels": in_channels,
            "out_channels": out_channels,
            "base": base,
            "depth": depth,
            "blocks": blocks,
            "residual_output": residual_output,
        }
        self.depth = depth
        self.residual_output = residual_output
        ch = [base * 2**level for level in range(depth + 1)]

        self.stem = nn.Conv2d(in_channels, base, 3, padding=1)
        self.encoder = nn.ModuleList(
            nn.Sequential(*[ResBlock(c) for _ in range(blocks)]) for c in ch
        )
        self.down = nn.ModuleList(
            nn.Conv2d(ch[level], ch[level + 1], 3, stride=2, padding=1) for level in range(depth)
        )
        self.up = nn.ModuleList(
            nn.Conv2d(ch[level + 1], ch[level], 3, padding=1) for level in range(depth)
        )
        self.merge = nn.ModuleList(nn.Conv2d(2 * ch[level], ch[level], 1) for level in range(depth))
        self.decoder = nn.ModuleList(
            nn.Sequential(*[ResBlock(ch[level]) for _ in range(blocks)]) for level in range(depth)
        )
        self.head = nn.Conv2d(base, out_channels, 3, padding=1)
        if residual_output:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.arch["in_channels"]:
            raise ValueError(
                f"ResUNet expects a tensor (N, {self.arch['in_channels']}, H, W), got shape "
                f"{tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        padded, (top, left) = _pad_reflect(x, 2**self.depth)
        f = self.stem(padded)
        skips = []
        for level in range(self.depth):
            f = self.encoder[level](f)
            skips.append(f)
            f = self.down[level](f)
        f = self.encoder[self.depth](f)
        for level in reversed(range(self.depth)):
            f = F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False)
            f = self.up[level](f)
            f = self.merge[level](torch.cat([f, skips[level]], dim=1))
            f = self.decoder[level](f)
        out = self.head(f)[..., top : top + h, left : left + w]
        return x - out if self.residual_output else out


class FlatFieldNet(nn.Module):
    """Flat-field and sky-gradient network on a frame-scale grid (FlatAI's image model).

    The input is a whole frame shrunk to a grid (:func:`astroflow.calibration.flatgrid.to_grid`)
    and divided by its median, ``x = clean x flat + gradient``.  A :class:`ResUNet` (one input
    channel ``clip(x - 1, -1, 3)``, two output channels, no residual output) predicts the two
    artifact fields, not the clean image, so that nothing finer than the fields can change:

    * ``flat = exp(a) / mean(exp(a))`` -- mean 1, at the grid's resolution (dust donuts);
    * ``gradient = g - mean(g)`` with ``g`` the second output averaged over
      ``grad_pool x grad_pool`` cells and interpolated back bilinearly -- smoother than the flat,
      and zero-mean because a constant additive light cannot be told from sky;
    * ``clean = (x - gradient) / flat``.

    Parameters
    ----------
    base, depth, blocks : int, optional
        As in :class:`ResUNet`.
    grad_pool : int, optional
        Cells averaged into one gradient control point (>= 1; the grid side must be a multiple).

    Attributes
    ----------
    arch : dict
        ``"name": "FlatFieldNet"`` and the constructor arguments (see :func:`save_weights`).

    Notes
    -----
    ``forward(x)`` takes ``(N, 1, H, W)`` float (median about 1) and returns ``(N, 3, H, W)``:
    flat, gradient, clean, the layout of the targets of
    :func:`astroflow.simulation.flatfield.grid_pair`.

    References: FlatAI (a U-Net trained on synthetic flat-field artifacts with the image model
    ``observed = true x flat + gradient``); Ronneberger et al. (2015) and He et al. (2016) for
    the U-Net of residual blocks.
    """

    def __init__(self, base=16, depth=4, blocks=1, grad_pool=4):
        super().__init__()
        check_int("grad_pool", grad_pool, 1)
        self.arch = {"name": "FlatFieldNet", "base": base, "depth": depth, "blocks": blocks, "grad_pool": grad_pool}
        self.grad_pool = grad_pool
        self.net = ResUNet(1, 2, base=base, depth=depth, blocks=blocks, residual_output=False)
        # start from flat = 1 and gradient = 0, the answer "no artifact"
        nn.init.zeros_(self.net.head.weight)
        nn.init.zeros_(self.net.head.bias)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"FlatFieldNet expects a tensor (N, 1, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.grad_pool or w % self.grad_pool:
            raise ValueError(f"the grid ({h}x{w}) must be a multiple of grad_pool {self.grad_pool}")
        raw = self.net((x - 1.0).clamp(-1.0, 3.0))
        flat = torch.exp(raw[:, :1])
        flat = flat / flat.mean(dim=(2, 3), keepdim=True)
        g = raw[:, 1:]
        if self.grad_pool > 1:
            g = F.avg_pool2d(g, self.grad_pool)
            g = F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False)
        gradient = g - g.mean(dim=(2, 3), keepdim=True)
        return torch.cat([flat, gradient, (x - gradient) / flat], dim=1)


#: Architectures that :func:`build_model` and :func:`load_weights` can rebuild, by ``arch["name"]``.
ARCHITECTURES = {"ResUNet": ResUNet, "FlatFieldNet": FlatFieldNet}


def build_model(arch):
    """Build an untrained network from its ``arch`` dictionary.

    Parameters
    ----------
    arch : dict
        ``"name"`` (a key of :data:`ARCHITECTURES`, e.g. ``"ResUNet"``) and the constructor's
        keyword arguments, as in the ``arch`` attribute of a network.

    Returns
    -------
    torch.nn.Module
        The network, freshly initialised, on the CPU, in float32.

    Raises
    ------
    ValueError
        ``arch`` is not a dictionary, has no or an unknown ``"name"``, or arguments that the
        constructor rejects.
    """
    if not isinstance(arch, Mapping):
        raise ValueError(f"arch must be a dictionary, got {type(arch).__name__}")
    kwargs = dict(arch)
    name = kwargs.pop("name", None)
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    try:
        return ARCHITECTURES[name](**kwargs)
    except TypeError as err:  # unknown or missing keyword
        raise ValueError(f"bad arguments for {name}: {err}") from err


def count_parameters(model):
    """Number of scalar parameters (weights and biases) of a network.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    int
        Sum of ``numel()`` over all parameters, trainable or not.
    """
    return sum(p.numel() for p in model.parameters())


def _unwrap(model):
    """The module behind torch.compile (``_orig_mod``) or DataParallel (``module``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def save_weights(path, model, *, meta=None):
    """Write a network's architecture and weights to a file, atomically.

    Writes ``{"arch": model.arch, "state_dict": ..., "meta": meta}`` with :func:`torch.save`
    through :func:`astroflow.io.atomic.atomic_write`, so an interrupted write never leaves a
    truncated weight file behind.  The tensors are stored on the
    CPU, so the file loads on a machine without a GPU.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (conventionally ``.pt``); its folder is created if missing.
    model : torch.nn.Module
        A network with an ``arch`` dictionary (e.g. :class:`ResUNet`); torch.compile and
        DataParallel wrappers are unwrapped.
    meta : dict, optional
        Free JSON-serialisable information (training data, epochs, validation PSNR, ...),
        returned by :func:`load_weights`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``model`` has no ``arch`` dictionary, or ``meta`` is not a JSON-serialisable dictionary.
    """
    model = _unwrap(model)
    arch = getattr(model, "arch", None)
    if not isinstance(arch, Mapping) or "name" not in arch:
        raise ValueError(
            f"{type(model).__name__} has no arch dictionary; only networks built by "
            "astroflow.nets.unet (e.g. ResUNet) can be saved"
        )
    if meta is not None:
        if not isinstance(meta, Mapping):
            raise ValueError(f"meta must be a dictionary, got {type(meta).__name__}")
        try:
            # a JSON round trip keeps only what torch.load(weights_only=True) can read back
            meta = json.loads(json.dumps(meta, allow_nan=True))
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta must be JSON-serialisable: {err}") from err
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    payload = {"arch": dict(arch), "state_dict": state, "meta": meta}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_weights(path, *, expected=None, device="cpu"):
    """Rebuild a network from a file written by :func:`save_weights`.

    Parameters
    ----------
    path : str or os.PathLike
        The weight file.
    expected : dict, optional
        Architecture entries that the file must have, e.g. ``{"name": "ResUNet",
        "in_channels": 3}`` for a pipeline that feeds RGB images.
    device : str or torch.device, optional
        Where to put the network.

    Returns
    -------
    model : torch.nn.Module
        The network with the stored weights, on ``device``, in eval mode.
    meta : dict or None
        The ``meta`` dictionary stored with the weights.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    WeightsError
        (a :class:`ValueError`) naming the file, when it is not a torch file (or holds anything
        but tensors and plain containers, which ``weights_only=True`` refuses), lacks the
        ``arch`` or ``state_dict`` entry, names an unknown architecture, holds weights that do
        not fit its architecture ("... was trained for a different architecture: ..."), or
        disagrees with ``expected``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        TypeError,
    ) as err:
        raise WeightsError(
            f"{path} is not a torch weight file written by astroflow (torch.load failed: "
            f"{type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, Mapping):
        raise WeightsError(
            f"{path} holds a {type(payload).__name__}, not the dictionary of arch, state_dict "
            "and meta that astroflow.nets.save_weights writes"
        )
    missing = [key for key in ("arch", "state_dict") if key not in payload]
    if missing:
        raise WeightsError(
            f"{path} lacks {' and '.join(repr(k) for k in missing)}; it was not written by "
            "astroflow.nets.save_weights (a bare state_dict cannot be used: the architecture "
            "is unknown)"
        )
    arch, state = payload["arch"], payload["state_dict"]
    if not isinstance(arch, Mapping) or arch.get("name") not in ARCHITECTURES:
        name = arch.get("name") if isinstance(arch, Mapping) else arch
        raise WeightsError(
            f"{path} is for an unknown architecture {name!r}; known: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    if expected:
        wrong = [
            (
                f"{key}={arch[key]!r} in the file, expected {value!r}"
                if key in arch
                else f"{key} absent from the file, expected {value!r}"
            )
            for key, value in expected.items()
            if key not in arch or arch[key] != value
        ]
        if wrong:
            raise WeightsError(
                f"{path} was trained for a different architecture than expected: "
                + "; ".join(wrong)
            )
    try:
        model = build_model(arch)
    except ValueError as err:
        raise WeightsError(f"{path} has an unusable architecture {dict(arch)}: {err}") from err
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: state_dict is a {type(state).__name__}, not a dictionary")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(
            f"{path} was trained for a different architecture: its weights do not fit "
            f"{dict(arch)}: {err}"
        ) from err
    model.to(device).eval()
    meta = payload.get("meta")
    return model, meta


def receptive_field(depth, blocks=1):
    """Approximate receptive field (pixels, one side to the other) of a :class:`ResUNet`.

    Parameters
    ----------
    depth, blocks : int
        As in :class:`ResUNet`.

    Returns
    -------
    int
        Width in input pixels of the region that can influence one output pixel, counting the
        3x3 convolutions (4 per residual block, plus stem, head, down and up convolutions).
        GroupNorm's statistics, taken over the whole input, are not counted: through them every
        pixel has a weak influence on every other.
    """
    rf, jump = 1, 1
    rf += 2  # stem
    for _level in range(depth):
        rf += 4 * blocks * jump  # encoder blocks
        rf += 2 * jump  # stride-2 conv
        jump *= 2
    rf += 4 * blocks * jump  # bottleneck
    for _level in range(depth):
        jump //= 2
        rf += 2 * jump + 4 * blocks * jump  # up conv at the finer level, decoder blocks
    rf += 2  # head
    return rf
