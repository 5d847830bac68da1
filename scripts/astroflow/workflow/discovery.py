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
    "DEFAULT_SESSION",
    "DiscoveryError",
    "find_frames",
    "find_image",
    "find_sequence",
    "find_sessions",
    "probe_input",
    "shared_masters",
    "frame_name",
    "source_header",
    "target_pattern",
    "target_sessions",
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
        Letters, digits, ``_``, ``.`` and ``-`` only (anything else becomes ``_``), never empty,
        never starting with ``-`` (a file ``-rf.fits`` is an option to the shell tools a user
        runs on the results) nor with or ending in ``.`` or ``_``, and at most
        :data:`FRAME_NAME_LENGTH` characters (the rest is cut): a Snakemake wildcard value and a
        safe file name, also with a session prefix and an extension added (file names have at
        most 255 bytes). Different files may get the same name (``a b.fits``, ``a_b.tif``):
        :func:`find_frames` makes them unique.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", strip_extension(path)).lstrip("._-")
    return name[:FRAME_NAME_LENGTH].rstrip("._") or "frame"


#: the longest frame name, leaving room in a 255-byte file name for ``{session}_`` and ``.fits``
FRAME_NAME_LENGTH = 160


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
        Frame name (see :func:`frame_name`; ``-2``, ``-3``... appended to repeated names, also
        to names that differ only in case) -> path, in sorted path order.

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
    frames, taken = {}, set()
    for path in paths:
        name = frame_name(path)
        unique, n = name, 1
        # unique also where file names ignore case (macOS, Windows): M42.fits and m42.tif
        while unique.lower() in taken:
            n += 1
            unique = f"{name}-{n}"
        frames[unique] = path
        taken.add(unique.lower())
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


def probe_input(path, where, memory_mb):
    """Check from its header the one input file of an ``image`` or ``planetary`` target.

    Made while the workflow is parsed, so that an empty, mislabelled, truncated or oversized
    file is one clear error before any job runs, rather than a failed job after others ran. A
    deep-sky target's frames, and a planetary target's frame files, are not checked here: a bad
    one among them costs only itself (see :mod:`astroflow.deepsky.screening`).

    Parameters
    ----------
    path : str
        An image file (:func:`astroflow.io.imagefile.probe_finished_image`), or a video or SER
        file (:func:`astroflow.io.sequence.probe_container`).
    where : str
        What to name in messages (the target and its entry).
    memory_mb : float
        Memory budget of one decoded frame (MB, ``ingest.memory_mb``).

    Returns
    -------
    tuple of int
        ``(height, width, ...)`` as the header gives them.

    Raises
    ------
    DiscoveryError
        Naming ``where``, the file and the problem.
    """
    # imported here: they load OpenCV, astropy and PyAV, which most parses do not need
    from astroflow.io.imagefile import UnreadableImageError, probe_finished_image
    from astroflow.io.sequence import UnreadableSequenceError, probe_container

    try:
        if format_of(path) in SEQUENCE_CONTAINER:
            return probe_container(path, memory_mb)
        return probe_finished_image(path, memory_mb)
    except (UnreadableImageError, UnreadableSequenceError) as err:
        raise DiscoveryError(f"{where}: {err}") from None


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


#: the session name of a target given in the one-session form (frame folders directly)
DEFAULT_SESSION = "default"


def target_sessions(settings):
    """The sessions of a deep-sky target's configuration, in the one form of the sessions key.

    Parameters
    ----------
    settings : dict
        One target's configuration: frame folders directly (one session) or ``sessions``.

    Returns
    -------
    dict of str to dict
        Session name -> its entries (``lights``, ``darks``, ``flats``, ``bias``, ``darkflats``,
        ``filter``), in configuration order; the one-session form is one session named
        :data:`DEFAULT_SESSION` with the target's ``filter``. A session without ``filter``
        takes the target's.
    """
    if "sessions" not in settings:
        keys = list(FRAME_TYPES) + ["filter"]
        return {DEFAULT_SESSION: {k: settings[k] for k in keys if k in settings}}
    sessions = {}
    for name, session in settings["sessions"].items():
        session = dict(session)
        if "filter" not in session and "filter" in settings:
            session["filter"] = settings["filter"]
        sessions[name] = session
    return sessions


