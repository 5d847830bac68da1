"""MTF (midtones transfer function) stretch, the autostretch of PixInsight's STF and Siril, and
its exact inverse.

The midtones transfer function with midtones balance ``m`` maps ``[0, 1]`` onto itself,

    MTF(m, x) = (m - 1) x / ((2 m - 1) x - m),

with ``MTF(m, 0) = 0``, ``MTF(m, m) = 0.5`` and ``MTF(m, 1) = 1``; its inverse is ``MTF(1 - m, y)``.
The automatic parameters follow PixInsight's ScreenTransferFunction "auto stretch" (also used by
Siril): shadows clipped ``2.8`` normalised MADs below the median, and the midtones balance chosen
so that the median lands on a target background of ``0.25``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826


def mtf(m, x):
    """Midtones transfer function.

    Parameters
    ----------
    m : float or numpy.ndarray
        Midtones balance in ``(0, 1)``.
    x : float or numpy.ndarray
        Values in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray or float
        ``MTF(m, x)``, same shape as ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    denom = (2.0 * m - 1.0) * x - m
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(denom != 0, (m - 1.0) * x / np.where(denom != 0, denom, 1.0), 0.0)
    return y


@dataclass(frozen=True)
class MTFStretch:
    """Parameters of a (per-channel) MTF stretch of linear data.

    Attributes
    ----------
    low, high : numpy.ndarray
        Linear data values (ADU) mapped to 0 and 1 before the stretch, one per channel.
    shadows : numpy.ndarray
        Shadows clipping point in the normalised ``[0, 1]`` domain, one per channel.
    midtones : numpy.ndarray
        Midtones balance, one per channel.
    """

    low: np.ndarray
    high: np.ndarray
    shadows: np.ndarray
    midtones: np.ndarray

    def apply(self, image):
        """Stretch linear data to ``[0, 1]``.

        Parameters
        ----------
        image : numpy.ndarray
            ``(H, W)`` or ``(H, W, C)`` linear data (ADU); NaN maps to 0.

        Returns
        -------
        numpy.ndarray
            float32, same shape, values in ``[0, 1]``.
        """
        x = (np.nan_to_num(image, nan=0.0) - self.low) / (self.high - self.low)
        x = np.clip((x - self.shadows) / (1.0 - self.shadows), 0.0, 1.0)
        return mtf(self.midtones, x).astype(np.float32)

    def invert(self, stretched):
        """Exact inverse of :meth:`apply` for values that were not clipped.

        Parameters
        ----------
        stretched : numpy.ndarray
            ``(H, W)`` or ``(H, W, C)`` values in ``[0, 1]``.

        Returns
        -------
        numpy.ndarray
            float32 linear data (ADU), same shape.
        """
        x = mtf(1.0 - self.midtones, np.asarray(stretched, dtype=np.float64))
        x = x * (1.0 - self.shadows) + self.shadows
        return (x * (self.high - self.low) + self.low).astype(np.float32)


def auto_stretch(image, *, target_background=0.25, shadows_clip=-2.8, linked=False):
    """Compute the STF-style automatic MTF stretch of linear data.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` linear data (ADU); NaN values are ignored.
    target_background : float, optional
        Where the median lands after the stretch, in ``(0, 1)``.
    shadows_clip : float, optional
        Shadows clipping point in normalised MADs from the median (negative: below it).
    linked : bool, optional
        Use one set of parameters for all channels (keeps colour balance) instead of one per
        channel (neutralises the background colour, as STF's unlinked mode).

    Returns
    -------
    MTFStretch
        Parameters, broadcastable against ``image``.

    Raises
    ------
    ValueError
        If ``image`` holds no finite value or ``target_background`` is outside ``(0, 1)``.

    Notes
    -----
    Source: PixInsight ScreenTransferFunction AutoStretch (J. Conejero), as reproduced in Siril's
    ``autostretch``.
    """
    if not 0.0 < target_background < 1.0:
        raise ValueError(f"target_background must be in (0, 1), got {target_background}")
    data = np.asarray(image, dtype=np.float32)
    channels = data.reshape(-1, data.shape[2]) if data.ndim == 3 else data.reshape(-1, 1)
    finite = np.isfinite(channels).all(axis=1)
    if not finite.any():
        raise ValueError("cannot stretch an image without finite values")
    sample = channels[finite]
    if sample.shape[0] > 2_000_000:
        sample = sample[:: sample.shape[0] // 2_000_000]
    low = np.min(sample, axis=0).astype(np.float64)
    high = np.max(sample, axis=0).astype(np.float64)
    if linked:
        low[:] = low.min()
        high[:] = high.max()
    high = np.where(high > low, high, low + 1.0)
    norm = (sample - low) / (high - low)
    median = np.median(norm, axis=0)
    madn = MAD_TO_SIGMA * np.median(np.abs(norm - median), axis=0)
    if linked:
        median = np.full_like(median, median.mean())
        madn = np.full_like(madn, madn.mean())
    shadows = np.clip(median + shadows_clip * madn, 0.0, 0.999)
    rel_median = np.clip((median - shadows) / (1.0 - shadows), 1e-6, 1.0)
    midtones = mtf(target_background, rel_median)
    shape = (1, 1, -1) if data.ndim == 3 else ()
    return MTFStretch(
        low=low.reshape(shape) if shape else low[0],
        high=high.reshape(shape) if shape else high[0],
        shadows=shadows.reshape(shape) if shape else shadows[0],
        midtones=midtones.reshape(shape) if shape else midtones[0],
    )
