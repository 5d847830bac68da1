"""Tests of astroflow.checks: the shared argument checks."""

import numpy as np
import pytest

from astroflow.checks import check_float, check_int


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
