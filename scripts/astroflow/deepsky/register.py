"""Registration of lights: frame quality, reference choice, star matching and warping.

Stars come from :mod:`astroflow.deepsky.quality`. Matching uses astroalign (Beroiz, Cabral & Sanchez
2020: invariant triangles of the brightest stars and RANSAC), and the transform it finds is then
refined by least squares (scikit-image) on every star that it pairs within a small radius, which
averages the centroid errors of many more stars than astroalign's control points. Frames are
resampled with OpenCV's ``warpAffine`` (Lanczos-4 by default).

A transform is a 3x3 matrix ``M`` in homogeneous pixel coordinates that maps a pixel ``(x, y)``
of the frame onto the reference: ``(x_ref, y_ref, 1) = M @ (x, y, 1)``, with 0-based pixel
coordinates and pixel centres at integers (as in :mod:`astroflow.deepsky.quality`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import astroalign
import cv2
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from skimage.transform import AffineTransform, SimilarityTransform

from astroflow.deepsky.quality import detect_stars, quality_from_stars
from astroflow.io import fits as fitsio

__all__ = ["RegistrationError", "find_transform", "register_frames", "transform_matrix", "warp"]

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
    "m00",
    "m01",
    "m02",
    "m10",
    "m11",
    "m12",
    "dx",
    "dy",
    "rotation_deg",
    "scale",
    "n_matches",
    "rms_residual_px",
]

_MODELS = {"similarity": SimilarityTransform, "affine": AffineTransform}
_INTERPOLATIONS = {
    "lanczos4": cv2.INTER_LANCZOS4,
    "cubic": cv2.INTER_CUBIC,
    "linear": cv2.INTER_LINEAR,
}

log = logging.getLogger(__name__)


class RegistrationError(ValueError):
    """No trustworthy transform between a frame and the reference."""


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
        Star lists of the frame and of the reference: tables from
        :func:`astroflow.quality.detect_stars` (only clean stars, ``flag == 0``, are used,
        brightest ``flux`` first) or ``(N, 2)`` arrays of ``(x, y)`` px, brightest first.
    model : {"similarity", "affine"}, optional
        Geometric model of the refined fit: shift + rotation + uniform scale, or a full affine
        map (differential refraction, field distortion). Default "similarity".
    max_control_points : int, optional
        Number of brightest stars of each list that astroalign matches. Default 50.
    match_radius : float, optional
        Stars that land within this distance (px) of a reference star under the current
        transform are paired for the least-squares refinement. Default 2.0.
    min_matches : int, optional
        Fewest paired stars accepted. Default 6.

    Returns
    -------
    matrix : numpy.ndarray
        ``(3, 3)`` float64, frame pixel ``(x, y)`` -> reference pixel ``(x, y)``.
    n_matches : int
        Number of star pairs in the final least-squares fit.
    rms_residual_px : float
        RMS distance (px) between the transformed stars and their reference partners.

    Raises
    ------
    RegistrationError
        If either list has fewer than 3 stars, astroalign finds no consistent asterisms, or
        fewer than ``min_matches`` pairs survive the refinement.
    ValueError
        If ``model`` is unknown.
    """
    if model not in _MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(_MODELS)}")
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
    # Re-pair under the improved transform a few times: the first one (from <= 50 stars) can
    # miss pairs at the field edges by a pixel or so.
    for _ in range(3):
        i_src, i_dst = _pairs(src, tree, matrix, match_radius)
        if len(i_src) < min_matches:
            raise RegistrationError(
                f"only {len(i_src)} stars match within {match_radius} px (need {min_matches})"
            )
        fitted = _MODELS[model].from_estimate(src[i_src], dst[i_dst])
        if not fitted:
            raise RegistrationError(f"least-squares {model} fit failed: {fitted}")
        matrix = fitted.params
    residual = np.hypot(*(_apply(matrix, src[i_src]) - dst[i_dst]).T)
    return matrix, int(len(i_src)), float(np.sqrt(np.mean(residual**2)))


