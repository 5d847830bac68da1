"""Images for people and other programs: 16-bit linear TIFF and 8-bit stretched PNG."""

from __future__ import annotations


import imageio.v3 as iio
import numpy as np
import tifffile

from astroflow.io.atomic import atomic_write
from astroflow.stretch import auto_stretch


def to_uint16_linear(image):
    """Scale linear data to the full 16-bit range without changing its shape.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` linear data (ADU); NaN becomes 0.

    Returns
    -------
    data : numpy.ndarray
        uint16, same shape: ``round(clip(image, 0) * scale)``.
    scale : float
        The factor applied (ADU -> 16-bit units), recorded so the ADU values can be recovered.
    """
    data = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    peak = float(data.max()) if data.size else 0.0
    scale = 65535.0 / peak if peak > 0 else 1.0
    return np.round(np.clip(data, 0.0, None) * scale).astype(np.uint16), scale


def save_tiff16(path, image, *, description=""):
    """Write linear data as a 16-bit TIFF (grey or RGB), scaled to the full range.

    Parameters
    ----------
    path : str or os.PathLike
        Output path.
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` float linear data (ADU).
    description : str, optional
        Stored in the TIFF ImageDescription, followed by the scale factor used.

    Returns
    -------
    float
        The ADU -> 16-bit scale factor.
    """
    data, scale = to_uint16_linear(image)
    text = f"{description} linear; ADU = value / {scale:.9g}".strip()
    photometric = "rgb" if data.ndim == 3 else "minisblack"
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, photometric=photometric, description=text))
    return scale


def save_preview_png(path, image, *, target_background=0.25, shadows_clip=-2.8, linked=False):
    """Write an MTF-autostretched 8-bit PNG preview of linear data.

    Parameters
    ----------
    path : str or os.PathLike
        Output path.
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` linear data (ADU).
    target_background, shadows_clip, linked
        See :func:`astroflow.stretch.auto_stretch`.

    Returns
    -------
    astroflow.stretch.MTFStretch
        The stretch that was applied.
    """
    stretch = auto_stretch(
        image, target_background=target_background, shadows_clip=shadows_clip, linked=linked
    )
    preview = np.round(stretch.apply(image) * 255.0).astype(np.uint8)
    atomic_write(path, lambda tmp: iio.imwrite(tmp, preview, extension=".png"))
    return stretch


def save_map_png(path, values):
    """Write a non-negative map (counts, weights) as an 8-bit PNG, linearly from 0 to its maximum.

    Parameters
    ----------
    path : str or os.PathLike
        Output path.
    values : numpy.ndarray
        ``(H, W)`` map; NaN becomes 0.

    Returns
    -------
    float
        The value shown as white.
    """
    data = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, None)
    peak = float(data.max()) if data.size else 0.0
    scaled = np.round(data / peak * 255.0) if peak > 0 else np.zeros_like(data)
    atomic_write(path, lambda tmp: iio.imwrite(tmp, scaled.astype(np.uint8), extension=".png"))
    return peak


def linear_png_levels(image, *, black_percentile=0.5, white_percentile=99.99):
    """Black and white points for a linear display of a planetary image.

    Planetary images are mostly black sky around a bright disc, so the MTF autostretch of deep-sky
    previews (which lifts the sky median) would show the sky noise; a linear stretch between a
    dark percentile and the brightest pixels is what planetary software shows.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` linear data (ADU); NaN ignored.
    black_percentile, white_percentile : float, optional
        Percentiles (0-100) of all the samples that map to 0 and 1.

    Returns
    -------
    tuple of float
        ``(black, white)`` in ADU, ``white > black``.
    """
    data = np.asarray(image, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return 0.0, 1.0
    black, white = (float(v) for v in np.percentile(data, [black_percentile, white_percentile]))
    return black, white if white > black else black + 1.0


def save_linear_png(path, image, *, levels=None, bits=8):
    """Write an 8-bit PNG of linear data scaled between two levels (planetary previews).

    Parameters
    ----------
    path : str or os.PathLike
        Output path.
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` linear data (ADU).
    levels : tuple of float or None, optional
        ``(black, white)`` in ADU; :func:`linear_png_levels` of the image by default. Give the
        same levels to compare two images (a stack and its sharpened version).
    bits : int, optional
        8 (default) or 16: the PNG's sample depth (16 keeps 16-bit input in its own encoding);
        any other value is written as 8-bit.
    """
    black, white = levels if levels is not None else linear_png_levels(image)
    data = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=black)
    scaled = np.clip((data - black) / (white - black), 0.0, 1.0)
    if bits == 16:
        out = np.round(scaled * 65535).astype(np.uint16)
    else:
        out = np.round(scaled * 255).astype(np.uint8)
    atomic_write(path, lambda tmp: iio.imwrite(tmp, out, extension=".png"))
