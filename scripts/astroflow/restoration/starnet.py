"""astroflow's star-removal network at inference: weights in, a tiled predictor out.

The network (:class:`astroflow.nets.ResUNet`) was trained on RGB display data in ``[0, 1]``
(:mod:`astroflow.simulation.synthstars`); mono images are given to it as three equal channels and the
channels of its answer are averaged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from astroflow.nets.tiling import predict_tiled
from astroflow.nets.unet import WeightsError, load_weights

__all__ = ["default_device", "load_starless", "predictor"]

log = logging.getLogger(__name__)


def default_device():
    """``"cuda"`` when a GPU is visible to torch, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_starless(path, device=None):
    """Load star-removal weights.

    Parameters
    ----------
    path : str or os.PathLike
        A weights file written by :func:`astroflow.nets.save_weights`.
    device : str or None, optional
        Torch device; :func:`default_device` by default.

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on ``device``.
    meta : dict
        What the file says about its training (config, seed, metrics).

    Raises
    ------
    astroflow.nets.WeightsError
        Naming the file, for anything but image-to-image weights with equal input and output
        channels.
    """
    device = device or default_device()
    model, meta = load_weights(path, device=device)
    arch = model.arch
    if arch.get("in_channels") != arch.get("out_channels"):
        raise WeightsError(f"{path}: not star-removal weights (channels {arch.get('in_channels')} in, "
                           f"{arch.get('out_channels')} out)")
    model.eval()
    return model, meta


def predictor(model, *, tile=256, overlap=32, batch=4, device=None):
    """A function from display data to the network's starless display data, tiled.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`load_starless`.
    tile, overlap, batch : int, optional
        See :func:`astroflow.tiling.predict_tiled`.
    device : str or None, optional
        Where to run; the model's own device by default.

    Returns
    -------
    callable
        ``f(display)``: ``(H, W, C)`` float32 in ``[0, 1]`` with C = 1 or 3 -> the same shape.
    """
    device = device or next(model.parameters()).device
    channels = model.arch["in_channels"]

    @torch.inference_mode()
    def run(x):
        return model(x.to(device)).float().cpu()

    def predict(display):
        display = np.asarray(display, dtype=np.float32)
        c = display.shape[2]
        if c == channels:
            return predict_tiled(run, display, tile=tile, overlap=overlap, batch=batch)
        if c == 1 and channels == 3:
            out = predict_tiled(run, np.repeat(display, 3, axis=2), tile=tile, overlap=overlap, batch=batch)
            return out.mean(axis=2, keepdims=True)
        if c == 3 and channels == 1:
            return np.concatenate(
                [predict_tiled(run, display[:, :, k : k + 1], tile=tile, overlap=overlap, batch=batch)
                 for k in range(3)],
                axis=2,
            )
        raise ValueError(f"the network takes {channels} channels; the image has {c}")

    return predict
