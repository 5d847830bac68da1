"""Drizzle integration of deep-sky lights with STScI's ``drizzle`` package, and Bayer drizzle.

Drizzle (Fruchter & Hook 2002) maps every input pixel, shrunk about its centre to a drop of
``pixfrac`` times its side, through the registration transform onto an output grid ``scale``
times finer than the reference frame, and adds its value to the output pixels it overlaps in
proportion to the overlap area (square kernel) times the pixel's weight. The accumulated
weighted mean is the drizzled image. With many frames at different sub-pixel offsets it
recovers resolution that interpolating (warping) each frame and upsampling the stack cannot,
and the exact polygon overlaps of the package's C core (``drizzle.resample.Drizzle``,
``cdrizzle.tdriz``) hold for any affine transform, rotation included. The planetary lucky
imaging keeps its own translation-only drizzle (:mod:`astroflow.deepsky.drizzle`).

Conventions:

* Coordinates are 0-based with pixel centres at integers (``x`` = column), as in
  :mod:`astroflow.deepsky.register`; output pixel ``(k, l)`` of scale ``s`` covers the
  reference area ``[(l - 0.5) / s, (l + 0.5) / s)`` in x (and likewise in y) shifted by
  ``(1 - s) / (2 s)``, so that reference pixel centre ``x`` lands on ``(x + 0.5) s - 0.5``,
  the convention of OpenCV's ``resize`` and of :func:`astroflow.deepsky.drizzle.upsample`.
* Values keep the stack's surface brightness (ADU per *input* pixel): the drizzled sky has the
  level of ``stack.fits``; its total flux is ``sum / scale**2``.
* Outliers (cosmic rays, satellite and aircraft trails, residual hot pixels) are found the way
  DrizzlePac's ``driz_cr`` step and WBPP's drizzle integration do it: the rejection stack (the
  outlier-free image on the reference grid) is blotted back onto each frame's pixels
  (``drizzle.resample.blot_image``, 5th-order polynomial interpolation), and a pixel is masked
  (weight 0) where ``|frame - offset - blot| > sigma * noise + deriv_scale * deriv`` (see
  :func:`outlier_mask`), then the mask is grown by ``grow_px``.
* Bayer drizzle (Fruchter's "Bayer drizzle", as in DeepSkyStacker, Siril and PixInsight)
  drizzles the calibrated, *undebayered* CFA mosaic: each CFA pixel is a drop of its own colour
  only, so the weight map of the red channel is zero at the green and blue pixels, and so on.
  No interpolated (demosaiced) value enters the result; dithering fills the colour planes.

References
----------
A. S. Fruchter & R. N. Hook, "Drizzle: A Method for the Linear Reconstruction of Undersampled
Images", PASP 114, 144 (2002). The DrizzlePac Handbook (STScI), section on ``driz_cr``
(blot, derivative image, ``driz_cr_snr`` and ``driz_cr_scale``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from drizzle.resample import SUPPORTED_DRIZZLE_KERNELS, Drizzle, blot_image
from scipy import ndimage

from astroflow.calibration.debayer import cfa_channel_map
from astroflow.checks import check_float, check_int
from astroflow.deepsky.register import pixel_map

log = logging.getLogger(__name__)

KERNELS = tuple(SUPPORTED_DRIZZLE_KERNELS)
"""Drop kernels of the package: square (exact overlaps, flux-conserving), point, turbo,
gaussian, lanczos2, lanczos3 (the last three do not conserve flux)."""
SCALES = (1, 2, 3)
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class DrizzleResult:
    """Result of :func:`drizzle_frames`.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(s H, s W)`` (mono) or ``(s H, s W, 3)`` (colour and Bayer drizzle), surface
        brightness of the reference (ADU per input pixel); NaN where no drop landed.
    weight : numpy.ndarray
        float32, same shape: accumulated drizzle weight per output pixel (frame weight times
        drop overlap, the package's ``out_wht``); 0 where no drop landed.
    frames : list of dict
        One entry per frame in input order: ``frame`` (name), ``offset`` (ADU subtracted per
        channel, list), ``noise`` (robust residual sigma per channel, ADU, list) and
        ``rejected`` (pixels masked as outliers, int).
    """

    image: np.ndarray
    weight: np.ndarray
    frames: list


def affine_pixmap(matrix, shape, scale=1):
    """Coordinates on a drizzle output grid of every pixel of a frame, for an affine transform.

    Parameters
    ----------
    matrix : array_like
        ``(3, 3)`` or ``(2, 3)`` frame pixel -> reference pixel transform
        (:func:`astroflow.deepsky.register.transform_matrix`).
    shape : tuple of int
        ``(H, W)`` of the frame (a trailing channel count is ignored).
    scale : float, optional
        Output pixels per reference pixel (> 0). Default 1: reference pixel coordinates.

    Returns
    -------
    numpy.ndarray
        float64 ``(H, W, 2)``: ``[..., 0]`` the output x, ``[..., 1]`` the output y of each
        frame pixel's centre, ``(M @ (x, y, 1) + 0.5) * scale - 0.5`` (the ``pixmap`` of
        ``drizzle.resample.Drizzle.add_image`` and ``blot_image``).

    Raises
    ------
    ValueError
        If ``matrix`` is not 3x3 or 2x3 or not finite (a rejected frame's row), or ``scale``
        is not > 0.
    """
    scale = check_float("scale", scale, 0.0, strict=True)
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape not in ((3, 3), (2, 3)) or not np.all(np.isfinite(m[:2])):
        raise ValueError(f"matrix must be a finite 3x3 or 2x3 transform, got {m.tolist()}")
    height, width = int(shape[0]), int(shape[1])
    x = np.arange(width, dtype=np.float64)[None, :]
    y = np.arange(height, dtype=np.float64)[:, None]
    pixmap = np.empty((height, width, 2))
    pixmap[..., 0] = m[0, 0] * x + (m[0, 1] * y + m[0, 2])
    pixmap[..., 1] = m[1, 0] * x + (m[1, 1] * y + m[1, 2])
    if scale != 1:
        pixmap += 0.5
        pixmap *= scale
        pixmap -= 0.5
    return pixmap


def frame_pixmap(row, shape, scale=1):
    """The pixmap of one registered frame: where its pixels fall on the drizzle grid.

    The one place where the registration model enters drizzle: the frame -> reference map of
    :func:`astroflow.deepsky.register.pixel_map` (``to="reference"``), which is the affine
    matrix for similarity and affine rows, the projective one for a homography and the
    homography plus its thin-plate spline for "tps", rescaled onto the drizzle grid.

    Parameters
    ----------
    row : mapping or pandas.Series
        A row of ``registration.csv`` (:func:`astroflow.deepsky.register.register_frames`).
    shape : tuple of int
        ``(H, W)`` of the frame.
    scale : float, optional
        Output pixels per reference pixel. Default 1.

    Returns
    -------
    numpy.ndarray
        float64 ``(H, W, 2)`` output ``(x, y)`` per frame pixel, ``(ref + 0.5) * scale - 0.5``
        (the convention of :func:`affine_pixmap`).

    Raises
    ------
    ValueError
        A row without a finite transform (a rejected frame), or ``scale`` not > 0.
    """
    scale = check_float("scale", scale, 0.0, strict=True)
    pixmap = pixel_map(row, shape, to="reference").astype(np.float64)
    if scale != 1:
        pixmap += 0.5
        pixmap *= scale
        pixmap -= 0.5
    return pixmap


def bayer_pattern(data, header, path):
    """The Bayer pattern of a calibrated light for Bayer drizzle, or a clear refusal.

    Parameters
    ----------
    data : numpy.ndarray or None
        The light's pixels (``(H, W)`` for a CFA mosaic); None for a rejected placeholder.
    header : mapping
        Its FITS header: ``BAYERPAT`` for a mosaic; ``AFREASON`` for a placeholder.
    path : str or os.PathLike
        The file, for the message.

    Returns
    -------
    str
        The pattern (``BAYERPAT``).

    Raises
    ------
    ValueError
        Naming the file, when it is a placeholder (calibrate_light writes one for a mono light),
        not 2-D, or has no ``BAYERPAT``: Bayer drizzle needs CFA data.
    """
    remedy = "Bayer drizzle needs CFA (colour camera) data; set drizzle.bayer: false for mono data"
    if data is None:
        raise ValueError(f"{path}: {header.get('AFREASON', 'no image')}; {remedy}")
    pattern = header.get("BAYERPAT")
    if data.ndim != 2 or not pattern:
        kind = "colour" if data.ndim == 3 else "mono"
        raise ValueError(f"{path}: a {kind} image without a CFA mosaic (no BAYERPAT); {remedy}")
    return str(pattern)


def outlier_mask(data, model, *, sigma=4.0, deriv_scale=1.2, grow_px=1, channels=None):
    """Pixels of a frame that deviate from the blotted rejection stack: cosmic rays, trails.

    Parameters
    ----------
    data : numpy.ndarray
        ``(H, W)`` (mono or CFA mosaic) or ``(H, W, C)`` frame, linear ADU; NaN is no data.
    model : numpy.ndarray
        Same shape: the outlier-free stack blotted onto the frame's pixels (for a mosaic, the
        stack's channel of each pixel's colour); NaN where the stack has no data.
    sigma : float, optional
        Threshold in robust noise sigmas (> 0). Default 4.0.
    deriv_scale : float, optional
        Tolerance for registration and PSF mismatch, in units of the model's local derivative
        (>= 0; DrizzlePac's ``driz_cr_scale``). Default 1.2.
    grow_px : int, optional
        Dilation of the mask, px (>= 0): the faint wings of a hit go with it. Default 1.
    channels : numpy.ndarray or None, optional
        For a 2-D mosaic, the ``(H, W)`` int channel of each pixel (:func:`cfa_channel_map`):
        offset, noise and derivative are then measured per colour. None: one set per plane.

    Returns
    -------
    mask : numpy.ndarray
        bool, shape of ``data``: True for outliers (``grow_px`` dilation within each plane).
    offset : numpy.ndarray
        float64 ``(C,)`` (the planes of ``data``, or the 3 colours of a mosaic): median of ``data - model`` per
        channel, ADU, the sky difference to subtract before drizzling.
    noise : numpy.ndarray
        float64 ``(C,)``: robust sigma (1.4826 MAD) of the residual per channel, ADU.

    Raises
    ------
    ValueError
        If the shapes differ or a setting is out of range.

    Notes
    -----
    A pixel is an outlier where ``|data - offset - model| > sigma * s + deriv_scale * d`` with
    ``s = noise * sqrt(1 + max(model - b, 0) / b)`` (``b`` the channel's median model level,
    so that the shot noise of a star is allowed for: an upper bound, since ``noise**2 / b`` bounds
    the inverse gain from above when ``b > 0``) and ``d`` the largest absolute difference
    between the model pixel and its four neighbours (DrizzlePac's derivative image, which spares
    the cores of stars that the frame's seeing or a registration error broaden or shift).
    """
    sigma = check_float("sigma", sigma, 0.0, strict=True)
    deriv_scale = check_float("deriv_scale", deriv_scale, 0.0)
    grow_px = check_int("grow_px", grow_px, 0)
    data = np.asarray(data, dtype=np.float32)
    model = np.asarray(model, dtype=np.float32)
    if data.shape != model.shape or data.ndim not in (2, 3):
        raise ValueError(f"data {data.shape} and model {model.shape} must be the same (H, W[, C])")
    planes = data[..., None] if data.ndim == 2 else data
    models = model[..., None] if model.ndim == 2 else model
    if channels is not None and data.ndim != 2:
        raise ValueError("channels is for a 2-D CFA mosaic")
    n_channels = 3 if channels is not None else planes.shape[2]
    mask = np.zeros(planes.shape, dtype=bool)
    offset = np.zeros(n_channels)
    noise = np.zeros(n_channels)
    for p in range(planes.shape[2]):
        values, expected = planes[..., p], models[..., p]
        deriv = _derivative(expected, channels)
        residual = values - expected
        good = np.isfinite(residual)
        groups = [(c, good & (channels == c)) for c in range(3)] if channels is not None else [(p, good)]
        threshold = np.full(values.shape, np.inf, dtype=np.float32)
        for c, where in groups:
            if where.sum() < 16:
                continue
            r = residual[where]
            offset[c] = float(np.median(r))
            noise[c] = MAD_TO_SIGMA * float(np.median(np.abs(r - offset[c])))
            level = float(np.median(expected[where]))
            shot = np.maximum(expected[where] - level, 0.0) / level if level > 0 else 0.0
            residual[where] -= offset[c]
            threshold[where] = sigma * noise[c] * np.sqrt(1.0 + shot) + deriv_scale * deriv[where]
        hit = good & (np.abs(np.where(good, residual, 0.0)) > threshold)
        if grow_px and hit.any():
            hit = ndimage.binary_dilation(hit, iterations=grow_px)
        mask[..., p] = hit
    return (mask[..., 0] if data.ndim == 2 else mask), offset, noise


def _derivative(model, channels):
    """Largest |difference| of each pixel with its 4 neighbours (of its colour, in a mosaic)."""
    step = 1 if channels is None else 2
    deriv = np.zeros(model.shape, dtype=np.float32)
    for axis in (0, 1):
        lead, lag = [slice(None)] * 2, [slice(None)] * 2
        lead[axis], lag[axis] = slice(step, None), slice(None, -step)
        lead, lag = tuple(lead), tuple(lag)
        diff = np.nan_to_num(np.abs(model[lead] - model[lag]), nan=0.0)
        deriv[lead] = np.maximum(deriv[lead], diff)
        deriv[lag] = np.maximum(deriv[lag], diff)
    return deriv


def blot(image, pixmap):
    """Resample a reference-grid image onto a frame's pixels (the inverse of drizzle).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H_ref, W_ref)`` or ``(H_ref, W_ref, C)`` image on the reference grid (the stack),
        linear ADU; NaN where it has no data.
    pixmap : numpy.ndarray
        ``(H, W, 2)`` reference ``(x, y)`` of each frame pixel (:func:`frame_pixmap`, scale 1).

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)`` or ``(H, W, C)``: the image at each frame pixel
        (``drizzle.resample.blot_image``, 5th-order polynomial interpolation); NaN where the
        pixel falls outside the image or near its missing data.
    """
    image = np.asarray(image, dtype=np.float32)
    planes = image[..., None] if image.ndim == 2 else image
    valid = np.isfinite(planes).all(axis=2).astype(np.float32)
    # the interpolation's support around missing data is marked by blotting the validity map
    coverage = blot_image(valid, pixmap, fillval=0.0, interp="linear")
    out = np.empty(pixmap.shape[:2] + (planes.shape[2],), dtype=np.float32)
    for c in range(planes.shape[2]):
        plane = planes[..., c]
        fill = np.float32(np.nanmedian(plane)) if valid.any() else np.float32(0.0)
        out[..., c] = blot_image(np.where(valid > 0, plane, fill), pixmap, fillval=np.nan, interp="poly5")
    out[coverage < 0.999] = np.nan
    return out[..., 0] if image.ndim == 2 else out


def drizzle_frames(
    frames,
    reference_shape,
    *,
    scale,
    pixfrac,
    kernel,
    stack=None,
    sigma=4.0,
    deriv_scale=1.2,
    grow_px=1,
):
    """Drizzle registered frames one at a time onto a grid ``scale`` times finer.

    Parameters
    ----------
    frames : iterable of dict
        Frames, read lazily (one in memory at a time), each with ``name`` (str), ``data``
        (``(H, W)`` mono, ``(H, W, 3)`` RGB, or ``(H, W)`` CFA mosaic when ``pattern`` is
        given; linear ADU, NaN = no data), ``pixmap`` (``(H, W, 2)`` reference ``(x, y)`` of
        each pixel: :func:`frame_pixmap` at scale 1), ``weight`` (float > 0, the frame's
        stacking weight) and optionally ``pattern`` (Bayer pattern of a CFA mosaic: Bayer
        drizzle into three colour channels).
    reference_shape : tuple of int
        ``(H_ref, W_ref)`` of the reference grid; the output is ``(scale H_ref, scale W_ref)``.
    scale : {1, 2, 3}
        Output pixels per reference pixel.
    pixfrac : float
        Drop side as a fraction of an input pixel, in ``(0, 1]``.
    kernel : str
        One of :data:`KERNELS`.
    stack : numpy.ndarray or None, optional
        The rejection stack on the reference grid, ``(H_ref, W_ref)`` or ``(H_ref, W_ref, 3)``:
        frames are matched to its sky level (additive offset) and their outliers masked
        (:func:`outlier_mask`). None: no outlier rejection, no offset.
    sigma, deriv_scale, grow_px : optional
        Outlier thresholds (:func:`outlier_mask`). Defaults 4.0, 1.2 and 1.

    Returns
    -------
    DrizzleResult

    Raises
    ------
    ValueError
        If a setting is out of range, no frame is given, frames mix mono, colour and CFA data,
        a pixmap or the stack does not fit, or a weight is not positive.

    Notes
    -----
    Memory: the output image and weight (8 bytes per output pixel and channel), one frame with
    its pixmap, blotted model and masks; the frame count does not matter. Each channel is
    ``Drizzle(kernel).add_image(data, pixmap=scale * pixmap..., weight_map=w * mask,
    pixfrac=pixfrac, pixel_scale_ratio=1 / scale)`` so that the gaussian, turbo and lanczos
    kernels keep their sizes in input pixels.
    """
    scale = check_int("scale", scale, 1)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale}")
    pixfrac = check_float("pixfrac", pixfrac, 0.0, strict=True, high=1.0)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    out_shape = (int(reference_shape[0]) * scale, int(reference_shape[1]) * scale)
    if stack is not None:
        stack = np.asarray(stack, dtype=np.float32)
        if stack.shape[:2] != tuple(reference_shape[:2]):
            raise ValueError(f"stack {stack.shape} does not match the reference grid {reference_shape}")

    drizzles, layout, table = None, None, []
    for frame in frames:
        name, data, pixmap = frame["name"], np.asarray(frame["data"], dtype=np.float32), frame["pixmap"]
        pattern = frame.get("pattern")
        weight = check_float(f"weight of {name}", frame["weight"], 0.0, strict=True)
        kind = "cfa" if pattern else ("rgb" if data.ndim == 3 else "mono")
        if layout is None:
            layout = kind
            n_out = 1 if kind == "mono" else 3
            drizzles = [Drizzle(kernel=kernel, out_shape=out_shape, disable_ctx=True) for _ in range(n_out)]
        elif kind != layout:
            raise ValueError(f"{name}: a {kind} frame among {layout} frames")
        if pixmap.shape != data.shape[:2] + (2,):
            raise ValueError(f"{name}: pixmap {pixmap.shape} does not fit the frame {data.shape}")
        channels = cfa_channel_map(data.shape, pattern) if kind == "cfa" else None
        if kind == "cfa" and data.ndim != 2:
            raise ValueError(f"{name}: Bayer drizzle needs a 2-D CFA mosaic, got shape {data.shape}")
        if stack is not None and (stack.ndim == 3) != (kind != "mono"):
            raise ValueError(f"{name}: a {kind} frame against a stack of shape {stack.shape}")

        finite = np.isfinite(data)
        entry = {"frame": name, "offset": [0.0] * len(drizzles), "noise": [np.nan] * len(drizzles), "rejected": 0}
        values = data
        if stack is not None:
            model = blot(stack, pixmap)
            if kind == "cfa":
                model = np.take_along_axis(model, channels[..., None].astype(np.intp), axis=2)[..., 0]
            mask, offset, noise = outlier_mask(
                data, model, sigma=sigma, deriv_scale=deriv_scale, grow_px=grow_px, channels=channels
            )
            finite &= ~mask
            shift = offset[channels] if kind == "cfa" else offset
            values = data - shift.astype(np.float32)
            entry.update(offset=offset.tolist(), noise=noise.tolist(), rejected=int(mask.sum()))
        output_map = (pixmap + 0.5) * scale - 0.5
        for c, driz in enumerate(drizzles):
            if kind == "rgb":
                plane, good = values[..., c], finite[..., c]
            elif kind == "cfa":
                plane, good = values, finite & (channels == c)
            else:
                plane, good = values, finite
            weights = np.where(good, np.float32(weight), np.float32(0.0))
            _add(driz, np.where(good, plane, 0.0), output_map, weights, pixfrac, scale)
        table.append(entry)
        log.info("drizzled %s: weight %.3f, %d outlier pixels", name, weight, entry["rejected"])
    if drizzles is None:
        raise ValueError("drizzle_frames: no frames to drizzle")

    image = np.stack([d.out_img for d in drizzles], axis=-1)
    weight_map = np.stack([d.out_wht for d in drizzles], axis=-1)
    image[weight_map <= 0] = np.nan
    if layout == "mono":
        image, weight_map = image[..., 0], weight_map[..., 0]
    return DrizzleResult(image=image.astype(np.float32), weight=weight_map.astype(np.float32), frames=table)


def _add(driz, data, pixmap, weights, pixfrac, scale):
    with warnings.catch_warnings():
        # gaussian and lanczos kernels warn on every call that they do not conserve flux (said once
        # in the module and config documentation)
        warnings.filterwarnings("ignore", message=".*not a flux-conserving kernel.*")
        driz.add_image(
            np.ascontiguousarray(data, dtype=np.float32),
            exptime=1.0,
            pixmap=pixmap,
            weight_map=weights,
            pixfrac=pixfrac,
            pixel_scale_ratio=1.0 / scale,
            in_units="cps",
        )
