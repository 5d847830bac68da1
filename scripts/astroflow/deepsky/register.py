"""Registration of lights: frame quality, reference choice, star matching and warping.

Stars come from :mod:`astroflow.deepsky.quality`. Matching uses astroalign (Beroiz, Cabral & Sanchez
2020: invariant triangles of the brightest stars and RANSAC), and the transform it finds is then
refined on every star that it pairs within a small radius, which averages the centroid errors of
many more stars than astroalign's control points: by least squares (scikit-image) for the
similarity and affine models, by OpenCV's ``findHomography`` (RANSAC, then Levenberg-Marquardt on
the inliers) for the homography. The distortion model ``tps`` adds to the homography a smoothing
thin-plate spline (Duchon 1977; Bookstein 1989; :class:`scipy.interpolate.RBFInterpolator`) of
the residual displacements of the matched stars, for the field distortion of wide fields. Frames
are resampled with OpenCV (``warpAffine``, ``warpPerspective``, or ``remap`` on the per-pixel map
of :func:`pixel_map`; Lanczos-4 by default).

A transform is a 3x3 matrix ``M`` in homogeneous pixel coordinates that maps a pixel ``(x, y)``
of the frame onto the reference: ``(x_ref, y_ref, w) = M @ (x, y, 1)``, divided by ``w`` (1 for
the similarity and affine models), with 0-based pixel coordinates and pixel centres at integers
(as in :mod:`astroflow.deepsky.quality`). The thin-plate spline of the ``tps`` model is kept in
the ``tps`` column of the registration table as JSON, ``{"smoothing": s, "scale": L, "points":
[[x_ref, y_ref, ddx, ddy], ...]}``: at the reference pixel ``(x_ref, y_ref)`` of each matched
star, the frame position minus the one the inverse homography gives (px). :func:`pixel_map`
turns any row of the table into the frame coordinates of every reference pixel (for
``remap``), or the reference coordinates of every frame pixel (the ``pixmap`` of drizzle).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import astroalign
import cv2
import numpy as np
import pandas as pd
from scipy.interpolate import RBFInterpolator, RectBivariateSpline
from scipy.spatial import cKDTree
from skimage.transform import AffineTransform, SimilarityTransform

from astroflow.deepsky.quality import detect_stars, quality_from_stars
from astroflow.deepsky.weighting import WEIGHTINGS, keep_best, reject_outliers, set_weights
from astroflow.io import fits as fitsio

__all__ = [
    "MODELS",
    "RegistrationError",
    "find_transform",
    "match_frame",
    "pixel_map",
    "register_frames",
    "transform_matrix",
    "warp",
]

TABLE_COLUMNS = [
    "frame",
    "status",
    "reason",
    "reference",
    "fwhm",
    "eccentricity",
    "n_stars",
    "background",
    "noise",
    "weight",
    "weight_noise",
    "weight_psf",
    "weight_psf_signal",
    "flux_ratio",
    "model",
    "m00",
    "m01",
    "m02",
    "m10",
    "m11",
    "m12",
    "m20",
    "m21",
    "dx",
    "dy",
    "rotation_deg",
    "scale",
    "n_matches",
    "rms_residual_px",
    "tps",
]

MODELS = ("similarity", "affine", "homography", "tps")
"""Geometric models of :func:`match_frame`, from the most constrained to the most flexible."""
_LINEAR = {"similarity": SimilarityTransform, "affine": AffineTransform}
# The thin-plate spline works in coordinates divided by this length (px), so that its smoothing
# does not depend on the frame size: r^2 log r of 1000 px is ~7e6, of 1 it is 0.
_TPS_SCALE = 1000.0
# Spacing (px) of the grid on which the spline is evaluated for a per-pixel map; a bicubic
# spline fills in between (the distortion varies over hundreds of pixels).
_TPS_GRID = 16
_MAP_ROWS = 256
DEFAULT_TPS_SMOOTHING = "auto"
# Smoothings tried by the cross-validation of ``tps_smoothing="auto"``; the stiffest is close
# to no spline at all (its affine part only).
_TPS_SMOOTHINGS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 10.0, 1e3)
_TPS_FOLDS = 5
_INTERPOLATIONS = {
    "lanczos4": cv2.INTER_LANCZOS4,
    "cubic": cv2.INTER_CUBIC,
    "linear": cv2.INTER_LINEAR,
}

log = logging.getLogger(__name__)


class RegistrationError(ValueError):
    """No trustworthy transform between a frame and the reference."""


def match_frame(
    stars,
    reference_stars,
    *,
    model="similarity",
    max_control_points=50,
    match_radius=2.0,
    min_matches=6,
    tps_smoothing=DEFAULT_TPS_SMOOTHING,
):
    """Match a frame's stars to the reference's and fit a geometric model to the pairs.

    Parameters
    ----------
    stars, reference_stars : pandas.DataFrame or numpy.ndarray
        Star lists of the frame and of the reference: tables from
        :func:`astroflow.quality.detect_stars` (only clean stars, ``flag == 0``, are used,
        brightest ``flux`` first) or ``(N, 2)`` arrays of ``(x, y)`` px, brightest first.
    model : {"similarity", "affine", "homography", "tps"}, optional
        Geometric model: shift + rotation + uniform scale; a full affine map (differential
        refraction, a tilted sensor); a homography (projective map: the projection of a wide
        field onto a flat sensor), fitted by OpenCV's ``findHomography`` with RANSAC; or that
        homography plus a smoothing thin-plate spline of the residuals (field distortion).
        Default "similarity".
    max_control_points : int, optional
        Number of brightest stars of each list that astroalign matches. Default 50.
    match_radius : float, optional
        Stars that land within this distance (px) of a reference star under the current
        transform are paired for the refinement; also the RANSAC inlier distance of the
        homography. Default 2.0.
    min_matches : int, optional
        Fewest paired stars accepted. Default 6.
    tps_smoothing : float or "auto", optional
        Smoothing of the thin-plate spline (``RBFInterpolator``'s ``smoothing``, in coordinates
        divided by 1000 px): 0 passes through every star and chases centroid noise; larger is
        stiffer. "auto" (default) takes, among 1e-3 ... 1e3, the one with the smallest 5-fold
        cross-validated residual of the matched stars (Wahba 1990, ch. 4), which follows both
        the centroid noise and the strength of the distortion. Only for ``model="tps"``.

    Returns
    -------
    dict
        ``matrix`` (``(3, 3)`` float64, frame -> reference; the homography under the spline for
        "tps"), ``pairs`` (``(n, 2)`` int array of indices into the clean, brightest-first frame
        and reference lists), ``n_matches``, ``rms_residual_px`` (RMS distance between matched
        stars under the full model, px) and ``tps`` (the spline as the JSON text described in
        the module docstring, "" for the other models; its ``cv_rms`` is the cross-validated
        RMS residual of the stars, px, an honest figure where the in-sample one is not).

    Raises
    ------
    RegistrationError
        If either list has fewer than 3 stars, astroalign finds no consistent asterisms, or
        fewer than ``min_matches`` pairs survive the refinement.
    ValueError
        If ``model`` is unknown.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)}")
    src, dst = _positions(stars), _positions(reference_stars)
    if len(src) < 3 or len(dst) < 3:
        raise RegistrationError(
            f"too few stars to match ({len(src)} in the frame, {len(dst)} in the reference)"
        )
    try:
        first, _ = astroalign.find_transform(
            src[:max_control_points],
            dst[:max_control_points],
            max_control_points=max_control_points,
        )
    except (astroalign.MaxIterError, ValueError, TypeError) as exc:
        raise RegistrationError(f"no star pattern in common with the reference ({exc})") from exc
    matrix = first.params
    tree = cKDTree(dst)
    base = "homography" if model == "tps" else model
    # Re-pair under the improved transform a few times: the first one (from <= 50 stars) can
    # miss pairs at the field edges by a pixel or so.
    for _ in range(3):
        i_src, i_dst = _pairs(src, tree, matrix, match_radius)
        if len(i_src) < min_matches:
            raise RegistrationError(
                f"only {len(i_src)} stars match within {match_radius} px (need {min_matches})"
            )
        matrix, inliers = _fit(base, src[i_src], dst[i_dst], match_radius)
        i_src, i_dst = i_src[inliers], i_dst[inliers]
        if len(i_src) < min_matches:
            raise RegistrationError(
                f"only {len(i_src)} {base} inliers within {match_radius} px (need {min_matches})"
            )
    tps = ""
    if model == "tps":
        # Under the homography alone, stars where the distortion is strongest land off their
        # partners and may pair with a neighbour; pair again under the full model (reference
        # stars mapped into the frame), refit the homography by least squares on those pairs
        # (RANSAC would drop the distorted ones as outliers) and the spline on its residuals.
        frame_tree = cKDTree(src)
        for _ in range(2):
            tps = _fit_tps(src[i_src], dst[i_dst], matrix, tps_smoothing)
            i_dst, i_src = _nearest_pairs(_inverse_points(matrix, tps, dst), frame_tree, match_radius)
            if len(i_src) < min_matches:
                raise RegistrationError(
                    f"only {len(i_src)} stars match within {match_radius} px under the "
                    f"distortion model (need {min_matches})"
                )
            fitted, _ = cv2.findHomography(src[i_src], dst[i_dst], 0)
            if fitted is None:
                raise RegistrationError("homography fit failed (degenerate star pairs)")
            matrix = fitted / fitted[2, 2]
        tps = _fit_tps(src[i_src], dst[i_dst], matrix, tps_smoothing)
        residual = np.hypot(*(_inverse_points(matrix, tps, dst[i_dst]) - src[i_src]).T)
    else:
        residual = np.hypot(*(_apply(matrix, src[i_src]) - dst[i_dst]).T)
    return {
        "matrix": matrix,
        "pairs": np.column_stack([i_src, i_dst]),
        "n_matches": int(len(i_src)),
        "rms_residual_px": float(np.sqrt(np.mean(residual**2))),
        "tps": tps,
    }


