"""Lucky imaging (astroflow.planetary.lucky, astroflow.planetary.passes) against known truth."""

import numpy as np
import pandas as pd
import pytest
from skimage.metrics import peak_signal_noise_ratio

from astroflow.io.sequence import open_sequence
from astroflow.planetary import lucky
from astroflow.planetary import passes as planetary
from astroflow.simulation import planetary as sp


def disc(shape=(200, 240), centre=(100, 120), radius=40, level=200.0, sky=10.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, sky, np.float32)
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = level
    return image


def test_detect_object_finds_disc_centre_and_box():
    det = lucky.detect_object(disc() + np.random.default_rng(0).normal(0, 2, (200, 240)))
    assert det.found and not det.touches_edge
    assert abs(det.cy - 100) < 0.5 and abs(det.cx - 120) < 0.5
    assert 78 <= det.y1 - det.y0 <= 84 and 78 <= det.x1 - det.x0 <= 84


def test_detect_object_blank_frame_is_not_found():
    for blank in (np.zeros((100, 100), np.float32), np.random.default_rng(1).normal(5, 2, (100, 100))):
        det = lucky.detect_object(blank.astype(np.float32))
        assert not det.found and "blank" in det.reason


def test_detect_object_flags_a_planet_cut_by_the_edge():
    det = lucky.detect_object(disc(centre=(100, 10)))
    assert det.found and det.touches_edge


