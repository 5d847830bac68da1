"""The one registry of file formats astroflow reads, by file name extension.

Every reader (:mod:`astroflow.io.ingest`, :mod:`astroflow.io.sequence`,
:mod:`astroflow.io.imagefile`) and the workflow's file discovery
(:mod:`astroflow.workflow.discovery`) ask this module which files they can read, so that a
folder of frames is never listed with one set of extensions and read with another.

Extensions are matched case-insensitively and longest first, so ``m42.fits.gz`` is a gzipped
FITS named ``m42`` and ``light.FIT.fz`` a tile-compressed FITS named ``light``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "FORMATS",
    "DEEP_SKY_FRAME",
    "SEQUENCE_FRAME",
    "SEQUENCE_CONTAINER",
    "FINISHED_IMAGE",
    "format_of",
    "readable",
    "strip_extension",
    "extensions",
]

# Camera RAW formats that LibRaw (through rawpy) decodes. From LibRaw's list of supported
# cameras and its file-name handling; ``.raw`` covers Leica, Panasonic and others.
RAW = (
    ".3fr", ".ari", ".arw", ".bay", ".cap", ".cr2", ".cr3", ".crw", ".dcr", ".dcs", ".dng",
    ".drf", ".eip", ".erf", ".fff", ".gpr", ".iiq", ".k25", ".kdc", ".mdc", ".mef", ".mos",
    ".mrw", ".nef", ".nrw", ".orf", ".pef", ".ptx", ".pxn", ".raf", ".raw", ".rw2", ".rwl",
    ".rwz", ".sr2", ".srf", ".srw", ".sti", ".x3f",
)  # fmt: skip
_FITS_BASE = (".fits", ".fit", ".fts")
# Plain, gzipped (astropy decompresses the stream) and fpack tile-compressed FITS.
FITS = (
    _FITS_BASE
    + tuple(ext + ".gz" for ext in _FITS_BASE)
    + tuple(ext + ".fz" for ext in _FITS_BASE)
    + (".fz",)
)
TIFF = (".tif", ".tiff")
PNG = (".png",)
JPEG = (".jpg", ".jpeg")
XISF = (".xisf",)
VIDEO = (".avi", ".mov", ".mp4", ".mkv", ".m4v", ".webm")
SER = (".ser",)

#: format name -> extensions (lower case, with the dot)
FORMATS = {
    "raw": RAW,
    "fits": FITS,
    "tiff": TIFF,
    "png": PNG,
    "jpeg": JPEG,
    "xisf": XISF,
    "video": VIDEO,
    "ser": SER,
}

#: formats of the lights, darks, flats and bias of a deep-sky target (read by ingest)
DEEP_SKY_FRAME = ("raw", "fits", "tiff")
#: formats of the single frames of a planetary sequence given as a folder or glob
SEQUENCE_FRAME = ("png", "jpeg", "tiff", "fits")
#: formats that hold a whole planetary sequence in one file
SEQUENCE_CONTAINER = ("video", "ser")
#: formats of the one finished image of an ``image`` target
FINISHED_IMAGE = ("png", "tiff", "fits", "xisf")

_BY_LENGTH = sorted(
    ((ext, name) for name, exts in FORMATS.items() for ext in exts),
    key=lambda item: len(item[0]),
    reverse=True,
)


def format_of(path):
    """The format of a file, from its name.

    Parameters
    ----------
    path : str or os.PathLike
        A file name or path; only the name is looked at.

    Returns
    -------
    str or None
        A key of :data:`FORMATS` (``"raw"``, ``"fits"``, ...), or None for a name no reader
        knows.
    """
    name = Path(path).name.lower()
    for ext, fmt in _BY_LENGTH:
        if name.endswith(ext) and len(name) > len(ext):
            return fmt
    return None


def readable(path, formats):
    """True when a file name has the extension of one of ``formats``.

    Parameters
    ----------
    path : str or os.PathLike
    formats : iterable of str
        Keys of :data:`FORMATS`, e.g. :data:`DEEP_SKY_FRAME`.

    Returns
    -------
    bool

    Raises
    ------
    KeyError
        If a name in ``formats`` is not a key of :data:`FORMATS`.
    """
    wanted = set(formats)
    unknown = wanted - FORMATS.keys()
    if unknown:
        raise KeyError(f"unknown format(s): {', '.join(sorted(unknown))}")
    return format_of(path) in wanted


def strip_extension(path):
    """The file name without its registered extension (``m42_001.fits.gz`` -> ``m42_001``).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        The name with its longest registered extension removed; the name unchanged when it has
        none (a name that is only an extension, such as ``.fits``, is kept whole).
    """
    name = Path(path).name
    lower = name.lower()
    for ext, _ in _BY_LENGTH:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def extensions(formats):
    """The extensions of some formats, sorted, for messages such as "looked for ...".

    Parameters
    ----------
    formats : iterable of str
        Keys of :data:`FORMATS`.

    Returns
    -------
    list of str

    Raises
    ------
    KeyError
        If a name in ``formats`` is not a key of :data:`FORMATS`.
    """
    return sorted({ext for f in formats for ext in FORMATS[f]})
