"""Figures of the report: per-frame quality through the night, and run time per rule.

Figures are built with the object-oriented API (:class:`matplotlib.figure.Figure`), never pyplot:
no GUI backend is involved, nothing global changes, and ``Figure.savefig`` renders with Agg.
"""

from __future__ import annotations

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# frames.csv column -> axis label, top to bottom.
QUALITY_PANELS = {
    "fwhm": "FWHM (px)",
    "n_stars": "stars",
    "background": "background (ADU)",
}
REJECTED_COLOR = "tab:red"
# More rejected frames than this are summarised in one line; frames.csv has them all.
MAX_LISTED = 12
MAX_REASON_CHARS = 90


def frame_times(frames):
    """The x axis of the quality plot: DATE-OBS of each frame, or its number when any lacks one.

    Parameters
    ----------
    frames : pandas.DataFrame
        Rows of ``frames.csv`` with a ``date_obs`` column (ISO 8601 strings, UTC as FITS
        DATE-OBS is; missing values allowed).

    Returns
    -------
    x : numpy.ndarray
        ``datetime64[ns]`` (naive, UTC) when every frame has a parseable ``date_obs``; otherwise
        the frame numbers 1..n in table order, as floats.
    label : str
        The axis label saying which of the two it is.
    """
    dates = frames["date_obs"] if "date_obs" in frames else pd.Series(np.nan, index=frames.index)
    times = pd.to_datetime(dates, errors="coerce", utc=True, format="ISO8601")
    if len(times) and times.notna().all():
        return times.dt.tz_convert(None).to_numpy(), "DATE-OBS (UTC)"
    # Half a night without times is still worth plotting, in acquisition (file name) order.
    return np.arange(1, len(frames) + 1, dtype=float), "frame number (no DATE-OBS)"


