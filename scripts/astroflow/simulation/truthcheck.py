"""Measures of a result against the truth of a simulated project: dust left, star colours.

Used by the end-to-end tests of multi-session, multi-filter targets on
:func:`astroflow.simulation.project.simulate_project`: whether each night's flats removed that
night's dust from the stack, and whether the filter stacks and their colour combination keep
the stars' true flux ratios.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sep
from scipy import ndimage

from astroflow.simulation.project import invert_affine, sample_affine

__all__ = ["dust_residual", "frame_transform", "star_colour_errors", "to_frame_grid"]


def frame_transform(frames, frame):
    """The affine transform of one light from the truth's reference grid to its own grid.

    Parameters
    ----------
    frames : pandas.DataFrame
        ``truth/frames.csv`` of a simulated project (``frame``, ``m00`` ... ``m12``).
    frame : str
        A light's name, e.g. the reference frame a registration chose.

    Returns
    -------
    numpy.ndarray
        ``(2, 3)`` float64: reference ``(x, y, 1)`` -> frame ``(x, y)``, px.

    Raises
    ------
    KeyError
        If the frame is not in the table.
    """
    row = frames.loc[frames["frame"] == frame]
    if row.empty:
        raise KeyError(f"frame {frame!r} is not among the {len(frames)} lights of frames.csv")
    row = row.iloc[0]
    return np.array([[row[f"m{r}{c}"] for c in range(3)] for r in range(2)], dtype=np.float64)


def to_frame_grid(image, matrix, stars=None):
    """Carry a truth image (and star table) from the reference grid onto another frame's grid.

    For a stack registered onto a light other than the truth's reference: the value at frame
    pixel ``p`` is the truth at ``matrix^-1 p`` (bilinear, :func:`scipy.ndimage.affine_transform`,
    edges repeated).

    Parameters
    ----------
    image : numpy.ndarray or None
        ``(H, W)`` truth on the reference grid (``scene_{filter}``, ``dust_{night}_reference``).
    matrix : numpy.ndarray
        ``(2, 3)`` reference -> frame transform (:func:`frame_transform`).
    stars : pandas.DataFrame, optional
        Table with ``x``, ``y`` on the reference grid; returned with them on the frame grid.

    Returns
    -------
    numpy.ndarray or tuple
        The image on the frame grid, float64; with ``stars``, ``(image, stars)``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    inverse = invert_affine(matrix)
    out = None if image is None else sample_affine(image, inverse)
    if stars is None:
        return out
    x, y = stars["x"].to_numpy(float), stars["y"].to_numpy(float)
    moved = stars.assign(
        x=matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2], y=matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    )
    return out, moved


def _fit_scale(stack, truth, keep):
    design = np.stack([truth[keep], np.ones(int(keep.sum()))], axis=1)
    (scale, offset), *_ = np.linalg.lstsq(design, stack[keep], rcond=None)
    return float(scale), float(offset)


def dust_residual(stack, truth, dust_map, *, threshold=0.01, scale=None, offset=None, min_annulus_px=20):
    """How much of a dust map's shadows is left in a stack, mote by mote.

    The stack is modelled as ``scale * truth + offset`` plus a smooth sky; what is left,
    ``stack - scale * truth - offset``, is compared inside each mote (the pixels where the dust
    dims the light by more than ``threshold``) with a ring around it::

        residual  = (median(left[mote]) - median(left[ring])) / median(stack[ring])
        deficit   = median(1 - dust_map[mote])
        dust_left = -residual / deficit

    ``dust_left`` is about 1 where the dust went into the stack uncorrected, 0 where the flat
    removed it, and about the share of the stack's frames that night gave where only its frames
    kept the dust (a night calibrated with another night's flats). Subtracting the truth first
    keeps the stars and the nebula out of the comparison.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(H, W)`` float image (a stack, or one calibrated frame) with its sky background, on the
        grid of ``truth`` and ``dust_map``; non-finite pixels are ignored.
    truth : numpy.ndarray
        ``(H, W)`` noise-free scene on that grid (``truth/scene_{filter}.fits``, or a light's
        ``truth/sky_{frame}.fits``).
    dust_map : numpy.ndarray
        ``(H, W)`` dust transmission, 1 where clean (``truth/dust_{session}_reference.fits`` for a
        stack, ``truth/dust_{session}.fits`` for a frame on the sensor grid).
    threshold : float, optional
        Fractional dimming that makes a pixel part of a mote.
    scale, offset : float, optional
        Stack units per truth unit and the stack's constant level; ``None`` fits
        ``stack = scale * truth + offset`` by least squares over the pixels outside the motes.
    min_annulus_px : int, optional
        Fewest usable ring pixels for a mote to be measured (else its residual is NaN).

    Returns
    -------
    pandas.DataFrame
        One row per mote (connected region of ``1 - dust_map > threshold``): ``x``, ``y``
        (centroid, px), ``n_px``, ``deficit`` (> 0, the fraction of light the dust takes),
        ``residual`` (signed fraction; negative where dust is left), ``dust_left``.

    Raises
    ------
    ValueError
        If the three images differ in shape or are not 2-D.

    Notes
    -----
    Regions by :func:`scipy.ndimage.label`; the ring is the mote grown by its equivalent
    radius (at least 3 px) less the mote grown by 2 px, clear of all dust.
    """
    stack = np.asarray(stack, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    dust_map = np.asarray(dust_map, dtype=np.float64)
    if stack.ndim != 2 or stack.shape != truth.shape or stack.shape != dust_map.shape:
        raise ValueError(
            f"dust_residual: stack {stack.shape}, truth {truth.shape} and dust map {dust_map.shape} "
            "must be 2-D images of one shape"
        )
    finite = np.isfinite(stack) & np.isfinite(truth)
    dusty = (1.0 - dust_map) > threshold
    clean = finite & ((1.0 - dust_map) < threshold / 4)
    if scale is None or offset is None:
        fitted = _fit_scale(stack, truth, clean)
        scale = fitted[0] if scale is None else scale
        offset = fitted[1] if offset is None else offset
    left = stack - scale * truth - offset
    labels, n = ndimage.label(dusty)
    rows = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        mote = labels == index
        radius = max(3, int(round(np.sqrt(mote.sum() / np.pi))))
        pad = radius + 3
        window = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in region)
        local = mote[window]
        ring = ndimage.binary_dilation(local, iterations=radius) & ~ndimage.binary_dilation(local, iterations=2)
        ring &= clean[window]
        inside = local & finite[window]
        yy, xx = np.nonzero(mote)
        deficit = float(np.median(1.0 - dust_map[mote]))
        residual = np.nan
        if ring.sum() >= min_annulus_px and inside.any():
            level = np.median(stack[window][ring])
            if level > 0:
                residual = float((np.median(left[window][inside]) - np.median(left[window][ring])) / level)
        rows.append(
            {
                "x": float(xx.mean()),
                "y": float(yy.mean()),
                "n_px": int(mote.sum()),
                "deficit": deficit,
                "residual": residual,
                "dust_left": -residual / deficit,
            }
        )
    return pd.DataFrame(rows, columns=["x", "y", "n_px", "deficit", "residual", "dust_left"])


