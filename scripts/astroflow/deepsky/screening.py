"""Frame screening: the frames of a deep-sky target that are excluded for what the others show.

Some bad frames look fine alone and are only wrong beside the rest of the night: a light of
another size among the lights, the same file twice under two names, a dark put in the lights
folder. :func:`screen_frames` decides all of them, from the ingested headers alone (size,
``SRCSHA``, and the robust statistics ``AFMEDIAN``/``AFNOISE`` that ingest records,
:func:`astroflow.io.ingest.frame_statistics`), at two places of the workflow, so that adding a
light reruns neither the masters nor the other lights' calibration:

- rule ``screen_frames`` screens the calibration frames into ``results/{target}/screening.csv``
  before any master is made; the master rules leave out the frames it excludes
  (:func:`usable_paths`) and ``frames.csv`` records why;
- the lights, which are compared with each other and with that table (:func:`screen_lights`), are
  screened where all of them meet anyway: in rule ``register`` (whose table carries the reasons
  to ``frames.csv``) and in rule ``sky_flat``. ``calibrate_light`` passes a light whose size is not
  its masters' through as rejected, naming both sizes.

The rules:

- **Duplicates**: frames of one type with the same SHA-256 of the source file: the first (in
  session, then file name order) is used, the others are excluded as its duplicates, so that a
  frame copied under a second name does not count twice in a stack or a master.
- **Sizes** (the majority rule): within each group that is combined or calibrated together (the
  lights of a session; the bias, darks, flats or dark flats of one master), the most common
  size (width x height x channels) is used when it holds more than half of the group's frames,
  and frames of other sizes are excluded naming their size and the majority's. When no size
  holds more than half, nothing says which frames are the odd ones: :class:`ScreeningError`
  names every file and its size. The lights of a session and the masters they are calibrated
  with must then have the same size, else the same error names both.
- **Darks among the lights**: a light whose median lies at the level of its session's darks
  (or, without darks, of its bias frames) while the other lights stand well above it (a lens cap
  left on, a dark saved to the lights folder) is excluded: its signal above that level is below
  ``dark_fraction`` of the lights' median signal, and that gap is more than
  ``DARK_GAP_SIGMA`` noise sigmas. Without darks or bias frames there is no level to compare
  with, and registration's star count is what rejects such a frame.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from astroflow.io.fits import REASON_KEY, is_rejected, read_header

__all__ = [
    "DARK_GAP_SIGMA",
    "ScreeningError",
    "duplicate_sources",
    "calibration_records",
    "excluded_reason",
    "screen_lights",
    "screen_frames",
    "usable_paths",
]

#: a dark-like light must lie this many noise sigmas below the lights' median
DARK_GAP_SIGMA = 5.0
_ORDER = ("light", "bias", "dark", "darkflat", "flat")


class ScreeningError(ValueError):
    """Frames of a target that cannot be screened into one usable set; the message names them."""


def duplicate_sources(sources, digests):
    """Which source files repeat an earlier one's content: the same file under another name.

    Parameters
    ----------
    sources : sequence of str
        Source files in the order they are used (a file may repeat: the frames of one video).
    digests : mapping of str to str
        Source file -> its SHA-256 (:func:`astroflow.workflow.provenance.sha256_file`).

    Returns
    -------
    dict of str to str
        Each duplicate source -> the first source (in ``sources`` order) with the same digest;
        files without a digest are never duplicates.
    """
    first, duplicates = {}, {}
    for source in dict.fromkeys(sources):
        digest = digests.get(source)
        if not digest:
            continue
        original = first.setdefault(digest, source)
        if original != source:
            duplicates[source] = original
    return duplicates


def _size(header):
    width, height = int(header.get("NAXIS1", 0)), int(header.get("NAXIS2", 0))
    channels = int(header.get("NAXIS3", 1)) if int(header.get("NAXIS", 2)) == 3 else 1
    return width, height, channels


def _size_text(size):
    width, height, channels = size
    return f"{width}x{height}" + (f"x{channels}" if channels > 1 else "")


def _number(header, key):
    try:
        value = float(header.get(key))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def screen_frames(records, owners, *, dark_fraction=0.2, check_masters=True):
    """Which ingested frames of a deep-sky target are used, and why the others are not.

    Parameters
    ----------
    records : sequence of dict
        One per ingested frame: ``frame`` (name), ``type`` (``light``, ``bias``, ``dark``,
        ``flat``, ``darkflat``), ``session`` (for a calibration frame: the session that owns its
        master), ``header`` (the ingested FITS header: ``NAXIS*``, ``SRCFILE``, ``SRCSHA``,
        ``AFMEDIAN``, ``AFNOISE``, ``AFSTATUS``/``AFREASON`` of a frame ingest rejected) and
        optionally ``source``, the source file as the file system spells it (the header's
        ``SRCFILE`` is ASCII-escaped), for the reasons.
    owners : dict of str to dict of str to str
        Session -> calibration type -> the session whose master it uses
        (:func:`astroflow.workflow.discovery.shared_masters`).
    dark_fraction : float, optional
        A light whose signal above the darks' (or bias) level is below this fraction of the
        lights' median signal is taken for a dark (0 turns the check off).
    check_masters : bool, optional
        Whether the lights' size must be that of the frames of their masters (False for
        calibrated lights, debayered to ``(H, W, 3)``).

    Returns
    -------
    pandas.DataFrame
        Columns ``frame``, ``type``, ``session``, ``source``, ``status`` (``used`` or
        ``rejected``), ``reason`` (empty for used frames), ``width``, ``height``, ``channels``,
        ``median``, ``noise``, ``sha256``, one row per record, lights first. Frames ingest
        rejected keep its reason.

    Raises
    ------
    ScreeningError
        If no size holds more than half of a group's frames (names every file and its size), or
        the lights of a session and one of its masters' frames have different sizes.
    """
    rows = []
    for record in records:
        header = record["header"]
        rejected = is_rejected(header)
        rows.append({
            "frame": record["frame"],
            "type": record["type"],
            "session": record["session"],
            "source": str(record.get("source") or header.get("SRCFILE", "")),
            "status": "rejected" if rejected else "used",
            "reason": str(header.get(REASON_KEY, "")) if rejected else "",
            "_header": header,
            "width": _size(header)[0], "height": _size(header)[1], "channels": _size(header)[2],
            "median": _number(header, "AFMEDIAN"), "noise": _number(header, "AFNOISE"),
            "sha256": str(header.get("SRCSHA", "")),
        })
    rows.sort(key=lambda r: (_ORDER.index(r["type"]) if r["type"] in _ORDER else 9, r["session"], r["frame"]))

    def used(ftype=None, session=None):
        return [
            r for r in rows
            if r["status"] == "used" and (ftype is None or r["type"] == ftype)
            and (session is None or r["session"] == session)
        ]

    def exclude(row, reason):
        row["status"], row["reason"] = "rejected", reason

    for ftype in dict.fromkeys(r["type"] for r in used()):
        group = used(ftype)
        digests = {r["source"]: r["_header"].get("SRCSHA") for r in group}
        duplicates = duplicate_sources([r["source"] for r in group], digests)
        for row in group:
            if row["source"] in duplicates:
                sha = digests[row["source"]]
                exclude(
                    row,
                    f"{row['source']}: duplicate of {duplicates[row['source']]} (same content, "
                    f"sha256 {sha[:12]}...)",
                )

    majority = {}
    for ftype, session in dict.fromkeys((r["type"], r["session"]) for r in used()):
        group = used(ftype, session)
        counts = Counter(_size(r["_header"]) for r in group)
        size, n = counts.most_common(1)[0]
        if len(counts) > 1 and 2 * n <= len(group):
            listing = "; ".join(
                f"{_size_text(s)}: {', '.join(r['source'] for r in group if _size(r['_header']) == s)}"
                for s, _ in counts.most_common()
            )
            where = f"{ftype} frames" + (f" of session '{session}'" if len(owners) > 1 else "")
            raise ScreeningError(
                f"{where} have different sizes and none is the size of more than half of them "
                f"({listing}); put frames of one size in a folder"
            )
        majority[(ftype, session)] = size
        for row in group:
            if _size(row["_header"]) != size:
                exclude(
                    row,
                    f"{row['source']}: size {_size_text(_size(row['_header']))} differs from "
                    f"the size {_size_text(size)} of {n} of the {len(group)} {ftype} frames",
                )

    for session, types in owners.items():
        lights = majority.get(("light", session))
        if lights is None or not check_masters:
            continue
        for ftype, owner in types.items():
            size = majority.get((ftype, owner))
            if size is not None and size != lights:
                raise ScreeningError(
                    f"the lights{f' of session {session!r}' if len(owners) > 1 else ''} are "
                    f"{_size_text(lights)} but the {ftype} frames they are calibrated with are "
                    f"{_size_text(size)} (e.g. {used(ftype, owner)[0]['source']})"
                )

    if dark_fraction > 0:
        for session, types in owners.items():
            _screen_dark_lights(used, exclude, session, types, dark_fraction)

    return pd.DataFrame([{k: v for k, v in r.items() if k != "_header"} for r in rows], columns=COLUMNS)


#: the columns of :func:`screen_frames`' table (``screening.csv``)
COLUMNS = [
    "frame", "type", "session", "source", "status", "reason", "width", "height", "channels",
    "median", "noise", "sha256",
]  # fmt: skip


def calibration_records(screening):
    """The calibration frames of ``screening.csv`` as records for :func:`screen_frames`.

    Parameters
    ----------
    screening : pandas.DataFrame or str or os.PathLike
        The table of :func:`screen_frames`, or ``screening.csv``.

    Returns
    -------
    list of dict
        One record per frame of the table (``frame``, ``type``, ``session``, ``source`` and a
        ``header`` holding what screening reads: size, ``SRCSHA``, ``AFMEDIAN``, ``AFNOISE``, and
        ``AFSTATUS``/``AFREASON`` for frames already excluded), so that the lights can be
        screened against the calibration frames without reading them again.
    """
    table = _table(screening)
    records = []
    for row in table.itertuples():
        channels = int(row.channels)
        header = {"NAXIS": 3 if channels > 1 else 2, "NAXIS1": int(row.width), "NAXIS2": int(row.height),
                  "SRCFILE": row.source, "SRCSHA": row.sha256}
        if channels > 1:
            header["NAXIS3"] = channels
        for key, value in (("AFMEDIAN", row.median), ("AFNOISE", row.noise)):
            if str(value) not in ("", "nan", "None"):
                header[key] = float(value)
        if row.status == "rejected":
            header["AFSTATUS"], header[REASON_KEY] = "REJECTED", row.reason
        records.append({"frame": row.frame, "type": row.type, "session": row.session,
                        "source": row.source, "header": header})
    return records


def screen_lights(lights, screening, owners, *, dark_fraction=0.2, check_masters=False):
    """Which lights screening excludes, against each other and the calibration frames.

    Parameters
    ----------
    lights : sequence of dict
        Records of the lights (see :func:`screen_frames`): ingested or calibrated headers.
    screening : pandas.DataFrame or str or os.PathLike
        The calibration frames' table (``screening.csv`` of rule ``screen_frames``).
    owners : dict
        As for :func:`screen_frames`.
    dark_fraction : float, optional
        As for :func:`screen_frames`.
    check_masters : bool, optional
        As for :func:`screen_frames`: True for ingested lights.

    Returns
    -------
    dict of str to str
        Light -> why it is excluded (a duplicate, another size than the majority's, a dark);
        lights ingest or calibration rejected are not listed.

    Raises
    ------
    ScreeningError
        As :func:`screen_frames`.
    """
    table = screen_frames(
        list(lights) + calibration_records(screening), owners, dark_fraction=dark_fraction,
        check_masters=check_masters,
    )
    placeholders = {r["frame"] for r in lights if is_rejected(r["header"])}
    excluded = table[(table["type"] == "light") & (table["status"] == "rejected")]
    return {f: r for f, r in zip(excluded["frame"], excluded["reason"], strict=True) if f not in placeholders}


def _screen_dark_lights(used, exclude, session, types, dark_fraction):
    lights = [r for r in used("light", session) if _number(r["_header"], "AFMEDIAN") is not None]
    for ftype in ("dark", "bias"):
        if ftype not in types:
            continue
        levels = [_number(r["_header"], "AFMEDIAN") for r in used(ftype, types[ftype])]
        levels = [v for v in levels if v is not None]
        if levels:
            level, label = float(np.median(levels)), f"{ftype} frames'"
            break
    else:
        return
    if len(lights) < 2:
        return
    medians = np.array([_number(r["_header"], "AFMEDIAN") for r in lights])
    noise = np.nanmedian([_number(r["_header"], "AFNOISE") or np.nan for r in lights])
    typical = float(np.median(medians))
    signal = typical - level
    if not signal > 0:
        return
    for row, median in zip(lights, medians, strict=True):
        if median - level < dark_fraction * signal and typical - median > DARK_GAP_SIGMA * noise:
            exposure = _number(row["_header"], "EXPTIME")
            exposure = f", exposure {exposure:g} s" if exposure is not None else ""
            exclude(
                row,
                f"{row['source']}: looks like a dark, not a light: median {median:.1f} ADU at the "
                f"{label} level {level:.1f} ADU, the lights' median is {typical:.1f} ADU{exposure}",
            )


def _key(path):
    path = Path(path)
    return path.parent.name, path.stem


def excluded_reason(path, screening):
    """Why screening excludes an ingested frame, or None when it is used.

    Parameters
    ----------
    path : str or os.PathLike
        An ingested frame, ``results/{target}/ingest/{type}/{frame}.fits``.
    screening : pandas.DataFrame or str or os.PathLike
        The table of :func:`screen_frames`, or ``screening.csv``.

    Returns
    -------
    str or None
    """
    table = _table(screening)
    ftype, frame = _key(path)
    hit = table[(table["type"] == ftype) & (table["frame"] == frame) & (table["status"] == "rejected")]
    return None if hit.empty else str(hit["reason"].iloc[0])


def usable_paths(paths, screening, log=None):
    """The ingested frames screening keeps, in order; the others logged with their reasons.

    Parameters
    ----------
    paths : sequence of str
        Ingested frames (see :func:`excluded_reason`).
    screening : pandas.DataFrame or str or os.PathLike
        The table of :func:`screen_frames`, or ``screening.csv``.
    log : logging.Logger, optional
        Gets one warning per excluded frame.

    Returns
    -------
    list of str
        ``paths`` without the frames screening excludes (rejected placeholders of ingest stay:
        the master functions count them as skipped).
    """
    table = _table(screening)
    kept = []
    for path in paths:
        reason = excluded_reason(path, table)
        if reason is not None and not _rejected_at_ingest(path, table):
            if log is not None:
                log.warning("%s excluded: %s", path, reason)
            continue
        kept.append(path)
    return kept


def _rejected_at_ingest(path, table):
    # ingest's own rejections are placeholders the consumers already skip and count
    return os.path.exists(path) and is_rejected(read_header(path))


def _table(screening):
    if isinstance(screening, pd.DataFrame):
        return screening
    return pd.read_csv(screening, dtype=str, keep_default_na=False)
