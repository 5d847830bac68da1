"""FITS files between workflow rules: layout, provenance and rejected frames.

Conventions (shared by every rule):

* In memory an image is ``numpy.float32`` of shape ``(H, W)`` (mono or CFA mosaic) or
  ``(H, W, 3)`` (RGB, channels last). On disk a colour image is stored the FITS way,
  ``(3, H, W)`` (NAXIS3 = 3), so that Siril and PixInsight open it as RGB.
* Float data are written unscaled (no BZERO/BSCALE) so that :func:`open_memmap` can read
  row chunks without loading the whole frame.
* A frame that cannot be used is still written, as a FITS file with an empty primary HDU and
  ``AFSTATUS = 'REJECTED'`` plus ``AFREASON``; later rules pass it through, so that the run goes
  on and the reason reaches ``frames.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits

STATUS_KEY = "AFSTATUS"
REASON_KEY = "AFREASON"


def write_image(path, data, header=None, history=()):
    """Write a float32 image with its header, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output FITS path; parent folders are created.
    data : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` image; converted to float32.
    header : astropy.io.fits.Header or dict, optional
        Keywords to write (provenance, exposure...). Long string values use CONTINUE cards.
    history : iterable of str, optional
        Lines appended as HISTORY cards.

    Raises
    ------
    ValueError
        If ``data`` is neither 2-D nor 3-D with 3 channels last.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 3 and data.shape[2] == 3:
        disk = np.ascontiguousarray(np.moveaxis(data, 2, 0))
    elif data.ndim == 2:
        disk = data
    else:
        raise ValueError(f"{path}: image must be (H, W) or (H, W, 3), got shape {data.shape}")
    hdr = fits.Header()
    for key, value in dict(header or {}).items():
        if key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND"):
            continue
        if key in ("HISTORY", "COMMENT"):
            continue
        hdr[key] = value
    if isinstance(header, fits.Header):
        for line in header.get("HISTORY", []):
            hdr.add_history(str(line))
    hdr[STATUS_KEY] = "OK"
    for line in history:
        hdr.add_history(line)
    _atomic_write(path, fits.HDUList([fits.PrimaryHDU(disk, header=hdr)]))


def write_rejected(path, reason, header=None):
    """Write the placeholder of a frame that cannot be used.

    Parameters
    ----------
    path : str or os.PathLike
        Output FITS path.
    reason : str
        Why the frame is excluded (recorded in ``frames.csv``).
    header : dict or astropy.io.fits.Header, optional
        Whatever provenance is known (source file, sha256...).
    """
    hdr = fits.Header()
    for key, value in dict(header or {}).items():
        if key not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND"):
            if key not in ("HISTORY", "COMMENT"):
                hdr[key] = value
    hdr[STATUS_KEY] = "REJECTED"
    hdr[REASON_KEY] = str(reason)
    _atomic_write(path, fits.HDUList([fits.PrimaryHDU(header=hdr)]))


def read_header(path):
    """Primary header of a FITS file (without reading the data).

    Returns
    -------
    astropy.io.fits.Header
    """
    with fits.open(path, memmap=True) as hdul:
        return hdul[0].header.copy()


def is_rejected(header):
    """True when a header marks its frame as rejected."""
    return header.get(STATUS_KEY, "OK") == "REJECTED"


def read_image(path):
    """Read an image written by :func:`write_image`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    data : numpy.ndarray
        float32, ``(H, W)`` or ``(H, W, 3)``.
    header : astropy.io.fits.Header

    Raises
    ------
    ValueError
        If the file is a rejected placeholder or holds no image.
    """
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header.copy()
        if is_rejected(header):
            raise ValueError(f"{path}: frame was rejected: {header.get(REASON_KEY, '?')}")
        data = hdul[0].data
        if data is None:
            raise ValueError(f"{path}: FITS file holds no image data")
        data = np.asarray(data, dtype=np.float32)
    if data.ndim == 3:
        data = np.ascontiguousarray(np.moveaxis(data, 0, 2))
    return data, header


def image_shape(header):
    """In-memory shape ``(H, W)`` or ``(H, W, C)`` described by a FITS header."""
    naxis = header.get("NAXIS", 0)
    if naxis == 2:
        return (header["NAXIS2"], header["NAXIS1"])
    if naxis == 3:
        return (header["NAXIS2"], header["NAXIS1"], header["NAXIS3"])
    raise ValueError(f"header describes no 2-D or 3-D image (NAXIS={naxis})")


def combined_header(headers, history=()):
    """Header of an image combined from frames: provenance kept, exposure summed.

    Parameters
    ----------
    headers : sequence of astropy.io.fits.Header
        Headers of the frames that went into the combination (used frames only).
    history : iterable of str, optional
        HISTORY lines describing the combination.

    Returns
    -------
    astropy.io.fits.Header
        ``NCOMBINE`` (number of frames), ``EXPTIME`` (total exposure, s, where every frame has
        one), ``DATE-OBS`` / ``DATE-END`` (first and last frame), every keyword whose value
        all frames share (camera, Bayer history, temperature set point...), and HISTORY: the
        first frame's processing steps, then ``history``.

    Raises
    ------
    ValueError
        If ``headers`` is empty.
    """
    if not headers:
        raise ValueError("no frames to combine")
    skip = {"HISTORY", "COMMENT", "SRCFILE", "SRCSHA", "EXPTIME", "DATE-OBS", STATUS_KEY}
    header = fits.Header()
    for key in headers[0]:
        if key in skip or key.startswith("NAXIS") or key in ("SIMPLE", "BITPIX", "EXTEND"):
            continue
        value = headers[0][key]
        if all(h.get(key) == value for h in headers[1:]):
            header[key] = value
    header["NCOMBINE"] = (len(headers), "number of frames combined")
    exposures = [h.get("EXPTIME") for h in headers]
    if all(e is not None for e in exposures):
        header["EXPTIME"] = (float(sum(exposures)), "[s] total exposure of combined frames")
    dates = sorted(str(h["DATE-OBS"]) for h in headers if "DATE-OBS" in h)
    if dates:
        header["DATE-OBS"] = (dates[0], "first frame")
        header["DATE-END"] = (dates[-1], "last frame")
    # every frame went through the same steps: the first frame's history tells them
    for line in list(headers[0].get("HISTORY", [])) + list(history):
        header.add_history(str(line))
    return header


def _atomic_write(path, hdul):
    # A job killed mid-write must never leave a file a later run would trust.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
    os.replace(tmp, path)
