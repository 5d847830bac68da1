"""Filters of deep-sky lights, and the combination of filter stacks into one colour image.

Filter names
    :func:`canonical_filter` gives every spelling of a filter one name, used in paths
    (``results/{target}/filters/{filter}/``) and tables: ``Red``/``R`` -> ``R``,
    ``Lum``/``Luminance``/``Clear``... -> ``L``, ``H-alpha``/``Halpha`` -> ``Ha``, ``O3`` ->
    ``OIII``, ``S2`` -> ``SII``; Johnson/Bessell/Cousins photometric filters by their band
    (``JohnsonV`` -> ``V``, ``JohnsonB`` -> ``B``, so a palette LRGB would take Johnson B as
    its blue). Other names are kept, made safe for paths. :func:`light_filter` decides a light's
    filter: the configured one, else the header's ``FILTER`` (or CAFOS' ``INSFLNAM``), else
    :data:`DEFAULT_FILTER`.

Palettes (:func:`combine_palette`)
    Each filter stack is first made comparable (:func:`normalise_channel`): its sky background
    (sigma-clipped median, astropy) subtracted and its signal scaled by a robust level (the
    99.5th percentile of the background-subtracted image, so that a few saturated stars do not
    set it), then mapped to the output channels:

    - ``LRGB``: R, G, B -> red, green, blue. With an L stack, the colour image's luminance
      ``Y = (R + G + B) / 3`` is replaced by L while the colour ratios R:G:B of every pixel are
      kept (``RGB * L / Y``, the luminance-ratio method of linear LRGB combination; the
      CIE L*a*b* replacement of PixInsight's LRGBCombination needs stretched, display-referred
      data, which a linear stack is not).
    - ``SHO`` (the Hubble palette): SII -> red, Ha -> green, OIII -> blue.
    - ``HOO``: Ha -> red, OIII -> green and blue.

    The result keeps the first channel's background level as a common pedestal, in the ADU of
    the reference stack, so that later stages (gradient removal, colour calibration, star
    removal) see a linear image with positive sky, as from a colour camera.
"""

from __future__ import annotations

import re

import numpy as np
from astropy.stats import sigma_clipped_stats

__all__ = [
    "DEFAULT_FILTER",
    "FILTER_KEYWORDS",
    "PALETTES",
    "PaletteError",
    "canonical_filter",
    "combine_palette",
    "header_filter",
    "light_filter",
    "normalise_channel",
    "palette_channels",
]

#: the filter of a light whose configuration and header name none
DEFAULT_FILTER = "none"

#: header keywords that name a light's filter, first present wins (CAFOS writes INSFLNAM)
FILTER_KEYWORDS = ("FILTER", "INSFLNAM")

#: palette -> output channel (red, green, blue) -> filter; L is LRGB's optional luminance
PALETTES = {
    "LRGB": ("R", "G", "B"),
    "SHO": ("SII", "Ha", "OIII"),
    "HOO": ("Ha", "OIII", "OIII"),
}

# spelling (lower case, without spaces, '-', '_') -> canonical name
_ALIASES = {
    "l": "L", "lum": "L", "luminance": "L", "clear": "L", "lumen": "L",
    "r": "R", "red": "R",
    "g": "G", "green": "G",
    "b": "B", "blue": "B",
    "ha": "Ha", "halpha": "Ha", "hα": "Ha",
    "oiii": "OIII", "o3": "OIII",
    "sii": "SII", "s2": "SII",
}  # fmt: skip
# photometric systems whose band letter is the filter: JohnsonV -> V, BessellR -> R
_PHOTOMETRIC = re.compile(r"^(johnson|bessell|cousins|johnsoncousins)([ubvri])$")


class PaletteError(ValueError):
    """Filter stacks that cannot make the requested palette; the message names what is missing."""


def canonical_filter(name):
    """The one name of a filter, safe as a path component.

    Parameters
    ----------
    name : str or None
        A filter as configured or recorded (``'Red'``, ``'H-alpha'``, ``'JohnsonV'``...).

    Returns
    -------
    str
        ``L``, ``R``, ``G``, ``B``, ``Ha``, ``OIII``, ``SII`` for their aliases (case-insensitive,
        spaces, ``-`` and ``_`` ignored), the band letter of a Johnson/Bessell/Cousins filter,
        else ``name`` with anything but letters, digits, ``_``, ``.``, ``-`` replaced by ``_``;
        :data:`DEFAULT_FILTER` for None or a blank name.
    """
    if name is None or not str(name).strip():
        return DEFAULT_FILTER
    text = str(name).strip()
    key = re.sub(r"[\s_-]+", "", text).lower()
    if key in _ALIASES:
        return _ALIASES[key]
    band = _PHOTOMETRIC.match(key)
    if band:
        return band.group(2).upper()
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or DEFAULT_FILTER


def header_filter(header):
    """The filter a FITS header records (``FILTER``, else ``INSFLNAM``), or None.

    Parameters
    ----------
    header : mapping
        An ``astropy.io.fits.Header`` or a dict of keywords.

    Returns
    -------
    str or None
        The raw value, stripped; None where no keyword of :data:`FILTER_KEYWORDS` has text.
    """
    for key in FILTER_KEYWORDS:
        value = header.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def light_filter(configured=None, header=None):
    """A light's filter: the configured one, else its header's, else the default.

    Parameters
    ----------
    configured : str, optional
        The session's ``filter``, else the target's.
    header : mapping, optional
        The light's header (FITS keywords), where it can be read.

    Returns
    -------
    str
        :func:`canonical_filter` of the first of ``configured``, :func:`header_filter` of
        ``header``; :data:`DEFAULT_FILTER` when neither names one.
    """
    if configured is not None and str(configured).strip():
        return canonical_filter(configured)
    if header is not None:
        return canonical_filter(header_filter(header))
    return DEFAULT_FILTER


