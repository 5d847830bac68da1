"""Real star stamps cut out of real frames: the library :mod:`astroflow.simulation.starstamps`
pastes into the synthetic training data.

Kept apart from :mod:`astroflow.simulation.starstamps` because it reads and calibrates camera
frames (through :mod:`astroflow.io.ingest` and :mod:`astroflow.calibration.debayer`): the shard
jobs, which only load a saved library, need none of those readers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from astroflow.io.formats import readable
from astroflow.simulation.starstamps import StampLibrary, extract_stamps

log = logging.getLogger(__name__)


def _fits_files(folder, recursive=False):
    folder = Path(folder)
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and readable(p.name, ["fits"]))


def _median_frame(files):
    from astroflow.io.ingest import read_frame

    frames, exptime = [], None
    for f in files:
        data, meta = read_frame(f)
        frames.append(data)
        exptime = meta.get("EXPTIME", exptime)
    return np.median(np.stack(frames), axis=0).astype(np.float32), exptime


def sbig_frames(folder, *, max_lights=None, saturation_adu=64000.0):
    """Calibrated mono lights of a CCD night folder (``light/``, ``dark/``, ``flat/``, ``bias/``).

    Each light is dark-subtracted with the median of the darks (taken at the lights' exposure)
    and divided by the median flat, made from the flats minus the median bias and the dark
    current scaled to the flats' exposure, normalised to a median of 1. A missing ``dark/``,
    ``flat/`` or ``bias/`` folder skips that step.

    Parameters
    ----------
    folder : str or os.PathLike
        E.g. ``../shared/data/sbig-stl1001``.
    max_lights : int or None, optional
        Use only the first lights (sorted by name).
    saturation_adu : float, optional
        Raw level (ADU) from which a pixel counts as saturated.

    Yields
    ------
    (numpy.ndarray, numpy.ndarray)
        ``(H, W)`` float32 calibrated light (ADU) and ``(H, W)`` bool saturated pixels.
    """
    from astroflow.io.ingest import read_frame

    folder = Path(folder)
    lights = _fits_files(folder / "light")[:max_lights]
    if not lights:
        return
    bias = dark = flat = None
    t_dark = None
    if (folder / "bias").is_dir() and _fits_files(folder / "bias"):
        bias, _ = _median_frame(_fits_files(folder / "bias"))
    if (folder / "dark").is_dir() and _fits_files(folder / "dark"):
        dark, t_dark = _median_frame(_fits_files(folder / "dark"))
    if (folder / "flat").is_dir() and _fits_files(folder / "flat"):
        flat, t_flat = _median_frame(_fits_files(folder / "flat"))
        if bias is not None:
            flat = flat - bias
            if dark is not None and t_dark and t_flat:
                flat = flat - (dark - bias) * (float(t_flat) / float(t_dark))
        flat = flat / float(np.median(flat))
        flat = np.clip(flat, 0.1, None)
    for path in lights:
        raw, _ = read_frame(path)
        saturated = raw >= saturation_adu
        cal = raw - (dark if dark is not None else (bias if bias is not None else 0.0))
        if flat is not None:
            cal = cal / flat
        yield cal.astype(np.float32), saturated


def superpixel_debayer(cfa, pattern):
    """2 x 2 superpixel demosaic: ``(H/2, W/2, 3)`` R, mean of the two G, B."""
    from astroflow.calibration.debayer import cfa_colour_cells

    cells = cfa_colour_cells(pattern)
    h, w = (cfa.shape[0] // 2) * 2, (cfa.shape[1] // 2) * 2
    cfa = cfa[:h, :w]
    planes = [np.mean([cfa[dy::2, dx::2] for dy, dx in cells[c]], axis=0) for c in "RGB"]
    return np.stack(planes, axis=-1).astype(np.float32)


def seestar_frames(folder, *, max_lights=None, saturation_adu=64000.0):
    """Colour CFA lights of a folder (searched recursively), debayered by 2 x 2 superpixels.

    Parameters
    ----------
    folder : str or os.PathLike
        E.g. ``../shared/data/seestar-s50-m94`` (its ``night1/`` and ``night2/``).
    max_lights : int or None, optional
        Use only the first lights (sorted by path).
    saturation_adu : float, optional
        Raw level (ADU) from which a CFA pixel counts as saturated.

    Yields
    ------
    (numpy.ndarray, numpy.ndarray)
        ``(H/2, W/2, 3)`` float32 RGB (ADU, uncalibrated: no darks or flats exist) and
        ``(H/2, W/2)`` bool, superpixels with a saturated CFA pixel. Frames without a
        ``BAYERPAT`` are skipped.
    """
    from astroflow.io.ingest import read_frame

    for path in _fits_files(folder, recursive=True)[:max_lights]:
        raw, meta = read_frame(path)
        pattern = meta.get("BAYERPAT")
        if raw.ndim != 2 or not pattern:
            log.info("%s: not a Bayer CFA frame, skipped", path)
            continue
        h, w = (raw.shape[0] // 2) * 2, (raw.shape[1] // 2) * 2
        sat = raw[:h, :w] >= saturation_adu
        sat = sat[0::2, 0::2] | sat[1::2, 0::2] | sat[0::2, 1::2] | sat[1::2, 1::2]
        yield superpixel_debayer(raw, pattern), sat


def build_stamp_library(sbig=None, seestar=None, *, size=31, max_lights=None, **extract):
    """Real star stamps from the data folders that are present.

    Parameters
    ----------
    sbig : str or os.PathLike or None, optional
        A mono CCD night folder (see :func:`sbig_frames`), e.g. ``../shared/data/sbig-stl1001``.
    seestar : str or os.PathLike or None, optional
        A folder of colour CFA lights (see :func:`seestar_frames`), e.g.
        ``../shared/data/seestar-s50-m94``.
    size : int, optional
        Side of the stamps, px.
    max_lights : int or None, optional
        Use only the first lights of each folder.
    **extract
        Passed to :func:`extract_stamps` (``min_snr``, ``detect_sigma``...).

    Returns
    -------
    StampLibrary
        Possibly empty: an absent folder is skipped with a logged message, and a library
        without stamps is logged as the fallback to synthetic PSFs.
    """
    parts = []
    for name, folder, reader in (("sbig", sbig, sbig_frames), ("seestar", seestar, seestar_frames)):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            log.info("star stamps: %s folder %s is absent, skipped", name, folder)
            continue
        n0 = sum(len(p) for p in parts)
        for k, (frame, sat) in enumerate(reader(folder, max_lights=max_lights)):
            lib = extract_stamps(frame, size=size, saturated=sat, source=f"{name}", **extract)
            parts.append(lib)
            log.debug("star stamps: %s frame %d: %d stamps", name, k, len(lib))
        log.info("star stamps: %d from %s (%s)", sum(len(p) for p in parts) - n0, name, folder)
    library = StampLibrary.concatenate(parts, size)
    if len(library) == 0:
        log.warning("no real star stamps (data absent): the training data use synthetic PSFs only")
    else:
        log.info("star stamp library: %s", library.summary())
    return library


# --------------------------------------------------------------------------------------------
# pasting
