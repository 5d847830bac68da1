"""Real star stamps cut out of real frames: the library :mod:`astroflow.simulation.starstamps`
pastes into the synthetic training data.

Kept apart from :mod:`astroflow.simulation.starstamps` because it reads and calibrates camera
frames (through :mod:`astroflow.io.ingest` and :mod:`astroflow.calibration.debayer`): the shard
jobs, which only load a saved library, need none of those readers.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from astroflow.io.formats import readable
from astroflow.simulation.starstamps import StampLibrary, extract_stamps

log = logging.getLogger(__name__)


def _fits_files(folder, recursive=False):
    folder = Path(folder)
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and readable(p.name, ["fits"]))


def sbig_frames(folder, *, max_lights=None, saturation_adu=64000.0, use_flat=True):
    """Calibrated mono lights of a CCD night folder (``light/``, ``dark/``, ``flat/``, ``bias/``).

    The frames go through the workflow's own calibration: ingested
    (:func:`astroflow.io.ingest.ingest_frame`, into a temporary folder), combined into masters
    (:func:`~astroflow.calibration.calibrate.master_bias`, ``master_dark``, ``master_flat``;
    median, no clipping) and applied by :func:`~astroflow.calibration.calibrate.calibrate_light`
    (dark scaled by exposure, flat normalised to 1). A missing ``dark/``, ``flat/`` or ``bias/``
    folder skips that step.

    Parameters
    ----------
    folder : str or os.PathLike
        E.g. ``../shared/data/sbig-stl1001``.
    max_lights : int or None, optional
        Use only the first lights (sorted by name).
    saturation_adu : float, optional
        Raw level (ADU) from which a pixel counts as saturated.
    use_flat : bool, optional
        Divide by the master flat (when there is a ``flat/`` folder); False calibrates with bias
        and dark only.

    Yields
    ------
    (numpy.ndarray, numpy.ndarray)
        ``(H, W)`` float32 calibrated light (ADU) and ``(H, W)`` bool saturated pixels.
    """
    from astroflow.calibration.calibrate import calibrate_light, master_bias, master_dark, master_flat
    from astroflow.io.fits import read_image
    from astroflow.io.ingest import ingest_frame

    folder = Path(folder)
    lights = _fits_files(folder / "light")[:max_lights]
    if not lights:
        return
    combine = {"method": "median", "sigma_low": None, "sigma_high": None}
    with tempfile.TemporaryDirectory(prefix="astroflow-stamps-") as tmp:

        def ingested(kind, files):
            out = []
            for i, path in enumerate(files):
                out.append(Path(tmp) / kind / f"{i:04d}.fits")
                ingest_frame(path, kind, out[-1])
            return out

        masters = {}
        for kind in ("bias", "dark", "flat") if use_flat else ("bias", "dark"):
            files = _fits_files(folder / kind) if (folder / kind).is_dir() else []
            if not files:
                continue
            paths = ingested(kind, files)
            if kind == "bias":
                masters["bias"] = master_bias(paths, **combine)
            elif kind == "dark":
                masters["dark"] = master_dark(paths, masters.get("bias"), **combine)
            else:
                masters["flat"] = master_flat(paths, masters.get("bias"), masters.get("dark"), **combine)
        for path in ingested("light", lights):
            raw, header = read_image(path)
            calibrated, _ = calibrate_light(
                raw,
                header,
                master_bias=masters.get("bias"),
                master_dark=masters.get("dark"),
                master_flat=masters.get("flat"),
            )
            yield calibrated.astype(np.float32), raw >= saturation_adu


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
