"""Fast, memory-bounded stacking of registered frames with outlier rejection.

The samples of each pixel are sorted along the frame axis once per block of pixels: up to 64
frames by a Batcher odd-even merge sorting network of whole-row ``numpy.fmin``/``numpy.maximum``
calls (D. E. Knuth, *The Art of Computer Programming* vol. 3, 5.3.4), beyond that by
``numpy.sort``. Kappa-sigma rejection around the median only ever removes the lowest or the
highest samples, so what a pixel keeps is a contiguous run ``[lo, hi)`` of its sorted samples;
the median of a run is two gathers, and its sum and sum of squares come from clamping the
deviations to the run's end values (see :class:`_SortedStack`), with no masks. Every rejection
pass is then a handful of whole-array numpy operations, and later passes visit only the pixels
whose run changed.

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
  deviations below and above the median), found by a vectorised bisection, with no sort.
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
from dataclasses import dataclass

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

# Sorting networks beat numpy.sort on the frame axis up to about this many frames.
_NETWORK_MAX_FRAMES = 64
# Samples per block (frames x pixels): large enough that the slowly converging tail of the
# winsorised sigma costs little per block, small enough for the CPU caches to help.
_BLOCK_SAMPLES = 1 << 20
# Workspace bytes per sample of a block: sorted samples, deviations (float32) and a mask, with
# room for the temporaries of compaction, the weighted mean or numpy.sort...
_WORK_BYTES_PER_SAMPLE = 32
# ...plus about twenty per-pixel vectors (indices, centres, thresholds, counts).
_WORK_BYTES_PER_PIXEL = 160
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
        work=_workspace(cube.shape[0], max(1, min(_default_block(cube.shape[0]), image.size))),
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
    shape = _common_shape(paths)
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    row_pixels = width * channels

    budget = int(memory_mb * 2**20)
    # Outputs: the image (float32), the low, high and used counts and at the end their total
    # (int16).
    fixed = height * row_pixels * (4 + 2 + 2 + 2 + 2) + _OVERHEAD_BYTES
    per_column = n_frames * _WORK_BYTES_PER_SAMPLE + _WORK_BYTES_PER_PIXEL
    per_row = n_frames * row_pixels * 4
    available = budget - fixed
    # The working arrays get at most a quarter of what the outputs leave, the chunk the rest;
    # a budget too tight for that still runs with one-row chunks and a smaller block.
    block = max(
        1, min(_default_block(n_frames), row_pixels * height, available // (4 * per_column))
    )
    rows = (available - block * per_column) // per_row
    if rows < 1 and available >= per_row + per_column:
        block, rows = (available - per_row) // per_column, 1
    if rows < 1:
        need = (fixed + per_row + per_column) / 2**20
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
    work = _workspace(n_frames, block)
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
            work=work,
        )
    del chunk_flat, work
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


def _default_block(n_frames):
    return max(256, _BLOCK_SAMPLES // n_frames)


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
def _sorting_network(n):
    """Comparator pairs of Batcher's odd-even merge sort for ``n`` inputs (any ``n``).

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
    return tuple(pairs)


