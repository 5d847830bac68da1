"""Argument checks shared by the library's public functions: one wording for every bad value.

Each check names the argument, says what it must be and shows the value it got, so that a
setting that reached a function from ``config.yaml`` is easy to find.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_float", "check_int"]


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
        The value to check: anything ``float()`` takes, except a bool.
    low : float
        The lower bound.
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
        If ``value`` is a bool, not a number, not finite, or out of bounds.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(number) and (number > low if strict else number >= low)
    if high is not None:
        ok = ok and (number < high if high_open else number <= high)
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        if high is not None:
            bound += f" and {'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return number
