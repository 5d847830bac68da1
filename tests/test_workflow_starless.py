"""Star removal through the workflow: the image target kind, the real Cave Nebula, bad input, and
training the network from its own synthetic data with the rules."""

import re

import numpy as np
import pytest
import tifffile
import yaml
from astropy.io import fits
from conftest import SHARED_DATA, needs_shared_data, snakemake
from PIL import Image
from xisf import XISF

from astroflow.io.export import tiff_scale
from astroflow.io.fits import read_header, read_image
from astroflow.restoration.starless import classical_star_removal, screen
from astroflow.restoration.starmetrics import count_sources, spike_excess

pytestmark = pytest.mark.integration

CAVE = SHARED_DATA / "cave-nebula" / "cave_nebula_starry_color.png"


def write_config(work, targets, **extra):
    work.mkdir(parents=True, exist_ok=True)
    path = work / "images.yaml"
    path.write_text(yaml.safe_dump({"targets": targets, **extra}))
    return path


XISF_KEYWORDS = {
    key: [{"value": value, "comment": comment}]
    for key, value, comment in (
        ("OBJECT", "M 42", ""),
        ("RA", "83.82", ""),
        ("DEC", "-5.39", ""),
        ("FILTER", "L", ""),
        ("EXPTIME", "3600.0", "[s]"),
        ("NCOMBINE", "12", ""),
        ("DATE-OBS", "2024-01-02T03:04:05", ""),
        ("DATE-END", "2024-01-02T04:10:00", ""),
        ("HISTORY", "", "ImageIntegration: 12 frames"),
    )
}


def xisf_stack():
    """A small linear RGB stack, 0..1 floats as PixInsight saves them, brighter at the top."""
    rng = np.random.default_rng(1)
    image = rng.normal(0.05, 0.002, (120, 100, 3)).astype(np.float32)
    image[:10] += 0.01
    image[60:63, 40:43] = 0.9
    return image


@pytest.fixture(scope="module")
def images_run(tmp_path_factory):
    """The real Cave Nebula PNG plus small awkward images, in one run."""
    data = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    # Smaller than one 256 px tile, 8-bit RGB, with stars.
    small = np.full((90, 70, 3), 40, np.uint8)
    small[30:33, 20:23] = 250
    Image.fromarray(small).save(data / "small.png")
    # Single-channel 16-bit TIFF (stretched), with two stars.
    mono = (rng.normal(12000, 300, (300, 280))).astype(np.uint16)
    yy, xx = np.mgrid[:300, :280]
    for y, x in ((100, 100), (200, 150)):
        mono = np.maximum(mono, (60000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)).astype(np.uint16))
    tifffile.imwrite(data / "mono16.tif", mono)
    # Linear float FITS with NaN pixels.
    linear = rng.normal(100, 3, (200, 220)).astype(np.float32)
    linear[50, 60] = 5000.0
    linear[10:14, 10:30] = np.nan
    # stored bottom-up, the FITS way, as Siril saves it: in memory it is `linear` again
    fits.PrimaryHDU(linear[::-1]).writeto(data / "linear.fits")
    # PixInsight's XISF: a linear float RGB stack with its FITS keywords and history.
    metadata = {"FITSKeywords": XISF_KEYWORDS}
    XISF.write(str(data / "stack.xisf"), xisf_stack(), image_metadata=metadata)
    targets = {
        "small": {"kind": "image", "lights": str(data / "small.png")},
        "mono16": {"kind": "image", "lights": str(data / "mono16.tif")},
        "linear": {"kind": "image", "lights": str(data / "linear.fits")},
        "xisf": {"kind": "image", "lights": str(data / "stack.xisf")},
    }
    if CAVE.exists():
        targets["cave"] = {"kind": "image", "lights": str(CAVE)}
    work = tmp_path_factory.mktemp("images-run") / "work"
    snakemake(work, "--cores", "2", "--configfile", str(write_config(work, targets)))
    return work, data


