"""Fast, memory-bounded stacking of registered frames with outlier rejection.

The combination is one compiled kernel (numba, ``parallel=True``: the pixels of a chunk are
shared among threads in tasks of 1024): each pixel's valid samples are gathered and sorted
(insertion sort up to 48 samples, ``numpy.sort`` beyond), and every rejection below only
ever removes the lowest or the highest samples, so what a pixel keeps is a contiguous run
``[lo, hi)`` of its sorted samples: the median of a run is two reads, each pass a new run,
all in float64 on a few hundred bytes that stay in the core's cache. The first call in an
environment compiles the kernel (a few seconds) and caches it beside the module (numba's
``cache=True``); later processes load it.

Rejection methods (``method``), after Siril's ``src/stacking/rejection_float.c`` (itself after
PixInsight's ImageIntegration) unless said otherwise; every one rejects only the lowest or the
highest samples of a run, so each pass is a new ``[lo, hi)``:

* ``"none"`` (alias ``"mean"``): no rejection, the weighted mean of every valid sample;
  ``"median"``: the median of the valid samples (weights are not used).
* ``"percentile"``: one pass; samples below ``median * (1 - percentile_low)`` or above
  ``median * (1 + percentile_high)`` are rejected (fractions of the median, so the data need a
  positive background).
* ``"sigma_clip"``: iterative kappa-sigma clipping around the median with the population
  standard deviation (``ddof=0``) of the kept samples, until nothing changes or ``max_iters``:
  the same as :func:`astropy.stats.sigma_clip` with ``cenfunc="median", stdfunc="std"``, and
  so as ``ccdproc.combine(sigma_clip=True)`` (one pass). Siril's differs in its ``ddof=1``.
* ``"mad"``: the same iteration with the scale ``1.4826 * MAD`` (median absolute deviation
  from the median of the kept samples), as :func:`astropy.stats.sigma_clip` with
  ``stdfunc="mad_std"``. The MAD of a sorted run is the median of two sorted sequences (the
  deviations below and above the median), merged from the smallest out, with no sort.
* ``"winsorized"``: winsorized sigma clipping: the scale is Huber's robust sigma, the sample
  standard deviation (``ddof=1``, as Siril) of the kept samples winsorised at
  ``median +- 1.5 sigma`` times ``1.134`` (which makes it unbiased for Gaussian data),
  iterated with cumulative winsorisation until it changes by less than 0.05 %; samples more
  than ``sigma_low`` (below) or ``sigma_high`` (above) such sigmas from the median are
  rejected, and the whole is iterated like ``"sigma_clip"``. P. J. Huber, *Robust
  Statistics* (Wiley, 1981), ch. 5.
* ``"linear_fit"``: linear fit clipping: a least-squares line ``a * k + b`` through the kept
  samples against their rank ``k``; with ``sigma`` the mean absolute residual (as Siril),
  samples more than ``sigma_low * sigma`` below or ``sigma_high * sigma`` above the line are
  rejected, iterated while anything changes (at most ``max_iters``) and while more than three
  samples remain. Siril rejects every sample past the thresholds; here a rejected sample must
  have only rejected samples beyond it (a sample inside the run that strays from the line is
  kept), which on sorted data differs only for a gap in the middle of the distribution.
* ``"gesd"``: the generalized extreme studentized deviate test (B. Rosner, *Technometrics*
  25, 165, 1983): up to ``floor(gesd_outliers * n)`` times, the sample farthest from the mean
  of the remaining ``m`` is removed, with ``R = |x - mean| / std`` (``ddof=1``) tested against
  ``lambda = (m - 1) t / sqrt((m - 2 + t**2) m)``, ``t`` the Student-t quantile
  ``1 - gesd_alpha / (2 m)`` with ``m - 2`` degrees of freedom; the outliers are the first
  ``r`` removed, ``r`` the last step whose ``R`` exceeded ``lambda``. Siril counts its
  no-data samples against the outlier allowance; here it is a fraction of the valid samples.

The combined value is the weighted mean of the kept samples; where every valid sample of a
pixel is rejected it is the median of its valid samples, and it is NaN only where no frame
has data. Non-finite samples (NaN outside the registered field) are no data.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numba
import numpy as np
from astropy.io import fits
from scipy.special import stdtrit

from astroflow.checks import check_float, check_int
from astroflow.io.fits import REASON_KEY, image_shape, is_rejected, top_down_rows

log = logging.getLogger(__name__)

METHODS = (
    "none",
    "mean",
    "median",
    "percentile",
    "sigma_clip",
    "mad",
    "winsorized",
    "linear_fit",
    "gesd",
)
NORMALIZATIONS = (
    "none",
    "additive",
    "multiplicative",
    "additive_scaling",
    "multiplicative_scaling",
)
MAD_TO_SIGMA = 1.4826

# Huber's winsorisation constants, as used by Siril and PixInsight.
_WINSOR_CUT = 1.5
_WINSOR_CORRECTION = 1.134
_WINSOR_TOLERANCE = 5e-4
_WINSOR_MAX_ITERS = 100

# Headers, astropy file objects and small temporaries not otherwise counted.
_OVERHEAD_BYTES = 1 << 20
# Chunks need not fill the budget: a chunk buffer of about this size is touched once and
# reused (fresh pages cost more than the reading), with at least this many rows so that
# reopening every file per chunk stays cheap.
_CHUNK_TARGET_BYTES = 64 << 20
_CHUNK_MIN_ROWS = 64
# Pixels per channel of the strided subsample used to estimate normalisation.
_NORM_SAMPLE_PIXELS = 1 << 16


@dataclass(frozen=True)
class StackResult:
    """Result of :func:`combine`.

    Attributes
    ----------
    image : numpy.ndarray
        Combined image, float32 ``(H, W)`` or ``(H, W, 3)``, in the ADU of the first frame
        after normalisation; NaN only where no frame has data.
    rejected : numpy.ndarray
        int16, same shape as ``image``: number of samples rejected at each pixel
        (``rejected_low + rejected_high``).
    ncombine_map : numpy.ndarray
        int16, same shape as ``image``: number of samples averaged into each pixel.
    offset, scale : numpy.ndarray
        float64 ``(N,)`` for mono or ``(N, C)`` for colour: frame ``i`` was normalised as
        ``data * scale[i] + offset[i]`` before rejection (``offset`` in ADU, ``scale``
        dimensionless); ``offset[0] == 0`` and ``scale[0] == 1``.
    rejected_low, rejected_high : numpy.ndarray
        int16, same shape as ``image``: samples rejected as too low (the lowest of the pixel's
        sorted samples) and as too high.
    """

    image: np.ndarray
    rejected: np.ndarray
    ncombine_map: np.ndarray
    offset: np.ndarray
    scale: np.ndarray
    rejected_low: np.ndarray
    rejected_high: np.ndarray


@dataclass(frozen=True)
class _Settings:
    """Checked rejection settings (see :func:`combine_chunk`)."""

    method: str
    sigma_low: float
    sigma_high: float
    max_iters: int
    percentile_low: float
    percentile_high: float
    gesd_outliers: float
    gesd_alpha: float


def combine_chunk(
    cube,
    *,
    method,
    sigma_low=3.0,
    sigma_high=3.0,
    max_iters=5,
    weights=None,
    percentile_low=0.2,
    percentile_high=0.1,
    gesd_outliers=0.3,
    gesd_alpha=0.05,
    sides=False,
):
    """Combine an in-memory stack of frames pixel by pixel, with outlier rejection.

    Parameters
    ----------
    cube : numpy.ndarray
        ``(N, rows, W)`` or ``(N, rows, W, C)`` samples (ADU), converted to float32; NaN (any
        non-finite value) means no data. Not modified.
    method : {"none", "mean", "median", "percentile", "sigma_clip", "mad", "winsorized", \
"linear_fit", "gesd"}
        ``"none"`` or ``"mean"``: weighted mean of the valid samples; ``"median"``: their
        median (weights are not used); the others: the rejections described in the module
        docstring, then the weighted mean of the kept samples.
    sigma_low, sigma_high : float, optional
        Rejection thresholds below and above the centre, in sigmas (>= 0), for
        ``"sigma_clip"``, ``"mad"``, ``"winsorized"`` and ``"linear_fit"``. Default 3.0.
    max_iters : int, optional
        Most rejection iterations (>= 1) of those four; iteration stops earlier when nothing
        changes. Default 5.
    weights : array_like or None, optional
        ``(N,)`` positive weight of each frame, normalised to sum 1; None gives equal weights.
    percentile_low, percentile_high : float, optional
        ``"percentile"``: rejection below ``median * (1 - percentile_low)`` and above
        ``median * (1 + percentile_high)`` (>= 0). Default 0.2 and 0.1 (Siril's).
    gesd_outliers : float, optional
        ``"gesd"``: most outliers, as a fraction of the valid samples of a pixel, in [0, 1).
        Default 0.3 (Siril's).
    gesd_alpha : float, optional
        ``"gesd"``: significance of each test, in (0, 1). Default 0.05 (Siril's).
    sides : bool, optional
        True: return the low and high rejection counts apart. Default False.

    Returns
    -------
    image : numpy.ndarray
        float32 ``(rows, W[, C])``: weighted mean of the kept samples; the median of the valid
        samples where all were rejected; NaN where no sample is valid.
    rejected : numpy.ndarray
        int16 ``(rows, W[, C])``: samples rejected (0 where the median fallback was used);
        with ``sides=True`` two such arrays, the samples rejected low and those rejected high.
    used : numpy.ndarray
        int16 ``(rows, W[, C])``: samples that make the value.

    Raises
    ------
    ValueError
        For a cube that is not 3-D or 4-D, an unknown method, a setting out of its range, more
        than 32767 frames, or weights of the wrong length or not positive.
    """
    cube = np.asarray(cube, dtype=np.float32)
    if cube.ndim not in (3, 4):
        raise ValueError(f"cube must be (N, rows, W) or (N, rows, W, C), got shape {cube.shape}")
    settings = _check_settings(
        cube.shape[0],
        method=method,
        sigma_low=sigma_low,
        sigma_high=sigma_high,
        max_iters=max_iters,
        percentile_low=percentile_low,
        percentile_high=percentile_high,
        gesd_outliers=gesd_outliers,
        gesd_alpha=gesd_alpha,
    )
    w = _normalised_weights(weights, cube.shape[0])
    out_shape = cube.shape[1:]
    image = np.empty(out_shape, dtype=np.float32)
    low = np.empty(out_shape, dtype=np.int16)
    high = np.empty(out_shape, dtype=np.int16)
    used = np.empty(out_shape, dtype=np.int16)
    _combine_pixels(
        cube.reshape(cube.shape[0], -1),
        image.reshape(-1),
        low.reshape(-1),
        high.reshape(-1),
        used.reshape(-1),
        settings=settings,
        weights=w,
    )
    if sides:
        return image, low, high, used
    return image, low + high, used


def combine(
    paths,
    *,
    method="winsorized",
    sigma_low=3.0,
    sigma_high=3.0,
    max_iters=5,
    weights=None,
    normalize,
    memory_mb,
    percentile_low=0.2,
    percentile_high=0.1,
    gesd_outliers=0.3,
    gesd_alpha=0.05,
    threads=None,
):
    """Stack registered FITS frames in row chunks that fit a memory budget.

    Each chunk of rows is read from every file through astropy's memory map (one file open at
    a time, closed before the next), normalised, and combined by :func:`combine_chunk`'s
    algorithm. Peak memory (outputs, the chunk of every frame and the working arrays) stays
    under ``memory_mb`` however many frames there are, whatever the method.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        FITS files written by :func:`astroflow.io.fits.write_image`: unscaled data (float32),
        ``(H, W)`` or ``(C, H, W)`` on disk, all the same shape, rows in the order that
        ``ROWORDER`` says (:func:`astroflow.io.fits.top_down_rows`). NaN marks no data.
    method : str, optional
        One of :data:`METHODS`; see :func:`combine_chunk`. Default "winsorized".
    sigma_low, sigma_high : float, optional
        Rejection thresholds in sigmas. Default 3.0.
    max_iters : int, optional
        Most rejection iterations. Default 5.
    weights : array_like or None, optional
        ``(N,)`` positive per-frame weights (e.g. inverse noise variance); default equal.
    normalize : {"none", "additive", "multiplicative", "additive_scaling", \
"multiplicative_scaling"}
        Per-frame (and per-channel) normalisation to the first frame before rejection, so that
        a frame with a brighter sky is not rejected wholesale, with location ``m`` the median
        and scale ``s`` 1.4826 MAD of each frame: ``"additive"`` adds ``m0 - m``,
        ``"multiplicative"`` multiplies by ``m0 / m``, ``"additive_scaling"`` maps
        ``v -> (v - m) * s0 / s + m0``, and ``"multiplicative_scaling"`` multiplies by
        ``(m0 / m) * (s0 / s)``, as Siril's normalisations of the same names. The location
        and scale are estimated on a strided subsample of about 65k pixels per channel. No
        default: the pipeline's is ``stacking.normalize`` in ``schemas/config.schema.yaml``.
    memory_mb : float
        Memory budget in MiB for everything this function allocates (the pipeline's:
        ``stacking.memory_mb``).
    percentile_low, percentile_high, gesd_outliers, gesd_alpha : float, optional
        Settings of the percentile and GESD rejections; see :func:`combine_chunk`.
    threads : int or None, optional
        Threads of the kernel (>= 1; at most numba's ``NUMBA_NUM_THREADS``, the CPUs it
        found); None: numba's current setting. The result does not depend on it.

    Returns
    -------
    StackResult
        Combined image, rejected (total, low, high) and used counts (int16) and the per-frame
        normalisation.

    Raises
    ------
    ValueError
        If ``paths`` is empty; a file holds no image, is a rejected placeholder or holds
        scaled (BZERO/BSCALE) data; the shapes differ (the message names the files); a frame
        has no usable background for the chosen normalisation; a setting is invalid; or the
        budget cannot hold the outputs plus a one-row chunk of every frame.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("combine: no frames to stack")
    n_frames = len(paths)
    settings = _check_settings(
        n_frames,
        method=method,
        sigma_low=sigma_low,
        sigma_high=sigma_high,
        max_iters=max_iters,
        percentile_low=percentile_low,
        percentile_high=percentile_high,
        gesd_outliers=gesd_outliers,
        gesd_alpha=gesd_alpha,
    )
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    w = _normalised_weights(weights, n_frames)
    if threads is not None:
        numba.set_num_threads(
            min(check_int("threads", threads, 1), numba.config.NUMBA_NUM_THREADS)
        )
    shape = _common_shape(paths)
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    row_pixels = width * channels

    budget = int(memory_mb * 2**20)
    # Outputs: the image (float32), the low, high and used counts and at the end their total
    # (int16); the kernel's own buffers are two float64 vectors of N samples per thread.
    fixed = height * row_pixels * (4 + 2 + 2 + 2 + 2) + _OVERHEAD_BYTES
    per_row = n_frames * row_pixels * 4
    rows = (budget - fixed) // per_row
    if rows < 1:
        need = (fixed + per_row) / 2**20
        raise ValueError(
            f"memory_mb={memory_mb} is too small to stack {n_frames} frames of shape {shape}: "
            f"outputs plus a one-row chunk need at least {need:.2f} MiB"
        )
    rows = min(rows, height, max(_CHUNK_TARGET_BYTES // per_row, _CHUNK_MIN_ROWS))

    # Normalisation runs before the outputs exist: its sample and temporaries (about 24 bytes
    # a pixel) share the budget with nothing else.
    sample_pixels = max(16, min(_NORM_SAMPLE_PIXELS, (budget - _OVERHEAD_BYTES) // (24 * channels)))
    offset, scale = _normalisation(paths, normalize, shape, sample_pixels)

    image = np.empty(shape, dtype=np.float32)
    low = np.empty(shape, dtype=np.int16)
    high = np.empty(shape, dtype=np.int16)
    used = np.empty(shape, dtype=np.int16)
    chunk_flat = np.empty(n_frames * rows * row_pixels, dtype=np.float32)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        log.info("rows %d-%d of %d (%d frames)", r0, r1, height, n_frames)
        chunk = chunk_flat[: n_frames * (r1 - r0) * row_pixels].reshape(
            (n_frames, r1 - r0) + shape[1:]
        )
        for i, path in enumerate(paths):
            _read_rows(path, r0, r1, chunk[i])
            if not (np.all(scale[i] == 1.0) and np.all(offset[i] == 0.0)):
                chunk[i] *= scale[i].astype(np.float32)
                chunk[i] += offset[i].astype(np.float32)
        _combine_pixels(
            chunk.reshape(n_frames, -1),
            image[r0:r1].reshape(-1),
            low[r0:r1].reshape(-1),
            high[r0:r1].reshape(-1),
            used[r0:r1].reshape(-1),
            settings=settings,
            weights=w,
        )
    del chunk_flat
    if channels == 1:
        offset, scale = offset[:, 0], scale[:, 0]
    # The total is made in place of the low map's copy: one more image-sized int16 array.
    rejected = np.add(low, high)
    return StackResult(
        image=image,
        rejected=rejected,
        ncombine_map=used,
        offset=offset,
        scale=scale,
        rejected_low=low,
        rejected_high=high,
    )


def _check_settings(n_frames, *, method, **values):
    """The checked settings as a :class:`_Settings`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if n_frames < 1 or n_frames > np.iinfo(np.int16).max:
        raise ValueError(f"can stack 1 to 32767 frames, got {n_frames}")
    return _Settings(
        method="none" if method == "mean" else method,
        sigma_low=check_float("sigma_low", values["sigma_low"], 0.0),
        sigma_high=check_float("sigma_high", values["sigma_high"], 0.0),
        max_iters=check_int("max_iters", values["max_iters"], 1),
        percentile_low=check_float("percentile_low", values["percentile_low"], 0.0),
        percentile_high=check_float("percentile_high", values["percentile_high"], 0.0),
        gesd_outliers=check_float(
            "gesd_outliers", values["gesd_outliers"], 0.0, high=1.0, high_open=True
        ),
        gesd_alpha=check_float(
            "gesd_alpha", values["gesd_alpha"], 0.0, strict=True, high=1.0, high_open=True
        ),
    )


def _normalised_weights(weights, n_frames):
    # None stands for equal weights: the final mean then needs no frame identities.
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_frames,):
        raise ValueError(f"weights must have shape ({n_frames},), got {w.shape}")
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError(f"weights must be finite and > 0, got {w.tolist()}")
    if np.all(w == w[0]):
        return None
    return (w / w.sum()).astype(np.float32)


def _common_shape(paths):
    shapes = {}
    for path in paths:
        with fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
            header = hdul[0].header
            if is_rejected(header):
                raise ValueError(f"{path}: frame was rejected: {header.get(REASON_KEY, '?')}")
            if header.get("NAXIS", 0) not in (2, 3):
                raise ValueError(f"{path}: FITS file holds no 2-D or 3-D image")
            if header.get("BSCALE", 1) != 1 or header.get("BZERO", 0) != 0:
                raise ValueError(
                    f"{path}: scaled data (BZERO/BSCALE) cannot be read in row chunks; "
                    "write frames with astroflow.io.fits.write_image"
                )
            shapes[path] = image_shape(header)
    distinct = sorted(set(shapes.values()))
    if len(distinct) > 1:
        listing = "; ".join(
            f"{shape}: {', '.join(p for p, s in shapes.items() if s == shape)}"
            for shape in distinct
        )
        raise ValueError(f"frames to stack differ in shape: {listing}")
    return distinct[0]


def _read_rows(path, r0, r1, out):
    # One file open at a time: the memory map is closed before the next file, so neither
    # file handles nor mapped pages pile up with the number of frames.
    with fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
        # A reversed view of the map: rows r0:r1 from the top are read, and only they.
        data = top_down_rows(hdul[0].data, hdul[0].header)
        if data.ndim == 2:
            out[...] = data[r0:r1]
        else:
            out[...] = np.moveaxis(data[:, r0:r1, :], 0, -1)
        del data


def _normalisation(paths, normalize, shape, sample_pixels):
    n_frames = len(paths)
    channels = shape[2] if len(shape) == 3 else 1
    offset = np.zeros((n_frames, channels))
    scale = np.ones((n_frames, channels))
    if normalize == "none":
        return offset, scale
    stride = max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / sample_pixels))))
    location = np.empty((n_frames, channels))
    spread = np.empty((n_frames, channels))
    for i, path in enumerate(paths):
        with fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
            # Sampled from the top row down, as the frame is in memory.
            data = top_down_rows(hdul[0].data, hdul[0].header)
            sample = np.array(data[..., ::stride, ::stride], dtype=np.float32).reshape(channels, -1)
            del data
        for c in range(channels):
            values = sample[c][np.isfinite(sample[c])]
            if values.size == 0:
                raise ValueError(f"{path}: no finite pixels to estimate the background from")
            location[i, c] = np.median(values)
            spread[i, c] = MAD_TO_SIGMA * np.median(np.abs(values - location[i, c]))
    if normalize == "additive":
        offset = location[0] - location
        return offset, scale
    if normalize in ("multiplicative", "multiplicative_scaling"):
        bad = ~(location > 0).all(axis=1)
        if bad.any():
            names = ", ".join(p for p, b in zip(paths, bad) if b)
            raise ValueError(f"{normalize} normalisation needs a background > 0: {names}")
        scale = location[0] / location
    if normalize in ("additive_scaling", "multiplicative_scaling"):
        bad = ~(spread > 0).all(axis=1)
        if bad.any():
            names = ", ".join(p for p, b in zip(paths, bad) if b)
            raise ValueError(f"{normalize} normalisation needs a background noise > 0: {names}")
        if normalize == "multiplicative_scaling":
            scale = scale * (spread[0] / spread)
        else:
            scale = spread[0] / spread
            offset = location[0] - location * scale
    return offset, scale


@functools.cache
def _gesd_critical(n_max, alpha):
    """Rosner's critical values ``lambda[m]`` for ``m = 0 .. n_max`` remaining samples.

    ``lambda = (m - 1) t / sqrt((m - 2 + t**2) m)`` with ``t`` the ``1 - alpha / (2 m)``
    quantile of Student's t with ``m - 2`` degrees of freedom (B. Rosner, *Technometrics* 25,
    165, 1983); infinite (no test) for ``m < 3``.
    """
    m = np.arange(n_max + 1, dtype=np.float64)
    lam = np.full(n_max + 1, np.inf)
    ok = m >= 3
    t = stdtrit(m[ok] - 2, 1 - alpha / (2 * m[ok]))
    lam[ok] = (m[ok] - 1) * t / np.sqrt((m[ok] - 2 + t * t) * m[ok])
    return lam



# Method codes of the compiled kernel.
_CODES = {
    "none": 0,
    "median": 1,
    "percentile": 2,
    "sigma_clip": 3,
    "mad": 4,
    "winsorized": 5,
    "linear_fit": 6,
    "gesd": 7,
}
# Floating-point freedoms of the sums: reordering (so that they vectorise), never the
# assumption that there is no NaN or infinity.
_REASSOCIATE = {"reassoc", "nsz", "contract"}
# Bytes of samples per parallel task (frames x pixels of its block): the block is sorted
# in place while it stays in the core's cache, at least 8 and at most 1024 pixels.
_TASK_BYTES = 1 << 16


@functools.cache
def _sorting_network(n):
    """Comparator pairs ``(P, 2)`` int64 of Batcher's odd-even merge sort for ``n`` inputs.

    Knuth, *The Art of Computer Programming* vol. 3, 5.3.4; the arbitrary-``n`` form is the
    power-of-two network with the comparators that touch indices ``>= n`` dropped.
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@numba.njit(cache=True, nogil=True)
def _median(s, lo, hi):
    """Median of the sorted run ``s[lo:hi]`` (``hi > lo``)."""
    return 0.5 * (s[(lo + hi - 1) // 2] + s[(lo + hi) // 2])


@numba.njit(cache=True, nogil=True, fastmath=_REASSOCIATE)
def _std(s, lo, hi, ddof):
    """Standard deviation of ``s[lo:hi]`` (two passes); 0 for ``hi - lo <= ddof``."""
    m = hi - lo
    if m <= ddof:
        return 0.0
    mean = 0.0
    for k in range(lo, hi):
        mean += s[k]
    mean /= m
    squares = 0.0
    for k in range(lo, hi):
        d = s[k] - mean
        squares += d * d
    return math.sqrt(squares / (m - ddof))


@numba.njit(cache=True, nogil=True)
def _mad(s, lo, hi, centre):
    """Median absolute deviation of the sorted run ``s[lo:hi]`` from ``centre``, its median.

    The deviations are two sorted sequences, ``centre - s[c], centre - s[c - 1], ...`` and
    ``s[c + 1] - centre, ...`` from the lower middle rank ``c``: merged from the smallest
    out, the middle one or two of the merge are the MAD, in ``(hi - lo) / 2`` steps.
    """
    m = hi - lo
    left = (lo + hi - 1) // 2
    right = left + 1
    k_low = (m - 1) // 2
    k_high = m // 2
    low_value = 0.0
    value = 0.0
    for k in range(k_high + 1):
        if right >= hi or (left >= lo and centre - s[left] <= s[right] - centre):
            value = centre - s[left]
            left -= 1
        else:
            value = s[right] - centre
            right += 1
        if k == k_low:
            low_value = value
    return 0.5 * (low_value + value)


@numba.njit(cache=True, nogil=True)
def _winsorized_sigma(s, lo, hi, centre, sums):
    """Huber's winsorised sigma of the sorted run ``s[lo:hi]`` around ``centre``.

    Winsorising is cumulative, as in Siril: each pass clips the already clipped deviations at
    ``+-1.5 sigma``; sigma is ``1.134`` times their sample standard deviation, until it
    changes by less than 0.05 % (at most 100 passes). Clips compose to one clip at the
    smallest bound so far, which on sorted deviations clips a prefix and a suffix that only
    grow: with prefix sums of the deviations and their squares (``sums``, float64, at least
    ``2 (hi - lo + 1)``), each pass costs a few steps, not a pass over the samples.
    """
    m = hi - lo
    if m <= 1:
        return 0.0
    # sums[k]: sum of the first k deviations; sums[m + 1 + k]: of their squares.
    q = m + 1
    sums[0] = 0.0
    sums[q] = 0.0
    for k in range(m):
        d = s[lo + k] - centre
        sums[k + 1] = sums[k] + d
        sums[q + k + 1] = sums[q + k] + d * d
    var = (sums[q + m] - sums[m] * sums[m] / m) / (m - 1)
    sigma = math.sqrt(var) if var > 0 else 0.0
    bound = np.inf
    below = 0  # deviations [0, below) are clipped to -bound
    above = m  # deviations [above, m) are clipped to +bound
    for _ in range(_WINSOR_MAX_ITERS):
        bound = min(bound, _WINSOR_CUT * sigma)
        while below < above and s[lo + below] - centre < -bound:
            below += 1
        while above > below and s[lo + above - 1] - centre > bound:
            above -= 1
        clipped = below + (m - above)
        total = sums[above] - sums[below] + bound * (m - above - below)
        squares = sums[q + above] - sums[q + below] + bound * bound * clipped
        var = (squares - total * total / m) / (m - 1)
        new = _WINSOR_CORRECTION * math.sqrt(var) if var > 0 else 0.0
        moving = abs(new - sigma) > sigma * _WINSOR_TOLERANCE
        sigma = new
        if not moving:
            break
    return sigma


@numba.njit(cache=True, nogil=True)
def _linear_fit_pass(s, lo, hi, sigma_low, sigma_high):
    """One linear-fit clipping pass on the sorted run ``s[lo:hi]``: the new run."""
    m = hi - lo
    if m <= 3:
        return lo, hi
    x_mean = (m - 1) / 2.0
    y_mean = 0.0
    for k in range(m):
        y_mean += s[lo + k]
    y_mean /= m
    sxy = 0.0
    sxx = 0.0
    for k in range(m):
        dx = k - x_mean
        sxy += dx * (s[lo + k] - y_mean)
        sxx += dx * dx
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    spread = 0.0
    for k in range(m):
        spread += abs(s[lo + k] - (slope * k + intercept))
    sigma = spread / m
    n_low = 0
    while n_low < m and s[lo + n_low] - (slope * n_low + intercept) < -sigma_low * sigma:
        n_low += 1
    n_high = 0
    while n_high < m - n_low:
        k = m - 1 - n_high
        if not s[lo + k] - (slope * k + intercept) > sigma_high * sigma:
            break
        n_high += 1
    return lo + n_low, hi - n_high


@numba.njit(cache=True, nogil=True)
def _gesd(s, n, allowed, critical):
    """GESD on the sorted ``s[:n]``: the run left after the last significant removal.

    The sample farthest from the mean is always the lowest or the highest of the run, so each
    step moves one end of the run in; the sums (of deviations from the first median, in
    float64) are updated by the removed sample.
    """
    centre = _median(s, 0, n)
    total = 0.0
    squares = 0.0
    for k in range(n):
        d = s[k] - centre
        total += d
        squares += d * d
    lo, hi = 0, n
    best_lo, best_hi = 0, n
    for _ in range(allowed):
        m = hi - lo
        if m < 3:
            break
        mean = total / m
        sd = math.sqrt(max(squares - total * mean, 0.0) / (m - 1))
        x_lo = s[lo] - centre
        x_hi = s[hi - 1] - centre
        if (x_hi - mean) > (mean - x_lo):
            stat, removed = x_hi - mean, x_hi
            hi -= 1
        else:
            stat, removed = mean - x_lo, x_lo
            lo += 1
        total -= removed
        squares -= removed * removed
        if sd > 0 and stat / sd > critical[m]:
            best_lo, best_hi = lo, hi
    return best_lo, best_hi


@numba.njit(cache=True, nogil=True)
def _reject(s, n, method, sigma_low, sigma_high, max_iters, percentile_low, percentile_high,
            gesd_outliers, critical, tmp):
    """The kept run ``[lo, hi)`` of the sorted samples ``s[:n]`` (``n >= 1``), and their median."""
    centre = _median(s, 0, n)
    median_all = centre
    lo, hi = 0, n
    if method == 1:  # median
        return lo, hi, median_all
    if method == 2:  # percentile
        below = centre - centre * percentile_low
        above = centre + centre * percentile_high
        while lo < n and s[lo] < below:
            lo += 1
        while hi > lo and s[hi - 1] > above:
            hi -= 1
        return lo, hi, median_all
    if method == 7:  # gesd
        allowed = int(math.floor(gesd_outliers * n + 1e-9))
        lo, hi = _gesd(s, n, allowed, critical)
        return lo, hi, median_all
    for _ in range(max_iters):
        if method == 6:  # linear_fit
            new_lo, new_hi = _linear_fit_pass(s, lo, hi, sigma_low, sigma_high)
        else:
            if method == 3:
                sigma = _std(s, lo, hi, 0)
            elif method == 4:
                sigma = MAD_TO_SIGMA * _mad(s, lo, hi, centre)
            else:
                sigma = _winsorized_sigma(s, lo, hi, centre, tmp)
            below = centre - sigma_low * sigma
            above = centre + sigma_high * sigma
            new_lo, new_hi = lo, hi
            while new_lo < hi and s[new_lo] < below:
                new_lo += 1
            while new_hi > new_lo and s[new_hi - 1] > above:
                new_hi -= 1
        if new_lo == lo and new_hi == hi:
            break
        lo, hi = new_lo, new_hi
        if hi <= lo:
            break
        centre = _median(s, lo, hi)
    return lo, hi, median_all


@numba.njit(parallel=True, cache=True)
def _combine_kernel(cube, method, sigma_low, sigma_high, max_iters, percentile_low,
                    percentile_high, gesd_outliers, critical, weights, weighted, network,
                    block, image, low, high, used):
    """Combine ``cube`` (N, P) float32 into the (P,) outputs, blocks of pixels in parallel.

    Each task copies its block of ``block`` pixels (no data as +inf, which sorts last),
    sorts it with the comparator ``network`` pixel-parallel (the inner loop over pixels is
    vectorised by the compiler), then rejects and averages pixel by pixel.
    """
    n, p = cube.shape
    tasks = (p + block - 1) // block
    for task in numba.prange(tasks):
        j0 = task * block
        width = min(p, j0 + block) - j0
        sorted_block = np.empty((n, block), dtype=np.float32)
        nvalid = np.zeros(block, dtype=np.int64)
        s = np.empty(n, dtype=np.float64)
        tmp = np.empty(2 * n + 2, dtype=np.float64)
        for i in range(n):
            for q in range(width):
                v = cube[i, j0 + q]
                if math.isfinite(v):
                    sorted_block[i, q] = v
                    nvalid[q] += 1
                else:
                    sorted_block[i, q] = np.inf
        if method != 0:
            for c in range(network.shape[0]):
                a = sorted_block[network[c, 0]]
                b = sorted_block[network[c, 1]]
                for q in range(width):
                    x, y = a[q], b[q]
                    a[q] = min(x, y)
                    b[q] = max(x, y)
        for q in range(width):
            j = j0 + q
            count = nvalid[q]
            low[j] = 0
            high[j] = 0
            used[j] = count
            if count == 0:
                image[j] = np.nan
                continue
            if method == 0:
                lo, hi = 0, count
                lo_value, hi_value = -np.inf, np.inf
                if not weighted:
                    total = 0.0
                    for i in range(n):
                        v = sorted_block[i, q]
                        if v != np.inf:
                            total += v
                    image[j] = total / count
                    continue
            else:
                for k in range(count):
                    s[k] = sorted_block[k, q]
                lo, hi, median_all = _reject(
                    s, count, method, sigma_low, sigma_high, max_iters, percentile_low,
                    percentile_high, gesd_outliers, critical, tmp,
                )
                if hi <= lo or method == 1:
                    # Every sample rejected (or the median asked for): the median of all.
                    image[j] = median_all
                    continue
                low[j] = lo
                high[j] = count - hi
                used[j] = hi - lo
                lo_value, hi_value = s[lo], s[hi - 1]
            if weighted:
                # The kept run is every sample between its lowest and highest value (ties
                # included), which identifies the kept samples in frame order.
                total = 0.0
                weight = 0.0
                for i in range(n):
                    v = cube[i, j]
                    if math.isfinite(v) and v >= lo_value and v <= hi_value:
                        total += weights[i] * v
                        weight += weights[i]
                image[j] = total / weight
            else:
                total = 0.0
                for k in range(lo, hi):
                    total += s[k]
                image[j] = total / (hi - lo)


def _combine_pixels(cube, image, low, high, used, *, settings, weights):
    """Combine ``cube`` (N, P) float32 into the (P,) outputs (image float32, counts int16)."""
    n = cube.shape[0]
    weighted = weights is not None
    _combine_kernel(
        np.ascontiguousarray(cube, dtype=np.float32),
        _CODES[settings.method],
        settings.sigma_low,
        settings.sigma_high,
        settings.max_iters,
        settings.percentile_low,
        settings.percentile_high,
        settings.gesd_outliers,
        _gesd_critical(n, settings.gesd_alpha),
        np.asarray(weights if weighted else np.zeros(n), dtype=np.float64),
        weighted,
        _sorting_network(n),
        int(min(1024, max(8, _TASK_BYTES // (4 * n)))),
        image,
        low,
        high,
        used,
    )
