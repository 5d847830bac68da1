"""Cosmic-ray hits on single frames: L.A.Cosmic through astroscrappy, repaired or made no data."""

from __future__ import annotations

import astroscrappy
import numpy as np
from scipy import ndimage

from astroflow.calibration.debayer import validate_pattern
from astroflow.checks import check_float

__all__ = ["COSMIC_RAY_FILLS", "remove_cosmic_rays"]

COSMIC_RAY_FILLS = ("repair", "nan")


def remove_cosmic_rays(
    data,
    bayer_pattern=None,
    *,
    sigclip=4.5,
    objlim=5.0,
    gain=1.0,
    readnoise=6.5,
    fill="repair",
):
    """Find cosmic-ray hits on one frame with L.A.Cosmic and repair them or mark them no data.

    Detection is ``astroscrappy.detect_cosmics`` (C. McCully's implementation of P. G. van
    Dokkum, *PASP* 113, 1420, 2001: Laplacian edge detection against a noise model, with a
    fine-structure test that spares stars), on each channel of RGB data and on the whole of a
    CFA mosaic with its colour planes scaled to one median first (so that the Bayer pattern of
    the sky is no structure; each plane alone would sample stars too coarsely, and their
    cores would pass for hits). Hits are repaired from the mean of the unflagged pixels of
    their own colour in the 5x5 (mosaic: 9x9, every other pixel) box around them. Saturation
    is not tested (``satlevel`` infinite): calibrated data have no fixed saturation level.
    The median filters are full ones (``sepmed=False``): astroscrappy's faster separable median
    takes the cores of well-sampled stars (FWHM 3 px) for hits. About 8 s a megapixel on one
    loaded core.

    Parameters
    ----------
    data : numpy.ndarray
        ``(H, W)`` mono or CFA mosaic, or ``(H, W, 3)`` RGB, calibrated ADU with the sky still
        in (the noise model needs it). NaN pixels are masked from the detection. Not modified.
    bayer_pattern : str, optional
        Bayer pattern of a CFA mosaic; None for mono or RGB.
    sigclip : float, optional
        Laplacian-to-noise detection limit (astroscrappy's ``sigclip``). Default 4.5.
    objlim : float, optional
        Least contrast between the Laplacian and the fine-structure image; raise it if star
        cores are taken for cosmic rays. Default 5.0.
    gain : float, optional
        Electrons per ADU (> 0). Default 1.0.
    readnoise : float, optional
        Read noise, electrons (>= 0). Default 6.5.
    fill : {"repair", "nan"}, optional
        ``"repair"``: hits replaced by the masked 5x5 mean of their plane (astroscrappy's
        ``meanmask``); ``"nan"``: set to NaN, no data for the stacker (a NaN spreads to its
        neighbours through debayering and interpolation). Default "repair".

    Returns
    -------
    cleaned : numpy.ndarray
        float32, same shape as ``data``.
    n_hits : int
        Pixels flagged as cosmic rays.

    Raises
    ------
    ValueError
        For data that are not (H, W) or (H, W, 3), a Bayer pattern given with RGB data, an
        unknown ``fill`` or a setting out of range.
    """
    data = np.asarray(data, dtype=np.float32)
    if fill not in COSMIC_RAY_FILLS:
        raise ValueError(f"fill must be one of {COSMIC_RAY_FILLS}, got {fill!r}")
    settings = {
        "sigclip": check_float("sigclip", sigclip, 0.0, strict=True),
        "objlim": check_float("objlim", objlim, 0.0, strict=True),
        "gain": check_float("gain", gain, 0.0, strict=True),
        "readnoise": check_float("readnoise", readnoise, 0.0),
    }
    if data.ndim == 3 and data.shape[2] == 3:
        if bayer_pattern is not None:
            raise ValueError(f"RGB image of shape {data.shape} cannot have a Bayer pattern")
        channels = [
            remove_cosmic_rays(data[:, :, c], None, fill=fill, **settings) for c in range(3)
        ]
        return np.stack([c[0] for c in channels], axis=2), sum(c[1] for c in channels)
    if data.ndim != 2:
        raise ValueError(f"remove_cosmic_rays needs (H, W) or (H, W, 3) data, got shape {data.shape}")
    stride = 2 if bayer_pattern is not None and validate_pattern(bayer_pattern) else 1
    planes = [np.s_[dy::stride, dx::stride] for dy in range(stride) for dx in range(stride)]
    missing = ~np.isfinite(data)
    levelled = np.where(missing, np.float32(0), data)
    medians = [np.median(data[plane][~missing[plane]]) if (~missing[plane]).any() else 0.0 for plane in planes]
    if all(m > 0 for m in medians):
        for plane, median in zip(planes, medians):
            levelled[plane] *= np.float32(medians[0] / median)
    mask, _ = astroscrappy.detect_cosmics(
        levelled, inmask=missing, satlevel=np.inf, sepmed=False, cleantype="meanmask", **settings
    )
    mask &= ~missing
    cleaned = data.copy()
    if fill == "nan":
        cleaned[mask] = np.nan
        return cleaned, int(mask.sum())
    for plane in planes:
        hit = mask[plane]
        if not hit.any():
            continue
        good = ~(hit | missing[plane])
        values = np.where(good, data[plane], np.float32(0))
        total = ndimage.uniform_filter(values, size=5, mode="mirror")
        count = ndimage.uniform_filter(good.astype(np.float32), size=5, mode="mirror")
        with np.errstate(invalid="ignore", divide="ignore"):
            repaired = total / count
        # A hit with no unflagged neighbour of its colour in the box is left as no data.
        cleaned[plane] = np.where(hit, np.where(count > 0, repaired, np.nan), data[plane])
    return cleaned, int(mask.sum())
