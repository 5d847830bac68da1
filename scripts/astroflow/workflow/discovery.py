"""Input discovery of the workflow: which files each configured folder, glob or file stands for.

``rules/common.smk`` calls these functions once per target while Snakemake parses the
workflow; everything here is plain Python on paths, tested in ``tests/test_discovery.py``. What
a reader can open is decided by :mod:`astroflow.io.formats`, the same registry the readers use.

A frame's type is the configuration entry (folder) it was found through, never its header:
real flats often say ``IMAGETYP = 'Light Frame'``.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from astroflow.io.formats import (
    DEEP_SKY_FRAME,
    FINISHED_IMAGE,
    SEQUENCE_CONTAINER,
    SEQUENCE_FRAME,
    extensions,
    format_of,
    readable,
    strip_extension,
)

__all__ = [
    "FRAME_TYPES",
    "DiscoveryError",
    "find_frames",
    "find_image",
    "find_sequence",
    "frame_name",
    "target_pattern",
]

#: configuration entry of a deep-sky target -> frame type of the files it names
FRAME_TYPES = {
    "lights": "light",
    "darks": "dark",
    "flats": "flat",
    "bias": "bias",
    "darkflats": "darkflat",
}


class DiscoveryError(ValueError):
    """A configured folder, glob or file that names no usable input; the message says which."""


def frame_name(path):
    """The name a frame's intermediate files get: its file name without the format extension.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        Letters, digits, ``_``, ``.`` and ``-`` only (anything else becomes ``_``), never empty:
        a Snakemake wildcard value and a safe file name.
    """
    name = strip_extension(path)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "frame"


def _candidates(spec, where, folder_formats):
    if glob.has_magic(spec):
        return sorted(p for p in glob.glob(spec) if os.path.isfile(p))
    if os.path.isdir(spec):
        return sorted(
            str(p) for p in Path(spec).iterdir() if p.is_file() and readable(p.name, folder_formats)
        )
    if os.path.isfile(spec):
        return [spec]
    raise DiscoveryError(f"{where}: no such folder or file")


def find_frames(spec, where, planned=None):
    """The frames of one deep-sky entry (lights, darks, flats, bias or dark flats).

    Parameters
    ----------
    spec : str
        A folder (its files in a format of :data:`astroflow.io.formats.DEEP_SKY_FRAME`), a glob
        (every file it matches) or one file.
    where : str
        What to name in messages, e.g. ``"target 'm42', lights: data/m42/lights"``.
    planned : dict of str to list of str, optional
        Folders whose files do not exist yet but will be made by the workflow (the simulated
        night): normalised folder path -> its future files.

    Returns
    -------
    dict of str to str
        Frame name (see :func:`frame_name`; ``-2``, ``-3``... appended to repeated names) ->
        path, in sorted path order.

    Raises
    ------
    DiscoveryError
        If ``spec`` names nothing, or nothing readable.
    """
    folder = os.path.normpath(spec)
    if planned and folder in planned:
        paths = list(planned[folder])
    else:
        paths = _candidates(spec, where, DEEP_SKY_FRAME)
    if not paths:
        raise DiscoveryError(
            f"{where}: no frames found (looked for {', '.join(extensions(DEEP_SKY_FRAME))})"
        )
    frames = {}
    for path in paths:
        name = frame_name(path)
        unique, n = name, 1
        while unique in frames:
            n += 1
            unique = f"{name}-{n}"
        frames[unique] = path
    return frames


def _natural_key(path):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", str(path))]


def find_sequence(spec, where):
    """The input of a planetary entry: one video or SER file, or image frames in natural order.

    Parameters
    ----------
    spec : str
        A video or SER file, a folder of frames (formats of
        :data:`astroflow.io.formats.SEQUENCE_FRAME`), a glob, or one frame file.
    where : str
        What to name in messages.

    Returns
    -------
    list of str
        One container file, or frames sorted so that ``frame2`` comes before ``frame10``.

    Raises
    ------
    DiscoveryError
        If ``spec`` names nothing readable, or several files of which one is a video or SER.
    """
    known = SEQUENCE_CONTAINER + SEQUENCE_FRAME
    paths = [p for p in _candidates(spec, where, SEQUENCE_FRAME) if readable(p, known)]
    if not paths:
        raise DiscoveryError(
            f"{where}: no video or frames found (looked for {', '.join(extensions(known))})"
        )
    containers = [p for p in paths if format_of(p) in SEQUENCE_CONTAINER]
    if containers and len(paths) > 1:
        raise DiscoveryError(
            f"{where}: give one video or SER file, or a folder of frames, not {len(paths)} files"
        )
    return sorted(paths, key=_natural_key)


def find_image(spec, where):
    """The one file of an ``image`` target.

    Parameters
    ----------
    spec : str
        Path of a finished image (:data:`astroflow.io.formats.FINISHED_IMAGE`).
    where : str
        What to name in messages.

    Returns
    -------
    str
        ``spec``.

    Raises
    ------
    DiscoveryError
        If ``spec`` is not a file, or not of a readable image format.
    """
    if not os.path.isfile(spec):
        raise DiscoveryError(f"{where}: an image target needs one image file")
    if not readable(spec, FINISHED_IMAGE):
        raise DiscoveryError(
            f"{where}: not an image file (looked for {', '.join(extensions(FINISHED_IMAGE))})"
        )
    return spec


def target_pattern(names):
    """A wildcard constraint that matches exactly these target names.

    Parameters
    ----------
    names : iterable of str

    Returns
    -------
    str
        A regular expression; one that matches nothing when ``names`` is empty.
    """
    names = list(names)
    return "|".join(re.escape(t) for t in names) if names else "(?!)"
