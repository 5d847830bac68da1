"""Calibration: master bias, dark and flat, light calibration and cosmetic correction.

The arithmetic (bias and dark subtraction with exposure scaling, flat division) and the
sigma-clipped combination of frames into masters are ccdproc's (Craig et al. 2017,
https://ccdproc.readthedocs.io). What is ours is the choice of what to apply: black levels
of DSLR raws stand in for a missing master bias, darks are scaled to each frame's exposure when
their bias has been removed (and only then), and flats are normalised per CFA colour.

A master is a ``(data, header)`` pair, as :func:`astroflow.fitsio.read_image` returns and
:func:`astroflow.fitsio.write_image` takes. Its header records ``IMAGETYP``
(``MASTER BIAS``, ``MASTER DARK``, ``MASTER FLAT``), ``NCOMBINE`` (frames combined),
``NSKIPPED`` (rejected placeholders skipped) and, for a master dark, ``EXPTIME`` (s) and
``BIASSUB`` (False when the dark still holds the bias and so cannot be scaled).

CFA mosaics stay mosaics here: every neighbourhood operation on a mosaic uses neighbours of the
same colour, two pixels apart.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData
from ccdproc import combine, flat_correct, subtract_bias, subtract_dark
from scipy import ndimage

from astroflow.calibration.debayer import cfa_colour_cells, validate_pattern
from astroflow.checks import check_float
from astroflow.io.fits import is_rejected, read_header, read_image

log = logging.getLogger(__name__)

SKY_FLAT_TYPE = "SKY"
"""``FLATTYPE`` of a sky flat's header (a master flat from flat frames has none); here, not in
:mod:`astroflow.calibration.skyflat`, so that calibrating a light does not import the sky flat's
registration and its libraries (about 0.4 s of every calibrate_light job)."""

# Normal-distribution sigma from the median absolute deviation.
_MAD_TO_SIGMA = 1.482602218505602
# Keywords a master inherits from its frames when they all agree.
_CARRIED = (
    "INSTRUME", "BAYERPAT", "ISOSPEED", "GAIN", "EGAIN", "OFFSET", "XBINNING", "YBINNING",
    "SET-TEMP", "FILTER",
)  # fmt: skip
_CELLS = ((0, 0), (0, 1), (1, 0), (1, 1))
# Camera levels of the raw ADU, void once a light is calibrated.
_CAMERA_LEVELS = ("BLACKLVL",) + tuple(f"BLACK{dy}{dx}" for dy, dx in _CELLS) + ("WHITELVL",)
# The 8 neighbours of a pixel, without the pixel itself.
_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)


class CalibrationWarning(UserWarning):
    """A calibration step was skipped or done in a degraded way (no bias, unscaled dark...)."""


def master_bias(paths, *, method="average", sigma_low=3.0, sigma_high=3.0, memory_mb=1024):
    """Combine bias frames into a master bias.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Ingested bias FITS files; rejected placeholders are skipped and counted.
    method : {"average", "median"}, optional
        ccdproc combine method after sigma clipping.
    sigma_low, sigma_high : float or None, optional
        Clipping thresholds in robust sigmas (median and MAD std across frames, per pixel);
        ``None`` for both disables clipping.
    memory_mb : float, optional
        Memory budget of the combination (MiB); ccdproc combines in tiles to stay within it.

    Returns
    -------
    data : numpy.ndarray
        float32 ADU, shape of the frames.
    header : astropy.io.fits.Header
        ``IMAGETYP = 'MASTER BIAS'``, ``NCOMBINE``, ``NSKIPPED``, ``COMBMETH`` and HISTORY.

    Raises
    ------
    ValueError
        If no usable frame is left, or a frame's shape or Bayer pattern differs from the first.
    """
    frames, skipped = _usable_frames(paths, "bias")
    combined = _combine((read_image(path)[0] for path, _ in frames), method, sigma_low, sigma_high, memory_mb)
    header = _master_header("MASTER BIAS", frames, skipped, method)
    header.add_history(f"master bias: {method} of {len(frames)} frames, sigma clip {sigma_low}/{sigma_high}")
    return combined, header


def master_dark(paths, master_bias=None, *, method="average", sigma_low=3.0, sigma_high=3.0, memory_mb=1024):
    """Combine dark frames into a master dark of one exposure.

    Each dark loses its bias (the master bias, or else the BLACKLVL of a DSLR raw) and is
    scaled to the common exposure (the one most darks share; the longest on a tie) before the
    combination. Without a master bias or black level the dark keeps its bias, cannot be scaled,
    and only the darks of the common exposure are combined.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Ingested dark FITS files; rejected placeholders are skipped and counted.
    master_bias : tuple of (numpy.ndarray, astropy.io.fits.Header), optional
        Master bias, same shape as the darks.
    method, sigma_low, sigma_high, memory_mb
        As in :func:`master_bias`.

    Returns
    -------
    data : numpy.ndarray
        float32 ADU of dark signal (plus bias when ``BIASSUB`` is False) for ``EXPTIME``.
    header : astropy.io.fits.Header
        ``IMAGETYP = 'MASTER DARK'``, ``EXPTIME`` (s; absent if the darks gave none),
        ``BIASSUB``, ``NCOMBINE``, ``NSKIPPED``, ``COMBMETH`` and HISTORY.

    Raises
    ------
    ValueError
        If no usable frame is left, shapes differ, or darks of different exposures need
        scaling and one has no EXPTIME.

    Warns
    -----
    CalibrationWarning
        When the bias cannot be removed (the dark then cannot be scaled) or darks of other
        exposures are left out for that reason.
    """
    frames, skipped = _usable_frames(paths, "dark")
    history = []
    use_black = master_bias is None and all(_has_black_level(h) for _, h in frames)
    bias_removed = master_bias is not None or use_black
    if master_bias is not None:
        history.append("dark: master bias subtracted from each dark")
    elif use_black:
        history.append("dark: BLACKLVL subtracted from each dark (no master bias)")
    else:
        _warn(
            "master dark: no master bias and no BLACKLVL in the dark headers: the master dark keeps "
            "the bias and cannot be scaled to other exposures"
        )
    exposures = [h.get("EXPTIME") for _, h in frames]
    known = [float(t) for t in exposures if t is not None]
    common = None
    if known:
        counts = Counter(known)
        common = max(counts, key=lambda t: (counts[t], t))
    if len(set(exposures)) > 1:
        if bias_removed:
            for (path, _), t in zip(frames, exposures, strict=True):
                if t is None:
                    raise ValueError(
                        f"{path}: dark has no EXPTIME: cannot scale it to the common exposure {common} s"
                    )
            history.append(f"dark: darks of {sorted(set(known))} s scaled to {common} s")
        else:
            left_out = [p for (p, _), t in zip(frames, exposures, strict=True) if t != common]
            frames = [(p, h) for p, h in frames if h.get("EXPTIME") == common]
            _warn(
                f"master dark: darks keep their bias and cannot be scaled: only the {len(frames)} darks "
                f"of {common} s are combined, {len(left_out)} of other exposures left out"
            )
            history.append(
                f"dark: {len(left_out)} darks of other exposures than {common} s left out (bias inside)"
            )
    elif common is None:
        _warn("master dark: the darks have no EXPTIME: the master dark cannot be scaled to other exposures")

    def prepared():
        for path, header in frames:
            data, _ = read_image(path)
            data, _ = _remove_bias(data, header, master_bias, f"dark {path}", use_black)
            t = header.get("EXPTIME")
            if bias_removed and t is not None and float(t) != common:
                data = data * np.float32(common / float(t))
            yield data

    combined = _combine(prepared(), method, sigma_low, sigma_high, memory_mb)
    header = _master_header("MASTER DARK", frames, skipped, method)
    if common is not None:
        header["EXPTIME"] = (common, "[s] exposure of the master dark")
    header["BIASSUB"] = (bool(bias_removed), "bias removed: dark can be scaled by exposure")
    for line in history + [
        f"master dark: {method} of {len(frames)} frames, sigma clip {sigma_low}/{sigma_high}"
    ]:
        header.add_history(line)
    return combined, header


def master_flat(
    paths,
    master_bias=None,
    master_dark=None,
    *,
    method="average",
    sigma_low=3.0,
    sigma_high=3.0,
    memory_mb=1024,
):
    """Combine flat frames into a master flat normalised to 1 per CFA colour.

    Each flat loses its bias (master bias, else BLACKLVL) and its dark current (the master dark
    scaled from its exposure to the flat's, when the dark's bias was removed; a master darkflat of
    the flats' exposure can be passed as ``master_dark``), is divided by its own median per
    colour (R, G1+G2, B of the mosaic; each channel of RGB; the whole image for mono) so that
    flats of different brightness and lamp colour combine, and the combination is normalised
    the same way.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Ingested flat FITS files; rejected placeholders are skipped and counted.
    master_bias, master_dark : tuple of (numpy.ndarray, astropy.io.fits.Header), optional
        Masters of the same shape as the flats.
    method, sigma_low, sigma_high, memory_mb
        As in :func:`master_bias`.

    Returns
    -------
    data : numpy.ndarray
        float32, dimensionless, median 1 in each colour.
    header : astropy.io.fits.Header
        ``IMAGETYP = 'MASTER FLAT'``, ``NCOMBINE``, ``NSKIPPED``, ``COMBMETH``, ``BAYERPAT``
        when the flats are a mosaic, and HISTORY.

    Raises
    ------
    ValueError
        If no usable frame is left, shapes differ, or a calibrated flat has a median of a
        colour that is not positive (not a flat).

    Warns
    -----
    CalibrationWarning
        For each skipped step: no bias, no dark, a dark that cannot be scaled.
    """
    frames, skipped = _usable_frames(paths, "flat")
    pattern = frames[0][1].get("BAYERPAT")
    dark_holds_bias = master_dark is not None and not master_dark[1].get("BIASSUB", True)
    use_black = master_bias is None and not dark_holds_bias and all(_has_black_level(h) for _, h in frames)
    history = []
    if dark_holds_bias:
        if master_bias is not None:
            _warn("master flat: master bias not applied: the master dark already holds the bias")
        history.append("flat: bias left to the master dark, which holds it")
        master_bias = None
    elif master_bias is not None:
        history.append("flat: master bias subtracted")
    elif use_black:
        history.append("flat: BLACKLVL subtracted (no master bias)")
    else:
        _warn(
            "master flat: no master bias and no BLACKLVL: the flats keep their bias, so their normalisation is off"
        )
    if master_dark is None:
        _warn("master flat: no master dark: dark current left in the flats")
    notes = {}

    def prepared():
        for path, header in frames:
            data, _ = read_image(path)
            data, _ = _remove_bias(data, header, master_bias, f"flat {path}", use_black)
            if master_dark is not None:
                data, note, degraded = _remove_dark(data, header, master_dark, f"flat {path}")
                notes[note] = degraded
            yield _normalise(data, pattern, f"flat {path}")

    combined = _combine(prepared(), method, sigma_low, sigma_high, memory_mb)
    combined = _normalise(combined, pattern, "master flat")
    for note, degraded in sorted(notes.items()):
        if degraded:
            _warn(f"master flat: {note}")
        history.append(f"flat: {note}")
    header = _master_header("MASTER FLAT", frames, skipped, method)
    for line in history + [
        f"master flat: each flat divided by its median per {'CFA colour' if pattern else 'image'}",
        f"master flat: {method} of {len(frames)} frames, sigma clip {sigma_low}/{sigma_high}, median 1 per colour",
    ]:
        header.add_history(line)
    return combined, header


def _binning(header):
    return (int(header.get("XBINNING", 1) or 1), int(header.get("YBINNING", header.get("XBINNING", 1)) or 1))


def _temperature(header):
    value = header.get("CCD-TEMP", header.get("SET-TEMP"))
    return None if value is None else float(value)


def _exposure(header):
    value = header.get("EXPTIME")
    return None if value is None else float(value)


def _chained(indices, value, joins):
    """Indices grouped by ``value``: sorted by it, each joining the group of the smallest value
    it ``joins(first, value)``; those without a value (None) form one group of their own first."""
    unknown = [i for i in indices if value(i) is None]
    groups = [unknown] if unknown else []
    start = len(groups)
    for i in sorted((i for i in indices if value(i) is not None), key=value):
        if len(groups) > start and joins(value(groups[-1][0]), value(i)):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def dark_groups(headers, *, exposure_tolerance=0.1, temperature_tolerance=2.0):
    """Group darks that make one master: same binning, close exposure and temperature.

    In the manner of PixInsight WBPP's grouping of calibration frames: binning must be equal,
    exposures may differ by a fraction, temperatures by some degrees.

    Parameters
    ----------
    headers : sequence of mapping
        The darks' headers: ``EXPTIME`` (s), ``CCD-TEMP`` (else ``SET-TEMP``; deg C),
        ``XBINNING``/``YBINNING`` (1 where absent).
    exposure_tolerance : float
        Darks are grouped with the shortest dark of a group while their exposure is at most
        ``(1 + exposure_tolerance)`` times it.
    temperature_tolerance : float
        Within an exposure group, darks within this many degrees of the coldest one of a group
        share it.

    Returns
    -------
    list of list of int
        Indices into ``headers``, one list per group, the largest group first (the longest
        exposure on a tie, as :func:`master_dark` chooses its common exposure). Darks without
        ``EXPTIME`` form one group of their own, as do those without a temperature among
        darks of one exposure group.
    """
    by_binning = {}
    for i, header in enumerate(headers):
        by_binning.setdefault(_binning(header), []).append(i)
    groups = []
    exposure, temperature = (lambda i: _exposure(headers[i])), (lambda i: _temperature(headers[i]))
    for members in by_binning.values():
        for group in _chained(members, exposure, lambda t0, t: t <= t0 * (1 + exposure_tolerance)):
            if exposure(group[0]) is None:  # no EXPTIME: one group, whatever the temperatures
                groups.append(group)
            else:
                groups += _chained(group, temperature, lambda t0, t: t - t0 <= temperature_tolerance)
    return sorted(groups, key=lambda g: (-len(g), -(_exposure(headers[g[0]]) or 0.0)))


def match_dark(header, masters, *, exposure_tolerance=0.1, temperature_tolerance=2.0):
    """Choose the master dark for one light (or flat) among the masters of several groups.

    Parameters
    ----------
    header : mapping
        The frame's header: ``EXPTIME``, ``CCD-TEMP``/``SET-TEMP``, ``XBINNING``/``YBINNING``.
    masters : sequence of mapping
        The masters' headers (:func:`master_dark` writes ``EXPTIME``, the mean ``CCD-TEMP``,
        the binning).
    exposure_tolerance, temperature_tolerance : float
        As in :func:`dark_groups`.

    Returns
    -------
    index : int
        Of the chosen master: of those with the frame's binning, the ones whose exposure is
        within ``exposure_tolerance`` of the frame's, of these the nearest in temperature
        (then exposure); when none is that close, the nearest exposure among those within
        ``temperature_tolerance`` (else among all), to be scaled by exposure.
    note : str
        What was chosen and why, for the log and the frame's HISTORY.

    Raises
    ------
    ValueError
        If no master has the frame's binning.
    """
    binning = _binning(header)
    same = [i for i, m in enumerate(masters) if _binning(m) == binning]
    if not same:
        found = sorted({_binning(m) for m in masters})
        raise ValueError(f"no master dark of binning {binning[0]}x{binning[1]} (masters: {found})")
    t, temp = _exposure(header), _temperature(header)

    def exposure_gap(i):
        tm = _exposure(masters[i])
        return float("inf") if t is None or tm is None else abs(tm - t)

    def temperature_gap(i):
        tm = _temperature(masters[i])
        return 0.0 if temp is None or tm is None else abs(tm - temp)

    close = [i for i in same if t is not None and exposure_gap(i) <= exposure_tolerance * t]
    if close:
        index = min(close, key=lambda i: (temperature_gap(i), exposure_gap(i)))
        why = "exposure within tolerance"
    else:
        warm = [i for i in same if temperature_gap(i) <= temperature_tolerance] or same
        index = min(warm, key=lambda i: (exposure_gap(i), temperature_gap(i)))
        why = "nearest exposure, scaled"
    chosen = masters[index]
    note = (
        f"master dark {index} of {len(masters)} ({_exposure(chosen)} s, {_temperature(chosen)} C) "
        f"for a frame of {t} s, {temp} C: {why}"
    )
    return index, note


def flat_groups(headers):
    """Group flats by filter: one master flat per filter of a session's flats.

    Parameters
    ----------
    headers : sequence of mapping
        The flats' headers (``FILTER``, which ingest also takes from CAFOS' ``INSFLNAM``).

    Returns
    -------
    dict of str to list of int
        Canonical filter name (:func:`astroflow.deepsky.palette.canonical_filter`; ``none``
        where a flat records none) -> indices into ``headers``, the largest group first.
    """
    from astroflow.deepsky.palette import canonical_filter, header_filter

    groups = {}
    for i, header in enumerate(headers):
        groups.setdefault(canonical_filter(header_filter(header)), []).append(i)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def match_flat(light_filter, masters, path="master flat"):
    """Choose the master flat of a light's filter.

    Parameters
    ----------
    light_filter : str
        The light's canonical filter name.
    masters : sequence of mapping
        The headers of the master flats of the light's session (one per filter, see
        :func:`flat_groups`; their ``FILTER``).
    path : str
        The masters' file, for the message.

    Returns
    -------
    int
        The index of the master flat: the only one, or the one whose filter is the light's.

    Raises
    ------
    ValueError
        If there are several master flats and none of the light's filter.
    """
    from astroflow.deepsky.palette import canonical_filter, header_filter

    if len(masters) == 1:
        return 0
    filters = [canonical_filter(header_filter(m)) for m in masters]
    if light_filter in filters:
        return filters.index(light_filter)
    raise ValueError(
        f"{path}: no master flat of filter {light_filter} (the session's flats are of "
        f"{', '.join(filters)}); give the session flats of that filter"
    )


def master_darks(paths, master_bias=None, *, exposure_tolerance=0.1, temperature_tolerance=2.0, **combine):
    """One master dark per group of darks (:func:`dark_groups`), largest group first.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Ingested dark FITS files of one session; rejected placeholders are skipped.
    master_bias : tuple of (numpy.ndarray, astropy.io.fits.Header), optional
        As in :func:`master_dark`.
    exposure_tolerance, temperature_tolerance : float
        As in :func:`dark_groups`.
    **combine
        ``method``, ``sigma_low``, ``sigma_high``, ``memory_mb`` of :func:`master_dark`.

    Returns
    -------
    list of (numpy.ndarray, astropy.io.fits.Header)
        :func:`master_dark` of each group; with several, each header has ``DARKGRP`` (its
        index). One group: exactly ``[master_dark(paths, ...)]``. Written together by
        :func:`astroflow.io.fits.write_images`, chosen per light by :func:`match_dark`.
    """
    usable = [path for path in paths if not is_rejected(read_header(path))]
    groups = dark_groups(
        [read_header(path) for path in usable],
        exposure_tolerance=exposure_tolerance,
        temperature_tolerance=temperature_tolerance,
    )
    if len(groups) <= 1:
        return [master_dark(paths, master_bias, **combine)]
    masters = []
    for n, group in enumerate(groups):
        data, header = master_dark([usable[i] for i in group], master_bias, **combine)
        header["DARKGRP"] = (n, "exposure/temperature/binning group of the darks")
        masters.append((data, header))
    return masters


def master_flats(paths, master_bias=None, master_darks=(), *, exposure_tolerance=0.1,
                 temperature_tolerance=2.0, **combine):  # fmt: skip
    """One master flat per filter of a session's flats (:func:`flat_groups`), largest first.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Ingested flat FITS files; rejected placeholders are skipped.
    master_bias : tuple of (numpy.ndarray, astropy.io.fits.Header), optional
    master_darks : sequence of (numpy.ndarray, astropy.io.fits.Header), optional
        The session's master darks (or dark flats), one per group; each group of flats gets
        the one :func:`match_dark` chooses for its first flat.
    exposure_tolerance, temperature_tolerance : float
        As in :func:`match_dark`.
    **combine
        ``method``, ``sigma_low``, ``sigma_high``, ``memory_mb`` of :func:`master_flat`.

    Returns
    -------
    list of (numpy.ndarray, astropy.io.fits.Header)
        :func:`master_flat` of each filter; with several, each header's ``FILTER`` is the
        canonical filter name, chosen per light by :func:`match_flat`. One filter: one master
        of all ``paths``.
    """
    usable = [path for path in paths if not is_rejected(read_header(path))]
    headers = [read_header(path) for path in usable]
    groups = flat_groups(headers)

    def dark_for(first):
        if len(master_darks) <= 1:
            return master_darks[0] if master_darks else None
        index, note = match_dark(
            first, [h for _, h in master_darks], exposure_tolerance=exposure_tolerance,
            temperature_tolerance=temperature_tolerance,
        )
        log.info("flats: %s", note)
        return master_darks[index]

    if len(groups) <= 1:
        return [master_flat(paths, master_bias, dark_for(headers[0] if headers else {}), **combine)]
    masters = []
    for name, group in groups.items():
        data, header = master_flat([usable[i] for i in group], master_bias, dark_for(headers[group[0]]), **combine)
        header["FILTER"] = (name, "filter of the flats")
        masters.append((data, header))
    return masters


def hot_pixel_mask(dark, bayer_pattern=None, *, sigma):
    """Pixels whose dark current stands out from their same-colour neighbours.

    The residual of each pixel against the median of its 8 neighbours of the same colour (two
    pixels apart in a mosaic) is compared with the robust sigma (MAD) of the residuals of that
    colour plane: the local median follows amp glow and gradients, the robust sigma ignores the
    outliers it is looking for.

    Parameters
    ----------
    dark : numpy.ndarray
        ``(H, W)`` master dark, ADU (with or without bias). Not modified.
    bayer_pattern : str, optional
        Bayer pattern when ``dark`` is a CFA mosaic; ``None`` for mono.
    sigma : float
        Threshold in robust sigmas above the neighbours' median (> 0; the pipeline's:
        ``calibration.hot_pixel_sigma``).

    Returns
    -------
    numpy.ndarray
        bool ``(H, W)``, True for hot pixels.

    Raises
    ------
    ValueError
        If ``dark`` is not 2-D, ``bayer_pattern`` is not a Bayer pattern or ``sigma`` is not
        positive.
    """
    sigma = check_float("sigma", sigma, 0.0, strict=True)
    dark = np.asarray(dark, dtype=np.float32)
    if dark.ndim != 2:
        raise ValueError(f"hot_pixel_mask needs a 2-D dark, got shape {dark.shape}")
    stride = 2 if bayer_pattern is not None and validate_pattern(bayer_pattern) else 1
    residual = dark - _neighbour_median(dark, stride)
    return residual > sigma * _plane_sigma(residual, stride)


def calibrate_light(data, header, master_bias=None, master_dark=None, master_flat=None, *, min_flat=0.05):
    """Calibrate one light frame: bias, dark (scaled by exposure) and flat.

    Parameters
    ----------
    data : numpy.ndarray
        ``(H, W)`` mosaic or mono, or ``(H, W, 3)``, ADU as ingested. Not modified.
    header : astropy.io.fits.Header or dict
        The light's header: ``EXPTIME`` (s) for dark scaling, ``BLACKLVL`` (and ``BLACK00``...)
        used when there is no master bias, ``SRCFILE`` to name the light in messages.
    master_bias, master_dark, master_flat : tuple of (numpy.ndarray, astropy.io.fits.Header), optional
        Masters from :func:`master_bias`, :func:`master_dark`, :func:`master_flat`. A dark with
        ``BIASSUB`` False holds the bias: it is subtracted unscaled and the bias step is left to it.
    min_flat : float, optional
        Flat values below this are raised to it before the division, so that dead or masked
        pixels of the flat (0) do not turn into infinities.

    Returns
    -------
    calibrated : numpy.ndarray
        float32 ADU, same shape as ``data``; not clipped (noise around zero stays negative).
    history : list of str
        One line per step done or skipped, for the header's HISTORY.

    Raises
    ------
    ValueError
        If a master's shape or Bayer pattern differs from the light's (the message names both).

    Warns
    -----
    CalibrationWarning
        For each skipped or degraded step.
    """
    name = f"light {header.get('SRCFILE', '(unnamed)')}"
    data = np.asarray(data, dtype=np.float32)
    for master, master_name in (
        (master_bias, "master bias"),
        (master_dark, "master dark"),
        (master_flat, "master flat"),
    ):
        if master is not None:
            _check_shape(data, master[0], name, master_name)
            light_pattern, master_pattern = header.get("BAYERPAT"), master[1].get("BAYERPAT")
            if light_pattern and master_pattern and light_pattern != master_pattern:
                raise ValueError(
                    f"{name} has Bayer pattern {light_pattern} but the {master_name} has {master_pattern}"
                )
    history = []
    dark_holds_bias = master_dark is not None and not master_dark[1].get("BIASSUB", True)
    if dark_holds_bias:
        if master_bias is not None:
            _warn(f"{name}: master bias not applied: the master dark already holds the bias")
        history.append("bias: left to the master dark, which holds it")
    else:
        data, how = _remove_bias(data, header, master_bias, name, True)
        if how is None:
            _warn(f"{name}: no master bias and no BLACKLVL: bias not subtracted")
            history.append("bias: skipped (no master bias, no BLACKLVL)")
        else:
            history.append(f"bias: {how} subtracted")
    if master_dark is None:
        _warn(f"{name}: no master dark: dark current not subtracted")
        history.append("dark: skipped (no master dark)")
    else:
        data, note, degraded = _remove_dark(data, header, master_dark, name)
        if degraded:
            _warn(f"{name}: {note}")
        history.append(f"dark: {note}")
    if master_flat is None:
        _warn(f"{name}: no master flat: vignetting and dust not corrected")
        history.append("flat: skipped (no master flat)")
    else:
        # norm_value=1: the master flat is already normalised per colour; ccdproc would
        # otherwise divide it by its mean and undo the colour normalisation.
        result = flat_correct(
            CCDData(data, unit=u.adu),
            CCDData(np.asarray(master_flat[0], dtype=np.float32), unit=u.dimensionless_unscaled),
            min_value=min_flat,
            norm_value=1.0,
        )
        data = result.data
        history.append(f"flat: divided by the master flat (values below {min_flat} raised to it)")
    return np.asarray(data, dtype=np.float32).copy(), history


def calibrated_header(header):
    """The header of a light once calibrated: without the camera's black and white levels.

    ``BLACKLVL``, ``BLACK00`` ... ``BLACK11`` and ``WHITELVL`` describe the raw ADU; after bias
    subtraction and flat division they no longer hold (zero is no longer the camera's zero, and
    saturation is no longer at one level), so a later step must not apply them again.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The light's header as ingested.

    Returns
    -------
    astropy.io.fits.Header
        A copy without those keywords.
    """
    header = header.copy()
    for key in _CAMERA_LEVELS:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def cosmetic_correction(data, bayer_pattern=None, hot_mask=None, *, sigma=5.0, isolation=0.2):
    """Replace hot and cold pixels by the median of their same-colour neighbours.

    A pixel is an outlier when its residual ``r`` against the median of its 8 same-colour
    neighbours (two pixels apart in a mosaic) exceeds ``sigma`` times the larger of the robust
    noise of its colour plane and the local robust noise (MAD of the neighbours' residuals),
    and it is isolated: the mean residual of its 8 immediate neighbours (any colour) is below
    ``isolation * r``. A star, even one only 2.5 px wide, lifts its immediate neighbours to about
    half its own residual and is left alone; a hot or cold pixel does not. This is the idea of
    the cosmetic correction of Siril and DeepSkyStacker, with the star test made explicit.

    Parameters
    ----------
    data : numpy.ndarray
        ``(H, W)`` mosaic or mono, or ``(H, W, 3)`` RGB (each channel on its own), ADU.
        Not modified.
    bayer_pattern : str, optional
        Bayer pattern when ``data`` is a CFA mosaic; ``None`` for mono or RGB.
    hot_mask : numpy.ndarray of bool, optional
        ``(H, W)`` known hot pixels (from :func:`hot_pixel_mask`), replaced whatever their value
        unless they lie inside a star (same isolation test as the detections).
    sigma : float, optional
        Detection threshold in robust sigmas.
    isolation : float, optional
        Largest ratio of the neighbours' mean residual to the pixel's residual for the pixel to
        count as isolated (0 to 1; smaller spares more).

    Returns
    -------
    corrected : numpy.ndarray
        float32, same shape as ``data``.
    n_hot : int
        Pixels replaced as hot (mask and detections).
    n_cold : int
        Pixels replaced as cold.

    Raises
    ------
    ValueError
        If shapes do not fit, ``bayer_pattern`` is not a Bayer pattern or is given for RGB data.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 3 and data.shape[2] == 3:
        if bayer_pattern is not None:
            raise ValueError(f"RGB image of shape {data.shape} cannot have a Bayer pattern")
        channels = [
            cosmetic_correction(data[:, :, c], None, hot_mask, sigma=sigma, isolation=isolation)
            for c in range(3)
        ]
        corrected = np.stack([c[0] for c in channels], axis=2)
        return corrected, sum(c[1] for c in channels), sum(c[2] for c in channels)
    if data.ndim != 2:
        raise ValueError(f"cosmetic_correction needs (H, W) or (H, W, 3) data, got shape {data.shape}")
    if hot_mask is not None and np.shape(hot_mask) != data.shape:
        raise ValueError(
            f"hot pixel mask of shape {np.shape(hot_mask)} does not match image shape {data.shape}"
        )
    stride = 2 if bayer_pattern is not None and validate_pattern(bayer_pattern) else 1
    median = _neighbour_median(data, stride)
    residual = data - median
    noise = np.maximum(
        _plane_sigma(residual, stride), _MAD_TO_SIGMA * _neighbour_median(np.abs(residual), stride)
    )
    support = (ndimage.uniform_filter(residual, size=3, mode="mirror") * 9.0 - residual) / 8.0
    isolated = np.sign(residual) * support < isolation * np.abs(residual)
    hot = (residual > sigma * noise) & isolated
    cold = (residual < -sigma * noise) & isolated
    if hot_mask is not None:
        # A known hot pixel is replaced at any level, except inside a star: there its
        # neighbours carry the excess too, and the median of the same-colour ring would cut
        # the star's core.
        masked = np.asarray(hot_mask, dtype=bool) & isolated
        hot |= masked
        cold &= ~masked
    corrected = np.where(hot | cold, median, data).astype(np.float32)
    return corrected, int(hot.sum()), int(cold.sum())


def black_level(header, shape):
    """Black level of a frame as an array to subtract, from its header.

    Parameters
    ----------
    header : astropy.io.fits.Header or dict
        ``BLACK00``, ``BLACK01``, ``BLACK10``, ``BLACK11`` (per CFA position) when present,
        else ``BLACKLVL``.
    shape : tuple of int
        Shape of the frame.

    Returns
    -------
    numpy.ndarray or None
        float32 ADU broadcastable to ``shape``; None when the header gives no black level.
    """
    if all(f"BLACK{dy}{dx}" in header for dy, dx in _CELLS) and len(shape) == 2:
        level = np.empty(shape, dtype=np.float32)
        for dy, dx in _CELLS:
            level[dy::2, dx::2] = float(header[f"BLACK{dy}{dx}"])
        return level
    if "BLACKLVL" in header:
        return np.float32(header["BLACKLVL"])
    return None


def _has_black_level(header):
    return "BLACKLVL" in header


def _warn(message):
    log.warning(message)
    warnings.warn(message, CalibrationWarning, stacklevel=3)


def _usable_frames(paths, kind):
    frames, skipped = [], []
    for path in paths:
        header = read_header(path)
        if is_rejected(header):
            skipped.append(path)
            log.info("%s %s skipped: rejected at ingest: %s", kind, path, header.get("AFREASON", "?"))
        else:
            frames.append((Path(path), header))
    if skipped:
        log.warning("%d rejected %s frame(s) skipped", len(skipped), kind)
    if not frames:
        raise ValueError(f"no usable {kind} frames: {len(skipped)} of {len(skipped)} were rejected at ingest")
    first_path, first = frames[0]
    for path, header in frames[1:]:
        for key in ("NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BAYERPAT"):
            if header.get(key) != first.get(key):
                raise ValueError(
                    f"{path}: {kind} frame has {key} = {header.get(key)!r}, but {first_path} has {first.get(key)!r}"
                )
    return frames, len(skipped)


def _master_header(imagetyp, frames, skipped, method):
    header = fits.Header()
    header["IMAGETYP"] = imagetyp
    for key in _CARRIED:
        values = {h.get(key) for _, h in frames}
        if len(values) == 1 and None not in values:
            header[key] = values.pop()
    temps = [float(h["CCD-TEMP"]) for _, h in frames if "CCD-TEMP" in h]
    if temps:
        header["CCD-TEMP"] = (float(np.mean(temps)), "[C] mean sensor temperature of the frames")
    header["NCOMBINE"] = (len(frames), "frames combined")
    header["NSKIPPED"] = (skipped, "rejected frames skipped")
    header["COMBMETH"] = (method, "ccdproc combine method")
    return header


def _combine(arrays, method, sigma_low, sigma_high, memory_mb):
    """Sigma-clipped ccdproc combination of arrays, through temporary FITS files.

    The frames are written one by one and ccdproc reads them back tile by tile, so memory
    holds one frame plus the tiles that ``memory_mb`` allows, however many frames there are.
    """
    if method not in ("average", "median"):
        raise ValueError(f"unknown combine method {method!r}: expected 'average' or 'median'")
    shape = None
    with tempfile.TemporaryDirectory(prefix="astroflow-combine-") as tmp:
        files = []
        for index, data in enumerate(arrays):
            shape = data.shape
            # ccdproc tiles 2-D images only; an RGB frame is combined as (H, W*3), pixel by pixel.
            flat_view = np.ascontiguousarray(data, dtype=np.float32).reshape(shape[0], -1)
            name = str(Path(tmp) / f"frame{index:05d}.fits")
            fits.PrimaryHDU(flat_view).writeto(name)
            files.append(name)
        clip = sigma_low is not None or sigma_high is not None
        result = combine(
            files,
            method=method,
            mem_limit=memory_mb * 2**20,
            sigma_clip=clip and len(files) > 2,
            sigma_clip_low_thresh=sigma_low,
            sigma_clip_high_thresh=sigma_high,
            sigma_clip_func="median",
            sigma_clip_dev_func="mad_std",
            dtype=np.float32,
            unit=u.adu,
        )
        combined = np.asarray(result.data, dtype=np.float32).reshape(shape)
    return combined


def _check_shape(data, master, name, master_name):
    if np.shape(master) != np.shape(data):
        raise ValueError(
            f"{name} has shape {np.shape(data)} but the {master_name} has shape {np.shape(master)}"
        )


def _remove_bias(data, header, master_bias, name, use_black):
    """Subtract the master bias, else the header's black level; returns (data, what or None)."""
    if master_bias is not None:
        _check_shape(data, master_bias[0], name, "master bias")
        result = subtract_bias(
            CCDData(data, unit=u.adu), CCDData(np.asarray(master_bias[0], np.float32), unit=u.adu)
        )
        return np.asarray(result.data, dtype=np.float32), "master bias"
    level = black_level(header, np.shape(data)) if use_black else None
    if level is None:
        return data, None
    return (np.asarray(data, dtype=np.float32) - level).astype(np.float32), "BLACKLVL"


def _remove_dark(data, header, master_dark, name):
    """Subtract the master dark, scaled when it can be; returns (data, note, degraded)."""
    dark, dark_header = master_dark
    _check_shape(data, dark, name, "master dark")
    t_frame, t_dark = header.get("EXPTIME"), dark_header.get("EXPTIME")
    scalable = dark_header.get("BIASSUB", True) and t_frame is not None and t_dark is not None
    degraded = False
    if scalable:
        note = f"master dark of {t_dark} s scaled to {t_frame} s and subtracted"
        if float(t_frame) == float(t_dark):
            note = f"master dark of {t_dark} s subtracted"
    elif t_frame is not None and t_frame == t_dark:
        note = f"master dark of {t_dark} s subtracted (holds the bias)"
    elif not dark_header.get("BIASSUB", True):
        note = f"master dark holds the bias and cannot be scaled: its {t_dark} s subtracted unscaled from {t_frame} s"
        degraded = True
    else:
        note = f"exposure unknown (frame {t_frame}, dark {t_dark}): master dark subtracted unscaled"
        degraded = True
    result = subtract_dark(
        CCDData(data, unit=u.adu),
        CCDData(np.asarray(dark, dtype=np.float32), unit=u.adu),
        data_exposure=float(t_frame if scalable else 1.0) * u.s,
        dark_exposure=float(t_dark if scalable else 1.0) * u.s,
        scale=bool(scalable),
    )
    return np.asarray(result.data, dtype=np.float32), note, degraded


def _normalise(data, pattern, name):
    """Divide each colour (CFA colour, RGB channel, or the whole mono image) by its median."""
    data = np.array(data, dtype=np.float32)
    if data.ndim == 3:
        groups = [[(slice(None), slice(None), c)] for c in range(data.shape[2])]
        labels = "RGB"
    elif pattern:
        cells = cfa_colour_cells(pattern)
        groups = [[(slice(dy, None, 2), slice(dx, None, 2)) for dy, dx in cells[c]] for c in "RGB"]
        labels = "RGB"
    else:
        groups = [[(slice(None), slice(None))]]
        labels = ["image"]
    for label, group in zip(labels, groups, strict=True):
        median = float(np.median(np.concatenate([data[s].ravel() for s in group])))
        if not np.isfinite(median) or median <= 0:
            raise ValueError(
                f"{name}: median of {label} after calibration is {median}, not positive: not a flat"
            )
        for s in group:
            data[s] /= median
    return data


def _neighbour_median(data, stride):
    """Median of the 8 same-colour neighbours of every pixel (stride 2 on a mosaic)."""
    if stride == 1:
        return ndimage.median_filter(data, footprint=_RING, mode="mirror")
    median = np.empty_like(data)
    for dy, dx in _CELLS:
        median[dy::2, dx::2] = ndimage.median_filter(data[dy::2, dx::2], footprint=_RING, mode="mirror")
    return median


def _plane_sigma(residual, stride):
    """Robust sigma (MAD) of the residuals of each colour plane, as a per-pixel array."""
    sigma = np.empty_like(residual)
    cells = _CELLS if stride == 2 else ((0, 0),)
    for dy, dx in cells:
        plane = residual[dy::stride, dx::stride]
        sigma[dy::stride, dx::stride] = _MAD_TO_SIGMA * np.median(np.abs(plane - np.median(plane)))
    return sigma
