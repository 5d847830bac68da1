"""Single-image deconvolution of deep-sky stacks: empirical PSF and regularised Richardson-Lucy.

The point-spread function (PSF) is measured on the image's own stars: the bright, isolated,
unsaturated stars found by :func:`astroflow.quality.detect_stars` are cut out, registered to a
common centre with sub-pixel (cubic-spline) shifts, normalised and median-combined into an
*empirical* PSF at the pixel scale of the image (oversampling 1; the idea of the effective PSF
of Anderson & King 2000, PASP 112, 1360, and of photutils' ``EPSFBuilder``, without its
oversampled iterative refinement). photutils is not a dependency of astroflow; the stack here is
our own. With too few such stars the PSF is a pixel-integrated circular Moffat profile
(Moffat 1969, A&A 3, 455) of the stars' median FWHM and fitted ``beta``; without any star it is a
Gaussian of a fallback FWHM, with a :class:`NoStarsForPSF` warning.

The deconvolution is the Richardson-Lucy iteration (Richardson 1972, JOSA 62, 55; Lucy 1974,
AJ 79, 745) with the total-variation regularisation of Dey et al. (2006, Microsc. Res. Tech.
69, 260)::

    u <- u * K^T( d / (K u + b) ) / (1 - lambda * div( grad u / |grad u| ))

where ``K`` is the convolution with the PSF, ``d`` the data shifted to positive values and ``b``
an optional fixed background. Convolutions are FFTs on a reflect-padded copy (no wrap-around
between opposite edges). The iteration stops after ``iterations`` steps, when the relative
change of ``u`` falls below ``stop_tol``, or - when the noise is given - when the reduced
chi^2 of the residual reaches 1 (Morozov's discrepancy principle). Saturated star cores, which no
PSF describes and which make RL ring, are protected by blending the original data back in a
feathered disc around them.

Coordinates are 0-based pixel coordinates with the centre of pixel ``[j, i]`` at ``x = i``,
``y = j`` (as in :mod:`astroflow.deepsky.quality`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.fft as sfft
import sep
from scipy import ndimage
from scipy.optimize import least_squares

from astroflow.deepsky.quality import (
    _PIXEL_FWHM2,
    FLAG_SATURATED,
    _fit_moffat,
    _moffat,
    detect_stars,
)

__all__ = [
    "NoStarsForPSF",
    "deconvolve_image",
    "estimate_psf",
    "richardson_lucy",
    "star_metrics",
]

MIN_EMPIRICAL_STARS = 5
"""Fewer usable stars than this give a Moffat PSF instead of an empirical one."""


class NoStarsForPSF(UserWarning):
    """No star was found to measure the PSF on; a Gaussian of ``fallback_fwhm`` is used."""


# --------------------------------------------------------------------------------------------
# PSF estimation
# --------------------------------------------------------------------------------------------


def estimate_psf(
    image,
    *,
    size=25,
    max_stars=50,
    threshold_sigma=10.0,
    fallback_fwhm=3.0,
    saturation=None,
    min_stars=MIN_EMPIRICAL_STARS,
):
    """Estimate the PSF of an image from its own stars.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` mono or ``(H, W, 3)`` RGB image (the PSF is measured on the mean of the
        channels), linear ADU, any real dtype. NaN marks missing data.
    size : int, optional
        Side of the PSF, px; made odd (``size + 1`` for an even value) so that the PSF is
        centred on a pixel. Default 25.
    max_stars : int, optional
        At most this many stars (the brightest usable ones) go into the empirical PSF.
        Default 50.
    threshold_sigma : float, optional
        Only stars whose peak exceeds this many background RMS are used. Default 10.
    fallback_fwhm : float, optional
        FWHM (px) of the Gaussian returned when no star is found. Default 3.0.
    saturation : float or None, optional
        Saturation level, ADU; stars reaching it are not used. None (default): a flat top of
        at least 3 pixels at the image maximum is taken as saturation.
    min_stars : int, optional
        Minimum number of usable stars for an empirical PSF; with fewer, a Moffat profile is
        fitted instead. Default 5.

    Returns
    -------
    psf : numpy.ndarray
        ``(size, size)`` float32, non-negative, sum 1, centred on pixel ``(size//2, size//2)``;
        pixel-integrated (an effective PSF, directly usable as a convolution kernel).
    info : dict
        ``method`` (``"empirical"``, ``"moffat"`` or ``"gaussian-fallback"``), ``n_stars``
        (stars used), ``fwhm`` (FWHM of the returned PSF from a Moffat fit, corrected for pixel
        integration, px) and ``beta`` (Moffat index for ``"moffat"``, else None).

    Warns
    -----
    NoStarsForPSF
        When no star with a valid Moffat fit is found.

    Raises
    ------
    ValueError
        If ``image`` is not ``(H, W)`` or ``(H, W, 3)`` or ``size < 5``.

    Notes
    -----
    Stars are selected from :func:`astroflow.quality.detect_stars`: clean (``flag == 0``),
    peak above ``threshold_sigma`` x RMS, not saturated, at least ``size // 2 + 3`` px from
    the edges and without a detected neighbour brighter than 5 % of their flux within
    ``size / 2`` px (nor any within 2 FWHM). Each cutout is background-subtracted (median of its
    border), shifted by cubic splines so that the Moffat centre falls on the central pixel,
    normalised to unit flux within 3 FWHM and the stack median-combined (Anderson & King 2000;
    photutils' ``EPSFBuilder`` does the same with oversampling and iteration). The median is
    clipped at 0, re-centred and normalised.
    """
    plane = _luminance(image)
    if size < 5:
        raise ValueError(f"size must be >= 5, got {size}")
    size = int(size) | 1
    half = size // 2
    if saturation is None:
        saturation = _auto_saturation(plane)
    stars = detect_stars(
        plane,
        threshold_sigma=min(5.0, threshold_sigma),
        max_stars=max(4 * max_stars, 200),
        saturation=saturation,
    )
    noise = stars.attrs["noise"]
    good = stars[(stars["flag"] == 0) & np.isfinite(stars["fwhm"])]
    if len(good) == 0:
        warnings.warn(
            f"no star to measure the PSF on ({len(stars)} detections, none clean); "
            f"using a Gaussian of FWHM {fallback_fwhm} px",
            NoStarsForPSF,
            stacklevel=2,
        )
        psf = _render_profile(size, fallback_fwhm, beta=None)
        return psf, {"method": "gaussian-fallback", "n_stars": 0, "fwhm": float(fallback_fwhm),
                     "beta": None}
    fwhm_med = float(np.median(good["fwhm"]))
    height, width = plane.shape
    margin = half + 3
    xs, ys = stars["x"].to_numpy(), stars["y"].to_numpy()
    fluxes = stars["flux"].to_numpy()
    usable = []
    for _, row in good.iterrows():
        if row["peak"] < threshold_sigma * noise:
            continue
        if not (margin <= row["x"] < width - margin - 1 and margin <= row["y"] < height - margin - 1):
            continue
        dist = np.hypot(xs - row["x"], ys - row["y"])
        others = dist > 0.5
        near = others & (dist < 0.5 * size) & (fluxes > 0.05 * row["flux"])
        close = others & (dist < 2.0 * fwhm_med)
        if near.any() or close.any():
            continue
        usable.append(row)
        if len(usable) >= max_stars:
            break
    if len(usable) >= min_stars:
        psf = _empirical_psf(plane, usable, size, fwhm_med)
        if psf is not None:
            fwhm = _psf_fwhm(psf)
            return psf, {"method": "empirical", "n_stars": len(usable),
                         "fwhm": fwhm if np.isfinite(fwhm) else fwhm_med, "beta": None}
    beta = _fit_beta(plane, good.head(5))
    psf = _render_profile(size, fwhm_med, beta=beta)
    return psf, {"method": "moffat", "n_stars": int(len(good)), "fwhm": fwhm_med, "beta": beta}


def _luminance(image):
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr.astype(np.float64).mean(axis=2)
    if arr.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {arr.shape}")
    return arr.astype(np.float64)


def _auto_saturation(plane):
    finite = plane[np.isfinite(plane)]
    if finite.size == 0:
        return None
    top = float(finite.max())
    tol = 1e-4 * max(abs(top), 1e-12)
    if np.count_nonzero(finite >= top - tol) >= 3:
        return top - 10 * tol
    return None


def _render_profile(size, fwhm, beta=None, oversample=5):
    """Pixel-integrated circular Moffat (``beta``) or Gaussian (``beta`` None), sum 1, float32."""
    half = size // 2
    sub = (np.arange(size * oversample) + 0.5) / oversample - 0.5 - half
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    r2 = xx * xx + yy * yy
    if beta is None:
        sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        prof = np.exp(-0.5 * r2 / sigma**2)
    else:
        alpha2 = fwhm**2 / (4.0 * (2.0 ** (1.0 / beta) - 1.0))
        prof = (1.0 + r2 / alpha2) ** (-beta)
    psf = prof.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    return (psf / psf.sum()).astype(np.float32)


def _empirical_psf(plane, usable, size, fwhm):
    half = size // 2
    pad = half + 3
    yy, xx = np.mgrid[:size, :size]
    inner = np.hypot(xx - half, yy - half) <= max(3.0 * fwhm, 3.0)
    cuts = []
    for row in usable:
        i, j = int(round(row["x"])), int(round(row["y"]))
        box = plane[j - pad : j + pad + 1, i - pad : i + pad + 1]
        if box.shape != (2 * pad + 1, 2 * pad + 1) or not np.isfinite(box).all():
            continue
        border = np.concatenate([box[:2].ravel(), box[-2:].ravel(), box[:, :2].ravel(),
                                 box[:, -2:].ravel()])
        box = box - np.median(border)
        shifted = ndimage.shift(box, (j - row["y"], i - row["x"]), order=3, mode="nearest")
        cut = shifted[3:-3, 3:-3]
        norm = cut[inner].sum()
        if norm > 0:
            cuts.append(cut / norm)
    if len(cuts) < 1:
        return None
    psf = np.median(np.stack(cuts), axis=0)
    ring = np.hypot(xx - half, yy - half) >= half - 1
    psf = np.clip(psf - np.median(psf[ring]), 0.0, None)
    # Re-centre on the Moffat centre of the stack (the median of shifted cutouts can drift).
    fit = _fit_moffat(psf, np.ones_like(psf, bool), float(half), float(half), max(fwhm, 1.0))
    if fit is not None:
        fx, fy, _ = fit
        if abs(fx - half) > 0.05 or abs(fy - half) > 0.05:
            psf = np.clip(ndimage.shift(psf, (half - fy, half - fx), order=3, mode="constant"),
                          0.0, None)
    total = psf.sum()
    if not np.isfinite(total) or total <= 0:
        return None
    return (psf / total).astype(np.float32)


def _psf_fwhm(psf):
    half = psf.shape[0] // 2
    fit = _fit_moffat(psf.astype(float), np.ones(psf.shape, bool), float(half), float(half), 3.0)
    if fit is None:
        return float("nan")
    return float(np.sqrt(max(fit[2] ** 2 - _PIXEL_FWHM2, 0.0)))


def _fit_beta(plane, stars, default=3.0):
    """Median Moffat ``beta`` of a few stars (free-beta least squares), ``default`` on failure."""
    betas = []
    height, width = plane.shape
    for _, row in stars.iterrows():
        half = int(np.clip(np.ceil(2.5 * row["fwhm"]) + 1, 4, 30))
        i, j = int(round(row["x"])), int(round(row["y"]))
        if i - half < 0 or j - half < 0 or i + half >= width or j + half >= height:
            continue
        box = plane[j - half : j + half + 1, i - half : i + half + 1]
        if not np.isfinite(box).all():
            continue
        yy, xx = np.mgrid[: box.shape[0], : box.shape[1]]
        xx, yy, vals = xx.ravel().astype(float), yy.ravel().astype(float), box.ravel()
        border = np.median(np.concatenate([box[0], box[-1], box[:, 0], box[:, -1]]))
        p0 = [border, max(float(box[half, half] - border), 1e-3), row["x"] - (i - half),
              row["y"] - (j - half), np.log(max(row["fwhm"], 0.5)), 0.0]
        res = least_squares(lambda p, xx=xx, yy=yy, vals=vals: _moffat(p, xx, yy)[0] - vals, p0,
                            jac=lambda p, xx=xx, yy=yy: _moffat(p, xx, yy)[1], method="lm",
                            max_nfev=300)
        if res.status > 0 and res.x[1] > 0:
            s = np.clip(res.x[5], -30.0, 30.0)
            betas.append(1.2 + (30.0 - 1.2) / (1.0 + np.exp(-s)))
    return float(np.median(betas)) if betas else float(default)


# --------------------------------------------------------------------------------------------
# Richardson-Lucy
# --------------------------------------------------------------------------------------------


def richardson_lucy(
    image,
    psf,
    *,
    iterations=50,
    tv_weight=0.002,
    protect_stars=True,
    stop_tol=1e-3,
    background=None,
    noise=None,
    saturation=None,
    sky_floor_sigma=0.0,
):
    """Richardson-Lucy deconvolution with total-variation regularisation and a stopping rule.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` mono or ``(H, W, 3)`` RGB image, linear ADU, any real dtype. NaN pixels are
        filled with the local (5 x 5) median for the iteration and are NaN again in the result.
        RGB: the luminance (channel mean) is deconvolved and each channel is multiplied by the
        luminance ratio (deconvolved / original, both on the positive-shifted scale), which
        keeps the colour of every pixel and treats all channels with one PSF.
    psf : numpy.ndarray
        ``(h, w)`` PSF (e.g. from :func:`estimate_psf`), centred on pixel ``(h//2, w//2)``;
        normalised to sum 1 here. Negative values are clipped to 0.
    iterations : int, optional
        Maximum number of iterations. Default 50.
    tv_weight : float, optional
        Weight ``lambda`` of the total-variation term (dimensionless; Dey et al. 2006 use
        0.001-0.01). 0 gives plain Richardson-Lucy. Default 0.002.
    protect_stars : bool, optional
        Blend the original data back around saturated star cores (full weight within 1.5 FWHM,
        feathered to 0 at 3 FWHM) to stop the ringing RL makes there. Default True.
    stop_tol : float, optional
        Stop when ``||u_k+1 - u_k|| / ||u_k - sky||`` (L2 over the image, sky the median of
        ``u_k``) falls below this. 0 disables the test. Default 1e-3.
    background : float, numpy.ndarray, None or False, optional
        Sky level ``b``, ADU (scalar or ``(H, W)``; for RGB of the luminance), held fixed in the
        model ``K u + b`` with ``u >= 0``: the deconvolved image cannot go below the sky, which
        suppresses the dark rings RL makes around stars on a sky background. None (default):
        a SEP background map (64 px mesh, Bertin & Arnouts 1996) of the image. False: no fixed
        sky; the sky is deconvolved with the rest (a flat sky stays flat, but stars ring).
        The price of ``u >= 0`` is a positivity bias of the sky: sky noise below ``b`` cannot be
        reproduced, the sky comes out smoother and ~0.3 sigma brighter on pure noise.
    noise : float, numpy.ndarray or None, optional
        Per-pixel noise sigma, ADU (scalar or ``(H, W)``, for RGB of the luminance). When given,
        the iteration also stops as soon as the reduced chi^2 ``mean(((K u + b) - d) / noise)^2``
        is <= 1 (discrepancy principle). Default None.
    saturation : float or None, optional
        Saturation level, ADU, for the star protection; None: a flat top at the image maximum
        (>= 3 pixels) marks saturation.

    sky_floor_sigma : float, optional
        With the automatic sky (``background=None``), lower it by this many sky RMS: dark rings
        can then reach that depth but the sky noise keeps its level and has no positivity
        bias. Default 0.

    Returns
    -------
    result : numpy.ndarray
        Same shape as ``image``, ADU, same dtype for float input (float32 otherwise).
    info : dict
        ``iterations_run`` (int), ``history`` (list of the relative change per iteration),
        ``chi2`` (list of reduced chi^2 per iteration, empty without ``noise``), ``stopped``
        (``"iterations"``, ``"stop_tol"`` or ``"discrepancy"``) and ``n_protected`` (number of
        protected stars).

    Raises
    ------
    ValueError
        For a bad image shape, a PSF that is not 2-D or sums to <= 0, or an image without
        finite pixels.

    References
    ----------
    Richardson 1972, JOSA 62, 55; Lucy 1974, AJ 79, 745; Dey et al. 2006, Microsc. Res. Tech.
    69, 260 (RL with TV regularisation).
    """
    arr = np.asarray(image)
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    psf = _check_psf(psf)
    if arr.ndim == 3 and arr.shape[2] == 3:
        chans = arr.astype(np.float64)
        missing = ~np.isfinite(chans).all(axis=2)
        if missing.all():
            raise ValueError("image has no finite pixels")
        chans = np.stack([_fill_nan(chans[..., c], missing) for c in range(3)], axis=2)
        # Offsets that make every channel > 0; the luminance of the shifted channels.
        lo = chans.reshape(-1, 3).min(axis=0)
        span = np.maximum(chans.reshape(-1, 3).max(axis=0) - lo, 1e-12)
        offset = lo - 1e-3 * span
        shifted = chans - offset
        lum = shifted.mean(axis=2)
        bg = _sky(lum + offset.mean(), background, sky_floor_sigma)
        bg = None if bg is None else bg - offset.mean()
        lum_dec, info = _rl_plane(lum, psf, iterations, tv_weight, stop_tol, bg, noise)
        ratio = lum_dec / lum
        result = shifted * ratio[..., None] + offset
        if protect_stars:
            weight, n_prot = _protection_weight(chans.mean(axis=2), psf, saturation)
            result = weight[..., None] * chans + (1.0 - weight[..., None]) * result
            info["n_protected"] = n_prot
        else:
            info["n_protected"] = 0
        result[missing] = np.nan
        return result.astype(out_dtype), info
    if arr.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {arr.shape}")
    data = arr.astype(np.float64)
    missing = ~np.isfinite(data)
    if missing.all():
        raise ValueError("image has no finite pixels")
    data = _fill_nan(data, missing)
    lo, hi = float(data.min()), float(data.max())
    offset = lo - 1e-3 * max(hi - lo, 1e-12)
    bg = _sky(data, background, sky_floor_sigma)
    bg = None if bg is None else bg - offset
    dec, info = _rl_plane(data - offset, psf, iterations, tv_weight, stop_tol, bg, noise)
    result = dec + offset
    info["n_protected"] = 0
    if protect_stars:
        weight, info["n_protected"] = _protection_weight(data, psf, saturation)
        result = weight * data + (1.0 - weight) * result
    result[missing] = np.nan
    return result.astype(out_dtype), info


def _sky(plane, background, floor_sigma=0.0, box=64):
    """Fixed sky for the RL model: the given level, a SEP background map (None) or None (False)."""
    if background is False:
        return None
    if background is not None:
        return np.broadcast_to(np.asarray(background, dtype=float), plane.shape)
    data = np.ascontiguousarray(plane, dtype=np.float32)
    box = int(min(box, max(8, min(plane.shape) // 2)))
    bkg = sep.Background(data, bw=box, bh=box)
    return bkg.back().astype(float) - floor_sigma * bkg.rms().astype(float)


def _check_psf(psf):
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2 or not np.isfinite(psf).all():
        raise ValueError(f"psf must be a finite 2-D array, got shape {psf.shape}")
    psf = np.clip(psf, 0.0, None)
    total = psf.sum()
    if total <= 0:
        raise ValueError("psf must have a positive sum")
    return psf / total


def _fill_nan(plane, missing):
    if not missing.any():
        return plane
    filled = np.where(missing, np.median(plane[~missing]), plane)
    # Local median of the valid neighbours: a median filter of the NaN-as-median plane,
    # repeated so that holes wider than the filter fill from their rim inwards.
    out = plane.copy()
    todo = missing.copy()
    for _ in range(8):
        med = ndimage.median_filter(filled, size=5, mode="reflect")
        out[todo] = med[todo]
        filled = np.where(todo, med, filled)
        valid_near = ndimage.binary_dilation(~todo, iterations=2)
        todo = todo & ~valid_near
        if not todo.any():
            break
    return out


def _rl_plane(d, psf, iterations, tv_weight, stop_tol, background, noise):
    """RL-TV on one positive plane ``d`` (> 0); returns (u + b, info) on the same scale."""
    height, width = d.shape
    ph, pw = psf.shape
    py, px = min(ph, 4 * height), min(pw, 4 * width)
    shape = (sfft.next_fast_len(height + 2 * py, real=True),
             sfft.next_fast_len(width + 2 * px, real=True))
    pads = ((py, shape[0] - height - py), (px, shape[1] - width - px))
    region = np.s_[py : py + height, px : px + width]
    dp = np.pad(d, pads, mode="symmetric")
    if background is None:
        b = 0.0
    else:
        b = np.broadcast_to(np.asarray(background, float), d.shape)
        # d > 0 here, so a sky model below 0 is an extrapolation error (a background mesh
        # dominated by a bright object); it let the model approach 0 and the ratio blow up.
        b = np.maximum(np.pad(np.array(b, dtype=float), pads, mode="symmetric"), 0.0)
    kernel = np.zeros(shape)
    kernel[:ph, :pw] = psf
    kernel = np.roll(kernel, (-(ph // 2), -(pw // 2)), axis=(0, 1))
    otf = sfft.rfft2(kernel, workers=-1)
    otf_conj = np.conj(otf)

    def conv(x, h):
        return sfft.irfft2(sfft.rfft2(x, workers=-1) * h, s=shape, workers=-1)

    tiny = 1e-12 * max(float(dp.max()), 1e-30)
    # The model never goes below a millionth of the data's peak: where u has gone to 0 on a
    # zero sky, d / model would otherwise multiply noise by up to 1e12.
    floor = 1e-6 * max(float(dp.max()), 1e-30)
    u = np.maximum(dp - b, tiny)
    sigma2 = None
    if noise is not None:
        sigma2 = np.broadcast_to(np.asarray(noise, float), d.shape) ** 2
    history, chi2s = [], []
    stopped = "iterations"
    run = 0
    eps = 1e-3 * max(float(np.std(d)), 1e-12)
    for _ in range(int(iterations)):
        model = np.maximum(conv(u, otf) + b, floor)
        if sigma2 is not None:
            chi2 = float(np.mean((model[region] - dp[region]) ** 2 / sigma2))
            chi2s.append(chi2)
            if chi2 <= 1.0:
                stopped = "discrepancy"
                break
        update = u * conv(dp / model, otf_conj)
        if tv_weight > 0:
            update /= np.maximum(1.0 - tv_weight * _tv_divergence(u, eps), 0.2)
        update = np.maximum(update, tiny)
        diff = update[region] - u[region]
        ref = u[region]
        scale = np.linalg.norm(ref - np.median(ref)) or np.linalg.norm(ref) or 1.0
        change = float(np.linalg.norm(diff) / scale)
        history.append(change)
        u = update
        run += 1
        if stop_tol and change < stop_tol:
            stopped = "stop_tol"
            break
    out = u[region] + (b[region] if isinstance(b, np.ndarray) else 0.0)
    return out, {"iterations_run": run, "history": history, "chi2": chi2s, "stopped": stopped}


def _tv_divergence(u, eps):
    """``div(grad u / |grad u|)`` with forward differences for the gradient, backward for div."""
    gx = np.diff(u, axis=1, append=u[:, -1:])
    gy = np.diff(u, axis=0, append=u[-1:, :])
    norm = np.sqrt(gx * gx + gy * gy + eps * eps)
    nx, ny = gx / norm, gy / norm
    div = nx - np.roll(nx, 1, axis=1)
    div[:, 0] = nx[:, 0]
    dy = ny - np.roll(ny, 1, axis=0)
    dy[0, :] = ny[0, :]
    return div + dy


def _protection_weight(plane, psf, saturation):
    """Feathered weight (1 in saturated cores, 0 elsewhere) and the number of protected stars."""
    weight = np.zeros(plane.shape)
    if saturation is None:
        saturation = _auto_saturation(plane)
    if saturation is None:
        return weight, 0
    stars = detect_stars(plane, threshold_sigma=5.0, max_stars=200, saturation=saturation)
    sat = stars[(stars["flag"] & FLAG_SATURATED) != 0]
    if len(sat) == 0:
        return weight, 0
    psf_fwhm = _psf_fwhm(psf.astype(np.float32))
    if not np.isfinite(psf_fwhm):
        psf_fwhm = 3.0
    height, width = plane.shape
    above = plane >= saturation
    labels, _ = ndimage.label(above)
    for _, row in sat.iterrows():
        i, j = int(round(row["x"])), int(round(row["y"]))
        # Radius of the saturated plateau (if any) plus 1.5 FWHM of the PSF.
        plateau = 0.0
        if 0 <= j < height and 0 <= i < width and labels[j, i] > 0:
            plateau = np.sqrt(np.count_nonzero(labels == labels[j, i]) / np.pi)
        r0 = plateau + 1.5 * max(psf_fwhm, np.nan_to_num(row["fwhm"], nan=0.0) if plateau else 0.0)
        r1 = 2.0 * r0
        rad = int(np.ceil(r1)) + 1
        y0, y1 = max(j - rad, 0), min(j + rad + 1, height)
        x0, x1 = max(i - rad, 0), min(i + rad + 1, width)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(xx - row["x"], yy - row["y"])
        w = np.clip((r1 - r) / (r1 - r0), 0.0, 1.0)
        w = 0.5 - 0.5 * np.cos(np.pi * w)
        weight[y0:y1, x0:x1] = np.maximum(weight[y0:y1, x0:x1], w)
    return weight, int(len(sat))


# --------------------------------------------------------------------------------------------
# Whole image, optionally with a grid of PSFs
# --------------------------------------------------------------------------------------------


def deconvolve_image(
    image,
    *,
    psf=None,
    iterations=50,
    tv_weight=0.002,
    grid=None,
    protect_stars=True,
    stop_tol=1e-3,
    noise=None,
    saturation=None,
    psf_size=25,
    psf_max_stars=50,
    psf_threshold_sigma=10.0,
    fallback_fwhm=3.0,
):
    """Deconvolve an image with its own (or a given) PSF, optionally varying over a grid.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` image, linear ADU; NaN = missing (restored in the result).
    psf : numpy.ndarray or None, optional
        ``(h, w)`` PSF to use everywhere; None (default) estimates it with
        :func:`estimate_psf` (then per grid cell with ``grid``).
    iterations, tv_weight, protect_stars, stop_tol, noise, saturation
        As in :func:`richardson_lucy`.
    grid : tuple of int or None, optional
        ``(ny, nx)`` cells for a spatially varying PSF: a PSF is estimated in every cell (the
        global PSF where a cell has fewer than 5 usable stars or ``psf`` is given), each cell is
        deconvolved with a margin of ``max(PSF size, cell / 4)`` px on all sides and the tiles
        are blended with linear ramps over the overlaps (weights summing to 1). None: one PSF.
    psf_size, psf_max_stars, psf_threshold_sigma, fallback_fwhm
        ``size``, ``max_stars``, ``threshold_sigma`` and ``fallback_fwhm`` of
        :func:`estimate_psf`.

    Returns
    -------
    result : numpy.ndarray
        Same shape as ``image``, ADU (dtype as :func:`richardson_lucy`).
    info : dict
        ``psf`` (the global PSF, float32), ``psf_info`` (the :func:`estimate_psf` info or
        ``{"method": "given"}``), ``rl`` (the :func:`richardson_lucy` info, or a list of them,
        one per tile) and, with ``grid``, ``cells``: per cell ``(row, col, method, n_stars)``.

    Warns
    -----
    NoStarsForPSF
        When the PSF has to be estimated and the image has no star.

    Raises
    ------
    ValueError
        For a bad image shape or grid.
    """
    arr = np.asarray(image)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {arr.shape}")
    given = psf is not None
    if given:
        psf = _check_psf(psf).astype(np.float32)
        psf_info = {"method": "given"}
    else:
        psf, psf_info = estimate_psf(arr, size=psf_size, max_stars=psf_max_stars,
                                     threshold_sigma=psf_threshold_sigma,
                                     fallback_fwhm=fallback_fwhm, saturation=saturation)
    rl_kw = dict(iterations=iterations, tv_weight=tv_weight, protect_stars=protect_stars,
                 stop_tol=stop_tol, saturation=saturation)
    if grid is None or tuple(grid) == (1, 1):
        result, rl = richardson_lucy(arr, psf, noise=noise, **rl_kw)
        return result, {"psf": psf, "psf_info": psf_info, "rl": rl}
    ny, nx = (int(g) for g in grid)
    height, width = arr.shape[:2]
    if ny < 1 or nx < 1 or ny > height // 16 or nx > width // 16:
        raise ValueError(f"grid must be (ny, nx) with cells of at least 16 px, got {grid}")
    ys = np.linspace(0, height, ny + 1).round().astype(int)
    xs = np.linspace(0, width, nx + 1).round().astype(int)
    margin_y = int(max(psf.shape[0], (height / ny) / 4))
    margin_x = int(max(psf.shape[1], (width / nx) / 4))
    acc = np.zeros(arr.shape, dtype=np.float64)
    wsum = np.zeros((height, width))
    cells, rls = [], []
    for r in range(ny):
        for c in range(nx):
            y0, y1 = max(ys[r] - margin_y, 0), min(ys[r + 1] + margin_y, height)
            x0, x1 = max(xs[c] - margin_x, 0), min(xs[c + 1] + margin_x, width)
            tile = arr[y0:y1, x0:x1]
            cell_psf, method, n_stars = psf, "global", 0
            if not given:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NoStarsForPSF)
                    local, linfo = estimate_psf(tile, size=psf.shape[0],
                                                max_stars=psf_max_stars,
                                                threshold_sigma=psf_threshold_sigma,
                                                fallback_fwhm=fallback_fwhm,
                                                saturation=saturation)
                n_stars = linfo["n_stars"]
                if linfo["method"] == "empirical":
                    cell_psf, method = local, "empirical"
            cells.append((r, c, method, n_stars))
            tile_noise = noise
            if noise is not None and np.ndim(noise) == 2:
                tile_noise = np.asarray(noise)[y0:y1, x0:x1]
            res, rl = richardson_lucy(tile, cell_psf, noise=tile_noise, **rl_kw)
            rls.append(rl)
            wy = _ramp(y0, y1, ys[r], ys[r + 1], height)
            wx = _ramp(x0, x1, xs[c], xs[c + 1], width)
            w = wy[:, None] * wx[None, :]
            res = np.nan_to_num(res.astype(np.float64))
            acc[y0:y1, x0:x1] += res * (w[..., None] if arr.ndim == 3 else w)
            wsum[y0:y1, x0:x1] += w
    result = acc / (wsum[..., None] if arr.ndim == 3 else wsum)
    missing = ~np.isfinite(arr)
    result[missing] = np.nan
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    return result.astype(out_dtype), {"psf": psf, "psf_info": psf_info, "rl": rls,
                                      "cells": cells}


def _ramp(t0, t1, c0, c1, n):
    """Tile weight along one axis: linear from 0 at a tile edge inside the image to 1 at
    ``2 x margin`` in, so that two neighbouring tiles cross-fade with weights summing to 1."""
    t = np.arange(t0, t1) + 0.5
    w = np.ones(t1 - t0)
    if t0 > 0:
        w = np.minimum(w, (t - t0) / (2.0 * (c0 - t0)))
    if t1 < n:
        w = np.minimum(w, (t1 - t) / (2.0 * (t1 - c1)))
    return np.clip(w, 1e-6, 1.0)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def star_metrics(image, stars_xy, *, radius=8.0, sky_annulus=(1.5, 2.5)):
    """Per-star FWHM, aperture flux and ringing, to judge a deconvolution.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` image (measured on the channel mean), linear ADU.
    stars_xy : array_like
        ``(N, 2)`` star centres ``(x, y)``, px.
    radius : float, optional
        Aperture radius, px. Default 8.0.
    sky_annulus : tuple of float, optional
        Inner and outer radius of the sky annulus in units of ``radius``; the local sky is the
        median there. Ringing is measured inside the inner radius. Default (1.5, 2.5).

    Returns
    -------
    pandas.DataFrame
        One row per star: ``x``, ``y`` (as given, px); ``flux`` (sky-subtracted flux in the
        aperture, ADU); ``fwhm`` (circular Moffat fit via :mod:`astroflow.deepsky.quality`, corrected
        for pixel integration, px; NaN if the fit fails); ``background`` (local sky, ADU);
        ``ringing``: the dark-ring energy, i.e. the sum over 1-px radial bins inside the sky
        annulus of ``max(0, sky - mean of the bin) x pixels in the bin``, divided by
        ``flux`` (0 for no dark ring; azimuthal averaging keeps pure noise near 0).

    Raises
    ------
    ValueError
        For a bad image shape or ``stars_xy`` not ``(N, 2)``.
    """
    plane = _luminance(image)
    xy = np.asarray(stars_xy, dtype=float).reshape(-1, 2) if len(stars_xy) else np.empty((0, 2))
    height, width = plane.shape
    rows = []
    r_in, r_out = sky_annulus[0] * radius, sky_annulus[1] * radius
    rad_out = int(np.ceil(r_out)) + 1
    for x, y in xy:
        i, j = int(round(x)), int(round(y))
        y0, y1 = max(j - rad_out, 0), min(j + rad_out + 1, height)
        x0, x1 = max(i - rad_out, 0), min(i + rad_out + 1, width)
        box = plane[y0:y1, x0:x1]
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(xx - x, yy - y)
        ok = np.isfinite(box)
        ann = ok & (r >= r_in) & (r < r_out)
        sky = float(np.median(box[ann])) if ann.any() else float("nan")
        sub = box - sky
        flux = float(sep.sum_circle(np.ascontiguousarray(np.nan_to_num(sub), dtype=np.float64),
                                    np.array([x - x0]), np.array([y - y0]), radius,
                                    subpix=5)[0][0])
        inner = ok & (r < r_in)
        bins = np.floor(r[inner]).astype(int)
        sums = np.bincount(bins, weights=sub[inner])
        counts = np.bincount(bins)
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        dark = float(np.sum(np.clip(-means, 0.0, None) * counts))
        half = int(np.ceil(radius))
        fwhm = float("nan")
        if half <= i < width - half and half <= j < height - half:
            fbox = sub[j - half - y0 : j + half + 1 - y0, i - half - x0 : i + half + 1 - x0]
            if np.isfinite(fbox).all():
                fit = _fit_moffat(fbox, np.ones(fbox.shape, bool), x - (i - half), y - (j - half),
                                  max(radius / 3.0, 1.0))
                if fit is not None:
                    fwhm = float(np.sqrt(max(fit[2] ** 2 - _PIXEL_FWHM2, 0.0)))
        rows.append({"x": x, "y": y, "flux": flux, "fwhm": fwhm, "background": sky,
                     "ringing": dark / flux if flux > 0 else float("nan")})
    return pd.DataFrame(rows, columns=["x", "y", "flux", "fwhm", "background", "ringing"])