@needs_shared_data("cave-nebula")
def test_cave_nebula_loses_its_stars_and_recombines_exactly(images_run):
    work, _ = images_run
    results = work / "results" / "cave"
    _, header = read_image(results / "image.fits")
    # star removal works on the gradient-removed, colour-calibrated image (rule background)
    image, corrected_header = read_image(results / "corrected.fits")
    # (image targets: no gradient removal by default, and display data keep their colour)
    assert (results / "background.fits").exists() and corrected_header["BGMODEL"] == "none"
    starless, _ = read_image(results / "starless.fits")
    stars, _ = read_image(results / "stars.fits")
    assert header["AFENCODE"] == "display" and header["AFBITS"] == 8
    assert np.allclose(screen(starless, stars), image, atol=1e-5)
    before, after = count_sources(image), count_sources(starless)
    print(f"Cave Nebula: {before} stars detected before, {after} after")
    assert after < 0.4 * before
    # The nebula stays: the starless image keeps most of the input's large-scale light.
    import cv2

    smooth_in = cv2.GaussianBlur(image, (0, 0), 8)
    smooth_out = cv2.GaussianBlur(starless, (0, 0), 8)
    assert np.corrcoef(smooth_in.ravel(), smooth_out.ravel())[0, 1] > 0.95
    png = np.asarray(Image.open(results / "starless.png"))
    assert png.dtype == np.uint8 and png.shape == image.shape
    # Its crossed diffraction spikes (measured 2026-12-03, shipped weights: the input 5.9 noise
    # sigmas along the spikes of its 12 saturated stars, what the network and the profiles left
    # 1.31, after subtract_spikes 0.13; the classical baseline 0.12) are found and taken.
    log = (work / "logs" / "starless" / "cave.log").read_text()
    found = re.search(r"spikes at \[(\d+), (\d+)\] degrees: (\d+) spike arms subtracted", log)
    assert found, log
    angles = sorted(int(a) for a in found.groups()[:2])
    assert angles[0] <= 5 and 85 <= angles[1] <= 95 and int(found.group(3)) >= 40
    spikes = spike_excess(image, starless)
    print(f"Cave Nebula spikes: {spikes}")
    assert spikes["spike_lines"] == 2 and spikes["spike_before"] > 4.0
    assert spikes["spike_excess"] < 0.1 * spikes["spike_before"]


def test_image_smaller_than_a_tile(images_run):
    work, _ = images_run
    starless, _ = read_image(work / "results" / "small" / "starless.fits")
    assert starless.shape == (90, 70, 3)
    assert starless[31, 21].max() < 0.9  # the star at (31, 21) was 250/255 = 0.98


def test_single_channel_16bit_tiff_stays_16bit_mono(images_run):
    work, _ = images_run
    results = work / "results" / "mono16"
    image, header = read_image(results / "image.fits")
    starless, _ = read_image(results / "starless.fits")
    assert header["AFBITS"] == 16 and image.ndim == 2 and starless.shape == image.shape
    png = np.asarray(Image.open(results / "starless.png"))
    assert png.dtype == np.uint16 and png.ndim == 2
    # Both stars are fainter after star removal.
    for y, x in ((100, 100), (200, 150)):
        assert starless[y, x] < image[y, x] - 0.2


def test_linear_fits_with_nan_pixels(images_run):
    work, _ = images_run
    results = work / "results" / "linear"
    _, header = read_image(results / "image.fits")
    image, _ = read_image(results / "corrected.fits")  # what star removal and deconvolution read
    starless, _ = read_image(results / "starless.fits")
    stars, _ = read_image(results / "stars.fits")
    assert header["AFENCODE"] == "linear"
    assert np.isnan(starless[10:14, 10:30]).all()
    finite = np.isfinite(image)
    assert np.allclose((starless + stars)[finite], image[finite], atol=1e-2)
    assert starless[50, 60] < 0.5 * image[50, 60]
    log = (work / "logs" / "starless" / "linear.log").read_text()
    assert "80 NaN pixels" in log