def find_transform(
    stars,
    reference_stars,
    *,
    model="similarity",
    max_control_points=50,
    match_radius=2.0,
    min_matches=6,
):
    """Transform that maps a frame's stars onto the reference's.

    Parameters
    ----------
    stars, reference_stars : pandas.DataFrame or numpy.ndarray
        As in :func:`match_frame`.
    model : {"similarity", "affine", "homography"}, optional
        Geometric model (see :func:`match_frame`; the distortion model "tps" needs its spline,
        which :func:`match_frame` returns). Default "similarity".
    max_control_points, match_radius, min_matches
        As in :func:`match_frame` (same defaults).

    Returns
    -------
    matrix : numpy.ndarray
        ``(3, 3)`` float64, frame pixel ``(x, y)`` -> reference pixel ``(x, y)``.
    n_matches : int
        Number of star pairs in the final fit.
    rms_residual_px : float
        RMS distance (px) between the transformed stars and their reference partners.

    Raises
    ------
    RegistrationError
        If either list has fewer than 3 stars, astroalign finds no consistent asterisms, or
        fewer than ``min_matches`` pairs survive the refinement.
    ValueError
        If ``model`` is unknown or "tps".
    """
    if model == "tps":
        raise ValueError("find_transform returns a matrix; use match_frame for the tps model")
    result = match_frame(
        stars,
        reference_stars,
        model=model,
        max_control_points=max_control_points,
        match_radius=match_radius,
        min_matches=min_matches,
    )
    return result["matrix"], result["n_matches"], result["rms_residual_px"]


