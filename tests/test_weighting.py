"""Tests of astroflow.deepsky.weighting: frame weights, outlier rejection, keep-best-N."""

import numpy as np
import pandas as pd
import pytest

from astroflow.deepsky.weighting import keep_best, reject_outliers, set_weights, weight_columns


def table(**columns):
    n = len(next(iter(columns.values())))
    base = {
        "frame": [f"f{k}" for k in range(n)],
        "status": ["used"] * n,
        "reason": [""] * n,
        "fwhm": [3.0] * n,
        "eccentricity": [0.3] * n,
        "n_stars": [100] * n,
        "background": [500.0] * n,
        "noise": [10.0] * n,
        "flux_ratio": [1.0] * n,
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_sharper_frame_weighs_more_and_psf_signal_follows_signal_over_noise():
    t = table(
        fwhm=[2.0, 4.0, 2.0, 2.0, 2.0],
        noise=[10.0, 10.0, 20.0, 10.0, 10.0],
        flux_ratio=[1.0, 1.0, 1.0, 0.5, 1.0],
        eccentricity=[0.3, 0.3, 0.3, 0.3, 0.8],
        n_stars=[100, 100, 100, 100, 50],
    )
    w = weight_columns(t)
    for column in w:
        assert w[column].mean() == pytest.approx(1.0)
    psf, signal, noise = w["weight_psf"], w["weight_psf_signal"], w["weight_noise"]
    # twice the FWHM: a quarter of the PSF weight and of the PSF signal weight
    assert psf[1] / psf[0] == pytest.approx(0.25)
    assert signal[1] / signal[0] == pytest.approx(0.25)
    # noise: the PSF weight does not see it, the signal weight and the noise weight do (1/sigma^2)
    assert psf[2] == pytest.approx(psf[0])
    assert signal[2] / signal[0] == pytest.approx(0.25)
    assert noise[2] / noise[0] == pytest.approx(0.25)
    # half the flux of the same stars (haze): a quarter of the signal weight
    assert signal[3] / signal[0] == pytest.approx(0.25)
    # trailing and half the stars: the PSF weight falls by sqrt(1 - e^2) ratio and the count
    roundness = np.sqrt(1 - 0.8**2) / np.sqrt(1 - 0.3**2)
    assert psf[4] / psf[0] == pytest.approx(0.5 * roundness)
    assert int(np.argmax(signal.to_numpy())) == 0


def test_set_weights_chooses_one_scheme_and_zeroes_rejected_frames():
    t = table(fwhm=[2.0, 3.0, 4.0], status=["used", "used", "rejected"])
    set_weights(t, "psf_signal")
    assert t["weight"].tolist()[2] == 0.0
    assert t["weight"][:2].mean() == pytest.approx(1.0)
    assert t["weight"][0] / t["weight"][1] == pytest.approx(2.25)
    set_weights(t, "none")
    assert t["weight"].tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="unknown weighting"):
        set_weights(t, "snr")


def test_outliers_are_rejected_per_measure_with_reasons():
    rng = np.random.default_rng(3)
    n = 12
    t = table(
        fwhm=list(3.0 + rng.normal(0, 0.1, n)),
        eccentricity=list(0.3 + rng.normal(0, 0.02, n)),
        background=list(500 + rng.normal(0, 10, n)),
        n_stars=list(rng.integers(95, 105, n)),
    )
    t.loc[1, "fwhm"] = 6.0
    t.loc[2, "eccentricity"] = 0.8
    t.loc[3, "background"] = 1500.0
    t.loc[4, "n_stars"] = 30
    t.loc[5, "fwhm"] = 2.0  # sharper than the rest: never an outlier
    reject_outliers(t, {"fwhm": 5.0, "eccentricity": 5.0, "background": 5.0, "n_stars": 5.0})
    rejected = t.index[t["status"] == "rejected"].tolist()
    assert rejected == [1, 2, 3, 4]
    assert t.loc[1, "reason"].startswith("FWHM outlier: 6 > median")
    assert t.loc[2, "reason"].startswith("eccentricity outlier")
    assert t.loc[3, "reason"].startswith("background outlier")
    assert t.loc[4, "reason"].startswith("star count outlier: 30 < median")
    # each test can be switched off
    t2 = table(fwhm=[3.0] * 8 + [6.0])
    reject_outliers(t2, {"fwhm": 0, "n_stars": 5.0})
    assert (t2["status"] == "used").all()
    with pytest.raises(ValueError, match="unknown outlier"):
        reject_outliers(t2, {"snr": 3.0})


def test_nearly_identical_frames_are_not_split_by_noise():
    # a spread of 1 % is below the floor of the robust sigma (10 % of the median)
    t = table(fwhm=[3.00, 3.01, 2.99, 3.00, 3.30], n_stars=[300, 301, 299, 300, 250])
    reject_outliers(t, {"fwhm": 5.0, "n_stars": 5.0})
    assert (t["status"] == "used").all(), t["reason"]


def test_keep_best_percent_by_weight_keeps_the_reference():
    t = table(fwhm=[2.0, 5.0, 3.0, 4.0, 2.5, 6.0, 3.5, 4.5])
    set_weights(t, "psf_signal")
    keep_best(t, 50, "weight_psf_signal", keep=[5])
    kept = t.index[t["status"] == "used"].tolist()
    # four frames: the reference (5) and the three sharpest
    assert kept == [0, 2, 4, 5]
    reason = t.loc[1, "reason"]
    assert reason.startswith("not among the best 50% by weight_psf_signal") and "rank" in reason
    keep_best(t, 100, "weight_psf_signal")
    assert len(t.index[t["status"] == "used"]) == 4
    with pytest.raises(ValueError, match="keep percent"):
        keep_best(t, 0, "weight_psf_signal")


def test_outliers_are_judged_among_frames_of_the_same_exposure_and_filter():
    # six 60 s lights and three 120 s ones: twice the sky, more stars - not outliers of their own
    background = [500.0, 505.0, 498.0, 502.0, 497.0, 503.0, 1000.0, 1010.0, 995.0]
    stars = [100, 102, 98, 101, 99, 100, 160, 158, 162]
    groups = ["60|L"] * 6 + ["120|L"] * 3
    limits = {"background": 5.0, "n_stars": 5.0}
    t = reject_outliers(table(background=background, n_stars=stars), limits, groups=groups)
    assert (t["status"] == "used").all(), t["reason"]
    mixed = reject_outliers(table(background=background, n_stars=stars), limits)
    assert mixed.index[mixed["status"] == "rejected"].tolist() == [6, 7, 8]
    # a bright frame within its group still is one
    background[2] = 1500.0
    t = reject_outliers(table(background=background, n_stars=stars), limits, groups=groups)
    assert t.index[t["status"] == "rejected"].tolist() == [2]
