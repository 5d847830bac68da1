"""Frame weights and frame selection by measured quality, for the stacking of lights.

The measures come from :mod:`astroflow.deepsky.quality` (median Moffat FWHM, eccentricity, clean
star count, sky level and noise of each frame) and from star matching in
:mod:`astroflow.deepsky.register` (the flux of each frame's stars relative to the same stars in
the reference). Every decision is written into the per-frame table (``status``, ``reason`` and the
weight columns), which becomes ``registration.csv`` and then ``frames.csv``.

Weights (each normalised to a mean of 1 over the frames used):

``noise``
    ``1 / noise^2``: the inverse background variance, the optimal weight of frames that differ
    only in noise (the "noise" weighting of Siril and of PixInsight's ImageIntegration).
``psf``
    ``(n_stars / median n_stars) * sqrt(1 - e^2) / FWHM^2``: the PSF quality of the frame alone,
    after Siril's FWHM and star-count weighting and PixInsight SubframeSelector's FWHM,
    eccentricity and star-count terms. A point source's peak falls as ``1 / FWHM^2`` and trailing
    (eccentricity ``e``) spreads it along one axis by ``a / b = 1 / sqrt(1 - e^2)``; the star
    count follows transparency and depth.
``psf_signal``
    ``(flux_ratio / (FWHM * noise))^2``, in the manner of PixInsight's PSF Signal Weight
    (PSFSW; J. Conejero, E. L. Radice and R. Sartori, "New Image Weighting Algorithms in
    PixInsight", https://pixinsight.com/doc/docs/ImageWeighting/ImageWeighting.html): the
    signal of the frame's PSF-fitted stars over its noise, so that sharper frames with more
    signal weigh more. ``flux_ratio`` is the median ratio of the aperture fluxes of the matched
    stars to the same stars in the reference (transparency, exposure and airmass at once, free of
    the bias of comparing different stars); the square of ``flux / (FWHM * noise)`` is, up to a
    constant, the inverse variance of the PSF-fitted flux of a background-limited star (Horne
    1986, PASP 98, 609: S/N^2 = F^2 sum(P^2) / sigma^2 with sum(P^2) proportional to
    1 / FWHM^2), i.e. the weight that maximises the S/N of a point source in the stack.
``none``
    1 for every frame used.

Selection: outliers in FWHM, eccentricity, background (too high) and star count (too low) beyond
``k`` robust sigmas (1.4826 x the median absolute deviation) of the median of the frames, each
test with its own ``k`` (0 switches it off); then "keep the best N percent" by the chosen weight.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "OUTLIER_MEASURES",
    "WEIGHTINGS",
    "keep_best",
    "reject_outliers",
    "set_weights",
    "weight_columns",
]

WEIGHTINGS = ("noise", "psf", "psf_signal", "none")
"""Names of the weighting schemes of :func:`set_weights`."""

# measure -> (column, side of a bad frame: +1 too high, -1 too low, noun, smallest sigma as a
# fraction of the median, smallest sigma in the measure's unit)
OUTLIER_MEASURES = {
    "fwhm": ("fwhm", +1, "FWHM", 0.10, 0.0),
    "eccentricity": ("eccentricity", +1, "eccentricity", 0.0, 0.05),
    "background": ("background", +1, "background", 0.10, 0.0),
    "n_stars": ("n_stars", -1, "star count", 0.10, 0.0),
}
"""Measures of :func:`reject_outliers`: the column, the side on which a frame is bad, its name,
and the floor of the robust sigma (relative to the median, absolute)."""

_MAD_TO_SIGMA = 1.4826


def weight_columns(table):
    """The weight of every scheme for each frame of a per-frame table.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per frame with ``status`` ("used" or "rejected"), ``fwhm`` (px),
        ``eccentricity``, ``n_stars``, ``noise`` (ADU) and ``flux_ratio`` (median flux of the
        matched stars relative to the reference; NaN where unknown).

    Returns
    -------
    pandas.DataFrame
        Same index, columns ``weight_noise``, ``weight_psf`` and ``weight_psf_signal``
        (float64), each normalised to a mean of 1 over the used frames where it is finite;
        NaN where a measure is missing. See the module docstring for the definitions.
    """
    used = table["status"] == "used"
    fwhm = table["fwhm"].astype(float)
    noise = table["noise"].astype(float)
    stars = table["n_stars"].astype(float)
    median_stars = float(np.median(stars[used])) if used.any() else np.nan
    roundness = np.sqrt(np.clip(1.0 - table["eccentricity"].astype(float) ** 2, 0.0, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = {
            "weight_noise": 1.0 / noise**2,
            "weight_psf": (stars / median_stars) * roundness / fwhm**2,
            "weight_psf_signal": (table["flux_ratio"].astype(float) / (fwhm * noise)) ** 2,
        }
    out = table[[]].copy()
    for column, values in raw.items():
        values = values.where(np.isfinite(values) & (values > 0))
        scale = values[used].mean()
        out[column] = values / scale if np.isfinite(scale) and scale > 0 else np.nan
    return out


def set_weights(table, weighting):
    """Write the weight columns and the stacking ``weight`` of the chosen scheme into ``table``.

    Parameters
    ----------
    table : pandas.DataFrame
        As in :func:`weight_columns`; modified in place.
    weighting : {"noise", "psf", "psf_signal", "none"}
        Scheme of the ``weight`` column (see the module docstring).

    Returns
    -------
    pandas.DataFrame
        ``table``, with ``weight_noise``, ``weight_psf``, ``weight_psf_signal`` and ``weight``
        (mean 1 over the used frames, 0 for rejected ones). A used frame whose chosen weight
        cannot be computed (a missing measure) gets the mean weight, 1.

    Raises
    ------
    ValueError
        If ``weighting`` is unknown.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {list(WEIGHTINGS)}")
    columns = weight_columns(table)
    for column in columns:
        table[column] = columns[column]
    used = table["status"] == "used"
    table["weight"] = 0.0
    if weighting == "none":
        table.loc[used, "weight"] = 1.0
    else:
        chosen = table.loc[used, f"weight_{weighting}"].fillna(1.0)
        table.loc[used, "weight"] = chosen / chosen.mean()
    return table