def pixel_map(row, shape, *, to="frame"):
    """Per-pixel map of one registered frame: reference -> frame, or frame -> reference.

    Parameters
    ----------
    row : mapping or pandas.Series
        A row of the :func:`register_frames` table (``registration.csv``): the matrix columns
        ``m00 .. m12`` (and ``m20 m21`` of a homography) and, for the "tps" model, the ``tps``
        JSON text.
    shape : tuple of int
        ``(H, W)`` of the grid the map is made for (a trailing channel count is ignored): the
        reference's for ``to="frame"``, the frame's for ``to="reference"``.
    to : {"frame", "reference"}, optional
        "frame" (default): the frame position from which each reference pixel is sampled, the
        map of OpenCV's ``remap`` (and of :func:`warp`'s ``coordinates``). "reference": the
        reference position onto which each frame pixel lands, the ``pixmap`` of STScI's
        ``drizzle``; for "tps" its spline is the one of the same stars fitted in that direction
        (same smoothing), so the two maps are inverse to each other within the spline's error.

    Returns
    -------
    numpy.ndarray
        float32, ``(H, W, 2)``: ``[..., 0]`` is ``x`` and ``[..., 1]`` is ``y`` (px, 0-based,
        pixel centres at integers) of each grid pixel in the other image. The spline is
        evaluated on a grid of 16 px and filled in with a bicubic spline (the distortion varies
        over hundreds of pixels).

    Raises
    ------
    ValueError
        If the row has no finite transform (a rejected frame), or ``to`` is unknown.
    """
    if to not in ("frame", "reference"):
        raise ValueError(f"to must be 'frame' or 'reference', got {to!r}")
    matrix = transform_matrix(row)
    if not np.isfinite(matrix).all():
        raise ValueError(f"frame {row.get('frame', '?')!r} has no transform (rejected?)")
    height, width = int(shape[0]), int(shape[1])
    xs = np.arange(width, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64)
    mapping = np.linalg.inv(matrix) if to == "frame" else matrix
    fills = []
    tps = _tps_text(row)
    if tps:
        spline = _tps_interpolator(tps, forward=to == "reference", matrix=matrix)
        nodes_x, nodes_y = _grid_nodes(width), _grid_nodes(height)
        nx, ny = np.meshgrid(nodes_x, nodes_y)
        values = spline(np.column_stack([nx.ravel(), ny.ravel()]) / _TPS_SCALE)
        kx, ky = min(3, len(nodes_x) - 1), min(3, len(nodes_y) - 1)
        fills = [
            RectBivariateSpline(
                nodes_y, nodes_x, values[:, axis].reshape(len(nodes_y), len(nodes_x)), kx=kx, ky=ky
            )
            for axis in (0, 1)
        ]
    out = np.empty((height, width, 2), np.float32)
    # in blocks of rows: float64 temporaries of a block only, not of the whole frame
    for start in range(0, height, _MAP_ROWS):
        rows = ys[start : start + _MAP_ROWS]
        gx, gy = np.meshgrid(xs, rows)
        w = mapping[2, 0] * gx + mapping[2, 1] * gy + mapping[2, 2]
        block = out[start : start + len(rows)]
        block[..., 0] = (mapping[0, 0] * gx + mapping[0, 1] * gy + mapping[0, 2]) / w
        block[..., 1] = (mapping[1, 0] * gx + mapping[1, 1] * gy + mapping[1, 2]) / w
        for axis, fill in enumerate(fills):
            block[..., axis] += fill(rows, xs)
    return out


