"""Argument checks shared by the library's public functions: one wording for every bad value.

Each check names the argument, says what it must be and shows the value it got, so that a
setting that reached a function from ``config.yaml`` is easy to find.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_float", "check_image", "check_int", "check_region"]


def check_int(name, value, low):
    """Return ``value`` as an ``int`` if it is an integer (not a bool) of at least ``low``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value to check: a Python or NumPy integer.
    low : int
        The smallest value allowed.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``value`` is a bool, not an integer, or below ``low``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_float(name, value, low, *, strict=False, high=None, high_open=False):
    """Return ``value`` as a finite ``float`` within ``[low, high]`` (ends open as asked).

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value to check: a scalar that ``float()`` takes (a Python or NumPy number, a 0-d
        array, a numeric string), not a bool.
    low : float or None
        The lower bound; None: none.
    strict : bool, optional
        True: ``value > low``; False (default): ``value >= low``.
    high : float or None, optional
        The upper bound; None (default): none.
    high_open : bool, optional
        True: ``value < high``; False (default): ``value <= high``.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``value`` is a bool, not a scalar number, not finite, or out of bounds.
    """
    if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(number)
    if low is not None:
        ok = ok and (number > low if strict else number >= low)
    if high is not None:
        ok = ok and (number < high if high_open else number <= high)
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"> {low}" if strict else f">= {low}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high}")
        raise ValueError(f"{name} must be {' and '.join(bounds) or 'a finite number'}, got {value!r}")
    return number


def check_region(name, region, height, width):
    """Return a rectangle ``(y0, y1, x0, x1)`` of a ``height x width`` grid as four ints.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    region : sequence of int or None
        ``(y0, y1, x0, x1)``: rows ``y0:y1`` and columns ``x0:x1``, with
        ``0 <= y0 < y1 <= height`` and ``0 <= x0 < x1 <= width``; None is the whole grid.
    height, width : int
        The grid's size (px).

    Returns
    -------
    tuple of int
        ``(y0, y1, x0, x1)``.

    Raises
    ------
    ValueError
        If ``region`` is not four integers, is empty or leaves the grid.
    """
    if region is None:
        return 0, int(height), 0, int(width)
    try:
        y0, y1, x0, x1 = (int(v) for v in region)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (y0, y1, x0, x1), got {region!r}") from None
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"{name} {region!r} is empty or outside the {height} x {width} px grid")
    return y0, y1, x0, x1


def check_image(name, value, *, channels=False, min_side=1, non_negative=False, remedy=None):
    """Return ``value`` as an array of finite real pixels: ``(H, W)``, or ``(H, W, C)``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : array_like
        The image, any real dtype (its dtype is kept).
    channels : bool, optional
        Also accept ``(H, W, C)`` (channels last). Default False: ``(H, W)`` only.
    min_side : int, optional
        The smallest ``H`` and ``W`` allowed (px). Default 1.
    non_negative : bool, optional
        Also refuse negative pixels (an image of expected photo-electrons). Default False.
    remedy : str, optional
        What the caller should do about NaN or infinite pixels, added to that message.

    Returns
    -------
    numpy.ndarray
        ``numpy.asarray(value)``.

    Raises
    ------
    ValueError
        If ``value`` has another number of dimensions, is not real numbers, is empty or smaller
        than ``min_side``, holds NaN or infinity, or (with ``non_negative``) a negative pixel.
    """
    array = np.asarray(value)
    if array.ndim not in ((2, 3) if channels else (2,)):
        shapes = "(H, W) or (H, W, C)" if channels else "(H, W)"
        raise ValueError(f"{name} must be {shapes}, got an array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if min(array.shape[:2]) < min_side:
        raise ValueError(
            f"{name} must be at least {min_side}x{min_side} px, got shape {array.shape}"
        )
    n_bad = int(np.count_nonzero(~np.isfinite(array)))
    if n_bad:
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite value(s)" + (f"; {remedy}" if remedy else "")
        )
    if non_negative and array.min() < 0:
        raise ValueError(f"{name} must be non-negative, its minimum is {array.min():g}")
    return array
