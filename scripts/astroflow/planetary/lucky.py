"""Planetary lucky imaging: object finding, quality ranking, global and local alignment, stacking.

The method is the one of AutoStakkert! (Emil Kraaikamp) and PlanetarySystemStacker (Rolf
Hempel, 2018-2021), in three streaming passes over the frames, so that memory does not grow
with the number of frames:

1. :func:`analyse_frame` on every frame: the object (planet disc, or a surface that fills the
   frame) is found by thresholding a smoothed luminance and keeping the largest connected
   region; its intensity-weighted centroid places a fixed-size window; the frame's quality is
   the noise-robust sharpness :func:`sharpness` of the object.
2. :func:`build_reference` from the best frames, then :func:`global_shift` of every frame
   against it (sub-pixel phase correlation, refined by the matrix-multiply DFT of Guizar-Sicairos,
   Thurman & Fienup 2008, through scikit-image), and the quality of every frame at every
   alignment point (:func:`alignment_points`, :func:`ap_qualities`).
3. :class:`PatchStacker`: each alignment point (AP) is stacked from its own best frames, each
   frame shifted on its own at that point (local alignment), with a sigma-clipped mean
   (astropy.stats.sigma_clip), optionally drizzled (:mod:`astroflow.deepsky.drizzle`); the AP patches
   are blended with Hann windows that overlap by half and sum to one, so there are no seams,
   and a globally aligned stack of the best frames fills what no AP covers.

Coordinates: 0-based, pixel ``[y, x]``. A window *position* ``(py, px)`` is the frame
coordinate of the window's pixel ``[0, 0]``: window pixel ``[i, j]`` shows frame pixel
``[py + i, px + j]`` (sub-pixel positions are resampled).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from astropy.stats import sigma_clip
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from astroflow.blend import blend_ramp
from astroflow.checks import check_int
from astroflow.deepsky.drizzle import drizzle_add, drizzle_finish, upsample
from astroflow.io.framestore import FrameStore

__all__ = [
    "Detection",
    "PatchStacker",
    "alignment_points",
    "align_window",
    "analyse_frame",
    "ap_qualities",
    "build_reference",
    "choose_window",
    "detect_object",
    "extract",
    "global_shift",
    "hann_weights",
    "luminance",
    "mid_frequency_power",
    "select_frames",
    "sharpness",
]

log = logging.getLogger(__name__)


def luminance(image):
    """Luminance of a frame: itself if mono, the mean of the channels if RGB.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, any numeric dtype (ADU).

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)``.
    """
    image = np.asarray(image, dtype=np.float32)
    return image if image.ndim == 2 else image.mean(axis=2, dtype=np.float32)


@dataclass
class Detection:
    """The object found in one frame (see :func:`detect_object`).

    Attributes
    ----------
    found : bool
        False for a blank frame (no object above the noise).
    reason : str
        Why nothing was found ("" when found).
    cy, cx : float
        Intensity-weighted centroid of the object (px).
    y0, y1, x0, x1 : int
        Bounding box of the object region, ``[y0, y1) x [x0, x1)`` (px).
    area_fraction : float
        Object region area over the frame area.
    touches_edge : bool
        The region comes within ``edge_margin`` px of the frame border.
    background, level : float
        Sky level and the object's bright level (smoothed luminance percentiles, ADU).
    noise : float
        Robust per-pixel noise of the luminance (ADU).
    """

    found: bool
    reason: str = ""
    cy: float = math.nan
    cx: float = math.nan
    y0: int = 0
    y1: int = 0
    x0: int = 0
    x1: int = 0
    area_fraction: float = 0.0
    touches_edge: bool = False
    background: float = math.nan
    level: float = math.nan
    noise: float = math.nan


def _noise(lum, smooth):
    """Robust per-pixel noise: MAD of the luminance minus its smoothed version."""
    residual = lum - smooth
    mad = np.median(np.abs(residual - np.median(residual)))
    # lum - G*lum keeps (1 - 1/(4 pi s^2)) of white-noise variance for s = 1.5 px: ~0.96.
    return float(1.4826 * mad / 0.98)


def detect_object(lum, *, min_snr=10.0, threshold=0.25, edge_margin=2, smooth_px=2.0):
    """Find the planet, or the lit surface, in a luminance frame.

    The frame is smoothed with a Gaussian; pixels brighter than ``background + threshold *
    (level - background)`` form the object mask, where the background is the 5th and the level
    the 99.9th percentile of the smoothed frame; the largest connected region is the object.

    Parameters
    ----------
    lum : numpy.ndarray
        ``(H, W)`` float luminance (ADU). NaN is not allowed.
    min_snr : float, optional
        The object must stand ``min_snr`` times the noise of the smoothed frame above the
        background, or the frame is blank (all dark, lens cap, cloud). Default 10.
    threshold : float, optional
        Mask threshold as a fraction of the object's contrast. Default 0.25.
    edge_margin : int, optional
        The object "touches the edge" when its region comes this close to the border (px).
    smooth_px : float, optional
        Gaussian sigma of the smoothing (px). Default 2.

    Returns
    -------
    Detection

    Raises
    ------
    ValueError
        For a frame that is not 2-D, or that holds NaN or infinity.
    """
    lum = np.asarray(lum, dtype=np.float32)
    if lum.ndim != 2:
        raise ValueError(f"luminance must be 2-D, got shape {lum.shape}")
    if not np.isfinite(lum).all():
        raise ValueError("frame holds NaN or infinite pixels")
    h, w = lum.shape
    smooth = cv2.GaussianBlur(lum, (0, 0), smooth_px)
    noise = _noise(lum, cv2.GaussianBlur(lum, (0, 0), 1.5))
    background, level = (float(v) for v in np.percentile(smooth, [5.0, 99.9]))
    # Averaging over a Gaussian of sigma s divides white noise by 2 sqrt(pi) s; 8-bit frames
    # quantise, so the noise is never taken below one step's 1/sqrt(12).
    smooth_noise = max(noise, 0.29) / (2.0 * math.sqrt(math.pi) * smooth_px)
    common = dict(background=background, level=level, noise=noise)
    if level - background < min_snr * smooth_noise:
        return Detection(
            False,
            reason=(
                f"no object: frame is blank (contrast {level - background:.3g} ADU, "
                f"below {min_snr:g} x noise {smooth_noise:.3g} ADU)"
            ),
            **common,
        )
    mask = smooth > background + threshold * (level - background)
    labels, n = ndimage.label(mask)
    if n == 0:
        return Detection(False, reason="no object above the threshold", **common)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = labels == int(np.argmax(sizes))
    ys, xs = np.nonzero(region)
    weight = smooth[ys, xs] - background
    total = float(weight.sum())
    cy = float((ys * weight).sum() / total)
    cx = float((xs * weight).sum() / total)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    touches = y0 < edge_margin or x0 < edge_margin or y1 > h - edge_margin or x1 > w - edge_margin
    return Detection(
        True,
        cy=cy,
        cx=cx,
        y0=y0,
        y1=y1,
        x0=x0,
        x1=x1,
        area_fraction=float(ys.size) / (h * w),
        touches_edge=bool(touches),
        **common,
    )


def sharpness(lum, mask=None, *, smooth_px=1.0):
    """Noise-robust sharpness: variance of the Laplacian of the smoothed image over its mean².

    The Laplacian-variance focus measure (Pech-Pacheco et al. 2000), computed after a Gaussian
    of ``smooth_px`` so that pixel noise does not pass for detail (as PlanetarySystemStacker
    blurs before ranking), and divided by the squared mean so that a frame dimmed by thin cloud
    ranks by its detail, not its brightness.

    Parameters
    ----------
    lum : numpy.ndarray
        ``(H, W)`` float luminance (ADU).
    mask : numpy.ndarray or None, optional
        ``(H, W)`` bool: where to measure; None measures everywhere but a 2 px border.
    smooth_px : float, optional
        Gaussian sigma (px). Default 1.

    Returns
    -------
    float
        Dimensionless; larger is sharper; 0 for an empty mask or a zero mean.
    """
    lum = np.asarray(lum, dtype=np.float32)
    smooth = cv2.GaussianBlur(lum, (0, 0), smooth_px) if smooth_px > 0 else lum
    lap = cv2.Laplacian(smooth, cv2.CV_32F, ksize=3)
    if mask is None:
        lap, values = lap[2:-2, 2:-2], lum[2:-2, 2:-2]
    else:
        lap, values = lap[mask], lum[mask]
    mean = float(values.mean()) if values.size else 0.0
    if values.size == 0 or mean <= 0:
        return 0.0
    return float(lap.var() / mean**2)


def analyse_frame(image, *, min_snr=10.0, threshold=0.25, edge_margin=2, dark=None):
    """Pass 1 on one frame: object detection and its sharpness.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` frame (ADU).
    min_snr, threshold, edge_margin : optional
        As for :func:`detect_object`.
    dark : numpy.ndarray or None, optional
        Master dark of the frame's shape, subtracted first.

    Returns
    -------
    detection : Detection
    quality : float
        :func:`sharpness` over the object's bounding box (NaN when no object was found).
    """
    image = np.asarray(image, dtype=np.float32)
    if dark is not None:
        image = image - dark
    lum = luminance(image)
    det = detect_object(lum, min_snr=min_snr, threshold=threshold, edge_margin=edge_margin)
    if not det.found:
        return det, math.nan
    pad = 4
    box = lum[
        max(0, det.y0 - pad) : det.y1 + pad,
        max(0, det.x0 - pad) : det.x1 + pad,
    ]
    return det, sharpness(box)


def choose_window(frame_shape, boxes, *, mode="auto", padding=0.5, multiple=8, margin_frac=0.05):
    """The stacking window: its mode and size, from the detections of all frames.

    Parameters
    ----------
    frame_shape : tuple of int
        ``(H, W)`` of the frames (px).
    boxes : numpy.ndarray
        ``(N, 5)`` of the found objects: height, width (px), area fraction, touches-edge (0/1),
        and 1 for found. Rows with found = 0 are ignored.
    mode : {"auto", "planet", "surface"}, optional
        ``"planet"``: a window around a disc that fits in the frame (planets, a full Moon);
        ``"surface"``: the object fills the frame (lunar or solar surface), the window is the
        frame less a margin; ``"auto"`` picks surface when the median object covers more than
        40% of the frame or touches its edge in most frames.
    padding : float, optional
        Planet mode: the window is the median object size times ``1 + padding``. Default 0.5.
    multiple : int, optional
        The window size is rounded up to a multiple of this (px). Default 8.
    margin_frac : float, optional
        Surface mode: margin kept on each side for drift, as a fraction of the frame size.

    Returns
    -------
    mode : str
        ``"planet"`` or ``"surface"``.
    size : tuple of int
        ``(h, w)`` of the window (px).

    Raises
    ------
    ValueError
        If no frame has an object, or for an unknown mode.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 5)
    found = boxes[boxes[:, 4] > 0]
    if found.size == 0:
        raise ValueError("no frame shows an object")
    if mode not in ("auto", "planet", "surface"):
        raise ValueError(f"unknown object mode {mode!r} (auto, planet or surface)")
    h, w = frame_shape
    if mode == "auto":
        surface = np.median(found[:, 2]) > 0.4 or np.mean(found[:, 3]) > 0.5
        mode = "surface" if surface else "planet"
    if mode == "surface":
        m = max(multiple, int(round(margin_frac * min(h, w))))
        size = ((h - 2 * m) // multiple * multiple, (w - 2 * m) // multiple * multiple)
        return "surface", size
    extent = float(np.median(np.maximum(found[:, 0], found[:, 1])))
    side = int(math.ceil(extent * (1.0 + padding) / multiple) * multiple)
    side = min(side, h // multiple * multiple, w // multiple * multiple)
    return "planet", (side, side)


def extract(image, py, px, shape, *, interpolation=cv2.INTER_CUBIC):
    """The window of ``shape`` at the sub-pixel position ``(py, px)`` of a frame.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` frame.
    py, px : float
        Frame coordinate of the window's pixel ``[0, 0]`` (px).
    shape : tuple of int
        ``(h, w)`` of the window.
    interpolation : int, optional
        OpenCV interpolation flag for the sub-pixel part. Default bicubic.

    Returns
    -------
    numpy.ndarray or None
        float32 ``(h, w[, C])``; None when the window (with 2 px for the interpolation kernel)
        leaves the frame.
    """
    h, w = shape
    iy, ix = int(math.floor(py)), int(math.floor(px))
    fy, fx = py - iy, px - ix
    pad = 2
    y0, x0 = iy - pad, ix - pad
    if y0 < 0 or x0 < 0 or iy + h + pad + 1 > image.shape[0] or ix + w + pad + 1 > image.shape[1]:
        return None
    block = np.ascontiguousarray(image[y0 : iy + h + pad + 1, x0 : ix + w + pad + 1], dtype=np.float32)
    if fy == 0 and fx == 0:
        return block[pad : pad + h, pad : pad + w].copy()
    # dst(x, y) = src(x + pad + fx, y + pad + fy)
    matrix = np.array([[1.0, 0.0, -(pad + fx)], [0.0, 1.0, -(pad + fy)]], dtype=np.float64)
    out = cv2.warpAffine(block, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT)
    return out.reshape((h, w) + block.shape[2:])


def _windowed(lum):
    lum = np.asarray(lum, dtype=np.float32)
    win = np.outer(np.hanning(lum.shape[0]), np.hanning(lum.shape[1])).astype(np.float32)
    return (lum - lum.mean()) * win


def global_shift(reference, lum, *, upsample=20, smooth_px=1.0):
    """Sub-pixel shift of a window against the reference, by phase correlation.

    Both are smoothed (noise), mean-subtracted and Hann-windowed (edges), then registered by
    scikit-image's ``phase_cross_correlation`` with DFT upsampling (Guizar-Sicairos, Thurman &
    Fienup 2008).

    Parameters
    ----------
    reference, lum : numpy.ndarray
        ``(h, w)`` float luminance of the reference and of the frame's window.
    upsample : int, optional
        Precision 1/upsample px. Default 20.
    smooth_px : float, optional
        Gaussian sigma applied first (px). Default 1.

    Returns
    -------
    dy, dx : float
        The window content is the reference moved by ``(dy, dx)``: the window's pixel
        ``[i, j]`` shows the reference's ``[i - dy, j - dx]``. The aligned window sits at
        position ``(py + dy, px + dx)``.
    """
    a = cv2.GaussianBlur(np.asarray(reference, np.float32), (0, 0), smooth_px)
    b = cv2.GaussianBlur(np.asarray(lum, np.float32), (0, 0), smooth_px)
    shift, _, _ = phase_cross_correlation(
        _windowed(a), _windowed(b), upsample_factor=upsample, normalization=None
    )
    # skimage: the shift that moves `b` onto `a`; the content of b is a moved by -shift.
    return -float(shift[0]), -float(shift[1])


def align_window(reference_lum, image, py, px, shape, *, iterations=3, tolerance=0.02):
    """Aligned position of a frame's window: :func:`global_shift`, iterated to convergence.

    The Hann window that keeps the correlation free of edge effects also pulls the estimate
    towards zero shift (by about 0.1 px per px of shift); re-extracting the window at the
    estimated position and measuring what is left removes that bias.

    Parameters
    ----------
    reference_lum : numpy.ndarray
        ``(h, w)`` reference luminance.
    image : numpy.ndarray
        ``(H, W[, C])`` the whole frame (ADU).
    py, px : float
        First estimate of the window position (px).
    shape : tuple of int
        ``(h, w)``.
    iterations : int, optional
        Most refinements after the first estimate. Default 3.
    tolerance : float, optional
        Stop when a refinement moves less than this (px).

    Returns
    -------
    tuple of float or None
        The aligned position ``(py, px)``; None when the window leaves the frame.
    """
    for _ in range(iterations + 1):
        window = extract(image, py, px, shape)
        if window is None:
            return None
        dy, dx = global_shift(reference_lum, luminance(window))
        py, px = py + dy, px + dx
        if max(abs(dy), abs(dx)) < tolerance:
            break
    return (py, px) if extract(image, py, px, shape) is not None else None


def build_reference(windows, *, upsample=20):
    """Reference image: the best frames' windows aligned on the first and averaged.

    Parameters
    ----------
    windows : list of numpy.ndarray
        ``(h, w[, C])`` windows (ADU), the best frame first.
    upsample : int, optional
        Sub-pixel precision of the alignment (1/px).

    Returns
    -------
    numpy.ndarray
        float32 ``(h, w[, C])``: the mean of the aligned windows (edges the shift leaves empty
        are filled by reflection).

    Raises
    ------
    ValueError
        For an empty list.
    """
    if not windows:
        raise ValueError("no windows to build a reference from")
    first = luminance(windows[0])
    total = np.zeros_like(windows[0], dtype=np.float64)
    for win in windows:
        dy = dx = 0.0
        for _ in range(4):  # iterated, as in align_window, against the Hann window's pull
            ddy, ddx = global_shift(first, luminance(_translate(win, -dy, -dx)), upsample=upsample)
            dy, dx = dy + ddy, dx + ddx
            if max(abs(ddy), abs(ddx)) < 0.02:
                break
        total += _translate(win, -dy, -dx)
    return (total / len(windows)).astype(np.float32)


def _translate(image, dy, dx, interpolation=cv2.INTER_CUBIC):
    """Image moved by (dy, dx): out[i, j] = image[i - dy, j - dx] (reflected borders)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if dy == 0 and dx == 0:
        return image.copy()
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    h, w = image.shape[:2]
    out = cv2.warpAffine(image, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT)
    return out.reshape(image.shape)