def test_xisf_image_keeps_its_orientation_and_its_keywords_reach_every_product(images_run):
    work, _ = images_run
    results = work / "results" / "xisf"
    image, header = read_image(results / "image.fits")
    np.testing.assert_array_equal(image, xisf_stack())  # top row first, as XISF stores it
    assert header["AFENCODE"] == "linear" and header["AFBITS"] == 32 and header["BUNIT"] == "ADU"
    assert header["OBJECT"] == "M 42" and header["RA"] == 83.82 and header["NCOMBINE"] == 12
    history = list(header["HISTORY"])
    # astropy wraps a HISTORY line longer than a card (the source path) over several cards
    assert history[0] == "ImageIntegration: 12 frames" and "image_ingest" in "".join(history[1:])
    for name in ("starless", "stars", "deconvolved"):
        product = read_header(results / f"{name}.fits")
        for key in ("OBJECT", "RA", "DEC", "FILTER", "EXPTIME", "NCOMBINE", "DATE-OBS", "DATE-END"):
            assert product[key] == header[key], (name, key)
        assert product["BUNIT"] == "ADU", name
        assert list(product["HISTORY"])[: len(history)] == history, name
        assert len(product["HISTORY"]) > len(history), name


def test_stretched_image_products_have_no_unit(images_run):
    work, _ = images_run
    for name in ("image", "starless", "stars", "deconvolved"):
        header = read_header(work / "results" / "small" / f"{name}.fits")
        assert header["AFENCODE"] == "display" and header["BUNIT"] == "", name


@pytest.mark.parametrize("target", ["small", "linear"])
def test_products_are_also_16_bit_and_float_tiffs(images_run, target):
    work, _ = images_run
    results = work / "results" / target
    for name in ("starless", "stars", "deconvolved"):
        image, header = read_image(results / f"{name}.fits")
        # the float TIFF holds the FITS's values (scaled to 0..1 when linear), the same way up
        f32 = results / f"{name}_f32.tif"
        np.testing.assert_allclose(tifffile.imread(f32) / tiff_scale(f32), image, rtol=1e-6, atol=1e-6)
        with tifffile.TiffFile(results / f"{name}.tif") as tif:
            scaled = tif.asarray()
            description = tif.pages[0].description
        assert scaled.dtype == np.uint16 and scaled.shape == image.shape
        assert f" {header['AFENCODE']}; " in description, name
        if header["AFENCODE"] == "display":  # 0..1 of the full scale, as the FITS holds it
            expected = np.round(np.clip(np.nan_to_num(image.astype(np.float64)), 0, 1) * 65535)
            np.testing.assert_array_equal(scaled, expected)


def test_training_rules_make_weights_that_inference_uses(tmp_path):
    """starless_shard -> train_starless -> starless with weights: trained, on a tiny profile."""
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.full((64, 64, 3), 30, np.uint8)).save(data / "flat.png")
    tiny = {"train_shards": 2, "val_shards": 1, "base": 4, "depth": 2, "epochs": 2,
            "steps_per_epoch": 3, "batch_size": 2, "crop": 32, "lr": 0.002}
    work = tmp_path / "work"
    config = write_config(
        work,
        {"flat": {"kind": "image", "lights": str(data / "flat.png")}},
        starless={"weights": "trained"},
        training={"starless": {"sample_size": 64, "samples_per_shard": 3, "small": tiny}},
    )
    snakemake(work, "--cores", "2", "--configfile", str(config))
    models = work / "results" / "models"
    for name in ("starless.pt", "starless.json", "starless_history.csv", "starless_curves.png"):
        assert (models / name).stat().st_size > 0
    meta = yaml.safe_load((models / "starless.json").read_text())
    assert meta["steps"] == 6 and meta["settings"]["base"] == 4 and meta["device"] == "cpu"
    assert len(list((work / "resources" / "datasets" / "starless" / "train").glob("*.npz"))) == 2
    log = (work / "logs" / "starless" / "flat.log").read_text()
    assert "results/models/starless.pt" in log
    runtimes = (work / "results" / "runtimes.tsv").read_text()
    assert "train_starless" in runtimes and "starless" in runtimes