def normalise_channel(image, *, percentile=99.5, sigma=3.0):
    """Background-subtract one filter stack and find its robust signal scale.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` linear stack (float, ADU); NaN pixels (no data) are ignored.
    percentile : float
        Percentile of the background-subtracted pixels taken as the signal scale.
    sigma : float
        Clipping threshold of the background estimate (``astropy.stats.sigma_clipped_stats``).

    Returns
    -------
    residual : numpy.ndarray
        float32 ``(H, W)``: ``image`` minus its background.
    background : float
        Sigma-clipped median of ``image`` (ADU).
    scale : float
        The ``percentile``-th percentile of ``residual`` (ADU), at least the clipped standard
        deviation (so that an empty image does not divide by zero).

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or has no finite pixel.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"a filter stack is one plane (H, W), not shape {image.shape}")
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        raise ValueError("filter stack has no finite pixel")
    _, background, std = sigma_clipped_stats(finite, sigma=sigma, maxiters=5)
    residual = image - np.float32(background)
    scale = float(np.percentile(finite - background, percentile))
    scale = max(scale, float(std), np.finfo(np.float32).tiny)
    return residual, float(background), scale


def palette_channels(palette, filters):
    """The filters each output channel of a palette takes, and LRGB's luminance.

    Parameters
    ----------
    palette : {'LRGB', 'SHO', 'HOO'}
    filters : iterable of str
        The canonical names of the filter stacks available.

    Returns
    -------
    channels : tuple of str
        Filter of red, green, blue (:data:`PALETTES`).
    luminance : str or None
        ``'L'`` for LRGB when an L stack is available, else None.

    Raises
    ------
    PaletteError
        Naming the palette's filters that are missing and those that are available.
    """
    if palette not in PALETTES:
        raise PaletteError(f"unknown palette {palette!r} (one of {', '.join(PALETTES)})")
    available = set(filters)
    channels = PALETTES[palette]
    missing = sorted(set(channels) - available)
    if missing:
        raise PaletteError(
            f"palette {palette} needs filter(s) {', '.join(missing)}; the target has "
            f"{', '.join(sorted(available)) or 'none'} (filter names as astroflow reads them: "
            f"set each session's filter to name them)"
        )
    luminance = "L" if palette == "LRGB" and "L" in available else None
    return channels, luminance


def combine_palette(stacks, palette, *, percentile=99.5):
    """Combine registered filter stacks into one colour image.

    Parameters
    ----------
    stacks : dict of str to numpy.ndarray
        Canonical filter name -> ``(H, W)`` linear stack, all on one pixel grid (registered to
        one reference), float ADU.
    palette : {'LRGB', 'SHO', 'HOO'}
        Channel mapping (:data:`PALETTES`); see the module docstring.
    percentile : float
        Signal scale of :func:`normalise_channel`.

    Returns
    -------
    image : numpy.ndarray
        float32 ``(H, W, 3)`` linear RGB: channel ``c`` is
        ``(stack - background) * scale_ref / scale + background_ref``, the reference being the
        red channel's stack (LRGB with L: the L stack); for LRGB with L, the three channels are
        then multiplied by ``(L' + p) / (Y + p)`` with ``L'`` the normalised L, ``Y`` the mean of
        the normalised R, G, B (both without pedestal) and ``p`` the pedestal
        ``max(background_ref, 0.001 * scale_ref)``, which keeps the ratio stable on the dark
        sky.
    used : dict of str to str
        Output channel (``red``, ``green``, ``blue``, ``luminance``) -> filter.

    Raises
    ------
    PaletteError
        If filters the palette needs are missing (:func:`palette_channels`).
    ValueError
        If the stacks differ in shape or are not 2-D.
    """
    channels, luminance = palette_channels(palette, stacks)
    needed = set(channels) | ({luminance} - {None})
    shapes = {np.shape(stacks[f]) for f in needed}
    if len(shapes) != 1:
        raise ValueError(f"filter stacks differ in shape: {sorted(shapes)}; they must share one grid")
    normalised = {f: normalise_channel(stacks[f], percentile=percentile) for f in needed}
    ref = luminance or channels[0]
    _, pedestal, ref_scale = normalised[ref]

    def scaled(f):
        residual, _, scale = normalised[f]
        return residual * np.float32(ref_scale / scale)

    rgb = np.stack([scaled(f) for f in channels], axis=2)
    if luminance:
        lum = scaled(luminance)
        y = rgb.mean(axis=2)
        p = np.float32(max(pedestal, ref_scale * 1e-3))
        ratio = (lum + p) / np.maximum(y + p, np.float32(1e-6) * p)
        rgb = rgb * ratio[..., None]
    image = (rgb + np.float32(pedestal)).astype(np.float32)
    used = dict(zip(("red", "green", "blue"), channels, strict=True))
    if luminance:
        used["luminance"] = luminance
    return image, used
