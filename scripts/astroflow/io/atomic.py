"""Atomic file writes: a reader (or a killed job) never sees half a file."""

from __future__ import annotations

import os
import socket
import time
from glob import escape
from pathlib import Path

__all__ = ["atomic_write"]

#: a temporary file of another host is taken for stale after this long (s): its writer's
#: process cannot be looked up from here
STALE_AFTER_S = 24 * 3600


def atomic_write(path, write):
    """Write a file through ``write(tmp)`` into a temporary file beside it, then rename it.

    The temporary name keeps the file's suffix (writers such as imageio and numpy choose the
    format from it); parent folders are created; the temporary file is removed if ``write``
    fails, and ``path`` is then left as it was.

    The temporary file is ``.{stem}.{host}_{pid}.tmp{suffix}`` (the host's short name). A writer killed before its
    rename (SIGKILL, a power cut, a cluster node lost) leaves its temporary file; the next
    write of the same ``path`` removes it: at once when that writer's host is this one and its
    process is gone, after :data:`STALE_AFTER_S` when it was another host.

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
    host = socket.gethostname().split(".")[0].replace("_", "-") or "host"
    _remove_stale(path, host)
    tmp = path.with_name(f".{path.stem}.{host}_{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _remove_stale(path, host):
    """Remove the temporary files of ``path`` that writers killed before their rename left."""
    prefix, tail = f".{path.stem}.", f".tmp{path.suffix}"
    for stale in path.parent.glob(escape(prefix) + "*" + escape(tail)):
        writer, _, pid = stale.name[len(prefix):len(stale.name) - len(tail)].rpartition("_")
        if not pid.isdigit() or "." in writer:  # another file's name, e.g. of stem "a.b"
            continue
        try:
            if writer == host:
                if int(pid) == os.getpid() or _alive(int(pid)):
                    continue
            elif time.time() - stale.stat().st_mtime < STALE_AFTER_S:
                continue
            stale.unlink()
        except FileNotFoundError:  # removed meanwhile by another writer
            pass


def _alive(pid):
    """True when a process ``pid`` runs on this host (or may: it is another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