def test_deconvolution_of_an_image_without_stars_falls_back_with_a_warning(images_run):
    """No usable star for the PSF (one hot pixel on noise): the fallback PSF, a warning naming
    the image in the log, and the NaN pixels still NaN."""
    work, _ = images_run
    results = work / "results" / "linear"
    log = (work / "logs" / "deconvolve" / "linear.log").read_text()
    assert "no star to measure the PSF on" in log and "corrected.fits" in log
    assert "gaussian-fallback" in log
    # flatless auto offers linear image targets the flat network; NaN pixels keep it off, said so
    background_log = (work / "logs" / "background" / "linear.log").read_text()
    assert "flat-correction network not applied: the image holds NaN" in background_log
    image, _ = read_image(results / "image.fits")
    deconvolved, header = read_image(results / "deconvolved.fits")
    assert deconvolved.shape == image.shape
    assert np.array_equal(np.isnan(deconvolved), np.isnan(image))
    assert header["PSFFWHM"] == pytest.approx(3.0, rel=0.05)
    # Pure noise stays noise around the same level: no drift, no blow-up.
    finite = np.isfinite(image)
    assert abs(float(np.median(deconvolved[finite])) - float(np.median(image[finite]))) < 1.0
    assert (results / "deconvolution.png").stat().st_size > 0


def test_classical_method_switch_needs_no_weights_and_matches_the_baseline(images_run, tmp_path):
    _, data = images_run
    work = tmp_path / "work"
    targets = {"mono16": {"kind": "image", "lights": str(data / "mono16.tif")}}
    classical = {"threshold_sigma": 4.0, "grow": 2.5, "radius": 4}
    config = write_config(work, targets, starless={"method": "classical", "classical": classical},
                          deconvolution={"enabled": False})
    dry = snakemake(work, "-n", "--configfile", str(config))
    assert "train_starless" not in dry.stdout
    snakemake(work, "--cores", "2", "--configfile", str(config))
    results = work / "results" / "mono16"
    image, _ = read_image(results / "corrected.fits")  # star removal reads the corrected image
    starless, header = read_image(results / "starless.fits")
    stars, _ = read_image(results / "stars.fits")
    expected, mask = classical_star_removal(image, **classical)
    np.testing.assert_array_equal(starless, np.minimum(expected, image))
    assert mask.any() and np.allclose(screen(starless, stars), image, atol=1e-5)
    assert count_sources(starless) < count_sources(image)
    assert any("classical" in str(line) for line in header["HISTORY"])
    log = (work / "logs" / "starless" / "mono16.log").read_text()
    assert "classical star removal" in log and "weights" not in log


@needs_shared_data("cave-nebula")
@pytest.mark.parametrize("on_signal", ["keep", "apply"])
def test_gradient_removal_does_not_eat_a_frame_filling_nebula(tmp_path, on_signal):
    work = tmp_path / "work"
    targets = {"cave": {"kind": "image", "lights": str(CAVE)}}
    config = write_config(work, targets, background={"kinds": ["deep-sky", "image"], "on_signal": on_signal},
                          starless={"enabled": False}, deconvolution={"enabled": False})
    snakemake(work, "results/cave/corrected.fits", "--cores", "2", "--configfile", str(config))
    results = work / "results" / "cave"
    image, _ = read_image(results / "image.fits")
    corrected, header = read_image(results / "corrected.fits")
    model, _ = read_image(results / "background.fits")
    log = (work / "logs" / "background" / "cave.log").read_text()
    assert "looks like extended signal" in log  # the model followed the nebula (BackgroundWarning)
    assert np.ptp(model) > 0.1  # and is kept in background.fits for the user to look at
    if on_signal == "keep":
        assert header["BGMODEL"] == "kept" and "not removed" in log
        np.testing.assert_array_equal(corrected, image)
    else:
        assert header["BGMODEL"] == "rbf"
        assert np.abs(corrected - image).max() > 0.1