def find_sessions(target, settings, planned=None):
    """The frames of every session of a deep-sky target, with names unique across sessions.

    Parameters
    ----------
    target : str
        The target's name (for messages).
    settings : dict
        The target's configuration (see :func:`target_sessions`).
    planned : dict, optional
        As for :func:`find_frames`.

    Returns
    -------
    dict of str to dict of str to dict of str to str
        Session -> frame type (``light``, ``dark``...) -> frame name -> source path. With one
        session the names are those of :func:`find_frames`; with several, each is prefixed
        with ``{session}_``, so that a frame's intermediate files are unique.

    Raises
    ------
    DiscoveryError
        If an entry names no frames, or two frames of one type get the same name in different
        sessions (the message names both sources).
    """
    sessions = target_sessions(settings)
    several = len(sessions) > 1
    found, owner = {}, {}
    for session, entries in sessions.items():
        prefix = f"{session}_" if several else ""
        label = f"target '{target}'" + (f", session '{session}'" if "sessions" in settings else "")
        found[session] = {}
        for key, ftype in FRAME_TYPES.items():
            if key not in entries:
                continue
            frames = find_frames(entries[key], f"{label}, {key}: {entries[key]}", planned=planned)
            named = {}
            for name, path in frames.items():
                unique = prefix + name
                if (ftype, unique) in owner:
                    other_session, other = owner[(ftype, unique)]
                    raise DiscoveryError(
                        f"target '{target}': {ftype} frames {other} (session '{other_session}') "
                        f"and {path} (session '{session}') both get the name '{unique}'; "
                        f"rename a session"
                    )
                owner[(ftype, unique)] = (session, path)
                named[unique] = path
            found[session][ftype] = named
    return found


def source_header(path):
    """The primary keywords of a FITS source frame, read at parse time; None for other formats.

    Parameters
    ----------
    path : str
        A frame file (any format of :data:`astroflow.io.formats.DEEP_SKY_FRAME`).

    Returns
    -------
    astropy.io.fits.Header or None
        The header of the first HDU that holds an image (compressed FITS included); None
        when the file is not FITS or does not exist yet (a planned, simulated frame) or
        cannot be read (ingest then reports it). Cards astropy cannot parse are left out
        (:func:`astroflow.io.fits.parsable_header`).
    """
    if format_of(path) != "fits" or not os.path.isfile(path):
        return None
    from astropy.io import fits

    from astroflow.io.fits import parsable_header

    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            for hdu in hdul:
                if hdu.header.get("NAXIS", 0) or hdu.header.get("ZNAXIS", 0):
                    return parsable_header(hdu.header)[0]
            return parsable_header(hdul[0].header)[0]
    except (OSError, ValueError, fits.VerifyError):
        return None


# What a master of each calibration type depends on: sessions that give the same folders for all
# of them share the master (frame type -> configuration entries).
_MASTER_INPUTS = {
    "bias": ("bias",),
    "dark": ("darks", "bias"),
    "darkflat": ("darkflats", "bias"),
    "flat": ("flats", "bias", "darkflats", "darks"),
}


def shared_masters(sessions):
    """Which session's master each session uses: one master for the same calibration folders.

    A darks library named by every night, or one bias folder for all filters, is ingested and
    combined once.

    Parameters
    ----------
    sessions : dict of str to dict
        Session name -> its entries, as :func:`target_sessions` returns them.

    Returns
    -------
    dict of str to dict of str to str
        Session -> calibration frame type (``bias``, ``dark``, ``darkflat``, ``flat``, those it
        has) -> the first session (in configuration order) whose entries for that master and
        for the masters it is made with (:data:`_MASTER_INPUTS`) are the same; the session
        itself when none before it has them.
    """
    owners = {}
    first = {}
    for session, entries in sessions.items():
        owners[session] = {}
        for ftype, keys in _MASTER_INPUTS.items():
            if FRAME_TYPES_BY_TYPE[ftype] not in entries:
                continue
            key = (ftype,) + tuple(os.path.normpath(entries[k]) if k in entries else None for k in keys)
            owners[session][ftype] = first.setdefault(key, session)
    return owners


#: frame type -> its configuration entry
FRAME_TYPES_BY_TYPE = {ftype: key for key, ftype in FRAME_TYPES.items()}
