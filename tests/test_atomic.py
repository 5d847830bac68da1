"""astroflow.io.atomic: a failed write leaves the old file, and no temporary file behind."""

import pytest

from astroflow.io.atomic import atomic_write


def test_atomic_write_replaces_keeps_suffix_and_cleans_up_on_failure(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    seen = []
    atomic_write(path, lambda tmp: (seen.append(tmp.suffix), tmp.write_text("new")))
    assert path.read_text() == "new" and seen == [".csv"]

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    """A temporary file whose writer is gone (this host, no such process; another host, over a
    day old) is removed when the same file is next written; a live writer's is kept, and so are
    the temporaries of other files."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from astroflow.io import atomic

    host = socket.gethostname().split(".")[0].replace("_", "-")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    path = tmp_path / "stack.fits"
    dead = tmp_path / f".stack.{host}_{dead_pid}.tmp.fits"
    live = tmp_path / f".stack.{host}_{os.getppid()}.tmp.fits"
    old_elsewhere = tmp_path / ".stack.node7_12.tmp.fits"
    new_elsewhere = tmp_path / ".stack.node8_12.tmp.fits"
    other_file = tmp_path / f".stack.b.{host}_{dead_pid}.tmp.fits"
    for stale in (dead, live, old_elsewhere, new_elsewhere, other_file):
        stale.write_bytes(b"half")
    day_ago = time.time() - atomic.STALE_AFTER_S - 60
    os.utime(old_elsewhere, (day_ago, day_ago))
    atomic.atomic_write(path, lambda tmp: tmp.write_bytes(b"whole"))
    assert path.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (path, live, new_elsewhere, other_file)
    )
