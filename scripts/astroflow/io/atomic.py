"""Atomic file writes: a reader (or a killed job) never sees half a file."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path, write):
    """Write a file through ``write(tmp)`` into a temporary file beside it, then rename it.

    The temporary name keeps the file's suffix (writers such as imageio and numpy choose the
    format from it); parent folders are created; the temporary file is removed if ``write``
    fails, and ``path`` is then left as it was.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    write : callable
        ``write(tmp)`` writes the whole file to the :class:`pathlib.Path` ``tmp``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    Exception
        Whatever ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
