"""Colour calibration of colour images: background neutralisation and white balance.

Two steps, after gradient removal, in the order PixInsight applies its BackgroundNeutralization
and ColorCalibration processes:

1. **Background neutralisation**: each channel's sky level (the sigma-clipped median of the
   pixels the signal mask leaves, :func:`sky_levels`) is moved to the mean of the three, so that
   the sky is grey.
2. **White balance** of the signal above the sky, ``out_c = sky_c + k_c (image_c - sky_c)``, with
   green kept (``k_G = 1``), from either

   * ``stars``: the stars themselves, as PixInsight's ColorCalibration does without a catalogue
     (a white reference made of many stars): SEP (Barbary 2016) detects them on the grey image,
     circular apertures with a local sky annulus (:func:`sep.sum_circle`) measure each channel,
     and the median ratio ``G / c`` of the unsaturated, well-measured stars makes their typical
     colour neutral; or
   * ``camera``: the camera's own white-balance multipliers as LibRaw reports them
     (``rawpy``'s ``camera_whitebalance``, recorded by :mod:`astroflow.io.ingest` as ``CAMWBR``,
     ``CAMWBG``, ``CAMWBB``), which make a daylight-white (about 5500-6500 K) source neutral.

Making the median star neutral treats the field's typical star (a G/K dwarf, about 5000-5500 K)
as white; camera multipliers treat a daylight source as white. The two differ by that colour
(measured on the simulated night in ``benchmarks/background.py``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import sep
from astropy.stats import sigma_clipped_stats

from astroflow.checks import check_float, check_int

__all__ = [
    "WHITE_BALANCE",
    "ColourResult",
    "ColourWarning",
    "apply_white_balance",
    "calibrate_colour",
    "camera_factors",
    "neutralise_background",
    "sky_levels",
    "star_white_balance",
]

WHITE_BALANCE = ("stars", "camera", "none")
CAMERA_KEYS = ("CAMWBR", "CAMWBG", "CAMWBB")


class ColourWarning(UserWarning):
    """A colour step fell back to another method (no camera multipliers, too few stars)."""


@dataclass
class ColourResult:
    """Result of :func:`calibrate_colour`.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(H, W, 3)``, calibrated; NaN where the input is NaN.
    sky : numpy.ndarray
        float64 ``(3,)``: each channel's sky level before calibration.
    factors : numpy.ndarray
        float64 ``(3,)``: white-balance factors applied (green = 1; all 1: none).
    method : str
        White balance used: ``stars``, ``camera`` or ``none``.
    n_stars : int
        Stars the star white balance used (0 for the other methods).
    """

    image: np.ndarray
    sky: np.ndarray
    factors: np.ndarray
    method: str
    n_stars: int


def _rgb(image, name):
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: colour calibration needs an (H, W, 3) RGB image, got shape {image.shape}")
    return image


def sky_levels(image, mask=None):
    """Each channel's sky level: the 3-sigma-clipped median (astropy) of the unmasked finite pixels.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` float.
    mask : numpy.ndarray, optional
        bool ``(H, W)``, True on signal (stars, nebulae) to leave out; None: every pixel counts.

    Returns
    -------
    numpy.ndarray
        float64 ``(3,)``.
    """
    use = np.isfinite(image).all(axis=2)
    if mask is not None:
        use &= ~mask
    if not use.any():
        use = np.isfinite(image).all(axis=2)
    return np.array([sigma_clipped_stats(image[:, :, c][use], sigma=3.0, maxiters=5)[1] for c in range(3)])


def neutralise_background(image, sky):
    """Move each channel's sky level to the mean of the three (a grey sky).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` float.
    sky : array_like
        ``(3,)`` sky levels of the channels (:func:`sky_levels`).

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W, 3)``: ``image - sky + mean(sky)``.
    """
    sky = np.asarray(sky, dtype=np.float64)
    return (image - sky + sky.mean()).astype(np.float32)


def apply_white_balance(image, factors, sky):
    """Scale each channel's signal above its sky: ``sky_c + k_c (image_c - sky_c)``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` float.
    factors : array_like
        ``(3,)`` positive factors ``k_c``.
    sky : array_like
        ``(3,)`` sky levels, left where they are (a neutral sky stays neutral).

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W, 3)``.
    """
    factors = np.asarray(factors, dtype=np.float64)
    sky = np.asarray(sky, dtype=np.float64)
    return (sky + factors * (image - sky)).astype(np.float32)


def camera_factors(header):
    """The camera's white-balance multipliers from a header, green = 1, or None.

    Parameters
    ----------
    header : mapping
        A FITS header (``CAMWBR``, ``CAMWBG``, ``CAMWBB`` as :mod:`astroflow.io.ingest` writes them).

    Returns
    -------
    numpy.ndarray or None
        float64 ``(3,)``, or None when a key is missing or a multiplier is not positive.
    """
    try:
        values = np.array([float(header[key]) for key in CAMERA_KEYS])
    except (KeyError, TypeError, ValueError):
        return None
    if not np.all(values > 0):
        return None
    return values / values[1]


def star_white_balance(image, sky, *, threshold_sigma, saturation, min_stars, name="image"):
    """White-balance factors that make the median colour of the image's unsaturated stars neutral.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` float, linear (ADU); NaN = no data.
    sky : array_like
        ``(3,)`` sky levels of the channels.
    threshold_sigma : float
        SEP detection threshold on the grey image (background RMS units, > 0).
    saturation : float
        A star whose peak pixel in any channel exceeds this fraction of that channel's maximum
        counts as saturated and is left out (0..1].
    min_stars : int
        Fewer usable stars: None is returned (the caller falls back).
    name : str, optional
        What the image is, for messages.

    Returns
    -------
    factors : numpy.ndarray or None
        float64 ``(3,)``, green = 1: ``median(F_G / F_c)`` over the stars (aperture fluxes,
        radius 2 x the largest semi-axis SEP measured, at least 3 px; local sky from the
        annulus of 1.5-2.5 radii).
    n_stars : int
        Stars used.
    """
    threshold_sigma = check_float("threshold_sigma", threshold_sigma, 0.0, strict=True)
    saturation = check_float("saturation", saturation, 0.0, strict=True, high=1.0)
    min_stars = check_int("min_stars", min_stars, 1)
    sky = np.asarray(sky, dtype=np.float64)
    finite = np.isfinite(image).all(axis=2)
    data = np.where(finite[..., None], image - sky, 0.0).astype(np.float32)
    grey = np.ascontiguousarray(data.mean(axis=2))
    background = sep.Background(grey, mask=~finite)
    detection = grey - background.back()
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), grey.size))
    sep.set_sub_object_limit(max(sep.get_sub_object_limit(), 4096))
    objects = sep.extract(detection, threshold_sigma, err=background.globalrms, mask=~finite, minarea=5)
    if len(objects) < min_stars:
        return None, 0
    x, y = objects["x"], objects["y"]
    radius = np.clip(2.0 * objects["a"], 3.0, 15.0)
    height, width = grey.shape
    inside = (x > 2.5 * radius) & (x < width - 1 - 2.5 * radius) & (y > 2.5 * radius) & (y < height - 1 - 2.5 * radius)
    peaks = np.array([[data[int(round(yy)), int(round(xx)), c] for c in range(3)] for xx, yy in zip(x, y, strict=True)])
    ceiling = saturation * (np.nanmax(image, axis=(0, 1)) - sky)
    good = inside & (objects["flag"] == 0) & np.all(peaks < ceiling, axis=1)
    if good.sum() < min_stars:
        return None, int(good.sum())
    fluxes, errors = [], []
    for c in range(3):
        plane = np.ascontiguousarray(data[:, :, c])
        flux, err, flag = sep.sum_circle(plane, x[good], y[good], radius[good], err=float(np.std(plane[finite]) or 1.0),
                                         bkgann=(1.5 * radius[good], 2.5 * radius[good]), mask=~finite)
        fluxes.append(flux)
        errors.append(err)
    fluxes = np.array(fluxes)
    usable = np.all(fluxes > 0, axis=0) & (fluxes[1] > 20.0 * np.array(errors)[1])
    if usable.sum() < min_stars:
        return None, int(usable.sum())
    ratios = fluxes[1, usable] / fluxes[:, usable]
    return np.median(ratios, axis=1), int(usable.sum())


def calibrate_colour(
    image,
    *,
    neutralise,
    white_balance,
    header=None,
    mask=None,
    threshold_sigma,
    saturation,
    min_stars,
    name="image",
):
    """Background neutralisation and white balance of an RGB image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` float, linear; NaN = no data.
    neutralise : bool
        Make the sky grey (:func:`neutralise_background`).
    white_balance : {"stars", "camera", "none"}
        Where the factors come from; ``camera`` without multipliers in ``header`` falls back to
        ``stars``, and ``stars`` with fewer than ``min_stars`` usable stars to ``none``, each with
        a :class:`ColourWarning`.
    header : mapping, optional
        The image's header (for ``camera``).
    mask : numpy.ndarray, optional
        bool ``(H, W)`` of signal to leave out of the sky levels.
    threshold_sigma, saturation, min_stars
        Star detection, see :func:`star_white_balance`.
    name : str, optional
        What the image is, for messages.

    Returns
    -------
    ColourResult

    Raises
    ------
    ValueError
        If the image is not ``(H, W, 3)`` or ``white_balance`` is unknown.
    """
    image = _rgb(image, name)
    if white_balance not in WHITE_BALANCE:
        raise ValueError(f"white_balance must be one of {', '.join(WHITE_BALANCE)}, got {white_balance!r}")
    sky = sky_levels(image, mask)
    out = neutralise_background(image, sky) if neutralise else image.copy()
    level = np.full(3, sky.mean()) if neutralise else sky
    method, factors, n_stars = white_balance, None, 0
    if method == "camera":
        factors = camera_factors(header or {})
        if factors is None:
            warnings.warn(f"{name}: no camera white-balance multipliers in the header "
                          f"({', '.join(CAMERA_KEYS)}); white balance from the stars instead", ColourWarning,
                          stacklevel=2)
            method = "stars"
    if method == "stars":
        factors, n_stars = star_white_balance(out, level, threshold_sigma=threshold_sigma, saturation=saturation,
                                              min_stars=min_stars, name=name)
        if factors is None:
            warnings.warn(f"{name}: only {n_stars} unsaturated stars usable for white balance, {min_stars} "
                          f"needed; no white balance applied", ColourWarning, stacklevel=2)
            method = "none"
    if method == "none":
        factors = np.ones(3)
    out = apply_white_balance(out, factors, level)
    return ColourResult(image=out, sky=sky, factors=np.asarray(factors, float), method=method, n_stars=n_stars)