class _SortedStack:
    """Samples of a block of pixels sorted along the frame axis, and sums over kept runs.

    ``data`` (R, B) float32 holds the samples of each pixel in some row order; ``order[k]`` is
    the row holding the rank-``k`` sample of every pixel. No-data samples are NaN and rank after
    every valid one; ``R`` may exceed the number of frames by an all-NaN scratch row of the
    sorting network. A pixel keeps a run ``[lo, hi)`` of ranks with ``hi <= nvalid``.

    Sums over a run need no mask: with ``e = clamp(data - centre, e[lo], e[hi - 1])`` (NaN
    clamped up), the ``lo`` samples below the run and the ``R - hi`` above it (no data
    included) all equal the run's end values, whose contribution is subtracted exactly.

    ``work`` holds flat scratch buffers ("data", "e", "spare" float32, "mask" bool) of at least
    ``(N + 1) * B`` elements, reused block after block: fresh pages cost more than the
    arithmetic on them.
    """

    def __init__(self, data, order, nvalid, work):
        self.data, self.order, self.nvalid, self.work = data, order, nvalid, work
        # int32 gathers are faster, and a block has far fewer than 2**31 samples.
        self.row_start = order.astype(np.int32) * np.int32(data.shape[1])
        self.column = np.arange(data.shape[1], dtype=np.int32)

    @classmethod
    def from_frames(cls, x, work):
        n, b = x.shape
        valid = work["mask"][: n * b].reshape(n, b)
        np.isfinite(x, out=valid)
        nvalid = valid.sum(axis=0, dtype=np.int16).astype(np.intp)
        if n > _NETWORK_MAX_FRAMES:
            data = np.where(valid, x, np.float32(np.nan))
            data.sort(axis=0)  # NaN sorts last
            return cls(data, np.arange(n), nvalid, work)
        data = work["data"][: (n + 1) * b].reshape(n + 1, b)
        data[:n] = x
        if nvalid.sum() < n * b:
            np.copyto(data[:n], np.float32(np.nan), where=~valid)
        # fmin keeps the number and maximum the NaN: NaN sorts as +inf, with no extra pass.
        rows, spare = list(range(n)), n
        for i, j in _sorting_network(n):
            ri, rj = data[rows[i]], data[rows[j]]
            np.fmin(ri, rj, out=data[spare])
            np.maximum(ri, rj, out=rj)
            rows[i], spare = spare, rows[i]
        data[spare] = np.nan
        return cls(data, np.array(rows), nvalid, work)

    def _scratch(self, name):
        return self.work[name][: self.data.size].reshape(self.data.shape)

    def take(self, rank):
        """Sample of rank ``rank`` (B,) of each pixel."""
        index = self.row_start.take(rank, mode="clip")
        index += self.column
        return self.data.reshape(-1).take(index)

    def median(self, lo, hi):
        """Median of the run ``[lo, hi)`` of each pixel; NaN where the run is empty."""
        m = (self.take((lo + hi - 1) // 2) + self.take((lo + hi) // 2)) * np.float32(0.5)
        m[hi <= lo] = np.nan
        return m

    def clamped(self, lo, hi, centre):
        """Deviations from ``centre`` clamped to the run (in scratch), and the run's end values."""
        e_lo = self.take(lo) - centre
        e_hi = self.take(hi - 1) - centre
        e = np.subtract(self.data, centre, out=self._scratch("e"))
        np.fmin(e, e_hi, out=e)
        if lo.any():  # a run from rank 0 has nothing below it to clamp
            np.fmax(e, e_lo, out=e)
        return e, e_lo, e_hi

    def run_sums(self, e, e_lo, e_hi, lo, hi):
        """Sum and sum of squares of ``e`` over each run, from the clamped ``e``."""
        below = lo.astype(np.float32)
        above = (self.data.shape[0] - hi).astype(np.float32)
        total = e.sum(axis=0) - below * e_lo - above * e_hi
        squares = np.einsum("ij,ij->j", e, e) - below * (e_lo * e_lo) - above * (e_hi * e_hi)
        return total, squares

    def count_below(self, threshold):
        mask = np.less(self.data, threshold, out=self._scratch("mask"))
        return mask.sum(axis=0, dtype=np.int16).astype(np.intp)

    def count_at_or_below(self, threshold):
        mask = np.less_equal(self.data, threshold, out=self._scratch("mask"))
        return mask.sum(axis=0, dtype=np.int16).astype(np.intp)

    def ranked(self):
        """The same stack with its rows in rank order (``order`` the identity), in "spare"."""
        r, b = self.data.shape
        if np.array_equal(self.order, np.arange(r)):
            return self
        # The rows not in ``order`` (the sorting network's scratch row, all NaN) rank last.
        rows = np.concatenate([self.order, np.setdiff1d(np.arange(r), self.order)])
        data = np.take(self.data, rows, axis=0, out=self._scratch("spare"))
        return _SortedStack(data, np.arange(r), self.nvalid, self.work)

    def compress(self, keep):
        """The pixels where ``keep`` is True."""
        data = np.compress(keep, self.data, axis=1)
        return _SortedStack(data, self.order, self.nvalid[keep], self.work)


def _std(total, squares, count, ddof=0):
    """Standard deviation from sums over ``count`` samples; 0 where ``count <= ddof``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (squares - total * total / count) / (count - ddof)
    var[~(var > 0)] = 0
    return np.sqrt(var, out=var)


def _winsorized_sigma(stk, e, e_lo, e_hi, lo, hi, sigma):
    """Huber's winsorised sigma of each run, from its clamped deviations ``e`` (modified).

    Winsorising is cumulative, as in Siril: each pass clips the already clipped sample. The
    samples outside the run equal the run's end values and go through the same clipping, so
    the run sums stay exact with the clipped end values.
    """
    sigma = sigma.copy()
    count = (hi - lo).astype(np.float32)
    columns = np.arange(sigma.size)
    w, s, active = e, sigma, np.ones(sigma.shape, dtype=bool)
    below, above = lo.astype(np.float32), (stk.data.shape[0] - hi).astype(np.float32)
    w_lo, w_hi = e_lo.copy(), e_hi.copy()
    buffers = (stk.work["spare"], stk.work["e"])  # w starts in "e"
    for _ in range(_WINSOR_MAX_ITERS):
        bound = np.float32(_WINSOR_CUT) * s
        np.minimum(w, bound, out=w)
        np.maximum(w, -bound, out=w)
        np.clip(w_lo, -bound, bound, out=w_lo)
        np.clip(w_hi, -bound, bound, out=w_hi)
        total = w.sum(axis=0) - below * w_lo - above * w_hi
        squares = np.einsum("ij,ij->j", w, w) - below * (w_lo * w_lo) - above * (w_hi * w_hi)
        new = np.float32(_WINSOR_CORRECTION) * _std(total, squares, count, ddof=1)
        moving = np.abs(new - s) > s * np.float32(_WINSOR_TOLERANCE)
        # Converged pixels keep their sigma, so clipping again with it changes nothing.
        s = np.where(active, new, s)
        active &= moving
        n_active = np.count_nonzero(active)
        if n_active == 0:
            break
        if 4 * n_active <= 3 * active.size:
            # A long tail of slowly converging pixels: iterate on those alone, gathered into
            # the other scratch buffer (fresh pages would cost more than the iterations).
            sigma[columns] = s
            keep = np.flatnonzero(active)
            columns, s, count = columns[keep], s[keep], count[keep]
            below, above, w_lo, w_hi = below[keep], above[keep], w_lo[keep], w_hi[keep]
            spare, buffers = buffers[0], (buffers[1], buffers[0])
            w = np.take(w, keep, axis=1, out=spare[: w.shape[0] * keep.size].reshape(-1, keep.size))
            active = np.ones(s.shape, dtype=bool)
    sigma[columns] = s
    return sigma


def _reject_sigma(stk, lo, hi, settings, centre):
    """One kappa-sigma pass around ``centre``, the median of each run: the new runs.

    The scale is the standard deviation (``"sigma_clip"``), 1.4826 MAD (``"mad"``) or
    Huber's winsorised sigma (``"winsorized"``) of each run.
    """
    method = settings.method
    if method == "mad":
        with np.errstate(invalid="ignore"):  # empty runs: NaN centre, NaN scale
            sigma = np.float32(MAD_TO_SIGMA) * _run_mad(stk, lo, hi, centre)
    else:
        count = (hi - lo).astype(np.float32)
        e, e_lo, e_hi = stk.clamped(lo, hi, centre)
        total, squares = stk.run_sums(e, e_lo, e_hi, lo, hi)
        if method == "winsorized":
            sigma = _winsorized_sigma(
                stk, e, e_lo, e_hi, lo, hi, _std(total, squares, count, ddof=1)
            )
        else:
            sigma = _std(total, squares, count)
        del e
    new_lo = np.maximum(lo, stk.count_below(centre - np.float32(settings.sigma_low) * sigma))
    new_hi = np.minimum(
        hi, stk.count_at_or_below(centre + np.float32(settings.sigma_high) * sigma)
    )
    return _keep_empty(lo, hi, new_lo, new_hi)


def _keep_empty(lo, hi, new_lo, new_hi):
    # An emptied run (NaN centre) stays empty; the caller falls back to the median there.
    empty = hi <= lo
    new_lo[empty], new_hi[empty] = lo[empty], hi[empty]
    return new_lo, np.maximum(new_hi, new_lo)


def _run_mad(stk, lo, hi, centre):
    """Median absolute deviation of each run ``[lo, hi)`` from ``centre``, its median.

    The deviations of a sorted run are two sorted sequences: ``centre - x[c - j]`` for
    ``j = 0 .. c - lo`` and ``x[c + 1 + j] - centre`` for ``j = 0 .. hi - 2 - c``, with ``c``
    the lower middle rank. Their median is that of the merged sequences: a bisection, for
    every pixel at once, on how many of the ``k + 1`` smallest (``k = (n - 1) // 2``) come
    from the first one gives the ``k``-th smallest, and the next is the smaller of the two
    sequences' next elements. ``log2(N)`` steps of a few gathers: no sort, no pass over every
    sample.
    """
    n = (hi - lo).astype(np.int32)
    c = ((lo + hi - 1) // 2).astype(np.int32)
    n_left = c - lo.astype(np.int32) + 1
    n_right = n - n_left
    k1 = (n - 1) // 2 + 1  # how many of the smallest make the lower middle one
    # i = how many of those come from the left sequence, in [lo_i, hi_i].
    lo_i = np.maximum(0, k1 - n_right)
    hi_i = np.minimum(k1, n_left)
    inf = np.float32(np.inf)
    for _ in range(int(np.ceil(np.log2(stk.data.shape[0] + 1))) + 1):
        active = lo_i < hi_i
        if not active.any():
            break
        i = (lo_i + hi_i) >> 1
        j = k1 - i
        # The next left deviation is smaller than the last right one taken: take more from
        # the left. (i < n_left and j > 0 wherever lo_i < hi_i.)
        more = (centre - stk.take(c - i)) < (stk.take(c + j) - centre)
        more &= active
        np.copyto(lo_i, i + 1, where=more)
        np.copyto(hi_i, i, where=active & ~more)
    i, j = lo_i, k1 - lo_i
    last_left = np.where(i > 0, centre - stk.take(c - i + 1), -inf)
    last_right = np.where(j > 0, stk.take(c + j) - centre, -inf)
    mad = np.maximum(last_left, last_right)
    even = n % 2 == 0
    if even.any():
        next_left = np.where(i < n_left, centre - stk.take(c - i), inf)
        next_right = np.where(j < n_right, stk.take(c + j + 1) - centre, inf)
        upper = np.minimum(next_left, next_right)
        mad = np.where(even, (mad + upper) * np.float32(0.5), mad)
    mad[n <= 0] = np.nan
    return mad


def _reject_linear_fit(stk, lo, hi, settings, centre):
    """One linear-fit clipping pass on a rank-ordered stack (:meth:`_SortedStack.ranked`).

    A least-squares line ``a x + b`` (``x = rank - lo``) through each run, ``sigma`` the mean
    absolute residual; the rejected samples are the lowest ranks of the run whose residuals
    are all below ``-sigma_low * sigma`` and the highest whose residuals are all above
    ``sigma_high * sigma``. Runs of three samples or fewer are left as they are.

    No masks: outside its run a pixel's deviations are clamped to the run's end values and
    its line to the line's end values (the slope of sorted samples is >= 0), so each sample
    outside has the residual of the run's nearest end, whose share is subtracted exactly.
    """
    r = stk.data.shape[0]
    n = (hi - lo).astype(np.float64)
    e, e_lo, e_hi = stk.clamped(lo, hi, centre)
    total, _ = stk.run_sums(e, e_lo, e_hi, lo, hi)
    rank = np.arange(r, dtype=np.float32)
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    # Sum of rank * deviation over the run, from the whole clamped stack.
    above = (r * (r - 1) - hi64 * (hi64 - 1)) / 2
    rank_sum = rank @ e - e_lo * (lo64 * (lo64 - 1) / 2) - e_hi * above
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (n - 1) / 2
        sxx = n * (n * n - 1) / 12
        slope = np.where(sxx > 0, (rank_sum - (lo64 + x_mean) * total) / sxx, 0.0)
        intercept = total / n - slope * x_mean
    start = intercept.astype(np.float32)
    end = (intercept + slope * (n - 1)).astype(np.float32)
    # Residuals in place of the deviations: e - clamp(a (rank - lo) + b, b, b + a (n - 1)).
    line = np.multiply.outer(rank, slope.astype(np.float32))
    line += (intercept - slope * lo64).astype(np.float32)
    np.maximum(line, start, out=line)
    np.minimum(line, end, out=line)
    np.subtract(e, line, out=e)
    np.abs(e, out=line)
    res_lo, res_hi = e_lo - start, e_hi - end
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = line.sum(axis=0) - lo * np.abs(res_lo) - (r - hi) * np.abs(res_hi)
        sigma = (spread / n).astype(np.float32)
    del line
    # Ranks below the run share the residual of its lowest sample, so a count of leading
    # low flags from rank 0 is either 0 (the lowest kept sample stays) or lo plus the new ones.
    new_lo = np.maximum(lo, _leading(e, -np.float32(settings.sigma_low) * sigma, low=True))
    new_hi = np.minimum(hi, r - _leading(e[::-1], np.float32(settings.sigma_high) * sigma, low=False))
    del e
    small = hi - lo <= 3
    new_lo[small], new_hi[small] = lo[small], hi[small]
    return _keep_empty(lo, hi, new_lo, new_hi)


def _leading(values, threshold, *, low):
    """How many rows of ``values`` (R, B) lie beyond ``threshold`` (B,) before the first that
    does not, per column: below it (``low``) or above it.

    Row by row with an early end, as few ranks are ever rejected (rows are contiguous; a
    whole-array comparison and ``numpy.logical_and.accumulate`` on axis 0 cost far more).
    """
    beyond = np.less if low else np.greater
    alive = beyond(values[0], threshold)
    count = alive.astype(np.intp)
    for row in values[1:]:
        if not alive.any():
            break
        alive &= beyond(row, threshold)
        count += alive
    return count


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


def _reject_gesd(stk, lo, hi, settings, centre):
    """GESD on each run: the runs after the last significant removal (see the module doc).

    The sample farthest from the mean is always the lowest or the highest of the run, so each
    step moves one end of the run in; the sums of the run are updated by the removed sample.
    """
    nvalid = hi - lo
    allowed = np.floor(settings.gesd_outliers * nvalid + 1e-9).astype(np.intp)
    steps = int(allowed.max(initial=0))
    if steps == 0:
        return lo, hi
    lam = _gesd_critical(stk.data.shape[0], settings.gesd_alpha)
    e, e_lo, e_hi = stk.clamped(lo, hi, centre)
    total, squares = stk.run_sums(e, e_lo, e_hi, lo, hi)
    del e
    total, squares = total.astype(np.float64), squares.astype(np.float64)
    cur_lo, cur_hi = lo.copy(), hi.copy()
    best_lo, best_hi = lo.copy(), hi.copy()
    centre64 = centre.astype(np.float64)
    for step in range(steps):
        m = cur_hi - cur_lo
        active = (step < allowed) & (m >= 3)
        if not active.any():
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / m
            sd = np.sqrt(np.maximum(squares - total * mean, 0) / (m - 1))
            x_lo = stk.take(cur_lo) - centre64
            x_hi = stk.take(cur_hi - 1) - centre64
            high = (x_hi - mean) > (mean - x_lo)
            stat = np.where(high, x_hi - mean, mean - x_lo) / sd
        removed = np.where(high, x_hi, x_lo)
        total = np.where(active, total - removed, total)
        squares = np.where(active, squares - removed * removed, squares)
        cur_lo = np.where(active & ~high, cur_lo + 1, cur_lo)
        cur_hi = np.where(active & high, cur_hi - 1, cur_hi)
        significant = active & (stat > lam[m])
        best_lo = np.where(significant, cur_lo, best_lo)
        best_hi = np.where(significant, cur_hi, best_hi)
    return best_lo, best_hi


def _reject_percentile(stk, lo, hi, settings, centre):
    """Percentile clipping, one pass around ``centre``, the median of the valid samples."""
    new_lo = stk.count_below(centre - centre * np.float32(settings.percentile_low))
    new_hi = stk.count_at_or_below(centre + centre * np.float32(settings.percentile_high))
    return _keep_empty(lo, hi, np.maximum(lo, new_lo), np.minimum(hi, new_hi))


_ITERATED = {
    "sigma_clip": _reject_sigma,
    "mad": _reject_sigma,
    "winsorized": _reject_sigma,
    "linear_fit": _reject_linear_fit,
}
_ONE_PASS = {"percentile": _reject_percentile, "gesd": _reject_gesd}


def _workspace(n_frames, block):
    """Scratch buffers for :class:`_SortedStack` on blocks of up to ``block`` pixels."""
    size = (n_frames + 1) * block
    return {
        "data": np.empty(size, dtype=np.float32),
        "e": np.empty(size, dtype=np.float32),
        "spare": np.empty(size, dtype=np.float32),
        "mask": np.empty(size, dtype=bool),
    }


def _combine_pixels(cube, image, low, high, used, *, settings, weights, work):
    """Combine ``cube`` (N, P) float32 into the (P,) outputs, block of pixels by block.

    The block size is what ``work`` (from :func:`_workspace`) was made for.
    """
    n, p = cube.shape
    b = work["mask"].size // (n + 1)
    for b0 in range(0, p, b):
        b1 = min(p, b0 + b)
        image[b0:b1], low[b0:b1], high[b0:b1], used[b0:b1] = _combine_block(
            cube[:, b0:b1], work, settings, weights
        )


def _combine_block(x, work, settings, weights):
    method = settings.method
    if method == "none":
        return _mean_all(x, weights)
    stk = _SortedStack.from_frames(x, work)
    nvalid = stk.nvalid
    lo = np.zeros(nvalid.size, dtype=np.intp)
    hi = nvalid.copy()
    median_all = stk.median(lo, hi)
    zeros = np.zeros(nvalid.size, dtype=np.int16)
    if method == "median":
        return median_all, zeros, zeros, nvalid
    if method in _ONE_PASS:
        lo, hi = _ONE_PASS[method](stk, lo, hi, settings, median_all)
    else:
        reject = _ITERATED[method]
        act = stk.ranked() if method == "linear_fit" else stk
        # A pixel whose run did not change would compute the same thresholds again, so later
        # passes only visit the pixels that changed (a few percent after the first).
        columns, lo_act, hi_act, centre = np.arange(nvalid.size), lo, hi, median_all
        for _ in range(settings.max_iters):
            new_lo, new_hi = reject(act, lo_act, hi_act, settings, centre)
            changed = (new_lo != lo_act) | (new_hi != hi_act)
            lo[columns], hi[columns] = new_lo, new_hi
            if not changed.any():
                break
            columns, act = columns[changed], act.compress(changed)
            lo_act, hi_act = new_lo[changed], new_hi[changed]
            centre = act.median(lo_act, hi_act)
        del act
    kept = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        if weights is None:
            total, _ = stk.run_sums(*stk.clamped(lo, hi, median_all), lo, hi)
            value = total / kept + median_all
        else:
            value = _weighted_mean_between(x, stk.take(lo), stk.take(hi - 1), weights, median_all)
    fallback = (kept == 0) & (nvalid > 0)
    value[fallback] = median_all[fallback]
    rej_low = np.where(fallback, 0, lo)
    rej_high = np.where(fallback, 0, nvalid - hi)
    return value, rej_low, rej_high, nvalid - rej_low - rej_high


def _weighted_mean_between(x, low, high, weights, ref):
    # The kept run is every sample between its lowest and highest value (ties included),
    # which identifies the kept samples in frame order without an argsort.
    inside = x >= low
    inside &= x <= high
    dev = np.where(inside, x - ref, np.float32(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return weights @ dev / (weights @ inside) + ref


def _mean_all(x, weights):
    valid = np.isfinite(x)
    nvalid = valid.sum(axis=0, dtype=np.int16)
    values = np.where(valid, x, np.float32(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        if weights is None:
            mean = values.sum(axis=0) / nvalid
        else:
            mean = weights @ values / (weights @ valid)
    zeros = np.zeros(x.shape[1], dtype=np.int16)
    return mean.astype(np.float32), zeros, zeros, nvalid