def alignment_points(reference, *, size=48, min_brightness=0.1, min_structure=0.05):
    """Alignment point grid over the reference: boxes overlapping by half, where there is detail.

    As in PlanetarySystemStacker, boxes on dark sky or on featureless surface are dropped:
    a box is kept when its mean brightness is at least ``min_brightness`` of the way from the
    background to the object's level, and its structure (mean gradient magnitude over mean
    brightness, on the smoothed reference) is at least ``min_structure`` of the grid's best.

    Parameters
    ----------
    reference : numpy.ndarray
        ``(h, w[, C])`` reference window (ADU).
    size : int, optional
        Box side (px), a multiple of 4. Default 48; the grid step is ``size // 2``.
    min_brightness, min_structure : float, optional
        Thresholds as fractions (see above). Defaults 0.1 and 0.05.

    Returns
    -------
    numpy.ndarray
        int ``(n, 2)``: ``(y, x)`` of each box's top-left pixel in the window.

    Raises
    ------
    ValueError
        If ``size`` is not a positive multiple of 4 or exceeds the window.
    """
    if size <= 0 or size % 4:
        raise ValueError(f"alignment point size must be a positive multiple of 4, got {size}")
    lum = luminance(reference)
    h, w = lum.shape
    if size > min(h, w):
        raise ValueError(f"alignment point size {size} px exceeds the {h}x{w} window")
    step = size // 2
    smooth = cv2.GaussianBlur(lum, (0, 0), 1.5)
    gy, gx = np.gradient(smooth)
    grad = np.hypot(gy, gx)
    background, level = np.percentile(smooth, [5.0, 99.5])
    boxes, structure = [], []
    for y in range(0, h - size + 1, step):
        for x in range(0, w - size + 1, step):
            mean = float(smooth[y : y + size, x : x + size].mean())
            if mean < background + min_brightness * (level - background):
                continue
            boxes.append((y, x))
            structure.append(float(grad[y : y + size, x : x + size].mean()) / max(mean, 1e-6))
    if not boxes:
        return np.zeros((0, 2), dtype=int)
    structure = np.asarray(structure)
    keep = structure >= min_structure * structure.max()
    return np.asarray(boxes, dtype=int)[keep]


