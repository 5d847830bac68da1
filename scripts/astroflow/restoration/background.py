"""Gradient removal: a smooth sky background fitted to samples away from stars and nebulae.

Light pollution, moonlight and airglow add a smooth gradient to a stack; vignetting that the flats
did not remove multiplies it by a smooth falloff. Both are modelled as the tools of the field do
(PixInsight's AutomaticBackgroundExtractor and DynamicBackgroundExtraction, Siril's background
extraction, GraXpert's interpolation methods):

1. **Mask** the signal: SEP (Barbary 2016, the library of Bertin & Arnouts' SExtractor) detects
   stars and extended objects on the grey image above ``threshold_sigma`` times its background
   RMS; the detections are grown by ``grow`` px and NaN pixels (no data) are masked too.
2. **Sample** the sky on a grid of boxes: each box's value is the sigma-clipped median
   (:func:`astropy.stats.sigma_clipped_stats`) of its unmasked pixels; boxes with less than
   ``min_fraction`` of them free are dropped.
3. **Reject** the samples that sit on faint extended signal the mask missed: the model is fitted,
   samples more than ``reject_sigma`` robust sigmas above it (nebulae only add light) or
   ``3 reject_sigma`` below it are dropped, and the fit is repeated until no sample changes.
4. **Fit** a smooth model to the samples, per channel:

   * ``polynomial``: a least-squares 2D Legendre polynomial of total degree ``degree``
     (ABE's model);
   * ``rbf``: a thin-plate-spline radial basis function with smoothing,
     :class:`scipy.interpolate.RBFInterpolator` (Siril's and GraXpert's RBF);
   * ``spline``: a bicubic smoothing spline, :class:`scipy.interpolate.SmoothBivariateSpline`
     (Dierckx's surfit).

5. **Remove** it: ``subtract`` for additive gradients, ``divide`` for vignetting, keeping the
   median level of the model (a pedestal) so that the sky stays where it was on average and a
   display stretch of the result still works.
6. **Warn** (:class:`BackgroundWarning`, as GraXpert warns and leaves the user to place samples)
   when the model looks like signal rather than sky: a frame that a smooth nebula fills cannot be
   told from a gradient by any mask, so the fit would remove the nebula silently. Light pollution
   and airglow are brightest at an edge of the frame and change the sky by a fraction of its level;
   the warning is given when (``subtract`` mode; vignetting, which ``divide`` removes, is brightest
   in the centre and may be deep) the model has a **hump inside the frame** higher than the
   border's highest point by more than ``HUMP_FRACTION`` of its range (and ``HUMP_SIGMA``
   sample-noise sigmas) or its **range exceeds** ``MAX_RELATIVE_RANGE`` times its median level;
   and (either mode) when more than ``MAX_SIGNAL_FRACTION`` of the pixels are masked or of the
   samples rejected. Measured (``benchmarks/background.py``): the Cave Nebula's model spans
   77-120 % of its median (it removed 60 % of the nebula's flux) and is flagged; the simulated
   night's 25 % gradient, the Seestar M 94 stack's 3 % and the synthetic skies of the tests are not.

The samples' noise sets the scale of the smoothing: values are fitted in units of the expected
noise of a box median, ``1.25 sigma_pixel / sqrt(free pixels)`` (the median's efficiency for
Gaussian noise), with ``sigma_pixel`` from :func:`astroflow.restoration.starmetrics.noise_sigma`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi
import sep
from astropy.stats import sigma_clipped_stats
from numpy.polynomial import legendre
from scipy.interpolate import RBFInterpolator, RectBivariateSpline, SmoothBivariateSpline

from astroflow.checks import check_float, check_int
from astroflow.restoration.starmetrics import noise_sigma

__all__ = [
    "MODELS",
    "MODES",
    "BackgroundResult",
    "BackgroundWarning",
    "TooFewSamples",
    "fit_background",
    "signal_mask",
    "sample_grid",
]

MODELS = ("polynomial", "rbf", "spline")
MODES = ("subtract", "divide")
# A sample box narrower than this has too few pixels for a robust median.
MIN_BOX_PX = 4
# Every model needs samples spread over both axes; a spline (cubic in x and y) needs 4 per axis.
MIN_PER_AXIS = {"polynomial": 2, "rbf": 2, "spline": 4}
# The models are evaluated on a grid of at most this many nodes per axis and interpolated
# bicubically to every pixel: a smooth model loses nothing, and the cost stops growing with size.
_EVAL_NODES = 96
# The rejection fits are this many times smoother than the final one: a model that may follow
# the samples closely also follows those on a faint blob, which then never stand out.
REJECTION_STIFFNESS = 30.0


# The warnings' thresholds (module notes, step 6).
HUMP_FRACTION = 0.2
HUMP_SIGMA = 5.0
MAX_RELATIVE_RANGE = 0.5
MAX_SIGNAL_FRACTION = 0.5


class BackgroundWarning(UserWarning):
    """The fitted background looks like extended signal (a nebula filling the frame), not sky."""


class TooFewSamples(ValueError):
    """Too few sky samples are left to fit a background (an image that is nearly all signal)."""


@dataclass
class BackgroundResult:
    """Result of :func:`fit_background`.

    Attributes
    ----------
    corrected : numpy.ndarray
        float32, the input's shape: background removed (``subtract``: ``image - model + pedestal``;
        ``divide``: ``image / model * pedestal``); NaN where the input is NaN.
    background : numpy.ndarray
        float32, the input's shape: the fitted model (finite everywhere).
    pedestal : numpy.ndarray
        float64 ``(C,)``: the median of each channel's model, kept in ``corrected``.
    n_samples : int
        Samples the model was fitted to.
    n_grid : int
        Boxes of the sample grid.
    n_rejected : int
        Samples dropped as signal by the iterative rejection.
    grid_shape : tuple of int
        ``(rows, cols)`` of the sample grid.
    masked_fraction : float
        Fraction of the pixels masked as signal or NaN.
    samples : numpy.ndarray
        float64 ``(n_samples, 2 + C)``: ``y, x`` (px) and each channel's value of the used samples.
    """

    corrected: np.ndarray
    background: np.ndarray
    pedestal: np.ndarray
    n_samples: int
    n_grid: int
    n_rejected: int
    grid_shape: tuple
    masked_fraction: float
    samples: np.ndarray = field(repr=False)


def _planes(image):
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return image[:, :, None], False
    if image.ndim == 3 and image.shape[2] in (1, 3):
        return image, True
    raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")


def _grid_shape(height, width, grid, model, name):
    """Rows and columns of the sample grid: ``grid`` boxes along the longer side, square boxes."""
    box = max(height, width) / grid
    rows, cols = max(1, round(height / box)), max(1, round(width / box))
    need = MIN_PER_AXIS[model]
    if min(height / rows, width / cols) < MIN_BOX_PX or min(rows, cols) < need:
        raise ValueError(
            f"{name}: {height}x{width} px is too small for background sampling with grid {grid}: "
            f"the {model} model needs at least {need} sample boxes of at least {MIN_BOX_PX} px along "
            f"each axis (this image gives {rows} x {cols} boxes of {height / rows:.1f} x {width / cols:.1f} px)"
        )
    return rows, cols


def signal_mask(grey, *, threshold_sigma, grow):
    """Pixels holding signal (stars, nebulae, galaxies) or no data, found with SEP.

    Parameters
    ----------
    grey : numpy.ndarray
        ``(H, W)`` float, the grey image (mean of the channels); NaN = no data.
    threshold_sigma : float
        Detection threshold in units of SEP's global background RMS (> 0).
    grow : int
        Detections are dilated by this many px (>= 0), to cover the faint wings of stars.

    Returns
    -------
    numpy.ndarray
        bool ``(H, W)``, True where the sky must not be sampled.

    Notes
    -----
    SEP's own background (boxes of a quarter of the shorter side, so that the gradient is
    followed but nebulae of up to that size are not) is subtracted before detection; every
    connected region of at least 5 px above the threshold is masked, however large.
    """
    nan = ~np.isfinite(grey)
    fill = float(np.nanmedian(grey)) if (~nan).any() else 0.0
    plane = np.ascontiguousarray(np.where(nan, fill, grey), dtype=np.float32)
    height, width = plane.shape
    box = max(min(height, width) // 2, 8)
    if min(height, width) < 8:
        return nan.copy()
    background = sep.Background(plane, mask=nan, bw=min(box, width), bh=min(box, height), fw=3, fh=3)
    data = plane - background.back()
    rms = background.globalrms
    if not rms > 0:
        return nan.copy()
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), plane.size))
    sep.set_sub_object_limit(max(sep.get_sub_object_limit(), 4096))
    _, seg = sep.extract(data, threshold_sigma, err=rms, mask=nan, minarea=5, segmentation_map=True,
                         deblend_cont=1.0)
    mask = seg > 0
    if grow:
        mask = ndi.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=int(grow))
    return mask | nan


def sample_grid(planes, mask, grid_shape, *, min_fraction):
    """Sky samples: the sigma-clipped median of each grid box's unmasked pixels, per channel.

    Parameters
    ----------
    planes : numpy.ndarray
        ``(H, W, C)`` float.
    mask : numpy.ndarray
        bool ``(H, W)``, True where the sky must not be sampled.
    grid_shape : tuple of int
        ``(rows, cols)`` of boxes, splitting the image evenly.
    min_fraction : float
        Boxes with a smaller fraction of unmasked pixels give no sample.

    Returns
    -------
    y, x : numpy.ndarray
        float64 ``(n,)``, box centres (px).
    values : numpy.ndarray
        float64 ``(n, C)``: 3-sigma-clipped medians (astropy, 5 iterations).
    counts : numpy.ndarray
        int ``(n,)``, unmasked pixels of each box.
    """
    height, width = mask.shape
    rows, cols = grid_shape
    y_edges = np.linspace(0, height, rows + 1).round().astype(int)
    x_edges = np.linspace(0, width, cols + 1).round().astype(int)
    ys, xs, values, counts = [], [], [], []
    for y0, y1 in zip(y_edges[:-1], y_edges[1:], strict=True):
        for x0, x1 in zip(x_edges[:-1], x_edges[1:], strict=True):
            free = ~mask[y0:y1, x0:x1]
            n = int(free.sum())
            if n < max(min_fraction * free.size, 3):
                continue
            box = planes[y0:y1, x0:x1][free]
            values.append([sigma_clipped_stats(box[:, c], sigma=3.0, maxiters=5)[1] for c in range(box.shape[1])])
            ys.append(0.5 * (y0 + y1 - 1))
            xs.append(0.5 * (x0 + x1 - 1))
            counts.append(n)
    channels = planes.shape[2]
    return (np.asarray(ys, float), np.asarray(xs, float), np.asarray(values, float).reshape(-1, channels),
            np.asarray(counts, int))


class _Scale:
    """Coordinates scaled to [-1, 1] along the longer side (the same factor on both axes)."""

    def __init__(self, height, width):
        self.half = 0.5 * max(height - 1, width - 1, 1)
        self.cy, self.cx = 0.5 * (height - 1), 0.5 * (width - 1)

    def __call__(self, y, x):
        return (np.asarray(y, float) - self.cy) / self.half, (np.asarray(x, float) - self.cx) / self.half


def _legendre_terms(degree):
    return [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]


def _fit(model, v, u, z, sigma, *, degree, smoothing):
    """A callable ``f(v, u)`` (scaled y, x arrays) fitted to values ``z`` with noise ``sigma``."""
    if model == "polynomial":
        terms = _legendre_terms(degree)
        if len(z) < len(terms):
            raise TooFewSamples(f"{len(z)} samples for {len(terms)} polynomial terms")

        def design(vv, uu):
            vander = legendre.legvander2d(vv, uu, [degree, degree])
            return vander[:, [i * (degree + 1) + j for i, j in terms]]

        coef = np.linalg.lstsq(design(v, u) / sigma[:, None], z / sigma, rcond=None)[0]
        return lambda vv, uu: design(vv, uu) @ coef
    if model == "rbf":
        scale = float(np.median(sigma))
        rbf = RBFInterpolator(np.column_stack([v, u]), z / scale, kernel="thin_plate_spline",
                              smoothing=smoothing * (sigma / scale) ** 2, degree=1)
        return lambda vv, uu: rbf(np.column_stack([vv, uu])) * scale
    with warnings.catch_warnings():
        # FITPACK warns when s is below what its knot budget can reach; it then returns the
        # least-squares spline on the knots it has, which is the closest fit it can give.
        warnings.filterwarnings("ignore", message=r"\s*The required storage space exceeds", category=UserWarning)
        spline = SmoothBivariateSpline(u, v, z, w=1.0 / sigma, bbox=[-1, 1, -1, 1], kx=3, ky=3,
                                       s=smoothing * len(z))
    return lambda vv, uu: spline.ev(uu, vv)


def _evaluate(f, scale, height, width):
    """A fitted model on every pixel: exact on a grid of at most _EVAL_NODES per axis, bicubic between."""
    ny, nx = min(height, _EVAL_NODES), min(width, _EVAL_NODES)
    gy, gx = np.linspace(0, height - 1, ny), np.linspace(0, width - 1, nx)
    vv, uu = np.meshgrid(*scale(gy, gx), indexing="ij")
    nodes = f(vv.ravel(), uu.ravel()).reshape(ny, nx)
    if (ny, nx) == (height, width):
        return nodes
    interp = RectBivariateSpline(gy, gx, nodes, kx=min(3, ny - 1), ky=min(3, nx - 1), s=0)
    return interp(np.arange(height), np.arange(width))


def fit_background(
    image,
    *,
    model,
    mode,
    grid,
    degree,
    smoothing,
    threshold_sigma,
    grow,
    reject_sigma,
    min_fraction,
    min_samples,
    name="image",
):
    """Fit a smooth sky background to an image and remove it (subtract or divide).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` mono or ``(H, W, 3)`` RGB float (linear ADU, or display data in 0..1); NaN = no data.
    model : {"polynomial", "rbf", "spline"}
        Background model (see the module notes).
    mode : {"subtract", "divide"}
        ``subtract``: additive gradients (light pollution); ``divide``: multiplicative (vignetting).
    grid : int
        Sample boxes along the longer side (>= 2); boxes are square.
    degree : int
        Total degree of the polynomial model (0..6).
    smoothing : float
        >= 0, ignored by the polynomial; with the samples in units of their noise: rbf, the
        RBFInterpolator's ``smoothing`` (0: through every sample; measured on synthetic skies,
        0.1 keeps a faint blob and follows 50 % vignetting to 0.3 %); spline, the smoothing
        factor per sample, FITPACK's ``s / n`` (about 1: within the noise; 3 measured best).
    threshold_sigma : float
        SEP detection threshold of the signal mask (RMS units, > 0).
    grow : int
        Dilation of the signal mask (px, >= 0).
    reject_sigma : float
        Samples more than this many robust sigmas above the model (or 3 times as many below) are
        rejected as signal (> 0).
    min_fraction : float
        A box needs this fraction of unmasked pixels to give a sample (0..1).
    min_samples : int
        Fewer samples left than this (after rejection): :class:`TooFewSamples`.
    name : str, optional
        What the image is, for messages (its file name).

    Returns
    -------
    BackgroundResult

    Raises
    ------
    ValueError
        If a setting is out of range, the image has another shape, holds no finite pixel, or is
        too small for the grid (fewer than the model's boxes per axis, or boxes under 4 px).
    TooFewSamples
        If fewer than ``min_samples`` (or than the model needs) sky samples remain: an image that
        is nearly all signal. The message names the image and gives both numbers.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    grid = check_int("grid", grid, 2)
    degree = check_int("degree", degree, 0)
    if degree > 6:
        raise ValueError(f"degree must be at most 6, got {degree}")
    smoothing = check_float("smoothing", smoothing, 0.0)
    threshold_sigma = check_float("threshold_sigma", threshold_sigma, 0.0, strict=True)
    grow = check_int("grow", grow, 0)
    reject_sigma = check_float("reject_sigma", reject_sigma, 0.0, strict=True)
    min_fraction = check_float("min_fraction", min_fraction, 0.0, high=1.0)
    min_samples = check_int("min_samples", min_samples, 1)
    planes, rgb = _planes(image)
    height, width, channels = planes.shape
    rows, cols = _grid_shape(height, width, grid, model, name)
    grey = planes.mean(axis=2)
    finite = np.isfinite(grey)
    if not finite.any():
        raise ValueError(f"{name}: no finite pixel to fit a background to")
    mask = signal_mask(grey, threshold_sigma=threshold_sigma, grow=grow)
    ys, xs, values, counts = sample_grid(planes, mask, (rows, cols), min_fraction=min_fraction)
    need = max(min_samples, _model_minimum(model, degree))
    if len(ys) < need:
        raise TooFewSamples(
            f"{name}: only {len(ys)} of {rows * cols} background sample boxes have at least "
            f"{min_fraction:.0%} sky (signal masked over {mask.mean():.0%} of the image); the {model} model "
            f"needs at least {need}: use a finer grid, a higher threshold_sigma, a lower min_fraction, "
            f"or switch background removal off for this target"
        )
    pixel_noise = np.array([noise_sigma(np.where(finite, planes[:, :, c], np.nanmedian(planes[:, :, c])))
                            for c in range(channels)])
    grey_noise = float(np.mean(pixel_noise))
    sigma = 1.25 * grey_noise / np.sqrt(counts)
    scale = _Scale(height, width)
    v, u = scale(ys, xs)
    keep = np.ones(len(ys), bool)
    grey_values = values.mean(axis=1)
    for _ in range(10):
        f = _fit(model, v[keep], u[keep], grey_values[keep], sigma[keep], degree=degree,
                 smoothing=REJECTION_STIFFNESS * smoothing)
        resid = (grey_values - f(v, u)) / sigma
        spread = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
        spread = max(spread, 1.0)
        new = (resid < reject_sigma * spread) & (resid > -3.0 * reject_sigma * spread)
        if new.sum() < need:
            raise TooFewSamples(
                f"{name}: only {int(new.sum())} of {len(ys)} background samples remain after rejecting "
                f"those on extended signal; the {model} model needs at least {need}: the image is "
                f"nearly all signal (raise reject_sigma, or switch background removal off for it)"
            )
        if np.array_equal(new, keep):
            break
        keep = new
    background = np.empty(planes.shape, np.float32)
    for c in range(channels):
        noise_c = sigma * pixel_noise[c] / grey_noise if grey_noise > 0 else sigma
        fc = _fit(model, v[keep], u[keep], values[keep, c], noise_c[keep], degree=degree, smoothing=smoothing)
        background[:, :, c] = _evaluate(fc, scale, height, width)
    pedestal = np.median(background.reshape(-1, channels), axis=0).astype(np.float64)
    _warn_if_signal(background.mean(axis=2), mode, float(np.median(sigma)), float(mask.mean()),
                    int(len(ys) - keep.sum()), len(ys), model, name)
    if mode == "subtract":
        corrected = planes - background + pedestal.astype(np.float32)
    else:
        low = float(background.min())
        if not low > 0:
            raise ValueError(
                f"{name}: divide mode needs a positive background, the fitted model reaches {low:g} "
                f"(data with its sky subtracted already: use mode subtract)"
            )
        corrected = planes / background * pedestal.astype(np.float32)
    corrected = corrected.astype(np.float32)
    if not rgb and np.ndim(image) == 2:
        corrected, background = corrected[:, :, 0], background[:, :, 0]
    samples = np.column_stack([ys[keep], xs[keep], values[keep]])
    return BackgroundResult(
        corrected=corrected,
        background=background,
        pedestal=pedestal,
        n_samples=int(keep.sum()),
        n_grid=rows * cols,
        n_rejected=int(len(ys) - keep.sum()),
        grid_shape=(rows, cols),
        masked_fraction=float(mask.mean()),
        samples=samples,
    )


def _warn_if_signal(model_grey, mode, sample_sigma, masked, rejected, n_samples, model, name):
    """Warn (:class:`BackgroundWarning`) when the fitted model looks like a nebula (module notes, step 6)."""
    reasons = []
    span = float(np.ptp(model_grey))
    level = float(np.median(model_grey))
    if mode == "subtract":
        edge = max(model_grey[0].max(), model_grey[-1].max(), model_grey[:, 0].max(), model_grey[:, -1].max())
        hump = float(model_grey.max() - edge)
        if hump > HUMP_FRACTION * span and hump > HUMP_SIGMA * sample_sigma:
            reasons.append(f"it rises {hump:.4g} inside the frame above its highest border point "
                           f"({hump / span:.0%} of its range; a light-pollution gradient is brightest at an edge)")
    if mode == "subtract" and level > 0 and span > MAX_RELATIVE_RANGE * level:
        reasons.append(f"it spans {span / level:.0%} of its median level (more than {MAX_RELATIVE_RANGE:.0%})")
    if masked > MAX_SIGNAL_FRACTION:
        reasons.append(f"{masked:.0%} of the pixels are masked as signal")
    if rejected > MAX_SIGNAL_FRACTION * n_samples:
        reasons.append(f"{rejected} of {n_samples} samples were rejected as signal")
    if reasons:
        warnings.warn(
            f"{name}: the fitted {model} background looks like extended signal, not sky: {'; '.join(reasons)}. "
            f"A nebula that fills the frame is removed with it: check background.fits, and switch background "
            f"removal off for this target (or use a stiffer model) if it holds the nebula",
            BackgroundWarning,
            stacklevel=3,
        )


def _model_minimum(model, degree):
    """Fewest samples a model can be fitted to."""
    if model == "polynomial":
        return len(_legendre_terms(degree))
    if model == "spline":
        return 16
    return 4
