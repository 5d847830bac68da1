"""The frame-scale grid of the flat-correction network: a whole frame <-> a small square grid.

Flat fields (vignetting, dust shadows tens of pixels wide) and sky gradients are smooth at the
scale of a whole frame, so the network of :mod:`astroflow.calibration.flatnet` sees a frame
shrunk to ``size x size`` pixels (128 by default) and returns fields on that grid, which are
then interpolated back to the frame.  Shrinking is robust to stars: the frame is first
area-averaged (:func:`cv2.resize` with ``INTER_AREA``) to ``4 size x 4 size`` and each 4 x 4
block of that is replaced by its median, so a star that covers a few of the 16 sub-blocks does
not lift the grid pixel.  The synthetic training data (:mod:`astroflow.simulation.flatfield`)
and the inference use these same two functions, so the network sees at run time exactly the
kind of grid it was trained on.

Kept free of torch so that the data-shard jobs need no torch.
"""

from __future__ import annotations

import cv2
import numpy as np

from astroflow.checks import check_int

__all__ = ["BLOCK", "from_grid", "to_grid"]

#: Side of the sub-block median of :func:`to_grid` (sub-blocks per grid pixel along an axis).
BLOCK = 4


def to_grid(plane, size):
    """Shrink one image plane to a ``size x size`` grid, robustly to stars.

    Parameters
    ----------
    plane : numpy.ndarray
        ``(H, W)`` float image (any units), ``H, W >= size``; NaNs are not allowed.
    size : int
        Side of the grid, px (>= 8).

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float32: the median of the ``4 x 4`` area averages of each grid cell
        (the aspect ratio is not kept: a grid pixel covers ``H / size x W / size`` pixels).

    Raises
    ------
    ValueError
        ``plane`` not 2-D, smaller than the grid, or not finite.
    """
    size = check_int("size", size, 8)
    plane = np.asarray(plane, dtype=np.float32)
    if plane.ndim != 2:
        raise ValueError(f"to_grid takes one (H, W) plane, got shape {plane.shape}")
    if min(plane.shape) < size:
        raise ValueError(f"a {plane.shape[0]}x{plane.shape[1]} image is smaller than the {size} px grid")
    if not np.isfinite(plane).all():
        raise ValueError("the image holds NaN or infinite pixels")
    fine = BLOCK * size
    if plane.shape != (fine, fine):
        interpolation = cv2.INTER_AREA if min(plane.shape) >= fine else cv2.INTER_LINEAR
        plane = cv2.resize(plane, (fine, fine), interpolation=interpolation)
    blocks = plane.reshape(size, BLOCK, size, BLOCK).transpose(0, 2, 1, 3).reshape(size, size, -1)
    return np.median(blocks, axis=-1).astype(np.float32)


def from_grid(field, shape):
    """Interpolate a grid field back to a frame of ``shape``.

    Parameters
    ----------
    field : numpy.ndarray
        ``(n, n)`` float field on the grid of :func:`to_grid`.
    shape : tuple of int
        ``(H, W)`` of the frame.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32, bicubic interpolation (:func:`cv2.resize` ``INTER_CUBIC``, grid pixel
        centres on the centres of the cells they stand for): smooth on the scale of a grid cell,
        so it cannot follow a star or any other detail smaller than ``H / n`` pixels.
    """
    field = np.asarray(field, dtype=np.float32)
    height, width = int(shape[0]), int(shape[1])
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
