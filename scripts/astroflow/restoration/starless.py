"""Star removal with astroflow's network, a classical baseline, and the figures that compare them.

Linear and display data
-----------------------
The network works on stretched data in ``[0, 1]`` (as StarNet and nox do). Linear input
(a stack) is stretched with an MTF autostretch that clips nothing (shadows at the minimum,
highlights at the maximum), so the stretch is exactly invertible; the star layer the network
removes is mapped back to linear units and subtracted, so that

    starless + stars = input                              (linear data, exactly)

Already stretched 8/16-bit input stays in its own encoding, and the star layer is defined for
*screen* recombination, the blend astrophotographers use to put stars back (PixInsight's
PixelMath ``~((~starless)*(~stars))``, Photoshop's Screen layer):

    1 - (1 - starless) (1 - stars) = input                (display data, exactly)

so ``stars = 1 - (1 - input) / (1 - starless)``. Star removal only takes light away: the
starless image is never brighter than the input.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.ndimage as ndi
import sep
from skimage.metrics import peak_signal_noise_ratio

from astroflow.nets.metrics import image_ssim
from astroflow.stretch import MTFStretch, auto_stretch

__all__ = [
    "StarRemoval",
    "classical_star_removal",
    "inpaint",
    "network_stretch",
    "remove_stars",
    "screen",
    "starless_metrics",
]

log = logging.getLogger(__name__)


@dataclass
class StarRemoval:
    """Result of :func:`remove_stars`.

    Attributes
    ----------
    starless, stars : numpy.ndarray
        float32, the input's shape, in the input's units (ADU for linear data, ``[0, 1]`` for
        display data); NaN where the input was NaN.
    encoding : str
        ``"linear"`` or ``"display"``.
    stretch : MTFStretch or None
        The stretch used for the network (linear input only).
    n_nan : int
        Pixels that were NaN in the input (filled for the network, NaN again in the outputs).
    """

    starless: np.ndarray
    stars: np.ndarray
    encoding: str
    stretch: MTFStretch | None
    n_nan: int


def network_stretch(image, target_background=0.2):
    """MTF autostretch for the network that clips nothing, hence is exactly invertible.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W[, C])`` linear data (ADU), finite.
    target_background : float, optional
        Where the median lands, in ``(0, 1)``.

    Returns
    -------
    MTFStretch
        Per-channel parameters with ``shadows = 0`` (black point at each channel's minimum).
    """
    return auto_stretch(image, target_background=target_background, shadows_clip=-1e9)


def screen(starless, stars):
    """Screen blend of a starless image and a star layer (display data in ``[0, 1]``).

    Parameters
    ----------
    starless, stars : numpy.ndarray
        Same shape, values in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray
        ``1 - (1 - starless) (1 - stars)``.
    """
    return 1.0 - (1.0 - starless) * (1.0 - stars)


def _fill_nan(image):
    bad = ~np.isfinite(image)
    if image.ndim == 3:
        bad = bad.any(axis=2)
    n = int(bad.sum())
    if not n:
        return image, bad, 0
    if n == bad.size:
        raise ValueError("image holds no finite pixel")
    filled = image.copy()
    fill = np.nanmedian(image[~bad], axis=0)
    filled[bad] = fill
    return filled, bad, n


def remove_stars(image, predict, *, encoding, target_background=0.2):
    """Remove the stars of an image with a network.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` float: linear ADU, or display values in ``[0, 1]``. NaN
        pixels are filled with the median for the network and are NaN in the results (with a
        warning).
    predict : callable
        Maps display data ``(H, W, C)`` float32 in ``[0, 1]`` to the starless display image of
        the same shape (for instance :func:`astroflow.starnet.predictor`).
    encoding : {"linear", "display"}
        See the module docstring.
    target_background : float, optional
        Linear input: median of the stretched image given to the network.

    Returns
    -------
    StarRemoval

    Raises
    ------
    ValueError
        For an unknown encoding, an image that is not ``(H, W)`` or ``(H, W, 3)``, or one with
        no finite pixel.
    """
    if encoding not in ("linear", "display"):
        raise ValueError(f"unknown encoding {encoding!r} (linear or display)")
    image = np.asarray(image, dtype=np.float32)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
    mono = image.ndim == 2
    work = image[:, :, None] if mono else image
    work, bad, n_nan = _fill_nan(work)
    if n_nan:
        warnings.warn(f"{n_nan} NaN pixels filled for star removal; NaN in the outputs", stacklevel=2)
    stretch = None
    if encoding == "linear":
        stretch = network_stretch(work, target_background)
        display = stretch.apply(work)
    else:
        display = np.clip(work, 0.0, 1.0)
    out = np.clip(np.asarray(predict(display), dtype=np.float32), 0.0, 1.0)
    out = np.minimum(out, display)
    if encoding == "linear":
        stars = np.clip(stretch.invert(display) - stretch.invert(out), 0.0, None)
        starless = work - stars
    else:
        starless = out
        with np.errstate(divide="ignore", invalid="ignore"):
            stars = np.where(out < 1.0, 1.0 - (1.0 - display) / (1.0 - out), 0.0)
        stars = np.clip(stars, 0.0, 1.0)
    starless, stars = starless.astype(np.float32), stars.astype(np.float32)
    if n_nan:
        starless[bad] = np.nan
        stars[bad] = np.nan
    if mono:
        starless, stars = starless[:, :, 0], stars[:, :, 0]
    return StarRemoval(starless, stars, encoding, stretch, n_nan)


def classical_star_removal(display, *, threshold_sigma=3.0, grow=2.0, radius=5):
    """Baseline: detect stars, mask them, inpaint the holes.

    Stars are detected on the luminance with SEP (Barbary 2016) after its background is
    subtracted; each detection's ellipse, enlarged ``grow`` times (at least 3 px), is masked and
    filled by OpenCV's Telea inpainting (Telea 2004), channel by channel.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data in ``[0, 1]``.
    threshold_sigma : float, optional
        Detection threshold above the background RMS.
    grow : float, optional
        Mask ellipse size in units of the detection's semi-axes (times 2).
    radius : int, optional
        Inpainting radius (px).

    Returns
    -------
    starless : numpy.ndarray
        float32, same shape.
    mask : numpy.ndarray
        bool ``(H, W)``: the inpainted pixels.
    """
    image = np.asarray(display, dtype=np.float32)
    lum = image if image.ndim == 2 else image.mean(axis=2)
    lum = np.ascontiguousarray(lum, dtype=np.float32)
    background = sep.Background(lum)
    data = lum - background.back()
    mask = np.zeros(lum.shape, dtype=bool)
    try:
        objects = sep.extract(data, threshold_sigma, err=background.globalrms, minarea=3)
    except Exception as exc:  # sep raises on pathological images (too many objects)
        log.warning("baseline star detection failed: %s", exc)
        objects = []
    if len(objects):
        sep.mask_ellipse(
            mask,
            objects["x"],
            objects["y"],
            np.maximum(objects["a"] * grow * 2, 3.0),
            np.maximum(objects["b"] * grow * 2, 3.0),
            objects["theta"],
        )
    return inpaint(image, mask, radius=radius), mask


def inpaint(display, mask, *, radius=5):
    """Fill the masked pixels of display data from their surroundings (Telea inpainting).

    OpenCV's fast marching method (A. Telea, "An Image Inpainting Technique Based on the Fast
    Marching Method", J. Graphics Tools 9, 2004), channel by channel.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data in ``[0, 1]``.
    mask : numpy.ndarray
        bool ``(H, W)``: the pixels to fill.
    radius : int, optional
        Inpainting radius (px).

    Returns
    -------
    numpy.ndarray
        float32, same shape; outside the mask the input itself (not even quantised).
    """
    image = np.asarray(display, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    channels = image[:, :, None] if image.ndim == 2 else image
    if not mask.any():
        return image.copy()
    out = channels.copy()
    # Telea's fill of a pixel uses known pixels within ``radius`` and OpenCV's distance band
    # outside the mask reaches ``2 radius + 1``: groups of masked pixels further apart than
    # that are filled independently, each in its own window (the same answer as one call on
    # the whole image, far faster for a few stars of a large image).
    margin = 2 * radius + 3
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    groups, _ = ndi.label(cv2.dilate(mask.astype(np.uint8), disc))
    for k, (rows, cols) in enumerate(ndi.find_objects(groups), start=1):
        own = mask[rows, cols] & (groups[rows, cols] == k)
        # OpenCV 5's Telea inpainting of float32 data overshoots badly (values above 1.7 in
        # [0, 1] data); its 16-bit path is exact to the quantisation, so the fill is in 16 bits.
        as16 = np.round(np.clip(channels[rows, cols], 0.0, 1.0) * 65535).astype(np.uint16)
        mask8 = own.astype(np.uint8)
        for c in range(channels.shape[2]):
            filled = cv2.inpaint(np.ascontiguousarray(as16[:, :, c]), mask8, radius, cv2.INPAINT_TELEA)
            out[rows, cols, c][own] = filled[own].astype(np.float32) / 65535.0
    return out[:, :, 0] if image.ndim == 2 else out


def starless_metrics(output, truth, starry, footprint):
    """How well stars were removed, against a known starless truth (display domain).

    Parameters
    ----------
    output, truth, starry : numpy.ndarray
        ``(H, W, C)`` display data in ``[0, 1]``: the method's starless image, the true starless
        image and the input.
    footprint : numpy.ndarray
        bool ``(H, W)``: where the added stars are above the noise.

    Returns
    -------
    dict
        ``psnr`` (dB; infinite for a perfect output) and ``ssim``
        (:func:`astroflow.nets.metrics.image_ssim`) against the truth; ``residual_star_flux``: the fraction of the
        added star flux left inside the footprints, sum(output - truth) / sum(starry - truth)
        there; ``outside_change``: mean |output - starry| outside the footprints (display
        units, ideally 0); ``outside_rmse``: RMS of output - truth outside them.
    """
    output = np.asarray(output, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    starry = np.asarray(starry, dtype=np.float64)
    fp = np.asarray(footprint, dtype=bool)
    added = float((starry - truth)[fp].sum())
    left = float((output - truth)[fp].sum())
    outside = ~fp
    nan = float("nan")  # a crowded field's footprint can cover everything
    mse = float(((output - truth) ** 2).mean())
    return {
        "psnr": float(peak_signal_noise_ratio(truth, output, data_range=1.0)) if mse > 0 else float("inf"),
        "ssim": image_ssim(truth, output, data_range=1.0),
        "residual_star_flux": left / added if added > 0 else float("nan"),
        "outside_change": float(np.abs(output - starry)[outside].mean()) if outside.any() else nan,
        "outside_rmse": float(np.sqrt(((output - truth)[outside] ** 2).mean())) if outside.any() else nan,
    }