def star_colour_errors(
    images, stars, *, reference, radius_px=6.0, annulus_px=(9.0, 14.0), isolation=0.01, normalise=False
):
    """Flux ratios of stars between filters (or colour channels), against the truth.

    Aperture photometry with a local background (SEP's ``sum_circle`` with a background
    annulus, Barbary 2016, JOSS 1, 58) of every star of ``stars`` that lies with its annulus
    inside all images and has no neighbour brighter than ``isolation`` times its own flux
    within ``radius_px + annulus_px[1]``.

    Parameters
    ----------
    images : dict of str to numpy.ndarray
        Filter (or channel) name -> ``(H, W)`` image on the grid of the star positions (filter
        stacks, or the planes of a combined colour image under the names of the filters they
        show); non-finite pixels are masked.
    stars : pandas.DataFrame
        ``x``, ``y`` (px, 0-based, on the images' grid) and ``flux_{name}`` for every image
        name (``truth/stars.csv``); an ``id`` column is carried over when present.
    reference : str
        Name the ratios are taken against (a key of ``images``).
    radius_px : float, optional
        Aperture radius, px (about 2-3 FWHM).
    annulus_px : tuple of float, optional
        Inner and outer radius of the background annulus, px.
    isolation : float, optional
        Neighbours above this fraction of a star's reference flux disqualify it.
    normalise : bool, optional
        Divide each name's errors by their median ratio first, so that a global white balance
        or stack normalisation does not count, only the star-to-star colour.

    Returns
    -------
    pandas.DataFrame
        One row per measured star: ``id`` (if given), ``x``, ``y``, ``flux_{reference}``
        (true), then per other name ``ratio_{name}`` (measured flux / measured reference flux),
        ``true_ratio_{name}`` and ``error_{name}`` (``ratio / true_ratio - 1``).

    Raises
    ------
    ValueError
        If ``reference`` is not among the images, the images differ in shape, or a flux
        column is missing.
    """
    if reference not in images:
        raise ValueError(f"star_colour_errors: reference {reference!r} is not one of {sorted(images)}")
    shapes = {np.shape(image) for image in images.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"star_colour_errors: the images must be 2-D of one shape, got {sorted(shapes)}")
    missing = [f"flux_{name}" for name in images if f"flux_{name}" not in stars]
    if missing:
        raise ValueError(f"star_colour_errors: the star table lacks {missing}")
    height, width = next(iter(shapes))
    x, y = stars["x"].to_numpy(float), stars["y"].to_numpy(float)
    flux = stars[f"flux_{reference}"].to_numpy(float)
    edge = annulus_px[1] + 1
    inside = (x > edge) & (x < width - 1 - edge) & (y > edge) & (y < height - 1 - edge) & (flux > 0)
    reach = radius_px + annulus_px[1]
    distance = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    crowded = ((distance < reach) & (flux[None, :] > isolation * flux[:, None])).sum(axis=1) > 1
    keep = np.flatnonzero(inside & ~crowded)
    measured = {}
    for name, image in images.items():
        data = np.ascontiguousarray(image, dtype=np.float64)
        mask = ~np.isfinite(data)
        data = np.where(mask, 0.0, data)
        total, _, _ = sep.sum_circle(data, x[keep], y[keep], radius_px, mask=mask, bkgann=annulus_px)
        measured[name] = total
    out = pd.DataFrame({"x": x[keep], "y": y[keep], f"flux_{reference}": flux[keep]})
    if "id" in stars:
        out.insert(0, "id", stars["id"].to_numpy()[keep])
    for name in images:
        if name == reference:
            continue
        ratio = measured[name] / measured[reference]
        true = stars[f"flux_{name}"].to_numpy(float)[keep] / flux[keep]
        error = ratio / true
        if normalise and len(error):
            error = error / np.nanmedian(error)
        out[f"ratio_{name}"] = ratio
        out[f"true_ratio_{name}"] = true
        out[f"error_{name}"] = error - 1.0
    return out
