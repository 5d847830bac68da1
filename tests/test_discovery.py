"""Input discovery (astroflow.workflow.discovery) and the schema's per-kind key rules."""

from pathlib import Path

import pytest
import yaml

from astroflow.io import formats
from astroflow.workflow.config import kind_errors
from astroflow.workflow.discovery import (
    DiscoveryError,
    find_frames,
    find_image,
    find_sequence,
    frame_name,
    target_pattern,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def test_a_folder_lists_every_readable_frame_format(tmp_path):
    raw = [f"light_{i:02d}{ext}" for i, ext in enumerate(formats.RAW)]
    other = ["a.fits.gz", "b.FIT.fz", "c.fts", "d.tiff", "notes.txt", "thumbs.db", "e.png"]
    folder = touch(tmp_path / "lights", *raw, *other)
    (folder / "sub.fits").mkdir()
    frames = find_frames(str(folder), "lights")
    assert set(frames) == {f"light_{i:02d}" for i in range(len(raw))} | {"a", "b", "c", "d"}
    assert frames["a"] == str(folder / "a.fits.gz")


def test_names_are_safe_and_unique(tmp_path):
    folder = touch(tmp_path / "l", "m 42 #1.fits", "m_42_1.fit", "m 42 #1.fits.gz")
    frames = find_frames(str(folder), "lights")
    assert sorted(frames) == ["m_42_1", "m_42_1-2", "m_42_1-3"]
    assert frame_name("/x/.fits") == "fits"


def test_glob_single_file_and_planned_folder(tmp_path):
    folder = touch(tmp_path / "l", "a.cr2", "b.cr2", "c.nef")
    assert list(find_frames(str(folder / "*.cr2"), "lights")) == ["a", "b"]
    assert find_frames(str(folder / "c.nef"), "lights") == {"c": str(folder / "c.nef")}
    planned = {str(tmp_path / "sim" / "lights"): ["sim/lights/light_001.dng"]}
    assert find_frames(str(tmp_path / "sim" / "lights"), "lights", planned=planned) == {
        "light_001": "sim/lights/light_001.dng"
    }


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: str(p / "missing"), "no such folder or file"),
        (lambda p: str(touch(p / "empty", "readme.txt")), "no frames found"),
    ],
)
def test_nothing_to_read_is_an_error_naming_the_entry(tmp_path, make, message):
    with pytest.raises(DiscoveryError, match=message) as err:
        find_frames(make(tmp_path), "target 't', lights: x")
    assert "target 't', lights: x" in str(err.value)


def test_sequence_is_one_container_or_naturally_sorted_frames(tmp_path):
    folder = touch(tmp_path / "seq", "f10.png", "f2.png", "f1.fits.gz", "notes.txt")
    assert [Path(p).name for p in find_sequence(str(folder), "lights")] == [
        "f1.fits.gz", "f2.png", "f10.png",
    ]
    video = touch(tmp_path / "v", "jupiter.SER") / "jupiter.SER"
    assert find_sequence(str(video), "lights") == [str(video)]
    touch(tmp_path / "v", "moon.avi")
    with pytest.raises(DiscoveryError, match="give one video or SER file"):
        find_sequence(str(tmp_path / "v" / "*"), "lights")


def test_image_target_needs_one_readable_image(tmp_path):
    touch(tmp_path, "cave.xisf", "cave.bmp")
    assert find_image(str(tmp_path / "cave.xisf"), "lights") == str(tmp_path / "cave.xisf")
    with pytest.raises(DiscoveryError, match="not an image file"):
        find_image(str(tmp_path / "cave.bmp"), "lights")
    with pytest.raises(DiscoveryError, match="needs one image file"):
        find_image(str(tmp_path), "lights")


def test_target_pattern_matches_exactly_the_names():
    import re

    pattern = target_pattern(["m42", "ngc.7000"])
    assert re.fullmatch(pattern, "ngc.7000") and not re.fullmatch(pattern, "ngcx7000")
    assert not re.fullmatch(target_pattern([]), "")


@pytest.mark.parametrize(
    "target,expected",
    [
        ({"kind": "planetary", "lights": "x", "flats": "y"},
         ["target 'p': a planetary target takes lights and optional darks, not flats"]),
        ({"kind": "image", "lights": "x", "darks": "y"},
         ["target 'p': an image target takes lights (one image) and an optional encoding, not darks"]),
        ({"kind": "deep-sky", "lights": "x", "encoding": "auto"},
         ["target 'p': a deep-sky target takes lights and calibration folders (or sessions of them), "
          "filter and palette, not encoding"]),
        ({"kind": "deep-sky", "lights": "x", "darks": "y", "flats": "z", "bias": "b"}, []),
    ],
)
def test_schema_says_which_keys_each_kind_takes(target, expected):
    assert kind_errors({"targets": {"p": target}}, SCHEMA) == expected