def quality_plot(frames, *, title=""):
    """FWHM, star count and sky background of every light against time, rejected frames marked.

    Parameters
    ----------
    frames : pandas.DataFrame
        The table of ``results/{target}/frames.csv``: columns ``frame``, ``type``, ``date_obs``,
        ``status`` (``used`` or ``rejected``), ``reason``, ``fwhm``, ``n_stars``, ``background``,
        and optionally ``reference`` (bool). Rows of other types than ``light`` are ignored.
    title : str, optional
        Figure title (the target's name), followed by how many lights were used.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels sharing the time axis. Used lights are joined by a line, the reference frame
        is a star, rejected lights are red crosses (where they were measured) on a red dotted line
        numbered at the top; below the panels one line per rejected frame gives its number, name,
        time and reason. With no lights, a figure that says so.
    """
    lights = frames[frames["type"] == "light"]
    if lights.empty:
        fig = Figure(figsize=(9, 2), layout="constrained")
        fig.text(0.5, 0.5, f"{title}: no light frames".strip(": "), ha="center", va="center")
        return fig
    x, xlabel = frame_times(lights)
    order = np.argsort(x, kind="stable")
    lights, x = lights.iloc[order].reset_index(drop=True), x[order]
    rejected = (lights["status"] == "rejected").to_numpy()
    reference = lights.get("reference", pd.Series(False, index=lights.index)).eq(True).to_numpy()
    used = ~rejected
    lines = _rejection_lines(lights[rejected], x[rejected], xlabel)

    heights = [2.2] * len(QUALITY_PANELS) + ([0.3 + 0.17 * len(lines)] if lines else [])
    fig = Figure(figsize=(9, sum(heights) + 0.6), layout="constrained")
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    axes = [fig.add_subplot(grid[0])]
    axes += [fig.add_subplot(grid[i], sharex=axes[0]) for i in range(1, len(QUALITY_PANELS))]
    for ax, (column, label) in zip(axes, QUALITY_PANELS.items()):
        y = pd.to_numeric(lights[column], errors="coerce").to_numpy(dtype=float)
        ax.plot(x[used], y[used], "o-", color="tab:blue", markersize=4, lw=1, label="used")
        ax.plot(x[reference], y[reference], "*", color="gold", mec="black", ms=13, label="reference")
        ax.plot(x[rejected], y[rejected], "X", color=REJECTED_COLOR, ms=9, label="rejected")
        for xr in x[rejected]:
            ax.axvline(xr, color=REJECTED_COLOR, ls=":", lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        # Only the lowest panel labels the shared time axis.
        ax.tick_params(labelbottom=ax is axes[-1])
    for number, xr in enumerate(x[rejected], start=1):
        axes[0].annotate(
            str(number),
            (xr, 1.0),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            color=REJECTED_COLOR,
            fontsize=8,
        )
    axes[-1].set_xlabel(xlabel)
    if np.issubdtype(x.dtype, np.datetime64):
        locator = mdates.AutoDateLocator()
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.suptitle(f"{title}: {int(used.sum())} of {len(lights)} lights used".strip(": "))
    if lines:
        text = fig.add_subplot(grid[-1])
        text.axis("off")
        text.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    return fig


def _rejection_lines(rejected, x, xlabel):
    """One text line per rejected light: number (as on the plot), frame, time, reason."""
    lines = []
    for number, (row, xr) in enumerate(zip(rejected.itertuples(index=False), x), start=1):
        when = pd.Timestamp(xr).strftime("%H:%M:%S") if xlabel.startswith("DATE") else ""
        reason = str(row.reason) if pd.notna(row.reason) else "no reason recorded"
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        lines.append("  ".join(part for part in (f"{number:>3}", row.frame, when, reason) if part))
    if len(lines) > MAX_LISTED:
        more = len(lines) - MAX_LISTED + 1
        lines = lines[: MAX_LISTED - 1] + [f"     ... and {more} more: see frames.csv"]
    return lines


def runtime_plot(runtimes, *, title="run time per rule"):
    """Total wall-clock time and peak memory of each rule, from the benchmark table.

    Parameters
    ----------
    runtimes : pandas.DataFrame
        The table of :func:`astroflow.report.runtime_table`: one row per job with ``rule``, ``s``
        (wall-clock seconds) and ``max_rss`` (MB).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels of horizontal bars, one bar per rule in the order rules first appear in the
        table (top to bottom): the sum of ``s`` over the rule's jobs, annotated with the number of
        jobs, and the largest ``max_rss`` of any of its jobs.
    """
    per_rule = runtimes.groupby("rule", sort=False).agg(
        seconds=("s", "sum"), jobs=("s", "size"), max_rss=("max_rss", "max")
    )
    fig = Figure(figsize=(9, 1.2 + 0.4 * max(1, len(per_rule))), layout="constrained")
    time_ax, mem_ax = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(per_rule))
    bars = time_ax.barh(y, per_rule["seconds"], color="tab:blue")
    time_ax.bar_label(bars, labels=[f"{n} job{'s' * (n != 1)}" for n in per_rule["jobs"]], padding=3)
    time_ax.set_xlabel("wall-clock time, all jobs (s)")
    time_ax.set_yticks(y, per_rule.index)
    time_ax.invert_yaxis()
    time_ax.margins(x=0.25)
    mem_ax.barh(y, per_rule["max_rss"], color="tab:orange")
    mem_ax.set_xlabel("peak resident memory, largest job (MB)")
    for ax in (time_ax, mem_ax):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    return fig


