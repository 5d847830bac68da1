"""Folders of every readable frame format run through the workflow; intermediates are temp()."""

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from conftest import snakemake

from astroflow.io.fits import read_header
from astroflow.io.ingest import read_frame
from astroflow.simulation.night import simulate_night

pytestmark = pytest.mark.integration
RAW_NAMES = ("dcr", "raw", "MEF", "3fr", "fff", "k25")  # LibRaw reads by content, not by name
FITS_NAMES = ("fits.gz", "fit.fz", "FITS", "fts.gz", "fits.fz", "fit")


def write_cfa_fits(dng, path):
    data, meta = read_frame(dng)
    header = fits.Header()
    for key in ("EXPTIME", "DATE-OBS", "BAYERPAT", "INSTRUME"):
        header[key] = meta[key]
    header["ROWORDER"] = "TOP-DOWN"  # the rows as the camera read them, like the DNG
    if path.name.lower().endswith(".fz"):
        hdus = [fits.PrimaryHDU(), fits.CompImageHDU(data.astype(np.int32), header=header)]
        fits.HDUList(hdus).writeto(path)
        return
    fits.PrimaryHDU(data.astype(np.uint16), header=header).writeto(path.with_suffix(".tmp"))
    raw = path.with_suffix(".tmp").read_bytes()
    path.with_suffix(".tmp").unlink()
    path.write_bytes(gzip.compress(raw) if path.name.lower().endswith(".gz") else raw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("formats")
    night = base / "night"
    simulate_night(night, width=320, height=240, n_lights=6, n_darks=1, n_flats=1, n_bias=1, seed=7)
    dngs = sorted((night / "lights").glob("*.dng"))
    raw_dir, fits_dir = base / "raw lights", base / "fits-lights"
    raw_dir.mkdir()
    fits_dir.mkdir()
    for i, (dng, ext) in enumerate(zip(dngs, RAW_NAMES, strict=True), 1):
        shutil.copy(dng, raw_dir / f"light_{i:03d}.{ext}")
    for i, (dng, ext) in enumerate(zip(dngs, FITS_NAMES, strict=True), 1):
        write_cfa_fits(dng, fits_dir / f"light_{i:03d}.{ext}")
    (fits_dir / "notes.txt").write_text("not a frame")
    work = base / "work"
    work.mkdir()
    config = work / "formats.yaml"
    targets = {
        "rawnames": {"kind": "deep-sky", "lights": str(raw_dir)},
        "fitsgz": {"kind": "deep-sky", "lights": str(fits_dir)},
    }
    # the stages after the stack read no frame: off, as this test looks at the frames and the stack
    off = {"enabled": False}
    config.write_text(yaml.safe_dump({"targets": targets, "starless": off, "deconvolution": off, "background": off}))
    snakemake(work, "--cores", "2", "--configfile", str(config))
    return work


@pytest.mark.parametrize("target", ["rawnames", "fitsgz"])
def test_every_frame_of_a_folder_is_found_read_and_stacked(run, target):
    frames = pd.read_csv(run / "results" / target / "frames.csv")
    assert list(frames["frame"]) == [f"light_{i:03d}" for i in range(1, 7)]
    # read and calibrated: no frame is lost to its file name or format
    assert frames["width"].eq(320).all() and frames["sha256"].str.len().eq(64).all()
    reasons = frames["reason"].fillna("")
    assert not reasons.str.contains("read|extension|truncated|empty").any(), list(reasons)
    used = frames[frames["status"] == "used"]
    header = read_header(run / "results" / target / "stack.fits")
    assert header["NCOMBINE"] == len(used) >= 3
    assert header["EXPTIME"] == pytest.approx(used["exposure_s"].sum())


def test_fits_copies_of_the_raw_frames_stack_the_same_frames(run):
    raw, fits_ = (pd.read_csv(run / "results" / t / "frames.csv") for t in ("rawnames", "fitsgz"))
    assert list(raw["status"]) == list(fits_["status"])
    assert list(raw["bayer_pattern"]) == list(fits_["bayer_pattern"])


@pytest.mark.parametrize("target", ["rawnames", "fitsgz"])
def test_per_frame_intermediates_are_deleted_by_default(run, target):
    for folder in ("ingest", "calibrated", "registered"):
        left = [p for p in (run / "results" / target / folder).rglob("*") if p.is_file()]
        assert left == [], f"{folder}: {left}"
    assert (run / "results" / target / "stack.fits").exists()
