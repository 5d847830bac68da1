"""TIFF input, the one reader of the first image of a TIFF file (through tifffile).

Used by :mod:`astroflow.io.ingest` (deep-sky frames), :mod:`astroflow.io.imagefile` (finished
images) and :mod:`astroflow.io.sequence` (planetary frames), so that a truncated file, a header
claiming a huge image, a palette image or an alpha channel is handled the same way by all three.
"""

from __future__ import annotations

import os

import numpy as np
import tifffile

from astroflow.io.limits import MEMORY_MB, check_memory

__all__ = ["read_tiff", "tiff_layout", "tiff_shape"]


def tiff_layout(page):
    """Size, channels and sample depth that :func:`read_tiff` returns for a TIFF page.

    Parameters
    ----------
    page : tifffile.TiffPage
        The first page of the file (``TiffFile(path).pages.first``).

    Returns
    -------
    height, width, channels, bits : int
        ``channels`` counts colour and alpha samples as stored (a palette image: 3, its
        colour map being RGB); ``bits`` is 8 or 16 for integer samples of those sizes (16 for a
        palette image, whose colour map is 16-bit) and 32 for float or 32-bit samples.
    """
    if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
        return page.imagelength, page.imagewidth, 3, 16
    dtype = np.dtype(page.dtype)
    if dtype.kind == "f" or dtype.itemsize >= 4:
        bits = 32
    else:
        bits = 16 if dtype.itemsize == 2 or page.bitspersample > 8 else 8
    return page.imagelength, page.imagewidth, page.samplesperpixel, bits


def read_tiff(path, memory_mb=MEMORY_MB, error=ValueError):
    """The first image of a TIFF file, checked complete and within the memory budget first.

    Parameters
    ----------
    path : str or os.PathLike
    memory_mb : float, optional
        Memory budget of the decoded image (MB): a header claiming more is refused before the
        data are read (:func:`astroflow.io.limits.check_memory`).
    error : type, optional
        The exception class to raise for a bad file (the caller's reader error).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` (channels last, planar storage turned), in the stored dtype;
        a palette image is ``(H, W, 3)`` uint16, its colour map's RGB values. Alpha samples are
        kept (the caller drops them).

    Raises
    ------
    error
        Naming the file and the problem: not a TIFF, no image, an image larger than the budget,
        image data that end beyond the end of the file (truncated), or undecodable data.
    OSError
        If the file cannot be opened at all (missing, no permission).
    """
    try:
        with tifffile.TiffFile(path) as tif:
            page, palette = _checked_page(tif, path, memory_mb, error)
            image = page.asarray()
            if palette:
                image = np.moveaxis(page.colormap[:, image], 0, -1)
            elif image.ndim == 3 and page.axes.startswith("S"):
                image = np.moveaxis(image, 0, -1)
    except error:
        raise
    except (OSError, ValueError, IndexError, KeyError, TypeError, tifffile.TiffFileError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise error(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    return image


def tiff_shape(path, memory_mb=MEMORY_MB, error=ValueError):
    """The size of the first image of a TIFF file, from its header, checked as :func:`read_tiff`
    checks it, without reading the image data.

    Parameters
    ----------
    path : str or os.PathLike
    memory_mb : float, optional
        Memory budget of the decoded image (MB).
    error : type, optional
        The exception class to raise for a bad file.

    Returns
    -------
    tuple of int
        ``(height, width, channels)``; a palette image has 3 channels.

    Raises
    ------
    error
        As :func:`read_tiff`, except for undecodable image data, which only decoding finds.
    OSError
        If the file cannot be opened at all (missing, no permission).
    """
    try:
        with tifffile.TiffFile(path) as tif:
            page, palette = _checked_page(tif, path, memory_mb, error)
            height, width, channels, _ = tiff_layout(page)
    except error:
        raise
    except (OSError, ValueError, IndexError, KeyError, TypeError, tifffile.TiffFileError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise error(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    return height, width, 3 if palette else channels


def _checked_page(tif, path, memory_mb, error):
    """The first page of an open TIFF and whether it is a palette image, refused when it claims
    more than the memory budget or its data end beyond the end of the file."""
    size = os.path.getsize(path)
    page = tif.pages.first
    height, width, channels, _ = tiff_layout(page)
    palette = page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None
    n_samples = height * width * (3 if palette else channels)
    check_memory(path, f"a {width} x {height} px image of {channels} sample(s) per pixel",
                 n_samples, np.dtype(page.dtype).itemsize + 4, memory_mb, error)
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
    if ends and max(ends) > size:
        raise error(f"{path}: truncated TIFF: image data end at byte {max(ends)}, file has {size}")
    return page, palette
