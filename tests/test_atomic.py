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