def test_detect_object_rejects_nan():
    image = disc()
    image[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lucky.detect_object(image)


def test_sharpness_ranks_blur_and_ignores_brightness():
    rng = np.random.default_rng(2)
    truth = sp.planet_truth(128, seed=3, radius_frac=0.25, moon=False)
    import cv2

    sharp = cv2.GaussianBlur(truth, (0, 0), 0.7)
    soft = cv2.GaussianBlur(truth, (0, 0), 2.0)
    noisy_soft = soft + rng.normal(0, 3, soft.shape).astype(np.float32)
    assert lucky.sharpness(sharp) > 2 * lucky.sharpness(noisy_soft)
    assert lucky.sharpness(0.5 * sharp) == pytest.approx(lucky.sharpness(sharp), rel=1e-4)


def test_extract_and_global_shift_agree_on_the_sign():
    truth = sp.planet_truth(128, seed=4, radius_frac=0.25, moon=False)
    # Frame content moved by (+3.3, -2.6): window at (p + shift) shows what window p showed before.
    moved = np.fft.ifft2(
        np.fft.fft2(truth)
        * np.exp(-2j * np.pi * (3.3 * np.fft.fftfreq(128)[:, None] - 2.6 * np.fft.fftfreq(128)[None, :]))
    ).real.astype(np.float32)
    ref = lucky.extract(truth, 20, 20, (88, 88))
    dy, dx = lucky.global_shift(ref, lucky.extract(moved, 20, 20, (88, 88)))
    # One estimate has the right sign; the Hann window pulls it towards zero.
    assert 2.5 < dy < 3.4 and -2.7 < dx < -1.8
    py, px = lucky.align_window(ref, moved, 20, 20, (88, 88))
    # to the 1/20 px step of the DFT upsampling
    assert py == pytest.approx(23.3, abs=0.06) and px == pytest.approx(17.4, abs=0.06)
    aligned = lucky.extract(moved, py, px, (88, 88))
    assert np.sqrt(np.mean((aligned - ref)[4:-4, 4:-4] ** 2)) < 0.01 * truth.max()
    assert lucky.extract(truth, -1, 0, (88, 88)) is None
    assert lucky.extract(truth, 0, 40.5, (88, 88)) is None


def test_local_shift_finds_subpixel_shift_and_refuses_large_ones():
    truth = sp.planet_truth(128, seed=5, radius_frac=0.35, moon=False)
    box = truth[40:88, 40:88]
    for dy, dx in [(1.4, -0.7), (-3.2, 2.5)]:
        moved = np.fft.ifft2(
            np.fft.fft2(truth)
            * np.exp(-2j * np.pi * (dy * np.fft.fftfreq(128)[:, None] + dx * np.fft.fftfreq(128)[None, :]))
        ).real.astype(np.float32)
        got = lucky.local_shift(box, moved[32:96, 32:96], 8)
        assert got == pytest.approx((dy, dx), abs=0.15)
    far = np.roll(truth, (11, 0), axis=(0, 1))
    assert lucky.local_shift(box, far[32:96, 32:96], 8) is None


def test_hann_weights_sum_to_one_at_half_steps():
    w = lucky.hann_weights(16)
    total = np.zeros((64, 64))
    for y in range(0, 64 - 16 + 1, 8):
        for x in range(0, 64 - 16 + 1, 8):
            total[y : y + 16, x : x + 16] += w
    assert np.allclose(total[8:-8, 8:-8], 1.0)


def test_ap_qualities_match_sharpness_of_each_box():
    truth = sp.planet_truth(128, seed=6, moon=False)
    points = np.array([[20, 20], [40, 64], [64, 40]])
    got = lucky.ap_qualities(truth, points, 32)
    import cv2

    lap = cv2.Laplacian(cv2.GaussianBlur(truth, (0, 0), 1.0), cv2.CV_32F, ksize=3)
    for (y, x), q in zip(points, got):
        want = lap[y : y + 32, x : x + 32].var() / truth[y : y + 32, x : x + 32].mean() ** 2
        assert q == pytest.approx(want, rel=1e-3)


def test_select_frames_best_first_and_counts():
    q = np.array([0.1, np.nan, 0.5, 0.3, 0.2])
    assert list(lucky.select_frames(q, keep_percent=50)) == [2, 3]
    assert list(lucky.select_frames(q, keep_count=10)) == [2, 3, 4, 0]
    assert list(lucky.select_frames(q, keep_percent=1)) == [2]


def test_choose_window_modes():
    planet = np.array([[80, 84, 0.05, 0, 1]] * 5)
    assert lucky.choose_window((512, 512), planet) == ("planet", (128, 128))
    surface = np.array([[960, 1280, 0.9, 1, 1]] * 5)
    mode, size = lucky.choose_window((960, 1280), surface)
    assert mode == "surface" and size[0] < 960 and size[1] < 1280
    with pytest.raises(ValueError, match="no frame"):
        lucky.choose_window((100, 100), np.array([[0, 0, 0, 0, 0]]))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """100 simulated frames through tip-tilt, local distortion and varying blur, as TIFF files."""
    truth = sp.planet_truth(256, seed=1)
    seq = sp.simulate_sequence(truth, 100, seed=2)
    out = tmp_path_factory.mktemp("planet")
    paths = sp.write_sequence(seq, out)
    frames = open_sequence([str(p) for p in paths])
    table = planetary.analyse_sequence(frames)
    table, mode, size = planetary.plan_window(table, frames.shape[:2])
    table, ref, points, apq = planetary.align_sequence(frames, table, size)
    return seq, frames, table, size, ref, points, apq


def _truth_window(seq, table, size):
    ok = table["status"] == "ok"
    p = table.loc[ok, ["position_y", "position_x"]].to_numpy()
    s = seq.shifts[table.loc[ok, "index"].to_numpy()]
    c = (p - s).mean(axis=0)
    return lucky.extract(seq.truth, c[0], c[1], size), p, s


def test_global_alignment_against_true_shifts(synthetic):
    seq, frames, table, size, *_ = synthetic
    assert (table["status"] == "ok").all()
    _, p, s = _truth_window(seq, table, size)
    err = (p - p.mean(0)) - (s - s.mean(0))
    rms = float(np.sqrt((err**2).mean()))
    print(f"global alignment error {rms:.3f} px RMS per axis (tip-tilt {s.std():.2f} px RMS)")
    # The frames also carry a 0.6 px RMS local distortion, so "the" global shift is itself
    # uncertain by a few tenths of a pixel; without it the error is 0.05 px (see the note).
    assert rms < 0.4, rms
    assert rms < 0.2 * float(s.std())


def test_quality_ranks_frames_by_true_seeing(synthetic):
    seq, frames, table, *_ = synthetic
    ok = table["status"] == "ok"
    corr = pd.Series(table.loc[ok, "quality"].to_numpy()).corr(
        pd.Series(seq.seeing[table.loc[ok, "index"].to_numpy()]), method="spearman"
    )
    assert corr < -0.9


def test_lucky_stack_beats_mean_and_best_frame_against_truth(synthetic, tmp_path, monkeypatch):
    seq, frames, table, size, ref, points, apq = synthetic
    truth, p, _ = _truth_window(seq, table, size)
    image, coverage, usage, stats = planetary.stack_sequence(
        frames, table, ref, points, apq, keep_percent=10, workdir=tmp_path
    )
    assert image.shape == size and np.isfinite(image).all()
    assert coverage.max() == pytest.approx(1.0) and coverage.min() < 1.0
    ok = table["status"] == "ok"
    mean = np.mean(
        [lucky.extract(seq.frames[i], *p[k], size) for k, i in enumerate(table.loc[ok, "index"])],
        axis=0,
    )
    best = int(table.loc[ok].sort_values("quality").iloc[-1]["index"])
    best_frame = lucky.extract(seq.frames[best], *p[list(table.loc[ok, "index"]).index(best)], size)
    rng = float(truth.max())
    scores = {
        name: peak_signal_noise_ratio(truth, im, data_range=rng)
        for name, im in (("stack", image), ("mean", mean), ("best", best_frame))
    }
    print("PSNR (dB):", scores)
    assert scores["stack"] > scores["mean"] + 3.0
    assert scores["stack"] > scores["best"] + 1.5
    assert stats["local_fallbacks"] < 0.05 * stats["local_measured"]
    assert usage["ap_count"].sum() == 10 * len(points)
    # Local alignment earns its keep: the same stack with every local shift refused (global
    # alignment only) is worse against the truth.
    monkeypatch.setattr(lucky, "local_shift", lambda ref, patch, search: None)
    global_only, _, _, _ = planetary.stack_sequence(
        frames, table, ref, points, apq, keep_percent=10, workdir=tmp_path
    )
    psnr_global = peak_signal_noise_ratio(truth, global_only, data_range=rng)
    print(f"PSNR global alignment only: {psnr_global:.2f} dB")
    assert scores["stack"] > psnr_global + 0.4


def test_stack_with_drizzle_is_upsampled_and_close_to_truth(synthetic, tmp_path):
    seq, frames, table, size, ref, points, apq = synthetic
    image, coverage, _, _ = planetary.stack_sequence(
        frames, table, ref, points, apq, keep_percent=10, drizzle=1.5, workdir=tmp_path
    )
    assert image.shape == (int(size[0] * 1.5), int(size[1] * 1.5))
    assert np.isfinite(image).all()
    truth, _, _ = _truth_window(seq, table, size)
    import cv2

    down = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
    assert peak_signal_noise_ratio(truth, down, data_range=float(truth.max())) > 32.0


def test_plan_window_drops_frames_whose_planet_is_cut():
    rows = []
    for i, cx in enumerate([120, 125, 130, 12, 236]):
        rows.append(
            dict(
                index=i, frame=f"f{i}", status="ok", reason="", quality=1.0, object_y=100.0,
                object_x=float(cx), object_height=80, object_width=80, area_fraction=0.1,
                touches_edge=cx in (12,),
            )
        )
    table, mode, size = planetary.plan_window(pd.DataFrame(rows), (200, 250))
    assert mode == "planet" and size == (120, 120)
    reasons = dict(zip(table["index"], table["reason"]))
    assert table["status"].tolist() == ["ok", "ok", "ok", "rejected", "rejected"]
    assert "cut by the frame edge" in reasons[3]
    assert "too close to the frame edge" in reasons[4]


def test_plan_window_rejects_with_reasons_read_back_from_csv_as_nan(tmp_path):
    """analysis.csv with no reason at all reads back as a float column; rejecting must work."""
    rows = [
        dict(index=i, frame=f"f{i}", status="ok", reason="", quality=1.0, object_y=100.0,
             object_x=float(cx), object_height=80, object_width=80, area_fraction=0.1,
             touches_edge=False)
        for i, cx in enumerate([120, 236])
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "analysis.csv", index=False)
    table = pd.read_csv(tmp_path / "analysis.csv", keep_default_na=False, na_values=[""])
    assert table["reason"].dtype == float
    table, _, _ = planetary.plan_window(table, (200, 250))
    assert table["status"].tolist() == ["ok", "rejected"]
    assert table["reason"].tolist()[0] == "" and "too close" in table["reason"].tolist()[1]


def test_frames_table_statuses():
    alignment = pd.DataFrame(
        dict(index=[0, 1, 2], frame=["a", "b", "c"], status=["ok", "ok", "rejected"],
             reason=[np.nan, np.nan, "no object"], quality=[2.0, 1.0, np.nan])
    )
    usage = pd.DataFrame(dict(index=[0, 1, 2], ap_count=[3, 0, 0], in_fill=[True, False, False]))
    table = planetary.frames_table(alignment, usage)
    assert table["status"].tolist() == ["used", "unused", "rejected"]
    assert table["quality_rank"].tolist()[:2] == [1, 2]
    assert table.loc[1, "reason"] == "not among the best frames"


def test_global_alignment_is_subpixel_exact_without_local_distortion(tmp_path):
    """Tip-tilt only (no local distortion): the global shifts match the true ones to 0.1 px."""
    truth = sp.planet_truth(192, seed=8, radius_frac=0.28, moon=False)
    seq = sp.simulate_sequence(truth, 30, seed=9, local_px=0.0, tip_tilt_px=2.5)
    frames = open_sequence([str(p) for p in sp.write_sequence(seq, tmp_path)])
    table, _, size = planetary.plan_window(planetary.analyse_sequence(frames), frames.shape[:2])
    table, *_ = planetary.align_sequence(frames, table, size)
    _, p, s = _truth_window(seq, table, size)
    err = (p - p.mean(0)) - (s - s.mean(0))
    rms = float(np.sqrt((err**2).mean()))
    print(f"global alignment error without local distortion: {rms:.3f} px RMS per axis")
    assert rms < 0.1
