"""The cross-fade that joins overlapping pieces of an image without seams.

Tiles, patches and windows that are processed on their own are put back together by
weighting each with ramps over its overlaps and dividing by the sum of the weights. One ramp
serves all of them, the ``sin**2`` edge of :func:`blend_ramp`: a ramp and its mirror image add
up to exactly 1 at every pixel, so where two neighbours overlap by the ramp's length the
weights need no normalising at all, and a piece's result fades out smoothly (with zero slope)
towards its edge. The raised-cosine (Hann) window is the special case without a rim.

Only numpy: the rules whose conda envs have no torch use it too.
"""

from __future__ import annotations

import numpy as np

from astroflow.checks import check_int

__all__ = ["blend_ramp"]


def blend_ramp(n, rim=None):
    """Rising ``sin**2`` edge of a blending weight over ``n`` pixels.

    The one cross-fade of the pipeline: network tiles
    (:func:`astroflow.nets.tiling.blend_weights`), isoplanatic patches and the FFT apodisation
    of multi-frame deconvolution (:mod:`astroflow.restoration.mfbd`), and the alignment point
    windows of lucky imaging (:func:`astroflow.planetary.lucky.hann_weights`). A ramp and its
    mirror image add up to exactly 1 at every pixel (``sin**2 + cos**2 = 1``), so two
    neighbours blended over their overlap, each with its ramp, leave no seam.

    Parameters
    ----------
    n : int
        Length of the ramp (pixels, >= 0).
    rim : int, optional
        Pixels of weight 0 at the start and of weight 1 at the end (``2 * rim < n``, or 0 for
        ``n = 0``); default ``n // 4``, where a tile's content is least
        trustworthy (a network's receptive field or a solver's support is cut off there).

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``: 0 on the first ``rim`` pixels, 1 on the last ``rim``,
        ``sin**2(pi / 2 * t)`` in between, ``t`` running from 0 to 1 over the middle
        ``n - 2 * rim`` pixels (sampled at pixel centres); ``r[i] + r[n - 1 - i] == 1``.

    Raises
    ------
    ValueError
        If ``n`` or ``rim`` is not an integer in range.
    """
    n = check_int("n", n, 0)
    rim = n // 4 if rim is None else check_int("rim", rim, 0)
    if n and 2 * rim >= n:
        raise ValueError(f"rim must be < n / 2 = {n / 2:g}, got {rim}")
    t = (np.arange(n) + 0.5 - rim) / (n - 2 * rim)
    return np.sin(0.5 * np.pi * np.clip(t, 0.0, 1.0)) ** 2