def reject_outliers(table, limits, groups=None):
    """Reject frames whose quality lies beyond ``k`` robust sigmas of the median, per measure.

    For each measure the median and the robust sigma (1.4826 x MAD) are taken over the frames
    still used, within each group of comparable frames (same exposure and filter: a 60 s light
    has twice the sky of a 30 s one, an H-alpha light a fraction of an L one's); a group of
    fewer than 3 used frames is not tested. The sigma has a floor (10 % of the median for FWHM,
    background and star count, 0.05 for eccentricity), so that nearly identical frames - a
    simulated night, a short run - are not split by measurement noise. A frame is rejected if
    it lies more than ``k`` sigmas on the bad side: FWHM, eccentricity or background too high,
    star count too low. Measures are tested in the order of :data:`OUTLIER_MEASURES`, each on
    the frames the earlier tests left.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-frame table with ``status``, ``reason`` and the measure columns; modified in place.
    limits : mapping of str to float
        ``k`` per measure name of :data:`OUTLIER_MEASURES` (``fwhm``, ``eccentricity``,
        ``background``, ``n_stars``); 0 or a missing name switches that test off.
    groups : array_like or None, optional
        One label per row of ``table`` (e.g. ``"60|L"``, exposure and filter); None (default)
        puts every frame in one group.

    Returns
    -------
    pandas.DataFrame
        ``table``, rejected frames with ``status`` "rejected" and a ``reason`` such as
        ``"FWHM outlier: 5.20 px > median 3.01 + 5.0 sigma (0.25)"``.

    Raises
    ------
    ValueError
        If ``limits`` names an unknown measure or a negative ``k``.
    """
    unknown = set(limits) - set(OUTLIER_MEASURES)
    if unknown:
        raise ValueError(
            f"unknown outlier measure(s) {sorted(unknown)}; expected {list(OUTLIER_MEASURES)}"
        )
    labels = np.zeros(len(table), dtype=int) if groups is None else np.asarray(groups)
    for name, (column, side, noun, relative_floor, absolute_floor) in OUTLIER_MEASURES.items():
        k = float(limits.get(name) or 0.0)
        if k < 0:
            raise ValueError(f"outlier limit of {name} must be >= 0, got {k}")
        if k == 0:
            continue
        for label in np.unique(labels):
            values = table[column].astype(float)
            used = (table["status"] == "used") & np.isfinite(values) & (labels == label)
            if used.sum() < 3:
                continue
            median = float(np.median(values[used]))
            sigma = max(
                _MAD_TO_SIGMA * float(np.median(np.abs(values[used] - median))),
                relative_floor * abs(median),
                absolute_floor,
            )
            if sigma == 0:
                continue
            bad = used & (side * (values - (median + side * k * sigma)) > 0)
            relation, sign = (">", "+") if side > 0 else ("<", "-")
            for idx in table.index[bad]:
                table.loc[idx, ["status", "reason"]] = [
                    "rejected",
                    f"{noun} outlier: {values[idx]:.4g} {relation} median {median:.4g} "
                    f"{sign} {k:g} sigma ({sigma:.3g})",
                ]
    return table


def keep_best(table, percent, by, *, keep=()):
    """Keep the best ``percent`` of the used frames by a weight column; reject the others.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-frame table with ``status``, ``reason`` and the column ``by``; modified in place.
    percent : float
        Share of the used frames to keep, in (0, 100]; at least one frame is kept, and the
        count is rounded up (``ceil(percent / 100 * n_used)``).
    by : str
        Column to rank by, higher is better (e.g. ``weight_psf_signal``); a NaN ranks last.
    keep : iterable of index labels, optional
        Frames kept whatever their rank (the registration reference); they count towards the
        kept share. Default none.

    Returns
    -------
    pandas.DataFrame
        ``table``, frames beyond the share with ``status`` "rejected" and a reason such as
        ``"not among the best 50% by weight_psf_signal (0.41, rank 9 of 12)"``.

    Raises
    ------
    ValueError
        If ``percent`` is not in (0, 100].
    """
    if not 0 < percent <= 100:
        raise ValueError(f"keep percent must be in (0, 100], got {percent}")
    used = table.index[table["status"] == "used"]
    n_keep = max(1, int(np.ceil(percent / 100.0 * len(used) - 1e-9)))
    if n_keep >= len(used):
        return table
    score = table.loc[used, by].astype(float).fillna(-np.inf)
    ranked = list(score.sort_values(ascending=False, kind="stable").index)
    forced = [idx for idx in ranked if idx in set(keep)]
    kept = set(forced)
    for idx in ranked:
        if len(kept) >= max(n_keep, len(forced)):
            break
        kept.add(idx)
    for rank, idx in enumerate(ranked, start=1):
        if idx not in kept:
            table.loc[idx, ["status", "reason"]] = [
                "rejected",
                f"not among the best {percent:g}% by {by} "
                f"({table.at[idx, by]:.3g}, rank {rank} of {len(ranked)})",
            ]
    return table
