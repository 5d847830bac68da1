"""Flat-field correction without flats: the FlatAI-style network on single lights and finished images.

Where no flat frames exist (a single light, a finished image), vignetting, dust shadows and sky
gradients are estimated from the image itself by :class:`astroflow.nets.unet.FlatFieldNet`,
trained on synthetic artifacts (:mod:`astroflow.simulation.flatfield`) with FlatAI's image
model ``observed = clean x flat + gradient``.  Each channel is shrunk to the network's grid
(:func:`astroflow.calibration.flatgrid.to_grid`), the network returns a flat and a gradient on
that grid, both are interpolated back to the frame (:func:`~astroflow.calibration.flatgrid.
from_grid`) and ``corrected = (image - gradient) / flat``.  The network predicts the fields, not
the clean image, and the fields are smooth on the scale of a grid cell (8 px of a 1024 px
frame), so stars and fine structure are divided by a smooth field and nothing else: they cannot
be removed, moved or sharpened.  A 4096 x 4096 frame is corrected in a few seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from astroflow.calibration.flatgrid import from_grid, to_grid
from astroflow.nets.unet import WeightsError, load_weights
from astroflow.restoration.starmetrics import noise_sigma

__all__ = [
    "GRID",
    "correct",
    "heldout_metrics",
    "load_flatnet",
    "ratio_rms",
    "sbig_metrics",
]

#: Default grid side of the network, px.
GRID = 128
_INPUT_CLIP = 8.0  # as in the training shards (astroflow.simulation.flatfield)


def load_flatnet(path, device="cpu"):
    """Load flat-correction weights (``torch.load(weights_only=True)`` through ``load_weights``).

    Parameters
    ----------
    path : str or os.PathLike
        Weights written by :func:`astroflow.nets.unet.save_weights` for a ``FlatFieldNet``.
    device : str, optional
        Torch device.

    Returns
    -------
    model : astroflow.nets.unet.FlatFieldNet
        In eval mode.
    meta : dict or None
        Training information stored with the weights (``grid``: the grid it was trained on).

    Raises
    ------
    FileNotFoundError
        No such file.
    astroflow.nets.unet.WeightsError
        Naming the file, when it is not a ``FlatFieldNet`` weight file.
    """
    model, meta = load_weights(path, expected={"name": "FlatFieldNet"}, device=device)
    if meta is not None and not isinstance(meta, dict):
        raise WeightsError(f"{path}: meta is a {type(meta).__name__}, not a dictionary")
    model.grid = (meta or {}).get("grid")
    return model, meta


def correct(image, model, *, grid=None, device=None):
    """Remove vignetting, dust shadows and sky gradients from an image with the flat network.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` float, linear (ADU, or 0..1), finite, with a positive median
        in every channel (a sky); ``H, W >= grid``. Not modified.
    model : astroflow.nets.unet.FlatFieldNet
        From :func:`load_flatnet`.
    grid : int or None, optional
        Grid side, px; the ``grid`` stored with the weights (else :data:`GRID`) by default.
    device : str or None, optional
        Where to run; the model's device by default.

    Returns
    -------
    corrected : numpy.ndarray
        Same shape as ``image``, float32: ``(image - gradient) / flat``.  The gradient has zero
        mean, so the sky level is kept (an additive constant cannot be told from sky).
    flat : numpy.ndarray
        Same shape, float32, mean 1 per channel.
    gradient : numpy.ndarray
        Same shape, float32, in the image's units, zero mean per channel.

    Raises
    ------
    ValueError
        Wrong shape, non-finite pixels, a channel whose median is not positive, or an image
        smaller than the grid.

    Notes
    -----
    Each channel is corrected on its own (a mono network; flats and gradients differ per colour).
    Method: FlatAI's image model; :mod:`astroflow.calibration.flatgrid` for the grid.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"correct takes an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("the image holds NaN or infinite pixels")
    meta_grid = getattr(model, "grid", None)
    grid = int(grid or meta_grid or GRID)
    planes = [image] if image.ndim == 2 else [image[..., c] for c in range(3)]
    inputs, medians = [], []
    for c, plane in enumerate(planes):
        cells = to_grid(plane, grid)
        m = float(np.median(cells))
        if not m > 0:
            raise ValueError(
                f"channel {c} has a median of {m:g}: the flat network needs a positive sky (linear data "
                "with the bias removed but not the sky)"
            )
        inputs.append(np.minimum(cells / m, _INPUT_CLIP))
        medians.append(m)
    device = device or next(model.parameters()).device
    with torch.inference_mode():
        out = model(torch.from_numpy(np.stack(inputs)[:, None]).to(device)).float().cpu().numpy()
    flats, gradients = [], []
    for c, plane in enumerate(planes):
        flats.append(from_grid(out[c, 0], plane.shape))
        gradients.append(from_grid(out[c, 1], plane.shape) * medians[c])
    flat, gradient = (np.stack(f, axis=-1) if image.ndim == 3 else f[0] for f in (flats, gradients))
    corrected = (image - gradient) / flat
    return corrected.astype(np.float32), flat.astype(np.float32), gradient.astype(np.float32)


def ratio_rms(result, reference, *, block=32, star_sigma=3.0, grow=4, min_fraction=0.5):
    """Background RMS of ``result / reference - 1``, star-masked and block-averaged.

    The measure of a flat-less correction against the flat-fielded frame: pixels of stars
    (``reference`` above its median by ``star_sigma`` noise sigmas,
    :func:`astroflow.restoration.starmetrics.noise_sigma`, grown by ``grow`` px) are left out,
    both frames are averaged over ``block x block`` blocks (blocks with less than
    ``min_fraction`` of their pixels left are dropped), the ratio of the block means is divided
    by its median, and the RMS of its difference from 1 is returned.

    Parameters
    ----------
    result, reference : numpy.ndarray
        ``(H, W)`` float, same shape; the reference with a positive sky.
    block : int, optional
        Block side, px.
    star_sigma, grow, min_fraction : optional
        Star mask threshold (sigmas), dilation (px) and the least unmasked fraction of a block.

    Returns
    -------
    float
        Dimensionless (0.026 is 2.6 %).

    Raises
    ------
    ValueError
        Shapes differ, or no block is left.
    """
    import cv2

    result = np.asarray(result, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if result.shape != reference.shape or result.ndim != 2:
        raise ValueError(f"ratio_rms takes two (H, W) images of one shape, got {result.shape} and {reference.shape}")
    sky = np.median(reference)
    stars = reference > sky + star_sigma * noise_sigma(reference.astype(np.float32))
    if grow:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        stars = cv2.dilate(stars.astype(np.uint8), kernel).astype(bool)
    keep = ~stars
    h, w = (s // block * block for s in result.shape)

    def blocks(a):
        return a[:h, :w].reshape(h // block, block, w // block, block).sum(axis=(1, 3))

    count = blocks(keep.astype(np.float64))
    good = count >= min_fraction * block * block
    if not good.any():
        raise ValueError("no block has enough background pixels")
    ratio = blocks(np.where(keep, result, 0.0))[good] / blocks(np.where(keep, reference, 0.0))[good]
    ratio /= np.median(ratio)
    return float(np.sqrt(np.mean((ratio - 1.0) ** 2)))


def heldout_metrics(model, seeds, *, size=512, grid=None, block=16):
    """Score the network on held-out synthetic frames against their truth.

    For each seed a frame of :func:`astroflow.simulation.flatfield.render_sample` with a faint
    extended region is corrected, and the same frame without the region too.

    Parameters
    ----------
    model : astroflow.nets.unet.FlatFieldNet
    seeds : sequence
        Seeds of the frames (use ones no training shard used).
    size : int, optional
        Frame side, px.
    grid : int or None, optional
        As in :func:`correct`.
    block : int, optional
        Block side for the residuals, px.

    Returns
    -------
    dict
        ``residual_rms`` and ``residual_rms_uncorrected``: median over frames of the RMS of the
        block-averaged ``result - clean`` (its median removed: the constant part of a gradient
        is unknowable), in units of the sky level, for the network and for no correction;
        ``flat_rms``: median RMS of the block-averaged ``flat_pred / flat - 1`` (and
        ``flat_rms_uncorrected``, of ``1 / flat - 1``); ``region_flux_ratio``: median over frames
        of the flux the correction keeps of the faint region, ``sum(corrected_with -
        corrected_without) / sum(region)`` inside 2.5 sigma of its centre (1 is perfect), and
        ``region_flux_ratio_uncorrected``, the same of the observed frames (the flat's mean over
        the region); ``per_frame``: the per-frame values of each (keys ``residual``,
        ``residual_none``, ``flat``, ``flat_none``, ``region``, ``region_none``); ``frames``: how
        many.
    """
    from astroflow.simulation.flatfield import render_sample

    def block_mean(a):
        h, w = (s // block * block for s in a.shape)
        return a[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))

    def rms(a):
        a = block_mean(a)
        return float(np.sqrt(np.mean((a - np.median(a)) ** 2)))

    rows = []
    for seed in seeds:
        with_region = render_sample(np.random.default_rng(seed), size, faint_region=True)
        without = render_sample(np.random.default_rng(seed), size, faint_region=False)
        sky = with_region.params["sky_adu"]
        corrected, flat, _ = correct(with_region.observed, model, grid=grid)
        corrected_without, _, _ = correct(without.observed, model, grid=grid)
        region = with_region.region
        p = with_region.params["region"]
        yy, xx = np.mgrid[0:size, 0:size]
        disc = np.hypot(xx - p["x"], yy - p["y"]) < 2.5 * p["sigma"]
        rows.append(
            {
                "residual": rms((corrected - with_region.clean) / sky),
                "residual_none": rms((with_region.observed - with_region.clean) / sky),
                "flat": rms(flat / with_region.flat - 1.0),
                "flat_none": rms(1.0 / with_region.flat - 1.0),
                "region": float((corrected - corrected_without)[disc].sum() / region[disc].sum()),
                "region_none": float((with_region.observed - without.observed)[disc].sum() / region[disc].sum()),
            }
        )
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    return {
        "residual_rms": med["residual"],
        "residual_rms_uncorrected": med["residual_none"],
        "flat_rms": med["flat"],
        "flat_rms_uncorrected": med["flat_none"],
        "region_flux_ratio": med["region"],
        "region_flux_ratio_uncorrected": med["region_none"],
        "per_frame": {k: [r[k] for r in rows] for k in rows[0]},
        "frames": len(rows),
    }


def sbig_metrics(folder, model, *, max_lights=None, block=32):
    """The network against real flats on a CCD night: each light calibrated without and with flats.

    The lights of ``folder`` are calibrated by the workflow's own ingest, masters and
    ``calibrate_light`` (:func:`astroflow.simulation.realstars.sbig_frames`) once with bias and
    dark only and once with the master flat too; the flat-less lights are corrected by
    :func:`correct`, and :func:`ratio_rms` compares each with its flat-fielded twin.

    Parameters
    ----------
    folder : str or os.PathLike
        A night with ``light/``, ``dark/``, ``bias/`` and ``flat/`` folders (e.g.
        ``../shared/data/sbig-stl1001``).
    model : astroflow.nets.unet.FlatFieldNet
    max_lights : int or None, optional
        Use only the first lights.
    block : int, optional
        Block side of :func:`ratio_rms`, px.

    Returns
    -------
    dict
        Medians over the lights of :func:`ratio_rms` for ``no_correction`` (the flat-less
        light), ``network`` (corrected by :func:`correct`: flat and gradient) and
        ``network_flat_only`` (the light divided by the predicted flat alone), their per-light
        lists under ``per_light``, and ``lights``.
    """
    import warnings

    from astroflow.calibration.calibrate import CalibrationWarning
    from astroflow.simulation.realstars import sbig_frames

    rows = {"no_correction": [], "network": [], "network_flat_only": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # "no master flat": on purpose
        pairs = zip(
            sbig_frames(folder, max_lights=max_lights, use_flat=False),
            sbig_frames(folder, max_lights=max_lights, use_flat=True),
            strict=True,
        )
        for (raw, _), (reference, _) in pairs:
            corrected, flat, _ = correct(raw, model)
            rows["no_correction"].append(ratio_rms(raw, reference, block=block))
            rows["network"].append(ratio_rms(corrected, reference, block=block))
            rows["network_flat_only"].append(ratio_rms(raw / flat, reference, block=block))
    if not rows["network"]:
        raise ValueError(f"{folder} holds no lights")
    out = {k: float(np.median(v)) for k, v in rows.items()}
    out["per_light"] = rows
    out["lights"] = len(rows["network"])
    out["block_px"] = block
    return out
