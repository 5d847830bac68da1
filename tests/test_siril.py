"""Our FITS and TIFF files in Siril, the real program: the same way up, the same colours.

Debian's ``siril`` package (installed here with apt-get on a root Debian machine) runs Siril
scripts headless with ``siril-cli -s``. Siril loads each of our files and exports it again; an
image with a bright block in its top-left corner (in memory, row 0 at the top) must still have
it top-left in the TIFF that Siril writes (TIFF stores the top row first), whether Siril read
our FITS or our TIFF. A FITS that Siril saves from ours must read back with
:func:`astroflow.io.fits.read_image` the same way up. A CFA mosaic we write must have its
red pixels where Siril's Bayer handling looks for them, whatever the parity of its height.
"""

import os
import subprocess

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from conftest import debian_package

from astroflow.io.export import save_tiff16, save_tiff32
from astroflow.io.fits import read_image, write_image

# Values of a CFA test mosaic: red, green and blue sites each have their own.
CFA_VALUES = {"R": 1000.0, "G": 30000.0, "B": 60000.0}


@pytest.fixture(scope="module")
def siril():
    return debian_package("siril-cli", "siril")


def run_siril(siril, folder, *commands):
    """Run Siril headless on a script of ``commands`` in ``folder``; its output (the log)."""
    script = folder / "script.ssf"
    script.write_text("\n".join(["requires 1.0.0", *commands]) + "\n")
    # A private settings folder: Siril starts from its default settings and leaves the
    # machine's own alone.
    env = {**os.environ, "HOME": str(folder / "home"), "XDG_CONFIG_HOME": str(folder / "config")}
    proc = subprocess.run(
        [siril, "-d", str(folder), "-s", str(script)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )
    assert proc.returncode == 0 and "Script execution finished successfully" in proc.stdout, proc.stdout
    return proc.stdout


def asymmetric_image(channels=0):
    """A 24x32 image, bright block top-left; for RGB a second, green-only block top-right."""
    shape = (24, 32, channels) if channels else (24, 32)
    image = np.full(shape, 1000.0, np.float32)
    image[:6, :8] = 16000.0
    if channels:
        image[:4, -6:, 1] = 12000.0
    return image


def bright(image):
    """Where an image is brighter than half way between its extremes, per channel."""
    image = np.asarray(image, np.float64)
    low = np.nanmin(image, axis=(0, 1))
    high = np.nanmax(image, axis=(0, 1))
    return image > (low + high) / 2


def cfa_mosaic(height, pattern):
    """A (height, 8) mosaic whose top-left 2x2 cell is ``pattern``, each colour at its value."""
    mosaic = np.empty((height, 8), np.float32)
    for dy in (0, 1):
        for dx in (0, 1):
            mosaic[dy::2, dx::2] = CFA_VALUES[pattern[2 * dy + dx]]
    return mosaic


def test_siril_version(siril):
    out = subprocess.run([siril, "--version"], capture_output=True, text=True, timeout=60).stdout
    print(out.strip())
    assert out.startswith("siril ")


@pytest.mark.parametrize("channels", [0, 3], ids=["mono", "rgb"])
def test_siril_opens_our_fits_and_tiffs_the_right_way_up(siril, tmp_path, channels):
    image = asymmetric_image(channels)
    write_image(tmp_path / "ours.fits", image)
    save_tiff16(tmp_path / "ours16.tif", image, description="test")
    save_tiff32(tmp_path / "ours32.tif", image, description="test")
    log = run_siril(
        siril, tmp_path,
        "load ours.fits", "savetif fits_as16", "savetif32 fits_as32", "save fits_saved",
        "load ours16.tif", "savetif tif16_as16",
        "load ours32.tif", "savetif32 tif32_as32",
    )
    # libtiff (in Siril) warns about a TIFF with two ImageDescription tags: ours have one.
    assert "TIFFReadDirectory" not in log, log
    for name in ("fits_as16", "fits_as32", "tif16_as16", "tif32_as32"):
        exported = tifffile.imread(tmp_path / f"{name}.tif")
        assert exported.shape == image.shape, name
        np.testing.assert_array_equal(bright(exported), bright(image), err_msg=name)
    # The float TIFF is 0..1, the range Siril takes as black to white, and Siril keeps it.
    ours32 = tifffile.imread(tmp_path / "ours32.tif")
    assert np.nanmax(ours32) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "tif32_as32.tif"), ours32, rtol=1e-6)
    # A FITS Siril saved from ours says BOTTOM-UP and stores the rows that way.
    with fits.open(tmp_path / "fits_saved.fit") as hdul:
        assert hdul[0].header["ROWORDER"] == "BOTTOM-UP"
    back, _ = read_image(tmp_path / "fits_saved.fit")
    assert back.shape == image.shape
    np.testing.assert_array_equal(bright(back), bright(image))


@pytest.mark.parametrize("height", [8, 9], ids=["even", "odd"])
@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_siril_finds_the_red_pixels_of_our_cfa_fits(siril, tmp_path, height, pattern):
    # Flipping the rows of an even-height mosaic turns RGGB into GBRG on disk: Siril must read
    # our BAYERPAT as the top-left cell of the image (ROWORDER = 'BOTTOM-UP') to find red.
    write_image(tmp_path / "cfa.fits", cfa_mosaic(height, pattern), {"BAYERPAT": pattern})
    log = run_siril(siril, tmp_path, "load cfa.fits", "extract_Ha")
    assert f"Filter Pattern: {pattern}" in log, log
    ha = fits.getdata(tmp_path / "Ha_cfa.fit").astype(np.float64)
    # Siril writes its float data scaled to 0..1 of the 16-bit range.
    scale = 65535.0 if ha.max() <= 1.0 else 1.0
    np.testing.assert_allclose(ha * scale, CFA_VALUES["R"], rtol=1e-4)