def warp(image, matrix, output_shape, *, interpolation="lanczos4", margin=2):
    """Resample a frame onto the reference pixel grid.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` frame, linear ADU; NaN marks missing data.
    matrix : array_like
        ``(3, 3)`` (or ``(2, 3)``) transform, frame pixel -> reference pixel, as returned by
        :func:`find_transform`.
    output_shape : tuple of int
        ``(H_ref, W_ref)`` of the reference (a trailing channel count is ignored).
    interpolation : {"lanczos4", "cubic", "linear"}, optional
        OpenCV interpolation kernel. Default "lanczos4".
    margin : int, optional
        Output pixels whose source lies within this many pixels of the frame's edge or of a
        NaN are set to NaN, because the interpolation kernel reaches beyond the data there.
        Default 2.

    Returns
    -------
    numpy.ndarray
        float32, ``(H_ref, W_ref)`` or ``(H_ref, W_ref, 3)``, NaN where the frame has no data.

    Raises
    ------
    ValueError
        If ``image`` is not ``(H, W)`` or ``(H, W, 3)``, ``matrix`` is not 3x3 or 2x3, or the
        interpolation is unknown.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; expected one of {sorted(_INTERPOLATIONS)}"
        )
    data = np.asarray(image, dtype=np.float32)
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 3)):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {data.shape}")
    affine = np.asarray(matrix, dtype=np.float64)
    if affine.shape not in ((3, 3), (2, 3)):
        raise ValueError(f"matrix must be 3x3 or 2x3, got shape {affine.shape}")
    affine = affine[:2]
    height, width = int(output_shape[0]), int(output_shape[1])
    finite = np.isfinite(data) if data.ndim == 2 else np.isfinite(data).all(axis=2)
    # Missing pixels get the median so that the kernel's lobes do not ring against a hole; the
    # pixels they touch are masked below anyway.
    fill = np.float32(np.median(data[finite])) if finite.any() else np.float32(0.0)
    filled = np.where(finite[..., None] if data.ndim == 3 else finite, data, fill)
    out = cv2.warpAffine(
        np.ascontiguousarray(filled),
        affine,
        (width, height),
        flags=_INTERPOLATIONS[interpolation],
        borderMode=cv2.BORDER_REPLICATE,
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
    coverage = cv2.warpAffine(
        valid.astype(np.float32),
        affine,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
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
    weighting="noise",
    saturation=None,
):
    """Measure, select and register a set of lights.

    Each frame is read, its stars detected (:func:`astroflow.quality.detect_stars`) and only
    its star list kept, so that at most one full frame is in memory at a time. Frames are then
    rejected on quality, a reference is chosen, and every other usable frame is matched to it
    with :func:`find_transform`. A frame that fails is rejected with the reason and the run
    goes on.

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
    model : {"similarity", "affine"}, optional
        Geometric model (see :func:`find_transform`). Default "similarity".
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
    weighting : {"noise", "none"}, optional
        Stacking weight of used frames: ``1 / noise^2`` normalised to a mean of 1, or 1.
        Rejected frames get 0. Default "noise".
    saturation : float or None, optional
        Saturation level (ADU) passed to :func:`~astroflow.quality.detect_stars`. Default None.

    Returns
    -------
    pandas.DataFrame
        One row per frame, in input order, with columns ``frame``, ``status`` ("used" or
        "rejected"), ``reason`` ("" or why), ``reference`` (bool), ``fwhm`` (px),
        ``eccentricity``, ``n_stars``, ``background`` (ADU), ``noise`` (ADU), ``weight``,
        ``m00 m01 m02 m10 m11 m12`` (top two rows of the frame -> reference matrix; NaN for
        rejected frames), ``dx``, ``dy`` (px, displacement of the frame's centre in the
        reference), ``rotation_deg`` (counter-clockwise in x-right, y-down pixel axes),
        ``scale``, ``n_matches`` (star pairs; the star count for the reference) and
        ``rms_residual_px``.

    Raises
    ------
    ValueError
        If the frames differ in size (the message names the files and their sizes), names
        and inputs differ in number or repeat, a named reference does not exist or is rejected,
        or ``weighting`` is unknown.
    RegistrationError
        If no frame passes the quality tests.
    """
    if weighting not in ("noise", "none"):
        raise ValueError(f"unknown weighting {weighting!r}; expected 'noise' or 'none'")
    if model not in _MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(_MODELS)}")
    inputs = list(images_or_paths)
    names = _frame_names(inputs, names)
    placeholders, shapes = _survey(inputs, names)

    rows, star_lists = [], {}
    for item, name in zip(inputs, names):
        row = dict.fromkeys(TABLE_COLUMNS, np.nan)
        row.update(frame=name, status="used", reason="", reference=False, weight=0.0)
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
        star_lists[name] = clean[["x", "y"]].to_numpy(dtype=np.float64)
        rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    _reject_on_quality(table, min_stars, min_star_fraction, max_fwhm_ratio)

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
            matrix, n_matches, rms = np.eye(3), len(ref_stars), 0.0
        else:
            try:
                matrix, n_matches, rms = find_transform(
                    star_lists[table.at[idx, "frame"]], ref_stars, model=model
                )
            except RegistrationError as exc:
                table.loc[idx, ["status", "reason"]] = ["rejected", f"registration failed: {exc}"]
                continue
        shift = _apply(matrix, centre[None])[0] - centre
        table.loc[idx, ["m00", "m01", "m02"]] = matrix[0]
        table.loc[idx, ["m10", "m11", "m12"]] = matrix[1]
        table.loc[idx, ["dx", "dy"]] = shift
        table.at[idx, "rotation_deg"] = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
        table.at[idx, "scale"] = np.sqrt(abs(np.linalg.det(matrix[:2, :2])))
        table.at[idx, "n_matches"] = n_matches
        table.at[idx, "rms_residual_px"] = rms
        log.info(
            "matched %s: %d stars, shift (%.2f, %.2f) px, rms %.3f px",
            table.at[idx, "frame"], n_matches, shift[0], shift[1], rms,
        )
    _set_weights(table, weighting)
    return table


def transform_matrix(row):
    """The 3x3 frame -> reference matrix of one row of the :func:`register_frames` table.

    Parameters
    ----------
    row : mapping or pandas.Series
        Holds ``m00 m01 m02 m10 m11 m12``.

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` float64 (NaN entries for a rejected frame).
    """
    return np.array(
        [
            [row["m00"], row["m01"], row["m02"]],
            [row["m10"], row["m11"], row["m12"]],
            [0.0, 0.0, 1.0],
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
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _pairs(src, tree, matrix, radius):
    distance, nearest = tree.query(_apply(matrix, src), distance_upper_bound=radius)
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


def _survey(inputs, names):
    """Rejected placeholders (name -> reason) and image shapes (name -> shape), from headers."""
    placeholders, shapes = {}, {}
    for item, name in zip(inputs, names):
        if _is_path(item):
            header = fitsio.read_header(item)
            if fitsio.is_rejected(header):
                placeholders[name] = str(header.get(fitsio.REASON_KEY, "rejected upstream"))
                continue
            shape = fitsio.image_shape(header)
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
    return placeholders, shapes


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


def _set_weights(table, weighting):
    used = table["status"] == "used"
    table["weight"] = 0.0
    if weighting == "none":
        table.loc[used, "weight"] = 1.0
    else:
        inverse_variance = 1.0 / table.loc[used, "noise"] ** 2
        table.loc[used, "weight"] = inverse_variance / inverse_variance.mean()