def warp(image, matrix, output_shape, *, interpolation="lanczos4", margin=2, coordinates=None):
    """Resample a frame onto the reference pixel grid.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` frame, linear ADU; NaN marks missing data.
    matrix : array_like
        ``(3, 3)`` (or ``(2, 3)``) transform, frame pixel -> reference pixel, as returned by
        :func:`find_transform`: affine (``warpAffine``) or projective (``warpPerspective``).
        Ignored where ``coordinates`` is given.
    output_shape : tuple of int
        ``(H_ref, W_ref)`` of the reference (a trailing channel count is ignored).
    interpolation : {"lanczos4", "cubic", "linear"}, optional
        OpenCV interpolation kernel. Default "lanczos4".
    margin : int, optional
        Output pixels whose source lies within this many pixels of the frame's edge or of a
        NaN are set to NaN, because the interpolation kernel reaches beyond the data there.
        Default 2.
    coordinates : numpy.ndarray or None, optional
        ``(H_ref, W_ref, 2)`` frame ``(x, y)`` of every output pixel, from :func:`pixel_map`
        (any model, the distortion model "tps" included), resampled with OpenCV's ``remap``.
        Default None (use ``matrix``).

    Returns
    -------
    numpy.ndarray
        float32, ``(H_ref, W_ref)`` or ``(H_ref, W_ref, 3)``, NaN where the frame has no data.

    Raises
    ------
    ValueError
        If ``image`` is not ``(H, W)`` or ``(H, W, 3)``, ``matrix`` is not 3x3 or 2x3,
        ``coordinates`` does not match ``output_shape``, or the interpolation is unknown.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; expected one of {sorted(_INTERPOLATIONS)}"
        )
    data = np.asarray(image, dtype=np.float32)
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 3)):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {data.shape}")
    height, width = int(output_shape[0]), int(output_shape[1])
    if coordinates is not None:
        coordinates = np.asarray(coordinates, dtype=np.float32)
        if coordinates.shape != (height, width, 2):
            raise ValueError(
                f"coordinates must be ({height}, {width}, 2), got shape {coordinates.shape}"
            )
        map_x = np.ascontiguousarray(coordinates[..., 0])
        map_y = np.ascontiguousarray(coordinates[..., 1])

        def resample(array, flags, border, value):
            return cv2.remap(array, map_x, map_y, flags, borderMode=border, borderValue=value)

    else:
        full = np.asarray(matrix, dtype=np.float64)
        if full.shape not in ((3, 3), (2, 3)):
            raise ValueError(f"matrix must be 3x3 or 2x3, got shape {full.shape}")
        projective = full.shape == (3, 3) and not np.allclose(full[2], [0.0, 0.0, 1.0])

        def resample(array, flags, border, value):
            if projective:
                return cv2.warpPerspective(
                    array, full, (width, height), flags=flags, borderMode=border,
                    borderValue=value,
                )
            return cv2.warpAffine(
                array, full[:2], (width, height), flags=flags, borderMode=border,
                borderValue=value,
            )

    finite = np.isfinite(data) if data.ndim == 2 else np.isfinite(data).all(axis=2)
    # Missing pixels get the median so that the kernel's lobes do not ring against a hole; the
    # pixels they touch are masked below anyway.
    fill = np.float32(np.median(data[finite])) if finite.any() else np.float32(0.0)
    filled = np.where(finite[..., None] if data.ndim == 3 else finite, data, fill)
    out = resample(
        np.ascontiguousarray(filled), _INTERPOLATIONS[interpolation], cv2.BORDER_REPLICATE, 0.0
    )
    valid = finite.astype(np.uint8)
    if margin > 0:
        valid = cv2.erode(
            valid,
            np.ones((2 * margin + 1, 2 * margin + 1), np.uint8),
            borderType=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    # Bilinear weights of the validity map reach 1 only where all four source pixels are valid.
    coverage = resample(valid.astype(np.float32), cv2.INTER_LINEAR, cv2.BORDER_CONSTANT, 0.0)
    out[coverage < 0.999] = np.nan
    return out.astype(np.float32, copy=False)


def register_frames(
    images_or_paths,
    names=None,
    *,
    reference="auto",
    model="similarity",
    threshold_sigma=5.0,
    min_stars=10,
    min_star_fraction=0.25,
    max_fwhm_ratio=2.0,
    weighting="psf_signal",
    outlier_sigma=None,
    keep_percent=100.0,
    tps_smoothing=DEFAULT_TPS_SMOOTHING,
    saturation=None,
    excluded=None,
):
    """Measure, select, register and weight a set of lights.

    Each frame is read, its stars detected (:func:`astroflow.quality.detect_stars`) and only
    its star list kept, so that at most one full frame is in memory at a time. Frames are then
    rejected on quality (too few stars, cloud, poor seeing) and as outliers
    (:func:`astroflow.deepsky.weighting.reject_outliers`, among the frames of the same
    ``EXPTIME`` and ``FILTER`` where the inputs are FITS files), a reference is chosen, every other
    usable frame is matched to it with :func:`match_frame`, the weights of every scheme are
    computed (:func:`astroflow.deepsky.weighting.set_weights`) and only the best
    ``keep_percent`` are kept (:func:`astroflow.deepsky.weighting.keep_best`; the reference
    always stays). A frame that fails is rejected with the reason and the run goes on.

    Parameters
    ----------
    images_or_paths : sequence of numpy.ndarray or path-like
        ``(H, W)`` or ``(H, W, 3)`` frames (linear ADU), or paths of FITS files written by
        :mod:`astroflow.io.fits`; a rejected placeholder passes through as rejected with its
        ``AFREASON``.
    names : sequence of str, optional
        Frame names for the table and for ``reference``; by default the file stems of the
        paths, or ``frame_0``, ``frame_1``... for arrays.
    reference : str, optional
        Name of the reference frame, or "auto" (default) for the usable frame with the highest
        score ``n_stars / (fwhm * noise)``: a background-limited star's S/N scales as
        ``flux / (fwhm * noise)``, and the star count follows the transparency.
    model : {"similarity", "affine", "homography", "tps"}, optional
        Geometric model (see :func:`match_frame`). Default "similarity".
    threshold_sigma : float, optional
        Star detection threshold in background RMS. Default 5.0.
    min_stars : int, optional
        A frame with fewer clean stars is rejected. Default 10.
    min_star_fraction : float, optional
        A frame with fewer stars than this fraction of the median star count of the frames is
        rejected as cloudy. Default 0.25.
    max_fwhm_ratio : float, optional
        A frame whose median FWHM exceeds this multiple of the median FWHM of the frames is
        rejected. Default 2.0.
    weighting : {"noise", "psf", "psf_signal", "none"}, optional
        Scheme of the stacking ``weight`` (see :mod:`astroflow.deepsky.weighting`), normalised
        to a mean of 1 over the used frames; rejected frames get 0. Default "psf_signal".
    outlier_sigma : mapping of str to float or None, optional
        ``k`` robust sigmas per measure (``fwhm``, ``eccentricity``, ``background``,
        ``n_stars``) beyond which a frame is rejected as an outlier; 0 switches a test off.
        None (default): no outlier test.
    keep_percent : float, optional
        Keep the best share of the registered frames, ranked by the chosen weight (by
        ``weight_psf_signal`` with ``weighting="none"``), in (0, 100]. Default 100.0.
    tps_smoothing : float or "auto", optional
        Smoothing of the thin-plate spline of the "tps" model (see :func:`match_frame`).
        Default "auto".
    saturation : float or None, optional
        Saturation level (ADU) passed to :func:`~astroflow.quality.detect_stars`. Default None.
    excluded : mapping of str to str, optional
        Frames excluded before registration (name -> reason: a duplicate, another size than
        most, a dark among the lights; :func:`astroflow.deepsky.screening.screen_lights`):
        rejected with that reason, unread, like rejected placeholders.

    Returns
    -------
    pandas.DataFrame
        One row per frame, in input order, with columns ``frame``, ``status`` ("used" or
        "rejected"), ``reason`` ("" or why), ``reference`` (bool), ``fwhm`` (px),
        ``eccentricity``, ``n_stars``, ``background`` (ADU), ``noise`` (ADU), ``weight`` (the
        stacking weight), ``weight_noise``, ``weight_psf``, ``weight_psf_signal`` (every
        scheme's weight, mean 1 over the used frames), ``flux_ratio`` (median flux of the
        matched stars over the reference's), ``model``, ``m00 m01 m02 m10 m11 m12 m20 m21``
        (the frame -> reference matrix, ``m22 = 1``; NaN for frames rejected before
        registration), ``dx``, ``dy`` (px, displacement of the frame's centre in the
        reference), ``rotation_deg`` (counter-clockwise in x-right, y-down pixel axes),
        ``scale``, ``n_matches`` (star pairs; the star count for the reference),
        ``rms_residual_px`` (RMS distance of the matched stars under the model) and ``tps``
        (the thin-plate spline as JSON for the "tps" model, else "").

    Raises
    ------
    ValueError
        If the frames differ in size (the message names the files and their sizes), names
        and inputs differ in number or repeat, a named reference does not exist or is rejected,
        ``weighting``, ``model`` or an outlier measure is unknown, or ``keep_percent`` is out
        of range.
    RegistrationError
        If no frame passes the quality tests.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {list(WEIGHTINGS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)}")
    if not 0 < keep_percent <= 100:
        raise ValueError(f"keep_percent must be in (0, 100], got {keep_percent}")
    inputs = list(images_or_paths)
    names = _frame_names(inputs, names)
    placeholders, shapes, groups = _survey(inputs, names, excluded or {})

    rows, star_lists = [], {}
    for item, name in zip(inputs, names):
        row = dict.fromkeys(TABLE_COLUMNS, np.nan)
        row.update(frame=name, status="used", reason="", reference=False, weight=0.0, tps="")
        row["model"] = model
        if name in placeholders:
            row.update(status="rejected", reason=placeholders[name], n_stars=0)
            rows.append(row)
            continue
        stars = _measure(item, threshold_sigma=threshold_sigma, saturation=saturation)
        row.update(quality_from_stars(stars))
        log.info(
            "stars %d/%d %s: %d stars, FWHM %.2f px",
            len(rows) + 1, len(inputs), name, row["n_stars"], row["fwhm"],
        )
        clean = stars[stars["flag"] == 0].sort_values("flux", ascending=False)
        star_lists[name] = clean[["x", "y", "flux"]].to_numpy(dtype=np.float64)
        rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    _reject_on_quality(table, min_stars, min_star_fraction, max_fwhm_ratio)
    reject_outliers(table, outlier_sigma or {}, groups=[groups.get(n, "") for n in names])

    usable = table["status"] == "used"
    if not usable.any():
        reasons = "; ".join(f"{f}: {r}" for f, r in zip(table["frame"], table["reason"]))
        raise RegistrationError(f"no usable light to register ({reasons})")
    ref = _choose_reference(table, reference)
    ref_stars = star_lists[table.at[ref, "frame"]]
    height, width = next(iter(shapes.values()))[:2]
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    table.at[ref, "reference"] = True
    for idx in table.index[usable]:
        if idx == ref:
            matrix, n_matches, rms, tps, ratio = np.eye(3), len(ref_stars), 0.0, "", 1.0
        else:
            stars = star_lists[table.at[idx, "frame"]]
            try:
                result = match_frame(
                    stars[:, :2], ref_stars[:, :2], model=model, tps_smoothing=tps_smoothing
                )
            except RegistrationError as exc:
                table.loc[idx, ["status", "reason"]] = ["rejected", f"registration failed: {exc}"]
                continue
            matrix, n_matches = result["matrix"], result["n_matches"]
            rms, tps = result["rms_residual_px"], result["tps"]
            i_src, i_dst = result["pairs"].T
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = stars[i_src, 2] / ref_stars[i_dst, 2]
            ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
            ratio = float(np.median(ratios)) if len(ratios) else np.nan
        shift = _apply(matrix, centre[None])[0] - centre
        table.loc[idx, ["m00", "m01", "m02"]] = matrix[0]
        table.loc[idx, ["m10", "m11", "m12"]] = matrix[1]
        table.loc[idx, ["m20", "m21"]] = matrix[2, :2] / matrix[2, 2]
        table.loc[idx, ["dx", "dy"]] = shift
        table.at[idx, "rotation_deg"] = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
        table.at[idx, "scale"] = np.sqrt(abs(np.linalg.det(matrix[:2, :2])))
        table.at[idx, "n_matches"] = n_matches
        table.at[idx, "rms_residual_px"] = rms
        table.at[idx, "tps"] = tps
        table.at[idx, "flux_ratio"] = ratio
        log.info(
            "matched %s: %d stars, shift (%.2f, %.2f) px, rms %.3f px (%s), flux ratio %.3f",
            table.at[idx, "frame"], n_matches, shift[0], shift[1], rms, model, ratio,
        )
    set_weights(table, weighting)
    if keep_percent < 100:
        by = "weight_psf_signal" if weighting == "none" else f"weight_{weighting}"
        keep_best(table, keep_percent, by, keep=[ref])
        set_weights(table, weighting)
    return table


def transform_matrix(row):
    """The 3x3 frame -> reference matrix of one row of the :func:`register_frames` table.

    Parameters
    ----------
    row : mapping or pandas.Series
        Holds ``m00 m01 m02 m10 m11 m12`` and, for a homography, ``m20 m21`` (absent or NaN
        in tables of affine models: 0).

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` float64 (NaN entries for a rejected frame).
    """
    m20, m21 = (row.get(key, 0.0) for key in ("m20", "m21"))
    projective = [0.0 if m20 is None or not np.isfinite(m20) else m20,
                  0.0 if m21 is None or not np.isfinite(m21) else m21]
    return np.array(
        [
            [row["m00"], row["m01"], row["m02"]],
            [row["m10"], row["m11"], row["m12"]],
            [projective[0], projective[1], 1.0],
        ],
        dtype=np.float64,
    )


def _measure(item, **kwargs):
    image = fitsio.read_image(item)[0] if _is_path(item) else item
    return detect_stars(image, **kwargs)


def _positions(stars):
    if isinstance(stars, pd.DataFrame):
        clean = stars[stars["flag"] == 0] if "flag" in stars else stars
        if "flux" in clean:
            clean = clean.sort_values("flux", ascending=False)
        return clean[["x", "y"]].to_numpy(dtype=np.float64)
    points = np.asarray(stars, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(f"star positions must be an (N, 2) array, got shape {points.shape}")
    return points[:, :2]


def _apply(matrix, points):
    mapped = points @ matrix[:2, :2].T + matrix[:2, 2]
    if np.allclose(matrix[2], [0.0, 0.0, 1.0]):
        return mapped
    return mapped / (points @ matrix[2, :2] + matrix[2, 2])[:, None]


def _fit(model, src, dst, radius):
    """Least-squares (similarity, affine) or RANSAC (homography) fit: matrix and inlier mask."""
    if model == "homography":
        matrix, mask = cv2.findHomography(
            src, dst, cv2.RANSAC, ransacReprojThreshold=radius, maxIters=2000, confidence=0.999
        )
        if matrix is None:
            raise RegistrationError("homography fit failed (degenerate star pairs)")
        return matrix / matrix[2, 2], mask.ravel().astype(bool)
    fitted = _LINEAR[model].from_estimate(src, dst)
    if not fitted:
        raise RegistrationError(f"least-squares {model} fit failed: {fitted}")
    return fitted.params, np.ones(len(src), bool)


def _fit_tps(src, dst, matrix, smoothing):
    """The spline of the residuals of the inverse homography at the reference stars, as JSON."""
    residual = src - _apply(np.linalg.inv(matrix), dst)
    where = dst / _TPS_SCALE
    if isinstance(smoothing, str):
        if smoothing != "auto":
            raise ValueError(f"tps_smoothing must be a number >= 0 or 'auto', got {smoothing!r}")
        errors = [_tps_cv_rms(where, residual, s) for s in _TPS_SMOOTHINGS]
        best = int(np.argmin(errors))
        smoothing, cv_rms = _TPS_SMOOTHINGS[best], errors[best]
    else:
        if smoothing < 0:
            raise ValueError(f"tps_smoothing must be >= 0, got {smoothing}")
        cv_rms = _tps_cv_rms(where, residual, float(smoothing))
    points = np.column_stack([dst, residual])
    return json.dumps(
        {
            "smoothing": float(smoothing),
            "scale": _TPS_SCALE,
            "cv_rms": round(float(cv_rms), 4),
            "points": np.round(points, 4).tolist(),
        },
        separators=(",", ":"),
    )


def _tps_cv_rms(where, residual, smoothing):
    """RMS error (px) of the spline at stars left out of its fit, over interleaved folds."""
    folds = np.arange(len(where)) % _TPS_FOLDS
    errors = []
    for fold in range(_TPS_FOLDS):
        held = folds == fold
        spline = RBFInterpolator(
            where[~held], residual[~held], kernel="thin_plate_spline", smoothing=smoothing
        )
        errors.append(np.sum((spline(where[held]) - residual[held]) ** 2, axis=1))
    return float(np.sqrt(np.mean(np.concatenate(errors))))


def _tps_text(row):
    text = row.get("tps", "") if hasattr(row, "get") else ""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return str(text)


def _tps_interpolator(text, *, forward=False, matrix=None):
    """The spline of a ``tps`` text: reference -> frame residuals of the inverse homography, or
    (``forward``) frame -> reference residuals of ``matrix``, rebuilt from the same stars."""
    spline = json.loads(text)
    points = np.asarray(spline["points"], dtype=np.float64)
    where, values = points[:, :2], points[:, 2:]
    if forward:
        frame = _apply(np.linalg.inv(matrix), where) + values
        where, values = frame, points[:, :2] - _apply(matrix, frame)
    return RBFInterpolator(
        where / float(spline["scale"]),
        values,
        kernel="thin_plate_spline",
        smoothing=float(spline["smoothing"]),
        degree=1,
    )


def _inverse_points(matrix, tps, points):
    """Frame positions of reference points under the homography and the spline."""
    mapped = _apply(np.linalg.inv(matrix), points)
    if tps:
        mapped = mapped + _tps_interpolator(tps)(points / _TPS_SCALE)
    return mapped


def _grid_nodes(length):
    count = max(2, int(np.ceil((length - 1) / _TPS_GRID)) + 1)
    return np.linspace(0.0, length - 1.0, count)


def _pairs(src, tree, matrix, radius):
    return _nearest_pairs(_apply(matrix, src), tree, radius)


def _nearest_pairs(points, tree, radius):
    """Indices of ``points`` and of their nearest ``tree`` stars within ``radius``, one-to-one."""
    distance, nearest = tree.query(points, distance_upper_bound=radius)
    hit = np.flatnonzero(np.isfinite(distance))
    # One reference star may be the nearest of two frame stars; keep the closer pair.
    order = hit[np.argsort(distance[hit])]
    _, first = np.unique(nearest[order], return_index=True)
    keep = np.sort(order[first])
    return keep, nearest[keep]


def _is_path(item):
    return isinstance(item, (str, Path))


def _frame_names(inputs, names):
    if names is None:
        names = [
            Path(item).stem if _is_path(item) else f"frame_{k}" for k, item in enumerate(inputs)
        ]
    names = [str(n) for n in names]
    if len(names) != len(inputs):
        raise ValueError(f"{len(inputs)} frames but {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError(
            f"frame names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}"
        )
    return names


def _survey(inputs, names, excluded):
    """Rejected placeholders and excluded frames (name -> reason), image shapes (name -> shape)
    and groups of comparable frames (name -> "exposure|filter", from EXPTIME and FILTER), from
    headers."""
    placeholders, shapes, groups = dict(excluded), {}, {}
    for item, name in zip(inputs, names):
        if name in placeholders:
            continue
        if _is_path(item):
            header = fitsio.read_header(item)
            if fitsio.is_rejected(header):
                placeholders[name] = str(header.get(fitsio.REASON_KEY, "rejected upstream"))
                continue
            shape = fitsio.image_shape(header)
            exposure = header.get("EXPTIME")
            exposure = f"{float(exposure):.4g}" if isinstance(exposure, (int, float)) else ""
            groups[name] = f"{exposure}|{str(header.get('FILTER', '')).strip()}"
        else:
            shape = np.shape(item)
        shapes[name] = tuple(int(n) for n in shape)
    if len(set(shapes.values())) > 1:
        sizes = ", ".join(
            f"{item if _is_path(item) else name}: {'x'.join(map(str, shapes[name]))}"
            for item, name in zip(inputs, names)
            if name in shapes
        )
        raise ValueError(f"lights differ in size: {sizes}")
    return placeholders, shapes, groups


def _reject_on_quality(table, min_stars, min_star_fraction, max_fwhm_ratio):
    def reject(mask, reasons):
        mask = mask & (table["status"] == "used")
        table.loc[mask, "status"] = "rejected"
        table.loc[mask, "reason"] = reasons[mask]

    measured = table["reason"] == ""
    stars = table["n_stars"]
    reject(stars < min_stars, stars.map(lambda n: f"too few stars ({n:.0f} < {min_stars})"))
    median_stars = float(np.median(stars[measured])) if measured.any() else 0.0
    reject(
        stars < min_star_fraction * median_stars,
        stars.map(lambda n: f"low transparency (cloud?): {n:.0f} stars vs median {median_stars:g}"),
    )
    fwhm_used = table.loc[table["status"] == "used", "fwhm"]
    if len(fwhm_used):
        median_fwhm = float(np.median(fwhm_used))
        fwhm = table["fwhm"]
        reject(
            fwhm > max_fwhm_ratio * median_fwhm,
            fwhm.map(lambda f: f"poor seeing/focus: FWHM {f:.2f} vs median {median_fwhm:.2f} px"),
        )


def _choose_reference(table, reference):
    usable = table["status"] == "used"
    if reference == "auto":
        score = table["n_stars"] / (table["fwhm"] * table["noise"])
        return int(score[usable].idxmax())
    matches = table.index[table["frame"] == reference]
    if len(matches) == 0:
        raise ValueError(f"reference frame {reference!r} is not among the lights")
    idx = int(matches[0])
    if not usable[idx]:
        raise ValueError(f"reference frame {reference!r} is rejected: {table.at[idx, 'reason']}")
    return idx