def planetary_quality_plot(frames, *, title=""):
    """Quality of every frame of a planetary sequence against time, and what became of it.

    Parameters
    ----------
    frames : pandas.DataFrame
        The ``frames.csv`` of a planetary target: ``frame``, ``timestamp`` (ISO or empty),
        ``status`` (``used``, ``unused``, ``rejected``), ``reason``, ``quality``, ``ap_count``.
    title : str, optional
        Figure title (the target's name).

    Returns
    -------
    matplotlib.figure.Figure
        Top: quality (sharpness) of each frame, used frames in blue, unused in grey, rejected
        as red marks at the bottom with their reasons listed under the panels. Bottom: at how
        many alignment points each frame was stacked. The x axis is the timestamp where every
        frame has one, else the frame number.
    """
    frames = frames.reset_index(drop=True)
    x, xlabel = frame_times(frames.rename(columns={"timestamp": "date_obs"}))
    status = frames["status"].astype(str).to_numpy()
    quality = pd.to_numeric(frames["quality"], errors="coerce").to_numpy(dtype=float)
    aps = pd.to_numeric(frames["ap_count"], errors="coerce").fillna(0).to_numpy()
    rejected = status == "rejected"
    lines = _rejection_lines(frames[rejected], x[rejected], xlabel)
    heights = [2.6, 1.6] + ([0.3 + 0.17 * len(lines)] if lines else [])
    fig = Figure(figsize=(9, sum(heights) + 0.6), layout="constrained")
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    ax = fig.add_subplot(grid[0])
    ax2 = fig.add_subplot(grid[1], sharex=ax)
    ax.plot(x, quality, "-", color="0.8", lw=0.8)
    for kind, colour, label in (("used", "tab:blue", "used"), ("unused", "0.55", "not among the best")):
        sel = status == kind
        ax.plot(x[sel], quality[sel], "o", color=colour, ms=3, label=f"{label} ({int(sel.sum())})")
    if rejected.any():
        floor = np.nanmin(quality) if np.isfinite(quality).any() else 0.0
        ax.plot(x[rejected], np.full(int(rejected.sum()), floor), "X", color=REJECTED_COLOR, ms=8,
                label=f"rejected ({int(rejected.sum())})")
        for xr in x[rejected]:
            ax.axvline(xr, color=REJECTED_COLOR, ls=":", lw=1)
    ax.set_ylabel("sharpness")
    ax.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax2.bar(x, aps, width=0.8 if not np.issubdtype(x.dtype, np.datetime64) else 0.0005, color="tab:blue")
    ax2.set_ylabel("alignment points")
    ax2.set_xlabel(xlabel)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{title}: {int((status == 'used').sum())} of {len(frames)} frames used".strip(": "))
    if lines:
        text = fig.add_subplot(grid[-1])
        text.axis("off")
        text.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    return fig