def ap_qualities(window_lum, points, size):
    """Sharpness of one frame's window at every alignment point.

    The same measure as :func:`sharpness` (variance of the Laplacian of the smoothed image over
    the squared mean), evaluated for every box at once from integral images.

    Parameters
    ----------
    window_lum : numpy.ndarray
        ``(h, w)`` luminance of the frame's globally aligned window.
    points : numpy.ndarray
        ``(n, 2)`` box corners from :func:`alignment_points`.
    size : int
        Box side (px).

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``: the sharpness of each box (0 where its mean is not positive).
    """
    lum = np.asarray(window_lum, np.float32)
    points = np.asarray(points, dtype=int).reshape(-1, 2)
    if points.size == 0:
        return np.zeros(0)
    smooth = cv2.GaussianBlur(lum, (0, 0), 1.0)
    lap = cv2.Laplacian(smooth, cv2.CV_32F, ksize=3).astype(np.float64)
    area = float(size * size)
    y, x = points[:, 0], points[:, 1]

    def box_sum(image):
        integral = cv2.integral(np.ascontiguousarray(image, dtype=np.float64))
        return integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]

    mean = box_sum(lum) / area
    lap_mean = box_sum(lap) / area
    lap_var = np.maximum(box_sum(lap * lap) / area - lap_mean**2, 0.0)
    out = np.zeros(len(points))
    good = mean > 0
    out[good] = lap_var[good] / mean[good] ** 2
    return out


