"""One finished image in (the ``image`` target kind): PNG, TIFF or FITS, linear or stretched.

A finished image is either *linear* (a stack saved by Siril or PixInsight: float, or integer
data that is mostly dark) or *display* data (already stretched, 8 or 16-bit). Star removal
treats them differently (:mod:`astroflow.restoration.starless`), so the encoding is decided here and kept
in the FITS header (``AFENCODE``) with the bit depth (``AFBITS``).
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from astropy.io import fits

__all__ = ["ENCODINGS", "UnreadableImageError", "choose_encoding", "read_finished_image"]

ENCODINGS = ("linear", "display")
# Integer data whose median is below this fraction of the full range is taken as linear.
LINEAR_MEDIAN_FRACTION = 0.02


class UnreadableImageError(ValueError):
    """An image file that cannot be read, or holds no 2-D or 3-channel image."""


def read_finished_image(path):
    """Read one image file as float32, channels last.

    Parameters
    ----------
    path : str or os.PathLike
        PNG (8/16-bit), TIFF (8/16-bit or float; mono, RGB, planar RGB) or FITS (first image
        HDU; a ``(3, H, W)`` cube is RGB).

    Returns
    -------
    image : numpy.ndarray
        float32 ``(H, W)`` or ``(H, W, 3)``, in the file's own units (0..255, 0..65535, or the
        float values); alpha is dropped.
    bits : int
        8 or 16 for integer data, 32 for float data.

    Raises
    ------
    UnreadableImageError
        Naming the file, when it cannot be read or is not a mono or RGB image.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".fits", ".fit", ".fts"):
            with fits.open(path, memmap=False) as hdul:
                hdu = next((h for h in hdul if h.data is not None and h.data.ndim >= 2), None)
                if hdu is None:
                    raise UnreadableImageError(f"{path}: FITS file holds no image")
                data = np.asarray(hdu.data)
            if data.ndim == 3 and data.shape[0] in (3, 4):
                data = np.moveaxis(data, 0, 2)
        elif suffix in (".tif", ".tiff"):
            data = tifffile.imread(path)
            if data.ndim == 3 and data.shape[0] in (3, 4) and data.shape[2] not in (3, 4):
                data = np.moveaxis(data, 0, 2)
        else:
            data = iio.imread(path)
    except UnreadableImageError:
        raise
    except Exception as exc:  # the readers raise many types; the user needs the file and cause
        raise UnreadableImageError(f"{path}: cannot read image: {exc}") from exc
    if data.ndim == 3 and data.shape[2] == 4:
        data = data[:, :, :3]
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 3)):
        raise UnreadableImageError(f"{path}: not a mono or RGB image (shape {data.shape})")
    if np.issubdtype(data.dtype, np.integer):
        bits = 8 if data.dtype.itemsize == 1 else 16
    else:
        bits = 32
    return data.astype(np.float32), bits


def choose_encoding(image, bits, requested="auto"):
    """Whether an image is linear or display (stretched) data.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W[, 3])`` as from :func:`read_finished_image`.
    bits : int
        8, 16 or 32 (float).
    requested : {"auto", "linear", "display"}, optional
        The target's ``encoding``; ``auto`` decides: float data is linear, integer data is linear
        when its median is below 2% of the full range (a linear stack saved as 16-bit TIFF is
        nearly black), else display.

    Returns
    -------
    str
        ``"linear"`` or ``"display"``.

    Raises
    ------
    ValueError
        For an unknown ``requested`` value, or display encoding asked for float data outside
        ``[0, 1]``.
    """
    if requested not in ("auto",) + ENCODINGS:
        raise ValueError(f"unknown encoding {requested!r} (auto, linear or display)")
    if requested == "display" and bits == 32:
        finite = image[np.isfinite(image)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError("display encoding of float data needs values in [0, 1]")
    if requested != "auto":
        return requested
    if bits == 32:
        return "linear"
    full = 255.0 if bits == 8 else 65535.0
    median = float(np.nanmedian(image))
    return "linear" if median < LINEAR_MEDIAN_FRACTION * full else "display"


def display_scale(bits):
    """Full-scale value of display data of a bit depth (255 or 65535; 1 for float)."""
    return {8: 255.0, 16: 65535.0}.get(int(bits), 1.0)
