"""Tests of astroflow.calibration.debayer: Bayer pattern conventions and demosaicing."""

import numpy as np
import pytest

from astroflow.calibration.debayer import BAYER_PATTERNS, cfa_colour_cells, debayer, validate_pattern

METHODS = ["bilinear", "malvar2004", "menon2007"]


def mosaic_of(rgb, pattern, shape):
    """The CFA mosaic a camera with this pattern records of a uniform colour."""
    cfa = np.empty(shape, dtype=np.float32)
    for index, colour in enumerate(pattern):
        dy, dx = divmod(index, 2)
        cfa[dy::2, dx::2] = rgb["RGB".index(colour)]
    return cfa


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("method", METHODS)
def test_uniform_colour_restored_everywhere(pattern, method):
    colour = (-4.0, 250.0, 1200.5)  # calibrated data may be negative: no clipping allowed
    cfa = mosaic_of(colour, pattern, (21, 30))
    original = cfa.copy()
    rgb = debayer(cfa, pattern, method=method)
    assert rgb.shape == (21, 30, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, np.broadcast_to(colour, rgb.shape), atol=1e-3)
    np.testing.assert_array_equal(cfa, original)


@pytest.mark.parametrize("method", METHODS)
def test_known_pixels_kept_and_pattern_matters(method):
    rng = np.random.default_rng(0)
    cfa = rng.uniform(-50, 5000, (16, 16)).astype(np.float32)
    rgb = debayer(cfa, "bggr", method=method)
    if method != "menon2007":  # Menon's refining step revises the measured colours as well
        np.testing.assert_allclose(rgb[0::2, 0::2, 2], cfa[0::2, 0::2], rtol=1e-5)
        np.testing.assert_allclose(rgb[1::2, 1::2, 0], cfa[1::2, 1::2], rtol=1e-5)
    assert not np.allclose(rgb, debayer(cfa, "RGGB", method=method))


def test_errors():
    cfa = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="Bayer pattern 'RGBG'"):
        debayer(cfa, "RGBG")
    with pytest.raises(ValueError, match="debayer method"):
        debayer(cfa, "RGGB", method="vng")
    with pytest.raises(ValueError, match="2-D"):
        debayer(np.zeros((8, 8, 3)), "RGGB")


def test_pattern_helpers():
    assert validate_pattern(" gbrg ") == "GBRG"
    assert cfa_colour_cells("GRBG") == {"R": [(0, 1)], "G": [(0, 0), (1, 1)], "B": [(1, 0)]}


def test_debayer_leaves_numpy_print_options_and_csv_precision_alone():
    # colour-demosaicing sets np.set_printoptions(legacy="1.13") on import, which would cut every
    # float that pandas writes to a CSV afterwards to 12 digits. A fresh interpreter is needed:
    # in this one the package may already have been imported by another test.
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import numpy as np, pandas as pd\n"
        "from astroflow.calibration.debayer import debayer\n"
        "debayer(np.ones((8, 8), np.float32), 'RGGB')\n"
        "assert np.get_printoptions()['legacy'] is False, np.get_printoptions()['legacy']\n"
        "print(pd.DataFrame({'dy': [1.9170512461155438]}).to_csv(index=False).split()[1])\n"
    )
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    done = subprocess.run([sys.executable, "-c", script], cwd=scripts, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) == 1.9170512461155438
