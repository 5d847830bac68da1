"""The per-frame table of a target, ``results/{target}/frames.csv``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from astroflow.deepsky.screening import excluded_reason
from astroflow.io.fits import REASON_KEY, is_rejected, read_header

# FITS keyword -> frames.csv column, for what ingest records of every frame.
HEADER_COLUMNS = {
    "IMAGETYP": "type",
    "SRCFILE": "source",
    "SRCSHA": "sha256",
    "INSTRUME": "camera",
    "EXPTIME": "exposure_s",
    "ISOSPEED": "iso",
    "GAIN": "gain",
    "CCD-TEMP": "temperature_c",
    "DATE-OBS": "date_obs",
    "BAYERPAT": "bayer_pattern",
    "NAXIS1": "width",
    "NAXIS2": "height",
}


def frames_table(ingested_paths, registration, screening=None, *, sources=None):
    """One row per input frame: provenance, quality, transform, used or rejected and why.

    Parameters
    ----------
    ingested_paths : sequence of str or os.PathLike
        Ingested frames (``results/{target}/ingest/{type}/{frame}.fits``) of every type; rejected
        placeholders included.
    registration : pandas.DataFrame
        The table written by the register rule (``registration.csv``): one row per light with
        ``frame``, ``status``, ``reason``, ``flat`` (the calibrated light's ``FLATUSED``) and
        the quality and transform columns.
    screening : pandas.DataFrame, optional
        ``screening.csv`` (:func:`astroflow.deepsky.screening.screen_frames`): the frames it
        excludes (another size than the majority, duplicates, darks among the lights) are
        ``rejected`` with its reason, calibration frames included.
    sources : dict of str to dict of str to str, optional
        Frame type -> frame -> source file: the ``source`` column, as the file system spells
        it (the ingested header's ``SRCFILE`` escapes what is not ASCII).

    Returns
    -------
    pandas.DataFrame
        Columns ``frame``, ``type``, the provenance columns of :data:`HEADER_COLUMNS`, ``status``
        (``used`` or ``rejected``), ``reason``, then the registration columns for lights, among
        them ``flat`` (``real`` from flat frames, ``sky`` from the lights, ``network``, ``none``;
        empty for lights rejected before calibration and for other frames), the weight of every
        scheme and the residuals of the matched stars. The thin-plate spline of the distortion
        model (column ``tps``) stays in ``registration.csv`` only, where
        :func:`astroflow.deepsky.register.pixel_map` reads it. A light
        rejected at ingest keeps the ingest reason; calibration frames are ``used`` unless
        unreadable.
    """
    rows = []
    for path in ingested_paths:
        header = read_header(path)
        row = {"frame": Path(path).stem}
        for key, column in HEADER_COLUMNS.items():
            row[column] = header.get(key)
        row["type"] = str(row["type"] or Path(path).parent.name).lower()
        if sources is not None:
            row["source"] = sources.get(Path(path).parent.name, {}).get(row["frame"], row["source"])
        screened = None if screening is None else excluded_reason(path, screening)
        if is_rejected(header):
            row["status"], row["reason"] = "rejected", header.get(REASON_KEY, "")
        elif screened is not None:
            row["status"], row["reason"] = "rejected", screened
        else:
            row["status"], row["reason"] = "used", ""
        rows.append(row)
    table = pd.DataFrame(rows)
    is_light = table["type"] == "light"
    reg = registration.drop(columns=["tps"], errors="ignore")
    reg = reg.rename(columns={"status": "reg_status", "reason": "reg_reason"})
    reg = reg.assign(type="light")
    table = table.merge(reg, on=["frame", "type"], how="left")
    late = is_light & (table["status"] == "used") & (table["reg_status"] == "rejected")
    table.loc[late, "status"] = "rejected"
    table.loc[late, "reason"] = table.loc[late, "reg_reason"]
    return table.drop(columns=["reg_status", "reg_reason"])


def lights_to_stack(registration, paths, *, where):
    """The used lights of a stack, reference first, or a clear error when none is left.

    Parameters
    ----------
    registration : pandas.DataFrame
        ``registration.csv`` (:func:`astroflow.deepsky.register.register_frames`): columns
        ``frame``, ``status``, ``reason``, ``reference``, ``weight``.
    paths : mapping of str to str
        Frame name -> registered FITS file of the lights of this stack (all lights of a target,
        or those of one filter).
    where : str
        What is stacked, for the error (e.g. ``"target 'm31', filter OIII"``).

    Returns
    -------
    pandas.DataFrame
        The rows of ``paths``' frames with status ``used``, the reference first (frames are
        normalised to the first one), with a ``path`` column.

    Raises
    ------
    ValueError
        If none of these lights is used: names ``where`` and counts the rejection reasons (a
        filter whose every light failed to match the reference, say), instead of a stacker
        error about an empty list.
    """
    table = registration[registration["frame"].isin(list(paths))].copy()
    table["path"] = table["frame"].map(paths)
    used = table[table["status"] == "used"].sort_values("reference", ascending=False)
    if used.empty:
        reasons = table["reason"].fillna("no reason recorded").value_counts()
        summary = "; ".join(f"{n} x {reason}" for reason, n in reasons.items()) or "no lights at all"
        raise ValueError(f"{where}: none of its {len(table)} lights can be stacked ({summary})")
    return used
