"""Bayer CFA conventions and demosaicing (debayer) of calibrated mosaics.

A Bayer pattern is named by the colours of the top-left 2x2 cell of the stored array, read row by
row: ``'RGGB'`` means ``data[0, 0]`` is red, ``data[0, 1]`` and ``data[1, 0]`` are green and
``data[1, 1]`` is blue. The interpolation itself is the colour-demosaicing package's
(https://github.com/colour-science/colour-demosaicing).
"""

from __future__ import annotations

import numpy as np

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

# Reflection padding (numpy "reflect" mirrors about the edge pixel) keeps the row and column
# parity of every mirrored pixel, so the padded mosaic has the same Bayer phase. The margin
# covers the largest kernel used by the interpolations (Menon 2007 refining step).
_PAD = 8
_CHANNEL = {"R": 0, "G": 1, "B": 2}


def validate_pattern(pattern):
    """Normalise and check a Bayer pattern name.

    Parameters
    ----------
    pattern : str
        One of ``'RGGB'``, ``'BGGR'``, ``'GRBG'``, ``'GBRG'`` (any case).

    Returns
    -------
    str
        The pattern in upper case.

    Raises
    ------
    ValueError
        If ``pattern`` is not one of the four Bayer patterns.
    """
    name = str(pattern).strip().upper()
    if name not in BAYER_PATTERNS:
        raise ValueError(f"unknown Bayer pattern {pattern!r}: expected one of {', '.join(BAYER_PATTERNS)}")
    return name


def cfa_colour_cells(pattern):
    """Positions of each colour inside the 2x2 Bayer cell.

    Parameters
    ----------
    pattern : str
        Bayer pattern name (see :func:`validate_pattern`).

    Returns
    -------
    dict
        ``{'R': [(dy, dx)], 'G': [(dy, dx), (dy, dx)], 'B': [(dy, dx)]}``; the pixels of a
        colour are ``data[dy::2, dx::2]`` for each of its offsets.

    Raises
    ------
    ValueError
        If ``pattern`` is not a Bayer pattern.
    """
    name = validate_pattern(pattern)
    cells = {"R": [], "G": [], "B": []}
    for index, colour in enumerate(name):
        cells[colour].append(divmod(index, 2))
    return cells


def cfa_channel_map(shape, pattern):
    """Colour channel (0 red, 1 green, 2 blue) of every pixel of a Bayer mosaic.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the mosaic.
    pattern : str
        Bayer pattern of ``data[0:2, 0:2]`` (see :func:`validate_pattern`).

    Returns
    -------
    numpy.ndarray
        int8 ``(H, W)``.

    Raises
    ------
    ValueError
        If ``pattern`` is not a Bayer pattern.
    """
    channels = np.empty(shape[:2], dtype=np.int8)
    for colour, cells in cfa_colour_cells(pattern).items():
        for dy, dx in cells:
            channels[dy::2, dx::2] = _CHANNEL[colour]
    return channels


def _colour_demosaicing():
    """Import colour-demosaicing without its side effect on NumPy's print options.

    colour-science and colour-demosaicing call ``np.set_printoptions(legacy="1.13")`` when
    imported, which makes ``str(np.float64)`` and so pandas' ``to_csv`` keep only 12 significant
    digits for the rest of the process: every CSV written after a debayer (``frames.csv``,
    ``shifts.csv``) would silently lose precision. The options are put back as they were.
    It is imported lazily because colour-science is a slow import that the pattern helpers do
    not need.
    """
    options = np.get_printoptions()
    try:
        import colour_demosaicing
    finally:
        np.set_printoptions(**options)
    return colour_demosaicing


def debayer(cfa, pattern, *, method="malvar2004"):
    """Interpolate a Bayer mosaic into an RGB image.

    Parameters
    ----------
    cfa : numpy.ndarray
        ``(H, W)`` mosaic, linear ADU (calibrated values may be negative). Not modified.
    pattern : str
        Bayer pattern of ``cfa[0:2, 0:2]``: ``'RGGB'``, ``'BGGR'``, ``'GRBG'`` or ``'GBRG'``.
    method : {"malvar2004", "bilinear", "menon2007"}, optional
        ``"bilinear"``: bilinear interpolation; ``"malvar2004"``: Malvar, He & Cutler (2004),
        High-quality linear interpolation for demosaicing of Bayer-patterned color images,
        ICASSP; ``"menon2007"``: Menon, Andriani & Calvagno (2007), Demosaicing with directional
        filtering and a posteriori decision, IEEE TIP 16(1). All from colour-demosaicing.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` float32 RGB in the same linear units; nothing is clipped. The image edges
        are interpolated from a mirrored mosaic of the same Bayer phase, so a uniform colour stays
        uniform up to the border.

    Raises
    ------
    ValueError
        If ``cfa`` is not 2-D, ``pattern`` is not a Bayer pattern or ``method`` is unknown.
    """
    colour_demosaicing = _colour_demosaicing()
    functions = {
        "bilinear": colour_demosaicing.demosaicing_CFA_Bayer_bilinear,
        "malvar2004": colour_demosaicing.demosaicing_CFA_Bayer_Malvar2004,
        "menon2007": colour_demosaicing.demosaicing_CFA_Bayer_Menon2007,
    }
    name = validate_pattern(pattern)
    if method not in functions:
        raise ValueError(f"unknown debayer method {method!r}: expected one of {', '.join(functions)}")
    cfa = np.asarray(cfa)
    if cfa.ndim != 2:
        raise ValueError(f"debayer needs a 2-D CFA mosaic, got shape {cfa.shape}")
    padded = np.pad(cfa.astype(np.float64), _PAD, mode="reflect")
    rgb = functions[method](padded, name)
    return np.ascontiguousarray(rgb[_PAD:-_PAD, _PAD:-_PAD], dtype=np.float32)