def select_frames(quality, *, keep_percent=25.0, keep_count=0):
    """Indices of the best frames by quality, best first.

    Parameters
    ----------
    quality : numpy.ndarray
        ``(N,)`` quality of each frame; NaN for frames that cannot be used.
    keep_percent : float, optional
        Keep this percentage of the usable frames (at least one). Default 25.
    keep_count : int, optional
        If positive, keep this many instead (all usable frames when fewer exist).

    Returns
    -------
    numpy.ndarray
        int indices into ``quality``, best first.
    """
    quality = np.asarray(quality, dtype=float)
    usable = np.flatnonzero(np.isfinite(quality))
    if keep_count > 0:
        n = min(int(keep_count), usable.size)
    else:
        n = max(1, int(round(usable.size * keep_percent / 100.0))) if usable.size else 0
    order = usable[np.argsort(-quality[usable], kind="stable")]
    return order[:n]


def hann_weights(size):
    """2-D Hann blending window whose copies at half-size steps sum to exactly 1.

    ``w(t) = sin²(pi (t + 0.5) / size)``, so that ``w(t) + w(t + size / 2) = 1``: a
    :func:`astroflow.blend.blend_ramp` without rim over each half, rising then falling.

    Parameters
    ----------
    size : int
        Box side (px), even.

    Returns
    -------
    numpy.ndarray
        float64 ``(size, size)``.

    Raises
    ------
    ValueError
        If ``size`` is not an even integer >= 2.
    """
    size = check_int("size", size, 2)
    if size % 2:
        raise ValueError(f"size must be even, got {size}")
    ramp = blend_ramp(size // 2, rim=0)
    t = np.concatenate([ramp, ramp[::-1]])
    return np.outer(t, t)


def mid_frequency_power(image, *, band=(0.05, 0.25), noise_band=(0.4, 0.5)):
    """Detail of an image: noise-corrected power in a band of mid spatial frequencies.

    The Hann-windowed, mean-subtracted luminance is Fourier transformed; the mean power at
    radial frequencies in ``band`` (cycles/px), less the white-noise floor measured at
    ``noise_band`` (where a turbulence-limited image holds no signal), over the squared mean
    brightness. Unlike gradient or Laplacian measures it does not reward noise, so a noisy single
    frame and a smooth stack compare fairly.

    Parameters
    ----------
    image : numpy.ndarray
        ``(h, w)`` or ``(h, w, C)`` (ADU).
    band, noise_band : tuple of float, optional
        Frequency ranges (cycles/px).

    Returns
    -------
    float
        Dimensionless; larger means more detail at the band's scales.
    """
    lum = luminance(image).astype(np.float64)
    mean = lum.mean()
    win = np.outer(np.hanning(lum.shape[0]), np.hanning(lum.shape[1]))
    power = np.abs(np.fft.fft2((lum - mean) * win)) ** 2 / win.sum() ** 2
    fy = np.fft.fftfreq(lum.shape[0])[:, None]
    fx = np.fft.fftfreq(lum.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    signal = power[(radius >= band[0]) & (radius < band[1])].mean()
    floor = power[(radius >= noise_band[0]) & (radius < noise_band[1])].mean()
    return float(max(signal - floor, 0.0) / mean**2) if mean > 0 else 0.0


def local_shift(ref_box, patch, search):
    """Residual shift of a frame at one alignment point, by block matching.

    The reference box is matched over the search area with OpenCV's normalised
    cross-correlation (``matchTemplate``, TM_CCOEFF_NORMED, as PlanetarySystemStacker's local
    search), after a light Gaussian against noise; the peak is refined to sub-pixel precision
    by a parabola through it and its neighbours on each axis.

    Parameters
    ----------
    ref_box : numpy.ndarray
        ``(s, s)`` reference luminance in the box.
    patch : numpy.ndarray
        ``(s + 2 search, s + 2 search)`` frame luminance around the box at its globally
        aligned (integer) position.
    search : int
        Largest shift searched (px).

    Returns
    -------
    tuple of float or None
        ``(dy, dx)``: the box content is the reference moved by it (as :func:`global_shift`);
        None when the best match lies on the border of the search area (the true shift is
        larger) or the correlation is flat.
    """
    ref = cv2.GaussianBlur(np.asarray(ref_box, np.float32), (0, 0), 1.0)
    img = cv2.GaussianBlur(np.asarray(patch, np.float32), (0, 0), 1.0)
    score = cv2.matchTemplate(img, ref, cv2.TM_CCOEFF_NORMED)
    if not np.isfinite(score).all():
        return None
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    n = score.shape[0]
    if iy in (0, n - 1) or ix in (0, score.shape[1] - 1):
        return None

    def vertex(a, b, c):
        den = a - 2.0 * b + c
        return 0.0 if den >= 0 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))

    fy = vertex(score[iy - 1, ix], score[iy, ix], score[iy + 1, ix])
    fx = vertex(score[iy, ix - 1], score[iy, ix], score[iy, ix + 1])
    return iy + fy - search, ix + fx - search


