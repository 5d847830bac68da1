"""astroflow's star-removal network at inference: weights in, a tiled predictor out.

The network (:class:`astroflow.nets.ResUNet`) was trained on RGB display data in ``[0, 1]``
(:mod:`astroflow.simulation.synthstars`); mono images are given to it as three equal channels and the
channels of its answer are averaged.

No holes
--------
A network's star layer can subtract more than the star added, leaving a dark (or, one channel
over-subtracted, coloured) hole where a bright star was. :func:`clamp_holes`, which
:func:`predictor` applies to the network's answer by default, makes that impossible: where the
network removed a significant star, the starless image is raised to at least the smaller of the
input and a local sky estimated around the star (from the pixels the network left alone). It
only raises the network's answer and never above the input, and the recombination of
:func:`astroflow.restoration.starless.remove_stars` (``starless + stars = input`` for linear
data, the screen blend for display data) stays exact: the star layer is computed there from the
clamped starless image.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import scipy.ndimage as ndi
import sep
import torch

from astroflow.nets.tiling import predict_tiled
from astroflow.nets.unet import WeightsError, load_weights
from astroflow.restoration.starless import inpaint
from astroflow.restoration.starmetrics import (
    SPIKE_ON,
    detect,
    grey,
    noise_sigma,
    residual_detections,
    saturated_stars,
    spike_angles,
    spike_arm,
    spike_reach,
)

__all__ = [
    "clamp_holes",
    "clean_answer",
    "default_device",
    "inpaint_residuals",
    "load_starless",
    "masked_background",
    "predictor",
    "profile_stars",
    "removed_fraction",
    "stellar_fwhm",
    "subtract_profiles",
    "subtract_spikes",
]

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


def _blur(plane, sigma):
    """Gaussian blur of a plane; large sigmas on a reduced copy (area-averaged), bilinear back."""
    h, w = plane.shape
    factor = int(max(1, min(sigma // 4, h // 8, w // 8)))
    if factor == 1:
        return cv2.GaussianBlur(plane, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    small = cv2.resize(plane, (max(w // factor, 1), max(h // factor, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def masked_background(image, keep, *, scales=(2, 4, 8, 16, 32, 64, 128), support=0.25):
    """Smooth local background of an image from the pixels ``keep`` marks, filled everywhere.

    Normalised convolution (Knutsson & Westin 1993) at several scales: at Gaussian scale ``s``
    the background is ``G_s * (image keep) / G_s * keep``; each pixel takes the finest scale
    at which the kept pixels carry at least ``support`` of the Gaussian's weight, blended
    continuously with the next coarser scale below that (so a pixel at the centre of a masked
    disc of radius R gets a scale of about 0.6 R). Where no scale has support, the median of
    the kept pixels.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` float, finite.
    keep : numpy.ndarray
        ``(H, W)`` bool: the pixels to estimate the background from (for instance those with no
        star).
    scales : sequence of float, optional
        Gaussian sigmas (px), increasing.
    support : float, optional
        Weight of kept pixels needed for a scale to be used, in ``(0, 1]``.

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)`` float32; equal to a smoothed ``image`` near kept pixels.
    """
    image = np.asarray(image, dtype=np.float32)
    keep = np.asarray(keep, dtype=bool)
    weight = keep.astype(np.float32)
    h, w, c = image.shape
    if not keep.any():
        return np.broadcast_to(np.median(image.reshape(-1, c), axis=0), image.shape).astype(np.float32)
    # From the finest scale to the coarsest, each pixel takes ``alpha`` of the scale's estimate
    # and leaves the rest (``remaining``) to the coarser ones; once nothing remains for a pixel
    # it drops out, so that the coarse scales are evaluated only inside the large masked areas.
    weighted = [np.ascontiguousarray(image[:, :, k]) * weight for k in range(c)]
    background = np.zeros(image.shape, np.float32).reshape(-1, c)
    index = slice(None)  # every pixel, then the ones left
    remaining = np.ones(h * w, np.float32)
    for sigma in sorted(scales):
        den = _blur(weight, sigma).reshape(-1)[index]
        alpha = np.clip(den / support, 0.0, 1.0)
        share = remaining * alpha
        np.maximum(den, 1e-6, out=den)
        for k in range(c):
            background[index, k] += share * (_blur(weighted[k], sigma).reshape(-1)[index] / den)
        remaining *= 1.0 - alpha
        more = remaining > 0.0
        index = np.flatnonzero(more) if isinstance(index, slice) else index[more]
        remaining = remaining[more]
        if not len(index):
            break
    if len(index):  # no scale has support there: the median of the kept pixels
        for k in range(c):
            background[index, k] += remaining * np.median(image[:, :, k][keep])
    return background.reshape(image.shape)


def clamp_holes(display, starless, *, low=1.0, high=3.0, exclude=2.0, grow=2, distrust=None, noise=None):
    """Raise a network's starless answer where it dug below the local sky at a removed star.

    With ``removed = display - starless`` in units of each channel's pixel noise
    (:func:`astroflow.restoration.starmetrics.noise_sigma`), pixels where some channel's
    ``removed`` exceeds ``exclude`` (dilated by ``grow`` px) are the star footprints; the local
    sky ``B`` of each channel is :func:`masked_background` of ``display`` from the pixels
    outside them, and ``F = min(B, display)`` the floor. Then, per channel,

        raised = starless + w max(F - starless, 0),
        w = clip((removed - low) / (high - low), 0, 1),

    so that where the network removed a significant star (``w = 1``) the answer is never below
    the floor: no hole, and never above the input. Where it removed nothing significant
    (``w = 0``) the answer is left as it is, noise included; ``w`` rises smoothly in between,
    so the clamp leaves no edge. ``B`` comes from around the whole footprint, so inside a large
    one (a galaxy's nucleus, a bright nebula knot) it is lower than the object: the floor errs
    on the safe side, raising less than it might.

    Optionally (``distrust``), a hole in one channel is taken to show that the network got
    that star wrong and that what it left in the other channels is star light (a white star on
    red nebulosity over-subtracted in red and under-subtracted in blue and green): where some
    channel was raised by more than ``distrust`` noise sigmas (a weight ``h`` rising from 0 to
    1 up to there, grown by 2 px and smoothed by a Gaussian of 1 px so that it covers the
    hole's rim, times ``w``), every channel is drawn down to the floor,

        out = (1 - h) raised + h min(raised, F),

    which keeps ``out >= F`` where ``w = 1`` (both terms are). This removes the coloured
    residue of stars on real images but also flattens the non-stellar objects the network
    partly removed down to the low ``B`` around them (measured on the Seestar M 94 nucleus and
    on the held-out synthetic set, 1.4 dB PSNR below raising alone), so it is off by default.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W, C)`` float32, the network's input, in ``[0, 1]``.
    starless : numpy.ndarray
        ``(H, W, C)`` float32, the network's answer.
    low, high : float, optional
        Noise sigmas of removed light over which the clamp fades in.
    exclude : float, optional
        Noise sigmas of removed light (any channel) that mark a pixel as star for the sky
        estimate.
    grow : int, optional
        Dilation of the star footprints (px) for the sky estimate.
    distrust : float or None, optional
        Noise sigmas of raise (any channel) at which all channels are drawn down to the
        floor; None (default) raises the channels independently and does nothing else.
    noise : sequence of float or None, optional
        Noise sigma of each channel of ``display``; estimated when None.

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)`` float32: at least the floor ``min(B, display)`` where ``w = 1``, at most
        ``max(starless, display)`` everywhere, ``starless`` itself where ``w = 0`` (and, with
        ``distrust``, no hole is near). Without ``distrust``, never below ``starless``.

    Raises
    ------
    ValueError
        Shapes that differ or are not ``(H, W, C)``.

    Notes
    -----
    The filled value is the smooth sky, without the input's noise: a filled hole is a
    noiseless patch at the sky level.
    """
    display, starless = _answer_pair(display, starless)
    c = display.shape[2]
    if noise is None:
        noise = [noise_sigma(display[:, :, k]) for k in range(c)]
    noise = np.asarray(noise, dtype=np.float32).reshape(1, 1, c)
    removed = (display - starless) / noise
    star = (removed > exclude).any(axis=2).astype(np.uint8)
    if grow > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        star = cv2.dilate(star, disc)
    if not star.any():
        return starless.copy()
    # (in place where it can: a 4096 x 4096 RGB image is 200 MB an array)
    floor = masked_background(display, star == 0)
    np.minimum(floor, display, out=floor)
    w = removed
    w -= low
    w /= high - low
    np.clip(w, 0.0, 1.0, out=w)
    lift = np.subtract(floor, starless)
    np.maximum(lift, 0.0, out=lift)
    lift *= w
    if distrust is None:
        lift += starless
        return lift
    h = np.clip((lift / noise).max(axis=2) / distrust, 0.0, 1.0).astype(np.float32)
    h = cv2.dilate(h, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    h = np.clip(cv2.GaussianBlur(h, (0, 0), 1.0), 0.0, 1.0)[:, :, None] * w
    raised = lift + starless
    return ((1.0 - h) * raised + h * np.minimum(raised, floor)).astype(np.float32)


GAUSS_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))  # FWHM / sigma of a Gaussian


def _answer_pair(display, starless):
    """The input and a star remover's answer as float32, checked to be one ``(H, W, C)`` shape."""
    display = np.asarray(display, dtype=np.float32)
    starless = np.asarray(starless, dtype=np.float32)
    if display.shape != starless.shape or display.ndim != 3:
        raise ValueError(f"display {display.shape} and starless {starless.shape} must be one (H, W, C) shape")
    return display, starless


def removed_fraction(display, starless, stars):
    """Share of each star's peak that a star remover took away at its centre.

    Parameters
    ----------
    display, starless : numpy.ndarray
        ``(H, W, C)`` float32, the input and the answer, in ``[0, 1]``.
    stars : astroflow.restoration.starmetrics.StarCatalog
        Detections of ``display``.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64: (input - answer) at the nearest pixel to each centre (grey) over the
        detection's peak above its background; about 1 for a star removed, 0 for a thing kept.
    """
    h, w = display.shape[:2]
    ix = np.clip(np.round(stars.x).astype(int), 0, w - 1)
    iy = np.clip(np.round(stars.y).astype(int), 0, h - 1)
    taken = np.asarray(display)[iy, ix].mean(axis=1) - np.asarray(starless)[iy, ix].mean(axis=1)
    return taken / np.maximum(stars.peak, 1e-6)


def stellar_fwhm(stars, removed, *, min_removed=0.5):
    """The FWHM of the image's stars: median FWHM (px) of the detections the answer removed.

    The median FWHM of all detections is not the stars' where nebula knots outnumber them (a
    synthetic nebula of the held-out set: 10 detections, all knots of 19 px); the network tells
    them apart, removing stars and keeping knots.

    Parameters
    ----------
    stars : astroflow.restoration.starmetrics.StarCatalog
        Detections of the input.
    removed : numpy.ndarray
        ``(N,)`` :func:`removed_fraction` of each.
    min_removed : float, optional
        Least removed fraction of a star.

    Returns
    -------
    float
        px; NaN when no detection was removed.
    """
    removed = np.asarray(removed) >= min_removed
    return float(np.median(stars.fwhm[removed])) if removed.any() else float("nan")


def inpaint_residuals(
    display, starless, catalog=None, *, threshold_sigma=5.0, grow=2.0, radius=5, min_area=4, passes=3,
    max_fwhm_ratio=3.0,
):
    """Inpaint the compact sources a network left where the input had a star.

    Residual stars are what a user sees first in a starless image, and the classical baseline
    (detect, mask, inpaint) leaves none of the ones it detects. Here the network's answer is
    searched with SEP (Barbary 2016) at ``threshold_sigma`` times the *input's* background RMS
    (the threshold of :func:`astroflow.restoration.starmetrics.residual_sources`); each
    detection that is itself compact and whose centre lies on a *star-sized* detection of the
    input (both FWHM at most ``max_fwhm_ratio`` times the stars' FWHM, :func:`stellar_fwhm`:
    the median FWHM of the input's detections that the network removed; the residual's FWHM
    from its second moments, ``2.355 sqrt(a b)``) is masked by its ellipse grown ``grow``
    times (at least 3 px) and filled by Telea inpainting
    (:func:`astroflow.restoration.starless.inpaint`). The size tests keep what the network
    rightly left: a galaxy's nucleus (M 94's: 13 px against 3.2 px for its stars), galaxies
    of the Hubble Deep Field and knots of nebulosity (20-30 px on the real images measured),
    which the classical baseline inpaints like stars. Without them, nebula knots of the
    held-out synthetic set that happen to cover a star were filled as smeared patches (the
    set's median PSNR fell from 34.3 to 31.0 dB). Where the network removed no star, nothing
    is inpainted.
    Everything else is the network's answer, untouched; the filled pixels are never brighter
    than the input. A filled star can uncover a fainter neighbour or leave part of a wide halo,
    so the search is repeated on the result, up to ``passes`` times or until it finds nothing
    (on one real SBIG light, 41 residual sources after the network: 20 after one pass, none
    after two).

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W, C)`` float32, the network's input, in ``[0, 1]``.
    starless : numpy.ndarray
        ``(H, W, C)`` float32, the network's (clamped) answer.
    catalog : astroflow.restoration.starmetrics.StarCatalog or None, optional
        :func:`astroflow.restoration.starmetrics.detect` of ``display`` at ``threshold_sigma``
        and ``min_area`` (detected here when None).
    threshold_sigma : float, optional
        Detection threshold (input background RMS).
    grow : float, optional
        Mask ellipse size in units of each detection's semi-axes (times 2).
    radius : int, optional
        Inpainting radius (px).
    min_area : int, optional
        Minimum connected pixels of a detection.
    passes : int, optional
        Most searches.
    max_fwhm_ratio : float, optional
        Largest FWHM of an input detection or a residual, in units of the stars' FWHM
        (:func:`stellar_fwhm`), treated as a star.


    Returns
    -------
    out : numpy.ndarray
        ``(H, W, C)`` float32.
    n : int
        Residual sources inpainted, over all passes.

    Raises
    ------
    ValueError
        Shapes that differ or are not ``(H, W, C)``, or non-finite pixels.
    """
    display, starless = _answer_pair(display, starless)
    out, total = starless.copy(), 0
    h, w = display.shape[:2]
    catalog = detect(display, threshold_sigma=threshold_sigma, min_area=min_area) if catalog is None else catalog
    if not len(catalog.x):
        return out, 0
    stars = None
    for _ in range(passes):
        after = residual_detections(out, catalog.rms, threshold_sigma=threshold_sigma, min_area=min_area)
        if not len(after):
            break
        if stars is None:
            fwhm = stellar_fwhm(catalog, removed_fraction(display, starless, catalog))
            if not np.isfinite(fwhm):  # the network removed no star: nothing is a residual star
                break
            star_sized = catalog.fwhm <= max_fwhm_ratio * fwhm
            stars = np.zeros((h, w), dtype=bool)
            x, y, r = catalog.x[star_sized], catalog.y[star_sized], catalog.fwhm[star_sized]
            sep.mask_ellipse(stars, x, y, np.maximum(r, 1.5), np.maximum(r, 1.5), np.zeros_like(r))
        ix = np.clip(np.round(after["x"]).astype(int), 0, w - 1)
        iy = np.clip(np.round(after["y"]).astype(int), 0, h - 1)
        compact = GAUSS_FWHM * np.sqrt(after["a"] * after["b"]) <= max_fwhm_ratio * fwhm
        keep = stars[iy, ix] & compact
        if not keep.any():
            break
        r = after[keep]
        mask = np.zeros((h, w), dtype=bool)
        sep.mask_ellipse(mask, r["x"], r["y"], np.maximum(r["a"] * grow * 2, 3.0),
                         np.maximum(r["b"] * grow * 2, 3.0), r["theta"])
        out = np.minimum(inpaint(out, mask, radius=radius), display).astype(np.float32)
        total += int(keep.sum())
    return out, total


def _ring_medians(window, rings, n):
    """Median of each channel of ``window`` over each ring label 0..n-1 of ``rings`` (-1 outside).

    ``window`` is ``(h, w, C)``, ``rings`` ``(h, w)`` int; returns ``(C, n)`` float64, 0 for
    empty rings, the mean of the two middle values for an even count (as
    :func:`scipy.ndimage.median`). One sort by (ring, value) per channel instead of a
    selection per label: about ten times faster on the 1-3 thousand pixels of a star window.
    """
    inside = rings >= 0
    labels = rings[inside]
    values = window[inside].astype(np.float64)  # (npix, C)
    counts = np.bincount(labels, minlength=n)[:n]
    lo = values.min(axis=0)
    span = values.max(axis=0) - lo + 1.0
    order = np.argsort(labels[:, None] * span + (values - lo), axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, axis=0)
    starts = np.cumsum(counts) - counts
    low = np.clip(starts + (counts - 1) // 2, 0, len(labels) - 1)
    high = np.clip(starts + counts // 2, 0, len(labels) - 1)
    medians = 0.5 * (ordered[low] + ordered[high])
    return np.where(counts[:, None] > 0, medians, 0.0).T


def profile_stars(display, starless, stars=None, *, min_peak_sigma=20.0, min_fwhm_ratio=1.0, max_fwhm_ratio=3.0,
                  min_removed=0.5, max_stars=5000):
    """The stars whose leftovers :func:`subtract_profiles` takes away.

    Two kinds: the large saturated stars
    (:func:`astroflow.restoration.starmetrics.saturated_stars`), which the network can leave
    whole, and the bright stars it recognised as stars but did not remove entirely: at least
    ``min_peak_sigma`` noise sigmas above the sky, ``min_fwhm_ratio`` to ``max_fwhm_ratio``
    times the stars' FWHM (:func:`stellar_fwhm`; star-sized, as for :func:`inpaint_residuals`),
    and with at least ``min_removed`` of their peak removed at the centre
    (:func:`removed_fraction`). The size and removal tests keep
    what is not a star: the network takes away much of M 94's nucleus (FWHM 4 times its
    stars'), whose profile would otherwise be subtracted whole, and it leaves the Hubble Deep
    Field's larger galaxies in place. The least size, the stars' median FWHM (the larger half of
    them), was 1.5 times it until 2026-12-03; with it (and :func:`subtract_profiles`'s
    significance test and capped smoothing), on the real images of
    ``benchmarks/starless_real.py``, the ring 1-3 FWHM out fell from +0.24 to +0.20 noise
    sigmas on the Cave Nebula (worst channel +0.48 to +0.41; the classical baseline +0.20 and
    +0.39) and from +0.031 to +0.026 on the Hubble Deep Field, and the worst hole went from
    -0.93 to -0.92 (Cave), +0.13 to -0.05 (SBIG stack; the classical baseline -0.09), -0.39 to
    -0.28 and -0.26 to -0.19 (Seestar light and stack; -0.42 and -0.26); the held-out synthetic
    set's median PSNR rose from 33.16 to 33.23 dB.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W, C)`` float32, the network's input, in ``[0, 1]``.
    starless : numpy.ndarray
        ``(H, W, C)`` float32, the network's (clamped) answer.
    stars : astroflow.restoration.starmetrics.StarCatalog or None, optional
        Detections of ``display`` (:func:`astroflow.restoration.starmetrics.detect`); detected
        when None.
    min_peak_sigma, min_fwhm_ratio, max_fwhm_ratio, min_removed : float, optional
        The tests on the stars that are not saturated, see above.
    max_stars : int, optional
        Most stars of that second kind, brightest first.

    Returns
    -------
    astroflow.restoration.starmetrics.StarCatalog
        Brightest first.
    """
    display = np.asarray(display, dtype=np.float32)
    stars = detect(display) if stars is None else stars
    if not len(stars.x):
        return stars
    saturated = saturated_stars(display, stars)
    removed = removed_fraction(display, starless, stars)
    fwhm = stellar_fwhm(stars, removed, min_removed=min_removed)
    bright = (
        (stars.peak >= min_peak_sigma * stars.noise)
        & (stars.fwhm >= min_fwhm_ratio * fwhm)
        & (stars.fwhm <= max_fwhm_ratio * fwhm)
        & (removed >= min_removed)
    )
    bright[np.flatnonzero(bright)[max_stars:]] = False
    keep = bright | np.isin(stars.x, saturated.x)
    return stars.select(np.flatnonzero(keep))


def subtract_profiles(display, starless, stars=None, *, reach=4.0, max_radius=200, fade=0.5, noise=None,
                      significance=1.0):
    """Take away what a network left of the stars it should have removed: their azimuthal profile.

    For each star of :func:`profile_stars`, the azimuthal median profiles (rings 1 px wide) of
    the input and of the network's answer are measured out to ``R = reach * FWHM`` (at most
    ``max_radius``). The halo ends where the input's profile stops falling (less than ``fade``
    noise sigmas over the next ``max(3, FWHM / 2)`` px), and the ring median just beyond is the
    zero of both profiles, so that a star on a nebula is measured against the nebula around it.
    Inside, where the answer's profile is positive it is subtracted, capped at the input's own
    excess (what the star added) and, in colour, at twice the middle channel's excess (a halo
    is white or tinted; light that one channel holds alone is nebulosity); where it is negative
    (a clamped core at a sky estimate below this one) the ring is raised to the sky, never
    above the input. Only rings whose median differs from the zero by more than twice the
    standard error of the two medians (1.2533 sigma / sqrt(n) each) are touched, so that a star
    the network removed whole keeps the network's answer; the profile is smoothed over 3 rings,
    but no ring loses or gains more than its own excess (a halo's excess carried into a core
    the clamp had filled would dig a hole). It is the classical subtraction of a star's radial
    profile (as for bright stars in crowded-field photometry); the median ignores what is not
    round (spikes, nebula structure, neighbours), so nebulosity crossing the halo stays.
    Diffraction spikes stay, for :func:`subtract_spikes`. On the held-out synthetic set a white
    star on a red nebula that peaks under it still takes some nebula with it (one sample of 16:
    26.0 to 24.2 dB); over the 16, the mean PSNR is unchanged (34.44 and 34.40 dB).

    On the real images of ``benchmarks/starless_real.py``, with the weights of 2026-12-01
    (the shipped ones): the network leaves the Cave Nebula's three brightest stars
    almost whole and grey-blue halos around many others; with their profiles subtracted the
    residual sources after the inpainting fall from 25 to 16, the ring 1-3 FWHM out from +0.29
    to +0.24 noise sigmas and, around its 12 saturated stars, from +1.30 to +0.72 (worst
    channel +2.77 to +1.31; the classical baseline +0.75 and +1.41). M 94's nucleus and the
    Hubble Deep Field's large galaxies are kept.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W, C)`` float32, the network's input, in ``[0, 1]``.
    starless : numpy.ndarray
        ``(H, W, C)`` float32, the network's (clamped) answer.
    stars : astroflow.restoration.starmetrics.StarCatalog or None, optional
        The stars to subtract; :func:`profile_stars` when None.
    reach : float, optional
        Largest radius of a star's profile, in units of its FWHM.
    max_radius : int, optional
        Largest radius of a star's profile (px).
    fade : float, optional
        Fall of the input's profile (noise sigmas of a pixel) below which a halo has ended.
    noise : sequence of float or None, optional
        Noise sigma of each channel of ``display``; estimated when None.

    Returns
    -------
    out : numpy.ndarray
        ``(H, W, C)`` float32, never above the input, never below 0.
    n : int
        Stars subtracted.

    Raises
    ------
    ValueError
        Shapes that differ or are not ``(H, W, C)``.
    """
    display, starless = _answer_pair(display, starless)
    if stars is None:
        stars = profile_stars(display, starless)
    out = starless.copy()
    if not len(stars.x):
        return out, 0
    h, w, c = display.shape
    if noise is None:
        noise = [noise_sigma(display[:, :, k]) for k in range(c)]
    for x, y, fwhm in zip(stars.x, stars.y, stars.fwhm):
        radius = int(min(max_radius, np.ceil(reach * fwhm)))
        y0, y1 = max(0, int(y) - radius), min(h, int(y) + radius + 1)
        x0, x1 = max(0, int(x) - radius), min(w, int(x) + radius + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(xx - x, yy - y)
        rings = np.where(r < radius, r.astype(np.int64), -1)
        # The halo ends where the input's profile stops falling: less than ``fade`` noise sigmas
        # over the next ``step`` px. Its zero is the ring median just beyond, so that a star on
        # a nebula is measured against the nebula around it, not the darker sky further out.
        raw_in = _ring_medians(display[y0:y1, x0:x1], rings, radius)
        step = max(3, int(round(fwhm / 2)))
        drop = raw_in[:, : radius - step] - raw_in[:, step:]
        flat = np.flatnonzero((drop < fade * np.asarray(noise)[:, None]).all(axis=0)[int(fwhm // 2):])
        extent = int(flat[0]) + int(fwhm // 2) if len(flat) else radius - step
        extent = max(extent, 1)
        band = (r >= extent) & (r < extent + step)
        if not band.any():
            continue
        prof_in = raw_in - np.median(display[y0:y1, x0:x1][band], axis=0)[:, None]
        prof_out = _ring_medians(out[y0:y1, x0:x1], rings, radius) - np.median(out[y0:y1, x0:x1][band], axis=0)[:, None]
        taper = np.clip((extent + step - np.arange(radius)) / step, 0.0, 1.0)
        # Rings the answer left above the sky lose their excess (at most the input's); rings
        # it left below (a clamped core, a dug ring) are raised to the sky, never above the input.
        excess = np.where(prof_out > 0.0, np.minimum(prof_out, np.clip(prof_in, 0.0, None)), prof_out)
        # Only rings that differ from the sky by more than twice the standard error of their
        # median and the sky's (1.2533 sigma / sqrt(n) each): a star the network removed whole
        # keeps the network's answer, not the noise of its ring medians.
        counts = np.bincount(rings[rings >= 0], minlength=radius)[:radius]
        error = 1.2533 * np.asarray(noise)[:, None] * np.sqrt(1.0 / np.maximum(counts, 1) + 1.0 / band.sum())
        excess = np.where(np.abs(prof_out) > significance * error, excess, 0.0)
        if c > 1:  # a halo is white or tinted; light one channel holds alone is nebulosity
            excess = np.minimum(excess, 2.0 * np.clip(np.sort(excess, axis=0)[1], 0.0, None))
        # smoothed over 3 rings, but no ring loses (or gains) more than its own excess: the
        # smoothing would carry a halo's excess into a core the clamp had filled, a hole
        smooth = ndi.uniform_filter1d(excess, 3, axis=1, mode="nearest")
        excess = np.where(smooth > 0.0, np.minimum(smooth, np.clip(excess, 0.0, None)),
                          np.maximum(smooth, np.clip(excess, None, 0.0))) * taper
        take = np.moveaxis(np.where(rings >= 0, excess[:, np.clip(rings, 0, radius - 1)], 0.0), 0, 2)
        window = out[y0:y1, x0:x1]
        window -= take.astype(np.float32)
        np.clip(window, 0.0, display[y0:y1, x0:x1], out=window)
    return out, len(stars.x)


def subtract_spikes(display, starless, stars, angles, *, sigma=None, reach=4.0, max_radius=200, end=0.5, smooth=7):
    """Take away what is left of the stars' diffraction spikes along the given directions.

    Along each arm of each spike (:func:`spike_angles`) of each star, the sky either side is the
    median of reference lines 4-7 px to either side, at each distance from the star
    (:func:`astroflow.restoration.starmetrics.spike_arm`), and the arm ends where the input's
    excess over it (the middle three lines, smoothed over 9 px) falls below ``end`` noise sigmas.
    Up to there, every pixel within 2.5 px of the line gets its excess over that sky, in the
    input and in the answer, averaged in bins 1 px along the spike and 0.5 px across it and then
    over ``smooth`` bins along it (pixels, not resampled lines: a spike 1-2 px wide keeps its
    peak). The answer's positive excess, capped at the input's, is subtracted as far as it has
    the spike's colour (the star's: the median over its arms of each arm's mean colour in the
    input), as much of that colour as the middle channel holds, and never more in a channel
    than its own excess: nebulosity along a spike that one channel holds (an H-alpha nebula's
    red) stays. The result is never above the input nor below 0. The round part of a star is
    :func:`subtract_profiles`'s, whose azimuthal medians leave the spikes; inside a quarter of
    the star's FWHM (:func:`astroflow.restoration.starmetrics.spike_reach`), the clamped core,
    nothing is done.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W, C)`` float32, the network's input, in ``[0, 1]``.
    starless : numpy.ndarray
        ``(H, W, C)`` float32, the network's answer (after the clamp and the profiles).
    stars : astroflow.restoration.starmetrics.StarCatalog
        The stars whose spikes are taken (the saturated ones).
    angles : numpy.ndarray
        Spike directions in degrees (:func:`spike_angles`).
    sigma : float or None, optional
        Noise sigma of the grey ``display`` (display units); estimated when None.
    reach, max_radius : float, optional
        Longest spike: ``reach`` FWHM, at most ``max_radius`` px.
    end : float, optional
        The input's excess (noise sigmas) at which a spike ends.
    smooth : int, optional
        Bins (px) along a spike over which each pixel's excess is averaged.

    Returns
    -------
    out : numpy.ndarray
        ``(H, W, C)`` float32.
    n : int
        Spike arms subtracted.

    Raises
    ------
    ValueError
        Shapes that differ or are not ``(H, W, C)``.
    """
    display, starless = _answer_pair(display, starless)
    out = starless.copy()
    if not len(stars.x) or not len(angles):
        return out, 0
    h, w, c = display.shape
    sigma = noise_sigma(grey(display)) if sigma is None else sigma
    half_width = float(SPIKE_ON[-1]) + 0.5
    bins = int(round(4 * half_width))
    n = 0
    for x, y, fwhm in zip(stars.x, stars.y, stars.fwhm):
        inner, outer = spike_reach(fwhm, reach, max_radius)
        y0, y1 = max(0, int(y) - outer), min(h, int(y) + outer + 1)
        x0, x1 = max(0, int(x) - outer), min(w, int(x) + outer + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        arms = []
        for angle in angles:
            for direction in (angle, angle + 180.0):
                e_in, _, stop, sky_in, sky_out = spike_arm(display, out, x, y, direction, inner, outer, sigma=sigma,
                                                           end=end)
                if stop:
                    arms.append((direction, stop, sky_in, sky_out, e_in[:stop, 1:-1].mean(axis=(0, 1))))
        if not arms:
            continue
        # The spikes' colour is the star's: the median over its arms of each arm's colour, so
        # that nebulosity along one arm does not tint it.
        tints = np.array([np.clip(arm[4], 0.0, None) for arm in arms])
        tints /= np.maximum(tints.mean(axis=1, keepdims=True), 1e-12)
        colour = np.median(tints, axis=0)
        colour = colour / colour.mean() if colour.mean() > 0 else np.ones(c)
        for direction, stop, sky_in, sky_out, _ in arms:
            th = np.radians(direction)
            along = (xx - x) * np.cos(th) + (yy - y) * np.sin(th) - inner
            across = -(xx - x) * np.sin(th) + (yy - y) * np.cos(th)
            hit = (along > -0.5) & (along < stop - 0.5) & (np.abs(across) <= half_width)
            if not hit.any():
                continue
            # each pixel's excess over the sky either side, averaged in bins 1 px along the
            # spike and 0.5 px across it, then over `smooth` bins along it
            tb = np.round(along[hit]).astype(np.int64)
            sb = np.minimum(((across[hit] + half_width) * 2).astype(np.int64), bins - 1)
            index = tb * bins + sb
            counts = np.bincount(index, minlength=stop * bins).reshape(stop, bins).astype(np.float64)
            counts = ndi.uniform_filter1d(counts, smooth, axis=0, mode="constant")
            window = out[y0:y1, x0:x1]
            excess = []
            for image, sky in ((display[y0:y1, x0:x1], sky_in), (window, sky_out)):
                e = image[hit] - sky[tb]
                binned = np.stack([np.bincount(index, e[:, k], minlength=stop * bins) for k in range(c)], axis=1)
                binned = ndi.uniform_filter1d(binned.reshape(stop, bins, c), smooth, axis=0, mode="constant")
                excess.append((binned / np.maximum(counts, 1e-9)[:, :, None])[tb, sb])
            take = np.clip(excess[1], 0.0, np.clip(excess[0], 0.0, None))  # (N, C)
            # only light of the spike's colour: as much as the middle channel holds (light that one
            # channel holds alone, a nebula's, stays; the middle one, unlike the least, is not
            # biased low by the noise)
            amount = np.median(take / np.maximum(colour, 1e-6), axis=1, keepdims=True)
            amount = np.minimum(amount * colour, take) if c > 1 else take
            window[hit] -= amount.astype(np.float32)
            np.clip(window, 0.0, display[y0:y1, x0:x1], out=window)
            n += 1
    return out, n


def clean_answer(display, answer, *, profiles=True, spikes=True, residuals=True):
    """The network's answer made safe and finished: the chain :func:`predictor` runs after it.

    :func:`clamp_holes`, then optionally :func:`subtract_profiles` (of :func:`profile_stars`),
    :func:`subtract_spikes` (of the saturated stars, along :func:`spike_angles` of what is
    left) and :func:`inpaint_residuals`, in that order, with one noise estimate and one SEP
    detection of the input for all of them.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W, C)`` float32, the network's input, in ``[0, 1]``.
    answer : numpy.ndarray
        ``(H, W, C)`` float32, the network's raw answer.
    profiles, spikes, residuals : bool, optional
        Run that step (all by default, as the workflow does).

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)`` float32 starless display data.

    Raises
    ------
    ValueError
        Shapes that differ or are not ``(H, W, C)``, or non-finite pixels.
    """
    display = np.asarray(display, dtype=np.float32)
    noise = [noise_sigma(display[:, :, k]) for k in range(display.shape[2])]
    out = clamp_holes(display, answer, noise=noise)
    catalog = detect(display) if profiles or spikes or residuals else None
    if profiles:
        out, n = subtract_profiles(display, out, profile_stars(display, out, catalog), noise=noise)
        log.info("%d star profiles subtracted", n)
    if spikes:
        bright = saturated_stars(display, catalog)
        angles = spike_angles(out, bright)
        out, n = subtract_spikes(display, out, bright, angles)
        log.info("spikes at %s degrees: %d spike arms subtracted", angles.tolist(), n)
    if residuals:
        out, n = inpaint_residuals(display, out, catalog)
        log.info("%d residual stars inpainted", n)
    return out


def predictor(model, *, tile=256, overlap=32, batch=4, device=None, no_holes=True, profiles=True, spikes=True,
              residuals=True):
    """A function from display data to the network's starless display data, tiled.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`load_starless`.
    tile, overlap, batch : int, optional
        See :func:`astroflow.tiling.predict_tiled`.
    device : str or None, optional
        Where to run; the model's own device by default.
    no_holes : bool, optional
        Apply :func:`clamp_holes` to the network's answer (default), so that it cannot fall
        below the local sky where it removed a star; False gives the network's raw answer (to
        measure what the clamp does).
    profiles : bool, optional
        With ``no_holes``, also :func:`subtract_profiles`: what the network left of the large
        saturated stars and of the bright stars it removed in part (default).
    spikes : bool, optional
        With ``no_holes``, also :func:`subtract_spikes`: what the network left of the large
        saturated stars' diffraction spikes, along the directions
        :func:`astroflow.restoration.starmetrics.spike_angles` finds in its answer (default),
        after ``profiles``.
    residuals : bool, optional
        With ``no_holes``, also :func:`inpaint_residuals` the stars the network left (default),
        after ``profiles``.

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
        out = network(display)
        if not no_holes:
            return out
        return clean_answer(display, out, profiles=profiles, spikes=spikes, residuals=residuals)

    def network(display):
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