def alignment_points_plot(reference, points, size, *, title=""):
    """The reference window with the alignment point boxes drawn on it.

    Parameters
    ----------
    reference : numpy.ndarray
        ``(h, w)`` or ``(h, w, 3)`` reference (ADU).
    points : numpy.ndarray
        ``(n, 2)`` box corners ``(y, x)`` (px).
    size : int
        Box side (px).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.patches import Rectangle

    data = np.asarray(reference, dtype=float)
    lo, hi = np.percentile(data, [0.5, 99.99])
    shown = np.clip((data - lo) / max(hi - lo, 1e-12), 0, 1)
    h, w = data.shape[:2]
    fig = Figure(figsize=(6, 6 * h / w + 0.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(shown, cmap="gray" if data.ndim == 2 else None, interpolation="nearest")
    for y, x in np.asarray(points).reshape(-1, 2):
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), size, size, fill=False, ec="tab:orange", lw=0.6))
    ax.set_title(f"{title}: {len(points)} alignment points of {size} px".strip(": "), fontsize=10)
    ax.set_axis_off()
    return fig


def deconvolution_plot(history, *, title=""):
    """Convergence of a deconvolution: the quantity it minimises, per iteration.

    Parameters
    ----------
    history : pandas.DataFrame
        Either the Richardson-Lucy log of rule ``deconvolve`` (columns ``cell``, ``iteration``,
        ``relative_change`` and ``chi2``, one row per iteration and PSF cell), or the
        multi-frame log of rule ``planetary_deconvolve`` (``iteration``, ``loss``,
        ``data_loss``, ``tv`` and optionally ``patch`` and ``epoch``: one row per minibatch step).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Richardson-Lucy: the relative change of the image per iteration, one line per cell (log
        scale). Multi-frame: the total loss and its data and TV terms per iteration (log scale),
        one line per patch, with the mean loss of every epoch (minibatches hold different
        frames, so their losses scatter) and epoch boundaries marked.

    Raises
    ------
    ValueError
        If the table has neither layout, or no rows.
    """
    if history.empty:
        raise ValueError("deconvolution history is empty: no iteration was run")
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    if "relative_change" in history:
        for cell, rows in history.groupby("cell"):
            label = f"cell {cell}" if history["cell"].nunique() > 1 else "relative change"
            ax.plot(rows["iteration"], rows["relative_change"], marker=".", label=label)
        ax.set_ylabel("relative change of the image per iteration")
        ax.set_xlabel("Richardson-Lucy iteration")
        kind = "Richardson-Lucy"
    elif "loss" in history:
        patches = history["patch"] if "patch" in history else pd.Series(0, index=history.index)
        for k, (patch, rows) in enumerate(history.groupby(patches)):
            prefix = f"patch {patch}: " if patches.nunique() > 1 else ""
            ax.plot(rows["iteration"], rows["loss"], color="tab:blue", alpha=0.5, lw=0.8,
                    label=f"{prefix}total, per minibatch" if k < 3 else None)
            ax.plot(rows["iteration"], rows["data_loss"], color="tab:orange", alpha=0.5, lw=0.8,
                    label="data term" if k == 0 else None)
            if (rows["tv"] > 0).any():
                ax.plot(rows["iteration"], rows["tv"], color="tab:green", alpha=0.6,
                        label="TV of the latent image (unweighted)" if k == 0 else None)
            if "epoch" in rows:
                # Minibatches hold different frames: the epoch mean is what should fall.
                epochs = rows.groupby("epoch").agg(iteration=("iteration", "max"),
                                                   loss=("loss", "mean"))
                ax.plot(epochs["iteration"], epochs["loss"], color="tab:blue", marker="o", lw=2,
                        label="total, mean over the epoch" if k == 0 else None)
        ax.set_ylabel("loss (minibatch)")
        ax.set_xlabel("iteration (minibatch step)")
        kind = "multi-frame blind deconvolution"
    else:
        raise ValueError(
            f"deconvolution history has columns {list(history.columns)}: expected "
            "relative_change (Richardson-Lucy) or loss (multi-frame)"
        )
    positive = history.select_dtypes("number").gt(0).any().any()
    if positive:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.suptitle(f"{title}: {kind}" if title else kind)
    return fig


def comparison_crops(panels, centre, size, *, zoom=2, restretch=False, gap=4):
    """One row of labelled crops of several versions of an image, side by side.

    Parameters
    ----------
    panels : dict
        ``{label: image}``, images ``(H, W, C)`` (C = 1 or 3) float32 display data in ``[0, 1]``,
        all of one shape; the first is the reference (the input).
    centre : tuple of int
        ``(y, x)`` of the crop, px.
    size : int
        Crop side, px (cut where the image ends).
    zoom : int, optional
        Nearest-neighbour enlargement, so that single pixels show.
    restretch : bool, optional
        Stretch every crop with one MTF autostretch (:func:`astroflow.stretch.auto_stretch`) of
        the first: for linear data shown in a display stretch whose faint levels are dark, so
        that dark holes show as black.
    gap : int, optional
        White columns between the crops, px.

    Returns
    -------
    numpy.ndarray
        ``(size * zoom, n * size * zoom + (n - 1) * gap, 3)`` uint8 RGB, each crop labelled in
        its top-left corner.
    """
    from PIL import Image, ImageDraw

    from astroflow.stretch import auto_stretch

    y, x = centre
    rows, cols = slice(max(y - size // 2, 0), y + size // 2), slice(max(x - size // 2, 0), x + size // 2)
    crops = [np.asarray(image, dtype=np.float32)[rows, cols] for image in panels.values()]
    if restretch:
        stretch = auto_stretch(crops[0], target_background=0.25)
        crops = [stretch.apply(c) for c in crops]
    tiles = []
    for label, crop in zip(panels, crops):
        crop = np.clip(np.nan_to_num(crop), 0.0, 1.0)
        if crop.ndim == 2:
            crop = crop[..., None]
        if crop.shape[2] == 1:
            crop = np.repeat(crop, 3, axis=2)
        tile = Image.fromarray(np.round(crop * 255).astype(np.uint8))
        tile = tile.resize((crop.shape[1] * zoom, crop.shape[0] * zoom), Image.NEAREST)
        ImageDraw.Draw(tile).text((4, 2), label, fill=(255, 255, 0))
        tiles.append(np.asarray(tile))
    spacer = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
    return np.concatenate(sum(([t, spacer] for t in tiles), [])[:-1], axis=1)
