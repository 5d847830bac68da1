"""Flat-field optics shared by the simulators: vignetting and the shadows of dust motes.

One implementation serves the simulated night (:mod:`astroflow.simulation.night`), the
multi-session project (:mod:`astroflow.simulation.project`) and the flat-field artifacts of the
flat network's training data (:mod:`astroflow.simulation.flatfield`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["apply_dust", "draw_dust", "dust_shadow", "sigmoid_disc", "vignetting"]

#: Out-of-focus dust of the night simulator: the middle (55 % of the radius) of the ring is
#: lighter by 65 % of its depth; the edge is soft over 12 % of the radius.
DONUT_HOLE = 0.55
DONUT_LIFT = 0.65
DONUT_SOFTNESS = 0.12


def vignetting(r2, corner2, corner_loss):
    """The cos^4-like vignetting law ``(1 + r^2 / r_v^2)^-2``.

    ``r_v`` is chosen so that the farthest corner loses ``corner_loss`` of the light.

    Parameters
    ----------
    r2 : numpy.ndarray or float
        Squared distance from the optical axis, any unit (px^2 or a normalised one).
    corner2 : float
        Squared distance of the farthest corner from the axis, same unit as ``r2``.
    corner_loss : float
        Fractional light loss at that corner, in [0, 1).

    Returns
    -------
    numpy.ndarray or float
        Relative illumination, same shape as ``r2``, float64: 1 on the axis.

    Notes
    -----
    The natural vignetting of a lens falls as cos^4 of the field angle; ``(1 + r^2/r_v^2)^-2``
    is that law for a flat sensor at distance ``r_v`` from the exit pupil.
    """
    rv2 = corner2 / ((1.0 - corner_loss) ** -0.5 - 1.0) if corner_loss > 0 else np.inf
    return (1.0 + r2 / rv2) ** -2


def sigmoid_disc(r, radius, soft):
    """A disc of ``radius`` with a logistic edge of width ``soft``: 1 inside, 0 outside.

    Parameters
    ----------
    r : numpy.ndarray
        Distance from the centre, px.
    radius, soft : float
        Radius and edge softness, px (``soft`` > 0).

    Returns
    -------
    numpy.ndarray
        Same shape as ``r``, float64, in (0, 1).
    """
    return 1.0 / (1.0 + np.exp(np.clip((r - radius) / soft, -50.0, 50.0)))


def dust_shadow(r, radius, soft, hole=DONUT_HOLE, lift=DONUT_LIFT):
    """Shadow profile of a dust mote: a dark ring with a lighter middle (out of focus).

    A speck on a filter or window in a converging beam casts the image of the annular pupil
    of a reflector or the disc of a refractor; the profile is ``disc(radius) - lift *
    disc(hole * radius)`` with logistic edges (:func:`sigmoid_disc`).

    Parameters
    ----------
    r : numpy.ndarray
        Distance from the mote's centre, px.
    radius, soft : float
        Outer radius and edge softness, px.
    hole : float, optional
        Radius of the lighter middle as a fraction of ``radius``.
    lift : float, optional
        How much lighter the middle is, as a fraction of the depth (0: a plain disc).

    Returns
    -------
    numpy.ndarray
        Same shape as ``r``, float64: about 1 in the ring, ``1 - lift`` in the middle, 0 far
        away. The flat is multiplied by ``1 - depth * shadow``.
    """
    return sigmoid_disc(r, radius, soft) - lift * sigmoid_disc(r, hole * radius, soft)


def draw_dust(rng, shape, n_dust):
    """Draw the dust motes of the night simulator.

    Centres uniform over the middle 80 % of the frame, radius ``U(0.015, 0.04)`` of the
    shorter side plus 3 px, depth ``U(0.04, 0.12)``.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
        ``(H, W)`` of the frame, px.
    n_dust : int
        Number of motes (>= 0).

    Returns
    -------
    pandas.DataFrame
        ``x``, ``y`` (px, 0-based), ``radius_px``, ``depth`` (fractional loss in the ring).
    """
    height, width = shape
    size = min(width, height)
    return pd.DataFrame(
        {
            "x": rng.uniform(0.1, 0.9, n_dust) * width,
            "y": rng.uniform(0.1, 0.9, n_dust) * height,
            "radius_px": rng.uniform(0.015, 0.04, n_dust) * size + 3,
            "depth": rng.uniform(0.04, 0.12, n_dust),
        }
    )


def apply_dust(flat, motes, xx=None, yy=None):
    """Multiply the shadows of dust motes into a flat, in place.

    Each mote multiplies the flat by ``1 - depth * dust_shadow(r, radius, 0.12 radius)``
    over the whole frame.

    Parameters
    ----------
    flat : numpy.ndarray
        ``(H, W)`` float64 flat, changed in place.
    motes : pandas.DataFrame
        ``x``, ``y``, ``radius_px``, ``depth`` (as from :func:`draw_dust`).
    xx, yy : numpy.ndarray, optional
        ``(H, W)`` float64 pixel coordinates (``numpy.mgrid``), to save computing them again.

    Returns
    -------
    numpy.ndarray
        ``flat``.
    """
    if xx is None or yy is None:
        yy, xx = np.mgrid[0 : flat.shape[0], 0 : flat.shape[1]].astype(np.float64)
    for mote in motes.itertuples():
        r = np.hypot(xx - mote.x, yy - mote.y)
        flat *= 1.0 - mote.depth * dust_shadow(r, mote.radius_px, DONUT_SOFTNESS * mote.radius_px)
    return flat
