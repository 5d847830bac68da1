"""Star detection and per-frame quality: FWHM, eccentricity, star count, sky level and noise.

Detection is SEP (Barbary 2016, the Source Extractor algorithms of Bertin & Arnouts 1996 as a
library): a meshed background, then thresholded extraction with deblending. Each detection is
then fitted with a circular Moffat profile (Moffat 1969; the PSF fit of Siril's and
PixInsight's DynamicPSF), which gives a centre and a FWHM that match the true ones for
Gaussian and Moffat stars alike, unlike the half-light diameter (too large for Moffat wings) or
isophotal second moments (too small, truncated at the threshold).

Coordinates are 0-based pixel coordinates with the centre of pixel ``[j, i]`` at ``x = i``,
``y = j`` (the SEP, astroalign, scikit-image and OpenCV convention).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import sep
from scipy.optimize import least_squares

__all__ = [
    "FLAG_BADFIT",
    "FLAG_EDGE",
    "FLAG_SATURATED",
    "FLAG_SHARP",
    "NoStarsWarning",
    "detect_stars",
    "frame_quality",
    "quality_from_stars",
]

# SEP's own object flags use bits 0-3 (1 blended, 2 truncated, 4 deblending overflow,
# 8 singular moments); ours sit above them so that both survive in one column.
FLAG_EDGE = 256
"""The fitting box leaves the image or touches missing (NaN) data."""
FLAG_SATURATED = 512
"""A pixel of the star reaches the ``saturation`` level."""
FLAG_SHARP = 1024
"""Narrower than ``min_fwhm``: a hot pixel or a cosmic-ray hit, not a star."""
FLAG_BADFIT = 2048
"""The Moffat fit did not converge to a plausible star."""

STAR_COLUMNS = ["x", "y", "flux", "peak", "fwhm", "a", "b", "theta", "eccentricity", "flag"]

# A pixel integrates the PSF over its area, which adds the variance of a unit box (1/12 px^2)
# per axis; a Gaussian's FWHM^2 grows by 8 ln 2 / 12 px^2, the correction applied to the fit
# of the point-sampled model below (exact for Gaussian stars, within 1 % for Moffat ones).
_PIXEL_FWHM2 = 8.0 * np.log(2.0) / 12.0
_BETA_MIN, _BETA_MAX = 1.2, 30.0


class NoStarsWarning(UserWarning):
    """A frame in which no usable star was found (cloud, a blank or a badly defocused frame)."""


def detect_stars(
    image,
    *,
    threshold_sigma=5.0,
    min_area=5,
    max_stars=500,
    saturation=None,
    min_fwhm=1.0,
    background_box=64,
):
    """Detect and measure the stars of an image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` mono image or ``(H, W, 3)`` RGB image (stars are detected on the mean of the
        channels), linear ADU, any float or integer dtype. NaN marks missing data.
    threshold_sigma : float, optional
        Detection threshold in units of the local background RMS. Default 5.0.
    min_area : int, optional
        Minimum number of connected pixels above the threshold. Default 5.
    max_stars : int, optional
        Only the ``max_stars`` brightest detections (by SEP isophotal flux) are measured and
        returned. Default 500.
    saturation : float or None, optional
        Level (ADU, same scale as ``image``) at or above which a pixel is saturated; stars that
        reach it are flagged :data:`FLAG_SATURATED`. None (default) disables the test.
    min_fwhm : float, optional
        Detections with a fitted FWHM below this (px) are flagged :data:`FLAG_SHARP` as hot
        pixels or cosmic rays. Default 1.0.
    background_box : int, optional
        Mesh size (px) of the SEP background map. Default 64.

    Returns
    -------
    pandas.DataFrame
        One row per detection, brightest first, with columns

        - ``x``, ``y`` : float, centre of the Moffat fit (SEP barycentre where the fit failed), px
        - ``flux`` : float, background-subtracted flux in a circular aperture of radius
          2 x the median FWHM of the frame, ADU
        - ``peak`` : float, brightest pixel above the background, ADU
        - ``fwhm`` : float, FWHM of the fitted Moffat profile corrected for pixel integration,
          px (NaN where the fit failed)
        - ``a``, ``b`` : float, semi-major and semi-minor axes from SEP's isophotal second
          moments, px; ``theta`` : float, position angle of ``a`` from +x towards +y, rad
        - ``eccentricity`` : float, ``sqrt(1 - b^2 / a^2)``
        - ``flag`` : int, bit mask: SEP's object flags (1 blended, 2 truncated, 4 deblending
          overflow, 8 singular) plus :data:`FLAG_EDGE`, :data:`FLAG_SATURATED`,
          :data:`FLAG_SHARP` and :data:`FLAG_BADFIT`. Stars with ``flag == 0`` are clean.

        ``DataFrame.attrs`` holds ``background`` (median sky level, ADU) and ``noise``
        (background RMS, ADU) of the frame. A frame without detections gives an empty table.

    Raises
    ------
    ValueError
        If ``image`` is not ``(H, W)`` or ``(H, W, 3)``.
    """
    return _detect(
        image,
        threshold_sigma=threshold_sigma,
        min_area=min_area,
        max_stars=max_stars,
        saturation=saturation,
        min_fwhm=min_fwhm,
        background_box=background_box,
    )


def frame_quality(
    image,
    *,
    threshold_sigma=5.0,
    min_area=5,
    max_stars=500,
    saturation=None,
    min_fwhm=1.0,
    background_box=64,
):
    """Quality measures of one frame, from its clean stars (``flag == 0``).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` image, linear ADU.
    threshold_sigma, min_area, max_stars, saturation, min_fwhm, background_box
        As in :func:`detect_stars` (same defaults).

    Returns
    -------
    dict
        ``fwhm`` (median FWHM, px), ``eccentricity`` (median), ``n_stars`` (number of clean stars
        among the ``max_stars`` brightest detections), ``background`` (median sky level, ADU)
        and ``noise`` (background RMS, ADU). With no clean star, ``n_stars`` is 0 and ``fwhm``
        and ``eccentricity`` are NaN.

    Warns
    -----
    NoStarsWarning
        When no clean star is found (a normal outcome for a cloudy or blank frame).

    Raises
    ------
    ValueError
        If ``image`` is not ``(H, W)`` or ``(H, W, 3)``.
    """
    stars = detect_stars(
        image,
        threshold_sigma=threshold_sigma,
        min_area=min_area,
        max_stars=max_stars,
        saturation=saturation,
        min_fwhm=min_fwhm,
        background_box=background_box,
    )
    quality = quality_from_stars(stars)
    if quality["n_stars"] == 0:
        warnings.warn(
            f"no usable star found ({len(stars)} detections, all flagged or none)",
            NoStarsWarning,
            stacklevel=2,
        )
    return quality


def quality_from_stars(stars):
    """Frame quality from a star table made by :func:`detect_stars`.

    Parameters
    ----------
    stars : pandas.DataFrame
        Output of :func:`detect_stars` (with its ``attrs``).

    Returns
    -------
    dict
        As :func:`frame_quality`, without the warning.
    """
    clean = stars[stars["flag"] == 0]
    return {
        "fwhm": float(np.median(clean["fwhm"])) if len(clean) else float("nan"),
        "eccentricity": float(np.median(clean["eccentricity"])) if len(clean) else float("nan"),
        "n_stars": int(len(clean)),
        "background": float(stars.attrs["background"]),
        "noise": float(stars.attrs["noise"]),
    }


def _detect(image, *, threshold_sigma, min_area, max_stars, saturation, min_fwhm, background_box):
    data = _detection_plane(image)
    missing = ~np.isfinite(data)
    have_data = not missing.all()
    fill = float(np.median(data[~missing])) if have_data else 0.0
    data = np.where(missing, np.float32(fill), data)
    bkg = sep.Background(data, mask=missing, bw=background_box, bh=background_box)
    background, noise = float(bkg.globalback), float(bkg.globalrms)
    empty = pd.DataFrame({c: pd.Series(dtype=int if c == "flag" else float) for c in STAR_COLUMNS})
    empty.attrs.update(background=background, noise=noise)
    if not have_data or not np.isfinite(noise) or noise <= 0:
        return empty
    sub = data - bkg.back()
    # SEP's default pixel stack (300k) overflows on large frames with bright nebulosity.
    sep.set_extract_pixstack(max(300_000, data.size // 4))
    objects, segmap = sep.extract(
        sub,
        threshold_sigma,
        err=bkg.rms(),
        mask=missing,
        minarea=min_area,
        segmentation_map=True,
    )
    if len(objects) == 0:
        return empty
    order = np.argsort(objects["flux"])[::-1][:max_stars]
    obj = objects[order]
    labels = order + 1
    x, y = obj["x"].astype(float), obj["y"].astype(float)
    rmax = np.maximum(6.0 * obj["a"], 3.0)
    half_light, _ = sep.flux_radius(sub, x, y, rmax, 0.5, subpix=5)
    guess = np.clip(np.nan_to_num(2.0 * half_light, nan=3.0), 1.0, 30.0)
    flag = obj["flag"].astype(np.int64)
    fwhm = np.full(len(obj), np.nan)
    height, width = sub.shape
    for k in range(len(obj)):
        half = int(np.clip(np.ceil(1.5 * guess[k]) + 1, 3, 25))
        i, j = int(round(x[k])), int(round(y[k]))
        if i - half < 0 or j - half < 0 or i + half >= width or j + half >= height:
            flag[k] |= FLAG_EDGE
            continue
        box = np.s_[j - half : j + half + 1, i - half : i + half + 1]
        if missing[box].any():
            flag[k] |= FLAG_EDGE
            continue
        if saturation is not None and np.max(data[box][segmap[box] == labels[k]]) >= saturation:
            flag[k] |= FLAG_SATURATED
        if _is_spike(sub, int(obj["xpeak"][k]), int(obj["ypeak"][k])):
            flag[k] |= FLAG_SHARP
            continue
        # Pixels of other objects would pull the fit towards the neighbour.
        use = (segmap[box] == 0) | (segmap[box] == labels[k])
        fit = _fit_moffat(sub[box], use, x[k] - (i - half), y[k] - (j - half), guess[k])
        if fit is None:
            flag[k] |= FLAG_BADFIT
            continue
        fx, fy, fwhm_sampled = fit
        x[k], y[k] = fx + (i - half), fy + (j - half)
        fwhm[k] = np.sqrt(max(fwhm_sampled**2 - _PIXEL_FWHM2, 0.0))
        if fwhm[k] < min_fwhm:
            flag[k] |= FLAG_SHARP
    clean = flag == 0
    radius = 2.0 * (np.median(fwhm[clean]) if clean.any() else np.median(guess))
    flux, _, _ = sep.sum_circle(sub, x, y, radius, mask=missing, subpix=5)
    a, b = obj["a"].astype(float), obj["b"].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = np.sqrt(np.clip(1.0 - (b / a) ** 2, 0.0, 1.0))
    stars = pd.DataFrame(
        {
            "x": x,
            "y": y,
            "flux": flux.astype(float),
            "peak": obj["peak"].astype(float),
            "fwhm": fwhm,
            "a": a,
            "b": b,
            "theta": obj["theta"].astype(float),
            "eccentricity": ecc,
            "flag": flag,
        }
    )
    stars.attrs.update(background=background, noise=noise)
    return stars


def _detection_plane(image):
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr.mean(axis=2, dtype=np.float64)
    elif arr.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {arr.shape}")
    # SEP needs a C-contiguous array in native byte order (FITS data are big-endian).
    return np.ascontiguousarray(arr, dtype=np.float32)


def _is_spike(sub, i, j):
    # Even a star of FWHM 1 px puts 15 % of its peak into its brightest 4-neighbour; a hot pixel
    # or a cosmic-ray hit puts only noise there, and a Moffat fit to it does not converge.
    height, width = sub.shape
    if not (0 < i < width - 1 and 0 < j < height - 1):
        return False
    neighbours = max(sub[j - 1, i], sub[j + 1, i], sub[j, i - 1], sub[j, i + 1])
    return bool(neighbours < 0.15 * sub[j, i])


def _fit_moffat(box, use, x0, y0, fwhm0):
    """Least-squares circular Moffat fit of one star; (x, y, point-sampled FWHM) or None.

    MINPACK's Levenberg-Marquardt (``method="lm"``) with an analytic Jacobian, several times
    faster than the bounded solvers; the FWHM and beta are reparametrised (log, logistic) to stay
    in range without bounds.
    """
    yy, xx = np.nonzero(use)
    values = box[yy, xx].astype(float)
    xx, yy = xx.astype(float), yy.astype(float)
    level = float(np.median(box[~use])) if (~use).any() else 0.0
    amplitude = float(box[int(round(y0)), int(round(x0))]) - level
    p0 = [level, max(amplitude, 1e-3), x0, y0, np.log(fwhm0), 0.0]
    result = least_squares(
        lambda p: _moffat(p, xx, yy)[0] - values,
        p0,
        jac=lambda p: _moffat(p, xx, yy)[1],
        method="lm",
        max_nfev=200,
    )
    _, amp, fx, fy, log_fwhm, _ = result.x
    fwhm = float(np.exp(np.clip(log_fwhm, -10.0, 10.0)))
    half = box.shape[0] // 2
    ok = (
        result.status > 0
        and amp > 0
        and abs(fx - x0) < 2.0
        and abs(fy - y0) < 2.0
        and fwhm < 2.0 * half
    )
    return (float(fx), float(fy), fwhm) if ok else None


def _moffat(p, x, y):
    """Circular Moffat ``bg + amp (1 + r^2/alpha^2)^-beta`` and its Jacobian.

    Parameters ``(bg, amp, x0, y0, ln FWHM, s)`` with ``beta`` a logistic function of ``s``
    between 1.2 and 30 (a Gaussian is the limit of large beta).
    """
    bg, amp, x0, y0, log_fwhm, s = p
    fwhm = np.exp(np.clip(log_fwhm, -10.0, 10.0))
    sig = 1.0 / (1.0 + np.exp(-np.clip(s, -30.0, 30.0)))
    beta = _BETA_MIN + (_BETA_MAX - _BETA_MIN) * sig
    c = 2.0 ** (1.0 / beta) - 1.0
    alpha2 = fwhm * fwhm / (4.0 * c)
    dx, dy = x - x0, y - y0
    r2 = dx * dx + dy * dy
    u = 1.0 + r2 / alpha2
    log_u = np.log(u)
    m = np.exp(-beta * log_u)
    k = 2.0 * amp * beta * m / (u * alpha2)
    jac = np.empty((x.size, 6))
    jac[:, 0] = 1.0
    jac[:, 1] = m
    jac[:, 2] = k * dx
    jac[:, 3] = k * dy
    jac[:, 4] = k * r2
    dalpha2_dbeta = alpha2 * (c + 1.0) * np.log(2.0) / (c * beta * beta)
    dm_dbeta = -log_u * amp * m + 0.5 * k * r2 / alpha2 * dalpha2_dbeta
    jac[:, 5] = dm_dbeta * (_BETA_MAX - _BETA_MIN) * sig * (1.0 - sig)
    return bg + amp * m, jac