def _clipped_mean(samples, sigma_low, sigma_high, max_iters, budget_mb=4):
    """Sigma-clipped mean over the first axis (astropy.stats.sigma_clip), in chunks of rows.

    Parameters
    ----------
    samples : numpy.ndarray
        ``(n, h, w, C)`` float32 samples.
    sigma_low, sigma_high : float
        Clipping thresholds (sigma) about the median.
    max_iters : int
    budget_mb : float, optional
        Samples clipped at once (MB); astropy makes a few copies of them.

    Returns
    -------
    mean : numpy.ndarray
        float32 ``(h, w, C)``: the mean of the kept samples (their median where all were
        clipped).
    mask : numpy.ndarray
        bool ``(n, h, w, C)``: True for clipped samples.
    """
    n, h = samples.shape[:2]
    if n < 3:
        return samples.mean(axis=0), np.zeros(samples.shape, dtype=bool)
    row_bytes = samples[:, :1].nbytes
    step = int(max(1, min(h, budget_mb * 2**20 // max(row_bytes, 1))))
    mean = np.empty(samples.shape[1:], np.float32)
    mask = np.zeros(samples.shape, dtype=bool)
    for r0 in range(0, h, step):
        block = samples[:, r0 : r0 + step]
        clipped = sigma_clip(
            block, sigma_lower=sigma_low, sigma_upper=sigma_high, maxiters=max_iters,
            axis=0, cenfunc="median", stdfunc="std", masked=True,
        )
        kept = clipped.mean(axis=0).filled(np.nan)
        mean[r0 : r0 + step] = np.where(np.isfinite(kept), kept, np.median(block, axis=0))
        mask[:, r0 : r0 + step] = np.ma.getmaskarray(clipped)
    return mean, mask


class PatchStacker:
    """Pass 3: stacks every alignment point from its best frames, and the globally aligned rest.

    Samples are kept on disk (two :class:`astroflow.io.framestore.FrameStore` files in
    ``workdir``: every alignment point's raw patches, and the globally aligned windows of the
    fill stack) so that memory stays bounded by one alignment point's samples and one band of
    the window, whatever the number of frames.

    Parameters
    ----------
    reference : numpy.ndarray
        ``(h, w[, C])`` reference window (ADU).
    points : numpy.ndarray
        ``(n, 2)`` alignment point corners.
    ap_size : int
        Box side (px).
    selections : list of numpy.ndarray
        For each alignment point, the frame indices stacked there (any order).
    global_selection : numpy.ndarray
        Frame indices of the globally aligned fill stack.
    workdir : str or os.PathLike
        Folder for the sample files (removed by the caller).
    search : int, optional
        Largest local shift (px). Default 8.
    """

    def __init__(self, reference, points, ap_size, selections, global_selection, workdir, search=8):
        self.reference = np.asarray(reference, np.float32)
        self.ref_lum = luminance(self.reference)
        self.h, self.w = self.reference.shape[:2]
        self.channels = 1 if self.reference.ndim == 2 else self.reference.shape[2]
        self.points = np.asarray(points, dtype=int).reshape(-1, 2)
        self.size = int(ap_size)
        self.search = int(search)
        self.workdir = str(workdir)
        patch = self.size + 2 * self.search
        self.slot = {}  # (ap, frame) -> slot index in that ap's sample block
        self.per_frame = {}  # frame -> list of aps
        n_keep = max([len(s) for s in selections] + [0])
        for a, sel in enumerate(selections):
            for k, f in enumerate(sel):
                self.slot[(a, int(f))] = k
                self.per_frame.setdefault(int(f), []).append(a)
        self.counts = np.array([len(s) for s in selections], dtype=int)
        n_ap = len(self.points)
        # Patch (ap, slot) is frame ap * n_keep + slot of the patch store: an alignment point's
        # samples lie side by side.
        self.n_keep = max(n_keep, 1)
        self.patch_shape = (patch, patch, self.channels)
        self.patches = FrameStore(
            f"{self.workdir}/ap_patches.f32", (max(n_ap, 1) * self.n_keep,) + self.patch_shape
        )
        self.shifts = np.full((max(n_ap, 1), self.n_keep, 2), np.nan)
        self.global_slot = {int(f): k for k, f in enumerate(global_selection)}
        self.windows = FrameStore(
            f"{self.workdir}/windows.f32",
            (max(len(global_selection), 1), self.h, self.w, self.channels),
        )
        self.windows_valid = np.zeros(max(len(global_selection), 1), dtype=bool)
        self.local_fallbacks = 0
        self.local_measured = 0

    def close(self):
        """Close the sample files (the caller removes ``workdir``)."""
        self.patches.close()
        self.windows.close()

    def wanted(self):
        """Sorted frame indices this stacker needs to see."""
        return sorted(set(self.per_frame) | set(self.global_slot))

    def add(self, index, image, py, px):
        """Take one frame's samples.

        Parameters
        ----------
        index : int
            The frame's index (as in the selections).
        image : numpy.ndarray
            ``(H, W[, C])`` the whole (dark-subtracted) frame (ADU).
        py, px : float
            The frame's aligned window position (see the module docstring).

        Returns
        -------
        int
            Number of alignment points the frame contributed to.
        """
        image = np.asarray(image, dtype=np.float32)
        image3 = image if image.ndim == 3 else image[:, :, None]
        if index in self.global_slot:
            window = extract(image3, py, px, (self.h, self.w))
            if window is not None:
                k = self.global_slot[index]
                self.windows.write(k, window.reshape(self.h, self.w, self.channels))
                self.windows_valid[k] = True
        used = 0
        iy, ix = int(round(py)), int(round(px))
        frac_y, frac_x = py - iy, px - ix
        lum = luminance(image3)
        s, r = self.size, self.search
        for a in self.per_frame.get(index, ()):
            y, x = self.points[a]
            y0, x0 = iy + y - r, ix + x - r
            if y0 < 0 or x0 < 0 or y0 + s + 2 * r > image.shape[0] or x0 + s + 2 * r > image.shape[1]:
                continue
            patch_lum = lum[y0 : y0 + s + 2 * r, x0 : x0 + s + 2 * r]
            self.local_measured += 1
            shift = local_shift(self.ref_lum[y : y + s, x : x + s], patch_lum, r)
            if shift is None:
                self.local_fallbacks += 1
                shift = (frac_y, frac_x)
            k = self.slot[(a, index)]
            self.patches.write(a * self.n_keep + k, image3[y0 : y0 + s + 2 * r, x0 : x0 + s + 2 * r])
            self.shifts[a, k] = shift
            used += 1
        return used

    def _ap_samples(self, a):
        """Aligned samples (n, s, s, C) of one alignment point and their raw patches/shifts."""
        n = self.counts[a]
        s, r = self.size, self.search
        valid = np.flatnonzero(np.isfinite(self.shifts[a, :n, 0]))
        raw = self.patches.read(a * self.n_keep + valid)
        shifts = self.shifts[a, valid]
        aligned = np.empty((valid.size, s, s, self.channels), np.float32)
        for k in range(valid.size):
            moved = _translate(raw[k], -shifts[k, 0], -shifts[k, 1])
            aligned[k] = moved.reshape(raw[k].shape)[r : r + s, r : r + s]
        return aligned, raw, shifts

    def finish(self, *, sigma_low=3.0, sigma_high=3.0, max_iters=5, drizzle=1.0, pixfrac=0.7):
        """Combine the samples and blend the alignment points into the stack.

        Parameters
        ----------
        sigma_low, sigma_high : float, optional
            Sigma-clipping thresholds (sigma) below and above the median.
        max_iters : int, optional
            Clipping iterations.
        drizzle : float, optional
            Output scale: 1 (none), 1.5 or 2. Alignment points are drizzled (Fruchter & Hook
            2002) from their raw samples at their measured shifts, with clipped samples given
            zero weight; the fill stack is upsampled by interpolation.
        pixfrac : float, optional
            Drizzle drop size as a fraction of an input pixel.

        Returns
        -------
        image : numpy.ndarray
            float32 ``(h * drizzle, w * drizzle[, C])`` (ADU).
        coverage : numpy.ndarray
            float32 ``(h * drizzle, w * drizzle)``: total alignment point weight (0 where the
            fill stack alone makes the value, 1 where alignment points alone do).
        stats : dict
            ``rejected_fraction`` of samples clipped, ``local_fallbacks`` (frames whose local
            shift was refused and replaced by the global one).
        """
        z = float(drizzle)
        H, W = int(round(self.h * z)), int(round(self.w * z))
        fill = self._fill_stack(sigma_low, sigma_high, max_iters)
        if z != 1.0:
            fill = upsample(fill, z)
            fill = fill.reshape(H, W, self.channels)
        total = np.zeros((H, W, self.channels))
        weight = np.zeros((H, W))
        zs = int(round(self.size * z))
        window = hann_weights(zs)
        clipped = n_samples = 0
        for a, (y, x) in enumerate(self.points):
            aligned, raw, shifts = self._ap_samples(a)
            if aligned.shape[0] == 0:
                continue
            patch, mask = _clipped_mean(aligned, sigma_low, sigma_high, max_iters)
            clipped += int(mask.sum())
            n_samples += mask.size
            if z != 1.0:
                patch = self._drizzle_ap(raw, shifts, mask, z, pixfrac)
            Y, X = int(round(y * z)), int(round(x * z))
            total[Y : Y + zs, X : X + zs] += window[:, :, None] * patch
            weight[Y : Y + zs, X : X + zs] += window
        # Hann windows at half-size steps sum to one where alignment points tile; beyond their
        # edge the fill stack takes the complement, so patches fade in without seams.
        coverage = np.minimum(weight, 1.0)
        image = total / np.maximum(weight, 1.0)[:, :, None] + (1.0 - coverage)[:, :, None] * fill
        if self.channels == 1:
            image = image[:, :, 0]
        stats = {
            "rejected_fraction": clipped / n_samples if n_samples else 0.0,
            "local_fallbacks": self.local_fallbacks,
            "local_measured": self.local_measured,
        }
        return image.astype(np.float32), coverage.astype(np.float32), stats

    def _drizzle_ap(self, raw, shifts, mask, z, pixfrac):
        s, r = self.size, self.search
        zs = int(round(s * z))
        dsum = np.zeros((zs, zs, self.channels))
        wsum = np.zeros((zs, zs))
        for k in range(raw.shape[0]):
            dy, dx = shifts[k]
            weights = np.ones(raw.shape[1:3])
            # A sample clipped at aligned pixel (i, j) came from raw pixel (i + r + dy, j + r + dx).
            rej = np.argwhere(mask[k].any(axis=-1))
            if rej.size:
                ri = np.clip(np.round(rej[:, 0] + r + dy).astype(int), 0, raw.shape[1] - 1)
                rj = np.clip(np.round(rej[:, 1] + r + dx).astype(int), 0, raw.shape[2] - 1)
                weights[ri, rj] = 0.0
            drizzle_add(dsum, wsum, raw[k], -dy - r, -dx - r, scale=z, pixfrac=pixfrac, weights=weights)
        out = drizzle_finish(dsum, wsum)
        if not np.isfinite(out).all():
            # A drizzle hole (tiny pixfrac, few frames): fill from the interpolated mean.
            mean = upsample(self._ap_mean(raw, shifts), z).reshape(out.shape)
            out = np.where(np.isfinite(out), out, mean)
        return out

    def _ap_mean(self, raw, shifts):
        s, r = self.size, self.search
        acc = np.zeros((s, s, self.channels))
        for k in range(raw.shape[0]):
            acc += _translate(raw[k], -shifts[k, 0], -shifts[k, 1]).reshape(raw[k].shape)[r : r + s, r : r + s]
        return (acc / raw.shape[0]).astype(np.float32)

    def _fill_stack(self, sigma_low, sigma_high, max_iters, budget_mb=8):
        """Sigma-clipped mean of the globally aligned windows, in bands of rows.

        A band holds every frame's samples of its rows; its height is chosen so that the
        samples take about ``budget_mb`` (sigma clipping makes a few copies of them), so memory
        does not grow with the number of frames.
        """
        valid = np.flatnonzero(self.windows_valid)
        if valid.size == 0:
            return self.reference.reshape(self.h, self.w, self.channels).copy()
        row_bytes = valid.size * self.w * self.channels * 4
        band = int(max(1, min(self.h, budget_mb * 2**20 // row_bytes)))
        out = np.empty((self.h, self.w, self.channels), np.float32)
        for r0 in range(0, self.h, band):
            rows = min(band, self.h - r0)
            block = self.windows.read(valid, region=(r0, r0 + rows, 0, self.w))
            out[r0 : r0 + rows] = _clipped_mean(block, sigma_low, sigma_high, max_iters)[0]
        return out

