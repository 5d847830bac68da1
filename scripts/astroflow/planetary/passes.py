"""The planetary path over a whole sequence: the three streaming passes of :mod:`astroflow.planetary.lucky`.

Each pass reads the frames once, in order, from a :class:`astroflow.sequence.FrameSequence`
(video, SER or a folder of frames) and keeps only per-frame numbers, the reference and the
samples on disk, so memory does not grow with the number of frames:

1. :func:`analyse_sequence` finds the object and ranks every frame;
2. :func:`align_sequence` builds the reference from the best frames, aligns every frame to it
   and measures every frame at every alignment point;
3. :func:`stack_sequence` stacks each alignment point from its own best frames.

Frames that cannot be used keep their row in the tables, with the reason.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile

import numpy as np
import pandas as pd

from astroflow.checks import check_float, check_int
from astroflow.io.atomic import atomic_write
from astroflow.io.framestore import FrameStore
from astroflow.planetary import lucky

__all__ = [
    "align_sequence",
    "analyse_sequence",
    "deconvolution_frames",
    "write_aligned_frames",
    "write_frames_index",
    "frames_table",
    "master_dark",
    "plan_window",
    "stack_sequence",
]

log = logging.getLogger(__name__)

ANALYSIS_COLUMNS = [
    "index",
    "frame",
    "source",
    "timestamp",
    "status",
    "reason",
    "quality",
    "object_y",
    "object_x",
    "object_height",
    "object_width",
    "area_fraction",
    "touches_edge",
    "background",
    "level",
    "noise",
]


def _progress(i, n, what, every=0.1):
    step = max(1, int(n * every))
    if (i + 1) % step == 0 or i + 1 == n:
        log.info("%s: %d/%d frames", what, i + 1, n)


def master_dark(sequence):
    """Mean of a sequence of dark frames, streamed.

    Parameters
    ----------
    sequence : astroflow.sequence.FrameSequence
        The dark frames.

    Returns
    -------
    dark : numpy.ndarray
        float32, the frames' shape (ADU).
    n_used : int
        Frames averaged (unreadable ones are skipped, with a warning).

    Raises
    ------
    ValueError
        If no dark frame is readable.
    """
    total, n = None, 0
    for frame in sequence.frames():
        if frame.image is None:
            log.warning("dark %s skipped: %s", frame.name, frame.reason)
            continue
        total = frame.image.astype(np.float64) if total is None else total + frame.image
        n += 1
    if n == 0:
        raise ValueError(f"{sequence.source}: no readable dark frame")
    return (total / n).astype(np.float32), n


def _check_dark(dark, image, name):
    if dark is not None and dark.shape != image.shape:
        raise ValueError(
            f"master dark {dark.shape} does not match frame {name} {image.shape}"
        )


def analyse_sequence(sequence, *, dark=None, min_snr=10.0, threshold=0.25, edge_margin=2):
    """Pass 1: find the object in every frame and measure its sharpness.

    Parameters
    ----------
    sequence : astroflow.sequence.FrameSequence
        The frames (ADU).
    dark : numpy.ndarray or None, optional
        Master dark subtracted from every frame.
    min_snr, threshold, edge_margin : optional
        As for :func:`astroflow.lucky.detect_object`.

    Returns
    -------
    pandas.DataFrame
        One row per frame, columns :data:`ANALYSIS_COLUMNS`; ``status`` is ``"ok"`` or
        ``"rejected"`` with the ``reason`` (unreadable, different size, no object).

    Raises
    ------
    ValueError
        If the dark's shape differs from the frames'.
    """
    rows = []
    n = len(sequence)
    for frame in sequence.frames():
        row = dict.fromkeys(ANALYSIS_COLUMNS, math.nan)
        row.update(index=frame.index, frame=frame.name, source=frame.source, timestamp=frame.timestamp)
        if frame.image is None:
            row.update(status="rejected", reason=frame.reason)
        else:
            _check_dark(dark, frame.image, frame.name)
            det, quality = lucky.analyse_frame(
                frame.image, min_snr=min_snr, threshold=threshold, edge_margin=edge_margin, dark=dark
            )
            row.update(background=det.background, level=det.level, noise=det.noise)
            if not det.found:
                row.update(status="rejected", reason=det.reason)
            else:
                row.update(
                    status="ok",
                    reason="",
                    quality=quality,
                    object_y=det.cy,
                    object_x=det.cx,
                    object_height=det.y1 - det.y0,
                    object_width=det.x1 - det.x0,
                    area_fraction=det.area_fraction,
                    touches_edge=det.touches_edge,
                )
        rows.append(row)
        _progress(len(rows) - 1, n, "analyse")
    table = pd.DataFrame(rows, columns=ANALYSIS_COLUMNS)
    table["reason"] = table["reason"].fillna("")
    return table


def plan_window(table, frame_shape, *, mode="auto", padding=0.5):
    """Choose the window and each frame's first position; drop frames whose object is cut.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`analyse_sequence`.
    frame_shape : tuple of int
        ``(H, W)`` of the frames.
    mode : {"auto", "planet", "surface"}, optional
        See :func:`astroflow.lucky.choose_window`.
    padding : float, optional
        Planet mode: window = object size x (1 + padding).

    Returns
    -------
    table : pandas.DataFrame
        A copy with ``window_y``, ``window_x`` (first position estimate) and frames rejected
        where, in planet mode, the object touches the frame edge or the window leaves it.
    mode : str
    size : tuple of int
        ``(h, w)`` of the window.

    Raises
    ------
    ValueError
        If no frame shows an object.
    """
    table = table.copy()
    # Read back from CSV, a column of empty reasons is float NaN: make it text again.
    reason = table["reason"].astype(object)
    table["reason"] = reason.where(reason.notna(), "").astype(str)
    ok = table["status"] == "ok"
    boxes = np.column_stack(
        [
            table["object_height"].fillna(0),
            table["object_width"].fillna(0),
            table["area_fraction"].fillna(0),
            table["touches_edge"].fillna(False).astype(float),
            ok.astype(float),
        ]
    )
    if not ok.any():
        reasons = "; ".join(sorted(set(table["reason"])))[:500]
        raise ValueError(f"no frame shows an object ({reasons})")
    mode, size = lucky.choose_window(frame_shape, boxes, mode=mode, padding=padding)
    H, W = frame_shape
    h, w = size
    table["window_y"] = math.nan
    table["window_x"] = math.nan
    if mode == "surface":
        table.loc[ok, "window_y"] = (H - h) / 2.0
        table.loc[ok, "window_x"] = (W - w) / 2.0
        return table, mode, size
    for i in table.index[ok]:
        row = table.loc[i]
        y0 = round(row["object_y"] - h / 2.0)
        x0 = round(row["object_x"] - w / 2.0)
        if bool(row["touches_edge"]):
            table.loc[i, ["status", "reason"]] = ["rejected", "object cut by the frame edge"]
        elif y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
            table.loc[i, ["status", "reason"]] = [
                "rejected",
                f"object too close to the frame edge for the {h}x{w} window",
            ]
        else:
            table.loc[i, ["window_y", "window_x"]] = [y0, x0]
    return table, mode, size


def align_sequence(
    sequence,
    table,
    size,
    *,
    dark=None,
    reference_percent=10.0,
    reference_min=3,
    ap_size=48,
    ap_min_brightness=0.1,
    ap_min_structure=0.05,
):
    """Pass 2: reference, global alignment, alignment points and their per-frame quality.

    Parameters
    ----------
    sequence : astroflow.sequence.FrameSequence
    table : pandas.DataFrame
        From :func:`plan_window`.
    size : tuple of int
        ``(h, w)`` of the window.
    dark : numpy.ndarray or None, optional
    reference_percent : float, optional
        The reference is the mean of this percentage of the best frames (at least
        ``reference_min``), aligned on the best. Default 10.
    reference_min : int, optional
    ap_size, ap_min_brightness, ap_min_structure : optional
        As for :func:`astroflow.lucky.alignment_points`.

    Returns
    -------
    table : pandas.DataFrame
        A copy with ``shift_y``, ``shift_x`` (global shift found, px) and ``position_y``,
        ``position_x`` (aligned window position); frames whose aligned window leaves the frame
        are rejected.
    reference : numpy.ndarray
        float32 ``(h, w[, C])``.
    points : numpy.ndarray
        int ``(n, 2)`` alignment point corners.
    ap_quality : numpy.ndarray
        float64 ``(N, n)``: quality of every frame at every alignment point (NaN where unused).
    """
    table = table.copy()
    for col in ("shift_y", "shift_x", "position_y", "position_x"):
        table[col] = math.nan
    ok = table["status"] == "ok"
    n_ref = max(reference_min, int(round(ok.sum() * reference_percent / 100.0)))
    best = table[ok].sort_values("quality", ascending=False).head(n_ref)
    wanted = {int(i): k for k, i in enumerate(best["index"])}
    windows = [None] * len(wanted)
    first = dict(zip(table["index"], zip(table["window_y"], table["window_x"])))
    for frame in sequence.frames(sorted(wanted)):
        image = _dark_subtracted(frame.image, dark)
        windows[wanted[frame.index]] = lucky.extract(image, *first[frame.index], size)
    windows = [w for w in windows if w is not None]
    reference = lucky.build_reference(windows)
    ref_lum = lucky.luminance(reference)
    points = lucky.alignment_points(
        reference, size=ap_size, min_brightness=ap_min_brightness, min_structure=ap_min_structure
    )
    log.info("reference from %d frames; %d alignment points of %d px", len(windows), len(points), ap_size)
    ap_quality = np.full((len(table), len(points)), np.nan)
    usable = set(int(i) for i in table.loc[ok, "index"])
    n = len(sequence)
    row_of = dict(zip(table["index"], table.index))
    for frame in sequence.frames(sorted(usable)):
        image = _dark_subtracted(frame.image, dark)
        wy, wx = first[frame.index]
        i = row_of[frame.index]
        aligned_at = lucky.align_window(ref_lum, image, wy, wx, size)
        if aligned_at is None:
            table.loc[i, ["status", "reason"]] = ["rejected", "aligned window leaves the frame"]
            continue
        py, px = aligned_at
        dy, dx = py - wy, px - wx
        aligned = lucky.extract(image, py, px, size)
        table.loc[i, ["shift_y", "shift_x", "position_y", "position_x"]] = [dy, dx, py, px]
        ap_quality[i] = lucky.ap_qualities(lucky.luminance(aligned), points, ap_size)
        _progress(frame.index, n, "align")
    return table, reference, points, ap_quality


def stack_sequence(
    sequence,
    table,
    reference,
    points,
    ap_quality,
    *,
    ap_size=48,
    dark=None,
    keep_percent=25.0,
    keep_count=0,
    search=8,
    sigma_low=3.0,
    sigma_high=3.0,
    max_iters=5,
    drizzle=1.0,
    pixfrac=0.7,
    workdir=None,
):
    """Pass 3: stack every alignment point from its own best frames and blend them.

    Parameters
    ----------
    sequence : astroflow.sequence.FrameSequence
    table : pandas.DataFrame
        From :func:`align_sequence`.
    reference : numpy.ndarray
        ``(h, w[, C])`` reference window.
    points : numpy.ndarray
        ``(n, 2)`` alignment point corners.
    ap_quality : numpy.ndarray
        ``(N, n)`` quality of each frame at each point.
    ap_size : int, optional
        Box side (px).
    dark : numpy.ndarray or None, optional
    keep_percent, keep_count : optional
        How many frames each point keeps (see :func:`astroflow.lucky.select_frames`); a
        ``keep_count`` larger than the usable frames keeps them all, with a warning.
    search : int, optional
        Largest local shift (px).
    sigma_low, sigma_high, max_iters : optional
        Sigma clipping.
    drizzle, pixfrac : optional
        Output scale (1, 1.5 or 2) and drizzle drop size.
    workdir : str or None, optional
        Folder for the on-disk samples (a temporary folder by default).

    Returns
    -------
    image : numpy.ndarray
        float32 stack ``(h * drizzle, w * drizzle[, C])`` (ADU).
    coverage : numpy.ndarray
        float32 alignment point weight map.
    usage : pandas.DataFrame
        ``index``, ``ap_count`` (points the frame was stacked at), ``in_fill`` (in the fill stack).
    stats : dict
        ``n_keep``, ``rejected_fraction``, ``local_fallbacks``, ``local_measured``.
    """
    ok = (table["status"] == "ok").to_numpy()
    n_usable = int(ok.sum())
    if keep_count and keep_count > n_usable:
        log.warning(
            "keep_count %d is more than the %d usable frames: stacking all of them",
            keep_count,
            n_usable,
        )
    quality = np.where(ok[:, None], ap_quality, np.nan)
    selections = [
        table["index"].to_numpy()[lucky.select_frames(quality[:, a], keep_percent=keep_percent, keep_count=keep_count)]
        for a in range(len(points))
    ]
    global_q = np.where(ok, table["quality"].to_numpy(dtype=float), np.nan)
    fill = table["index"].to_numpy()[
        lucky.select_frames(global_q, keep_percent=keep_percent, keep_count=keep_count)
    ]
    n_keep = len(fill)
    log.info("stacking the best %d of %d usable frames at each of %d alignment points", n_keep, n_usable, len(points))
    position = dict(zip(table["index"], zip(table["position_y"], table["position_x"])))
    usage = {int(i): 0 for i in table["index"]}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="astroflow-ap-") as tmp:
        stacker = lucky.PatchStacker(reference, points, ap_size, selections, fill, tmp, search=search)
        wanted = stacker.wanted()
        for k, frame in enumerate(sequence.frames(wanted)):
            image = _dark_subtracted(frame.image, dark)
            py, px = position[frame.index]
            usage[frame.index] = stacker.add(frame.index, image, py, px)
            _progress(k, len(wanted), "stack")
        image, coverage, stats = stacker.finish(
            sigma_low=sigma_low, sigma_high=sigma_high, max_iters=max_iters, drizzle=drizzle, pixfrac=pixfrac
        )
        stacker.close()
    fill_set = set(int(i) for i in fill)
    usage = pd.DataFrame(
        {
            "index": list(usage),
            "ap_count": list(usage.values()),
            "in_fill": [i in fill_set for i in usage],
        }
    )
    stats["n_keep"] = n_keep
    return image, coverage, usage, stats


def _dark_subtracted(image, dark):
    image = np.asarray(image, dtype=np.float32)
    return image - dark if dark is not None else image


FRAMES_COLUMNS = [
    "frame",
    "type",
    "source",
    "sha256",
    "index",
    "timestamp",
    "status",
    "reason",
    "quality",
    "quality_rank",
    "object_y",
    "object_x",
    "object_height",
    "object_width",
    "shift_y",
    "shift_x",
    "position_y",
    "position_x",
    "background",
    "noise",
    "ap_count",
    "in_fill",
]


def frames_table(alignment, usage):
    """The frames.csv of a planetary target: one row per frame, with what became of it.

    Parameters
    ----------
    alignment : pandas.DataFrame
        From :func:`align_sequence` (with the ``sha256`` column the analyse step adds).
    usage : pandas.DataFrame
        From :func:`stack_sequence`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FRAMES_COLUMNS`. ``status`` is ``used`` (stacked at one alignment point
        or more, or in the fill stack), ``unused`` (usable, but not among the best) or
        ``rejected`` (with the ``reason``); ``quality_rank`` is 1 for the sharpest frame.
    """
    table = alignment.merge(usage, on="index", how="left")
    table["reason"] = table["reason"].fillna("").astype(str)
    table["status"] = table["status"].astype(str)
    table["type"] = "light"
    table["ap_count"] = table["ap_count"].fillna(0).astype(int)
    table["in_fill"] = table["in_fill"].fillna(False).astype(bool)
    ok = table["status"] == "ok"
    used = ok & ((table["ap_count"] > 0) | table["in_fill"])
    table.loc[used, "status"] = "used"
    table.loc[ok & ~used, "status"] = "unused"
    table.loc[ok & ~used, "reason"] = "not among the best frames"
    rank = table["quality"].where(table["status"] != "rejected").rank(ascending=False, method="first")
    table["quality_rank"] = rank.astype("Int64")
    for column in FRAMES_COLUMNS:
        if column not in table:
            table[column] = math.nan
    return table[FRAMES_COLUMNS]


def baselines(sequence, table, size, *, dark=None):
    """What a lucky stack is measured against: the mean of all frames and the best frame.

    Both are taken at the frames' globally aligned window positions, so they cover exactly the
    stack's field.

    Parameters
    ----------
    sequence : astroflow.sequence.FrameSequence
    table : pandas.DataFrame
        From :func:`align_sequence` (or frames.csv): ``index``, ``status``, ``quality``,
        ``position_y``, ``position_x``.
    size : tuple of int
        ``(h, w)`` of the window.
    dark : numpy.ndarray or None, optional

    Returns
    -------
    mean_all : numpy.ndarray
        float32 ``(h, w[, C])``: mean of every usable frame, globally aligned.
    best : numpy.ndarray
        float32 ``(h, w[, C])``: the frame ranked sharpest.
    """
    usable = table[table["status"].isin(["ok", "used", "unused"])]
    best_index = int(usable.sort_values("quality", ascending=False).iloc[0]["index"])
    position = dict(zip(usable["index"], zip(usable["position_y"], usable["position_x"])))
    total, n, best = None, 0, None
    for frame in sequence.frames(sorted(int(i) for i in position)):
        image = _dark_subtracted(frame.image, dark)
        window = lucky.extract(image, *position[frame.index], size)
        total = window.astype(np.float64) if total is None else total + window
        n += 1
        if frame.index == best_index:
            best = window
    return (total / n).astype(np.float32), best


def detail_measures(images, *, bands=((0.02, 0.08), (0.08, 0.2))):
    """Detail and noise of a set of images of the same field, for the comparisons of the note.

    Parameters
    ----------
    images : dict of str to numpy.ndarray
        Images ``(h, w[, C])`` of the same field (ADU).
    bands : tuple of tuple of float, optional
        Frequency bands (cycles/px) of :func:`astroflow.lucky.mid_frequency_power`.

    Returns
    -------
    pandas.DataFrame
        One row per image: ``power_<lo>-<hi>`` for each band (noise-corrected, over the mean²),
        ``noise_floor`` (power at 0.4-0.5 cycles/px over the mean², where the atmosphere leaves
        only noise) and ``sharpness`` (:func:`astroflow.lucky.sharpness`).
    """
    rows = []
    for name, image in images.items():
        lum = lucky.luminance(image).astype(np.float64)
        row = {"image": name}
        for lo, hi in bands:
            row[f"power_{lo:g}-{hi:g}"] = lucky.mid_frequency_power(image, band=(lo, hi))
        mean = lum.mean()
        win = np.outer(np.hanning(lum.shape[0]), np.hanning(lum.shape[1]))
        power = np.abs(np.fft.fft2((lum - mean) * win)) ** 2 / win.sum() ** 2
        radius = np.hypot(np.fft.fftfreq(lum.shape[0])[:, None], np.fft.fftfreq(lum.shape[1])[None, :])
        row["noise_floor"] = float(power[(radius >= 0.4) & (radius < 0.5)].mean() / mean**2)
        row["sharpness"] = lucky.sharpness(lum.astype(np.float32))
        rows.append(row)
    return pd.DataFrame(rows)


def deconvolution_frames(table, *, keep_percent=50.0, max_frames):
    """The frames a multi-frame deconvolution uses: the sharpest of the globally aligned ones.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`align_sequence`: ``index``, ``status``, ``quality``, ``position_y``,
        ``position_x``.
    keep_percent : float, optional
        Percentage (0-100] of the aligned frames to keep, best first (at least one frame).
        Default 50, as ``deconvolution.multiframe.keep_percent``.
    max_frames : int
        At most this many frames; 0 is no limit (the pipeline's:
        ``deconvolution.multiframe.max_frames``).

    Returns
    -------
    pandas.DataFrame
        The chosen rows, sorted by frame index.

    Raises
    ------
    ValueError
        If ``keep_percent`` is outside (0, 100], ``max_frames`` < 0, or no frame is aligned.
    """
    keep_percent = check_float("keep_percent", keep_percent, 0.0, strict=True, high=100.0)
    max_frames = check_int("max_frames", max_frames, 0)
    aligned = table[table["status"].isin(["ok", "used", "unused"])]
    aligned = aligned[np.isfinite(aligned["position_y"]) & np.isfinite(aligned["position_x"])]
    if aligned.empty:
        raise ValueError("no aligned frame to deconvolve: every frame was rejected")
    n = max(1, int(round(len(aligned) * keep_percent / 100.0)))
    if max_frames:
        n = min(n, max_frames)
    best = aligned.sort_values("quality", ascending=False).head(n)
    return best.sort_values("index")


def write_aligned_frames(sequence, chosen, size, path, *, dark=None):
    """Write the chosen frames' aligned windows to a frame store, in frame index order.

    The file is an :class:`astroflow.io.framestore.FrameStore` of ``N`` float32 windows of
    ``(h, w[, C])`` (raw, no header), written one window at a time, so the process's memory
    does not grow with the number of frames, into a temporary file renamed to ``path`` at the
    end.

    Parameters
    ----------
    sequence : astroflow.io.sequence.FrameSequence
    chosen : pandas.DataFrame
        From :func:`deconvolution_frames`.
    size : tuple of int
        ``(h, w)`` of the window (the lucky stack's, without drizzle).
    path : str or os.PathLike
        Output file.
    dark : numpy.ndarray or None, optional
        Master dark (ADU) subtracted first.

    Returns
    -------
    dict
        ``shape`` (``[N, h, w]`` or ``[N, h, w, C]``), ``indices`` (frame indices, in file
        order), ``frames`` (frame names) and ``dtype`` (``"float32"``): the file's description,
        for a JSON sidecar.

    Raises
    ------
    ValueError
        If a chosen frame's window leaves the frame.
    """
    position = dict(zip(chosen["index"].astype(int), zip(chosen["position_y"], chosen["position_x"])))
    order = sorted(position)
    slot = {index: k for k, index in enumerate(order)}
    names = dict(zip(chosen["index"].astype(int), chosen.get("frame", chosen["index"]).astype(str)))
    shape = (len(order), *size, *sequence.shape[2:])

    def write(tmp):
        with FrameStore(tmp, shape) as store:
            for frame in sequence.frames(order):
                image = _dark_subtracted(frame.image, dark)
                window = lucky.extract(image, *position[frame.index], size)
                if window is None:
                    raise ValueError(f"{sequence.source}: frame {frame.index}: aligned window leaves the frame")
                store.write(slot[frame.index], window)
                _progress(slot[frame.index], len(order), "deconvolution frames")

    # a store killed half-way would have its full size (it is made zero-filled): only the rename
    # tells a finished one
    atomic_write(path, write)
    return {
        "shape": [int(n) for n in shape],
        "indices": order,
        "frames": [names[i] for i in order],
        "dtype": "float32",
    }


def write_frames_index(path, description):
    """Write the JSON sidecar of a frames file (see :func:`write_aligned_frames`)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(description, indent=1)))
