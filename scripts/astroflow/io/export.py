"""Images for people and other programs: 16-bit and 32-bit float TIFF, 8-bit stretched PNG.

Every writer takes an image the way the workflow holds it, row 0 at the top, and stores the top
row first (TIFF's and PNG's default orientation), so that the files open the same way up as the
FITS of the same product (see :mod:`astroflow.io.fits`).
"""

from __future__ import annotations

import re

import imageio.v3 as iio
import numpy as np
import tifffile

from astroflow.io.atomic import atomic_write
from astroflow.stretch import auto_stretch


def to_uint16_linear(image, white=None):
    """Scale data to the 16-bit range without changing its shape.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` data; NaN becomes 0.
    white : float or None, optional
        The value that becomes 65535. None (default): the image's peak, so that linear data
        (ADU) use the full range; 1.0 for display data (stretched, 0..1).

    Returns
    -------
    data : numpy.ndarray
        uint16, same shape: ``round(clip(image * scale, 0, 65535))``.
    scale : float
        The factor applied (image units -> 16-bit units), recorded so the values can be
        recovered.
    """
    data = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    if white is None:
        white = float(data.max()) if data.size else 0.0
    scale = 65535.0 / white if white > 0 else 1.0
    return np.round(np.clip(data * scale, 0.0, 65535.0)).astype(np.uint16), scale


def save_tiff16(path, image, *, description="", encoding="linear"):
    """Write an image as a 16-bit TIFF (grey or RGB), scaled to the full range.

    Parameters
    ----------
    path : str or os.PathLike
        Output path.
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` float data, row 0 at the top: linear ADU, or display
        data in 0..1.
    description : str, optional
        What the image is; the one TIFF ImageDescription holds it, the encoding and the
        scale (``"astroflow stack linear; ADU = value / 2.13"``).
    encoding : {"linear", "display"}, optional
        ``AFENCODE`` of the data (:mod:`astroflow.io.imagefile`): linear data are scaled so
        that their peak is 65535, display data so that 1.0 is. Default "linear".

    Returns
    -------
    float
        The scale factor: 16-bit value = image value x scale (NaN and negative values are
        written as 0).

    Raises
    ------
    ValueError
        If ``image`` is neither ``(H, W)`` nor ``(H, W, 3)``, or ``encoding`` is unknown.
    """
    unit = _unit(encoding)
    data, scale = to_uint16_linear(image, white=None if encoding == "linear" else 1.0)
    _write_tiff(path, data, f"{description} {encoding}; {unit} = value / {scale:.9g}".strip())
    return scale


def save_tiff32(path, image, *, description="", encoding="linear"):
    """Write an image as a 32-bit float TIFF (grey or RGB) in 0..1, as Siril and PixInsight read it.

    Float TIFF readers take 1.0 as white: linear ADU written as they are would open as a white
    image. Linear data are therefore divided by their peak (the factor is recorded, so the ADU
    can be recovered exactly up to float32 rounding); display data are already 0..1.

    Parameters
    ----------
    path : str or os.PathLike
        Output path.
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` data, row 0 at the top: linear data in ADU, display data
        in 0..1; NaN (no data) is kept.
    description : str, optional
        What the image is; the one TIFF ImageDescription holds it, the encoding and the scale
        (``"astroflow stack linear; ADU = value / 6.1e-05"``).
    encoding : {"linear", "display"}, optional
        ``AFENCODE`` of the data. Default "linear".

    Returns
    -------
    float
        The scale factor: stored value = image value x scale (1.0 for display data).

    Raises
    ------
    ValueError
        If ``image`` is neither ``(H, W)`` nor ``(H, W, 3)``, or ``encoding`` is unknown.
    """
    unit = _unit(encoding)
    data = np.asarray(image, dtype=np.float32)
    scale = 1.0
    if encoding == "linear":
        finite = data[np.isfinite(data)]
        peak = float(finite.max()) if finite.size else 0.0
        scale = 1.0 / peak if peak > 0 else 1.0
    stored = (data.astype(np.float64) * scale).astype(np.float32)
    _write_tiff(path, stored, f"{description} {encoding}; {unit} = value / {scale:.9g}".strip())
    return scale


def tiff_scale(path):
    """The scale factor an astroflow TIFF records: image value = stored value / scale.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF written by :func:`save_tiff16` or :func:`save_tiff32`.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the file's ImageDescription records no astroflow scale.
    """
    with tifffile.TiffFile(path) as tif:
        description = tif.pages[0].description or ""
    match = re.search(r"= value / ([0-9.eE+-]+)\s*$", description)
    if match is None:
        raise ValueError(f"{path}: no astroflow scale in the TIFF description {description!r}")
    return float(match.group(1))


def _unit(encoding):
    # What the values of an encoding are, for the ImageDescription.
    if encoding not in ("linear", "display"):
        raise ValueError(f"unknown encoding {encoding!r} (linear or display)")
    return "ADU" if encoding == "linear" else "level (0..1)"


def _write_tiff(path, data, description):
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 3)):
        raise ValueError(f"{path}: image must be (H, W) or (H, W, 3), got shape {data.shape}")
    photometric = "rgb" if data.ndim == 3 else "minisblack"
    # metadata=None: tifffile would add its own JSON ImageDescription, a second tag of the
    # same number that libtiff (Siril, GIMP) warns about when it reads the file.
    atomic_write(
        path,
        lambda tmp: tifffile.imwrite(
            tmp, data, photometric=photometric, description=description, metadata=None
        ),
    )


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
