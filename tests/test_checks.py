"""Tests of astroflow.checks: the shared argument checks."""

import numpy as np
import pytest

from astroflow.checks import check_float, check_image, check_int, check_region


def test_check_int_accepts_python_and_numpy_integers():
    assert check_int("n", 3, 1) == 3 and type(check_int("n", np.int64(3), 1)) is int


@pytest.mark.parametrize("value", [True, 2.0, "3", 0, None])
def test_check_int_rejects_and_names_the_argument(value):
    with pytest.raises(ValueError, match=r"n_frames must be an integer >= 1, got"):
        check_int("n_frames", value, 1)


@pytest.mark.parametrize(
    ("value", "kwargs", "ok"),
    [
        (0.0, {}, True),
        (0.0, {"strict": True}, False),
        (1.0, {"high": 1.0}, True),
        (1.0, {"high": 1.0, "high_open": True}, False),
        ("0.5", {}, True),
        (float("nan"), {}, False),
        (float("inf"), {}, False),
        (True, {}, False),
        ("x", {}, False),
        (-1e-9, {}, False),
    ],
)
def test_check_float_bounds(value, kwargs, ok):
    if ok:
        assert check_float("lr", value, 0.0, **kwargs) == float(value)
    else:
        with pytest.raises(ValueError, match="^lr must be"):
            check_float("lr", value, 0.0, **kwargs)


def test_check_float_without_lower_bound_and_only_scalars():
    assert check_float("dy", -1e9, None) == -1e9
    assert check_float("dy", np.array(2.5), None) == 2.5
    for value in (float("nan"), np.array([1.0]), np.bool_(True), [1.0]):
        with pytest.raises(ValueError, match="^dy must be"):
            check_float("dy", value, None)
    with pytest.raises(ValueError, match=r"^x must be <= 1.0, got 2"):
        check_float("x", 2, None, high=1.0)


def test_check_region_defaults_to_the_grid_and_names_the_argument():
    assert check_region("region", None, 4, 6) == (0, 4, 0, 6)
    assert check_region("region", (1, 3, 2, 6), 4, 6) == (1, 3, 2, 6)
    for bad in ((2, 2, 0, 6), (0, 5, 0, 6), (0, 4, -1, 6), (0, 4, 0)):
        with pytest.raises(ValueError, match="^window"):
            check_region("window", bad, 4, 6)


def test_check_image_shape_dtype_finiteness_and_sign():
    image = check_image("truth", [[1, 2], [3, 4]], min_side=2)
    assert image.dtype == np.int64 and image.shape == (2, 2)
    assert check_image("image", np.ones((2, 2, 3), np.float32), channels=True).dtype == np.float32
    for bad, kwargs in (
        (np.ones((3, 2, 2)), {}),
        (np.ones(4), {"channels": True}),
        (np.ones((1, 8)), {"min_side": 2}),
        (np.zeros((0, 4)), {}),
        (np.ones((2, 2), complex), {}),
        (-np.ones((2, 2)), {"non_negative": True}),
    ):
        with pytest.raises(ValueError, match="^truth (must|is empty)"):
            check_image("truth", bad, **kwargs)
    with pytest.raises(ValueError, match=r"^truth contains 4 NaN or infinite value\(s\); fill them$"):
        check_image("truth", np.full((2, 2), np.nan), remedy="fill them")
    assert check_image("truth", -np.ones((2, 2)))[0, 0] == -1.0
