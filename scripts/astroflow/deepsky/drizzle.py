"""Translation-only drizzle (variable-pixel linear reconstruction) onto a finer grid.

Drizzle (Fruchter & Hook 2002) shrinks each input pixel about its centre to a "drop" of side
``pixfrac`` input pixels, maps it onto the output grid, and adds the input value to every output
pixel it overlaps in proportion to the overlap area (times the input pixel's weight).  The
accumulated weighted sum divided by the accumulated weight is the drizzled image.  With many
frames at different sub-pixel offsets this recovers resolution lost to undersampling, which
interpolating (upsampling) an average of aligned frames cannot: their aliased high frequencies
are lost in the average.

Here the mapping of each frame (a lucky-imaging patch) to the reference grid is a pure
translation ``(dy, dx)`` in input pixels, so the drops are axis-aligned squares and the overlap
areas are separable: the overlap of input pixel ``(i, j)`` with output pixel ``(k, l)`` is
``Ay[k, i] * Ax[l, j]`` with 1-D overlap-length matrices ``Ay`` and ``Ax``.  Accumulation is then
two small matrix products per channel, and exact. Deep-sky integration, with rotations and the
full registration transform, goes through STScI's drizzle package instead
(:mod:`astroflow.deepsky.drizzle_stack`).

Geometry (input pixel units, pixel ``(i, j)`` covering ``[i, i+1) x [j, j+1)`` of its frame):
input pixel ``(i, j)`` of a patch drizzled with offset ``(dy, dx)`` covers the reference square
``[i + dy, i + dy + 1) x [j + dx, j + dx + 1)``; its drop is that square shrunk about its centre
to side ``pixfrac``.  The output grid has pixels of side ``1 / scale`` input pixels, output pixel
``(k, l)`` covering ``[k / scale, (k + 1) / scale) x [l / scale, (l + 1) / scale)``.  Hence the
centre of input pixel ``(i, j)`` lands on output pixel coordinates
``((i + 0.5 + dy) * scale - 0.5, (j + 0.5 + dx) * scale - 0.5)`` (pixel centres at integers),
the same convention as :func:`upsample` (OpenCV ``resize``).

References
----------
A. S. Fruchter & R. N. Hook, "Drizzle: A Method for the Linear Reconstruction of Undersampled
Images", PASP 114, 144-152 (2002).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import sparse

from astroflow.checks import check_float

_INTERPOLATIONS = {
    "lanczos": cv2.INTER_LANCZOS4,
    "cubic": cv2.INTER_CUBIC,
    "linear": cv2.INTER_LINEAR,
}


def _overlap_matrix(n_out, n_in, offset, scale, pixfrac):
    """Sparse overlap lengths (in output pixels) of ``n_in`` shifted drops with output pixels.

    Returns ``(start, A)`` with ``A`` a CSR matrix of shape ``(stop - start, n_in)``: row ``r`` is
    output pixel ``start + r``, and ``A[r, i]`` the length of the overlap of drop ``i`` with it.
    Only the output pixels some drop touches are included (``start`` and ``stop`` clipped to
    ``[0, n_out]``), so the parts of drops falling outside the grid are discarded.
    """
    centres = (np.arange(n_in, dtype=np.float64) + 0.5 + offset) * scale
    half = 0.5 * pixfrac * scale
    lo = centres - half
    hi = centres + half
    start = max(int(np.floor(lo[0])), 0)
    stop = min(int(np.ceil(hi[-1])), n_out)
    if stop <= start:
        return 0, None
    # A drop of length pixfrac * scale overlaps at most ceil(pixfrac * scale) + 1 pixels.
    span = int(np.ceil(pixfrac * scale)) + 1
    first = np.floor(lo)
    out = first[:, None] + np.arange(span)[None, :]  # (n_in, span) output pixel indices
    overlap = np.minimum(out + 1.0, hi[:, None]) - np.maximum(out, lo[:, None])
    keep = (overlap > 0) & (out >= start) & (out < stop)
    cols = np.broadcast_to(np.arange(n_in)[:, None], out.shape)[keep]
    rows = out[keep].astype(np.int64) - start
    matrix = sparse.csr_matrix((overlap[keep], (rows, cols)), shape=(stop - start, n_in))
    return start, matrix


def drizzle_add(data_sum, weight_sum, patch, dy, dx, *, scale, pixfrac=1.0, weights=None):
    """Drizzle one translated patch onto a finer output grid, accumulating in place.

    Parameters
    ----------
    data_sum : numpy.ndarray
        ``(H*, W*)`` (mono patch) or ``(H*, W*, C)`` (patch with ``C`` channels), float32 or
        float64: running sum of ``weight * overlap * value`` on the output grid (ADU x output
        pixel area).  Updated in place.
    weight_sum : numpy.ndarray
        ``(H*, W*)``, float32 or float64: running sum of ``weight * overlap`` (in units of output
        pixel area).  Updated in place.  Start both from zeros; the caller sizes the grid,
        typically ``(round(h * scale), round(w * scale))``.
    patch : array_like
        ``(h, w)`` or ``(h, w, C)`` input pixels, linear data (ADU).  Non-finite pixels are
        treated as rejected (weight 0).
    dy, dx : float
        Translation of the patch on the reference grid, in input pixels: input pixel ``(i, j)``
        covers ``[i + dy, i + dy + 1) x [j + dx, j + dx + 1)`` of the reference frame, whose
        pixel ``(0, 0)`` is at the origin of the output grid.
    scale : float
        Output pixels per input pixel (> 0), e.g. 2 for a grid twice as fine.
    pixfrac : float, optional
        Linear size of the drop relative to the input pixel, in ``(0, 1]``; default 1.
    weights : array_like, optional
        ``(h, w)`` non-negative per-input-pixel weights (e.g. a quality weight times a bad-pixel
        mask); 0 rejects a sample.  Default: all 1.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If ``scale <= 0`` or not finite, ``pixfrac`` is outside ``(0, 1]``, ``dy``/``dx`` are
        not finite, ``weights`` is negative or not finite, or the shapes of ``patch``,
        ``weights``, ``data_sum`` and ``weight_sum`` do not match each other (channels, or
        ``data_sum`` vs ``weight_sum`` grid).
    TypeError
        If ``data_sum`` or ``weight_sum`` is not a float32/float64 numpy array (in-place
        accumulation would silently truncate).

    Notes
    -----
    Each drop is spread over the output pixels in proportion to the overlap area (measured in
    output pixels), as in Fruchter & Hook (2002)::

        data_sum[k, l]   += sum_ij a_ijkl w_ij patch[i, j]
        weight_sum[k, l] += sum_ij a_ijkl w_ij

    For a translation the overlap ``a_ijkl = Ay[k, i] * Ax[l, j]`` is separable, so this is
    computed exactly as ``Ay @ (w * patch) @ Ax.T`` and ``Ay @ w @ Ax.T`` (per channel), with
    banded sparse ``Ay``, ``Ax`` restricted to the rows/columns the patch touches (cost
    ``O(h * w * pixfrac * scale)`` per channel).  Drops, or parts of drops, outside the output grid
    are discarded (never wrapped).

    A drop fully inside the grid adds ``(pixfrac * scale)**2`` to ``weight_sum`` (its area in
    output pixels) times its weight, so ``data_sum.sum()`` grows by
    ``(pixfrac * scale)**2 * sum(weights * patch)``.

    The drizzled image is ``data_sum / weight_sum`` where ``weight_sum > 0``
    (:func:`drizzle_finish`).  It keeps the surface brightness of the input (ADU per *input*
    pixel area); divide by ``scale**2`` for ADU per output pixel, i.e. to conserve total flux.
    """
    scale = check_float("scale", scale, 0.0, strict=True)
    pixfrac = check_float("pixfrac", pixfrac, 0.0, strict=True, high=1.0)
    dy = check_float("dy", dy, None)
    dx = check_float("dx", dx, None)
    for name, array in (("data_sum", data_sum), ("weight_sum", weight_sum)):
        if not isinstance(array, np.ndarray) or array.dtype not in (np.float32, np.float64):
            raise TypeError(
                f"{name} must be a float32 or float64 numpy array, got "
                f"{type(array).__name__} of dtype {getattr(array, 'dtype', None)}"
            )

    patch = np.asarray(patch)
    if patch.ndim not in (2, 3) or patch.shape[0] == 0 or patch.shape[1] == 0:
        raise ValueError(f"patch must be a non-empty (h, w) or (h, w, C) array, got {patch.shape}")
    if weight_sum.ndim != 2:
        raise ValueError(f"weight_sum must be (H*, W*), got shape {weight_sum.shape}")
    expected = weight_sum.shape + patch.shape[2:]
    if data_sum.shape != expected:
        raise ValueError(
            f"data_sum has shape {data_sum.shape} but must be {expected}: the output grid of "
            f"weight_sum {weight_sum.shape} with the channels of patch {patch.shape}"
        )
    h, w = patch.shape[:2]

    values = patch.astype(np.float64, copy=True)
    finite = np.isfinite(values)
    if patch.ndim == 3:
        finite = finite.all(axis=2)
    if weights is None:
        wmap = finite.astype(np.float64)
    else:
        wmap = np.asarray(weights, dtype=np.float64)
        if wmap.shape != (h, w):
            raise ValueError(
                f"weights has shape {wmap.shape} but must match the patch's (h, w) = {(h, w)}"
            )
        if not np.all(np.isfinite(wmap)) or np.any(wmap < 0):
            raise ValueError("weights must be finite and >= 0")
        wmap = np.where(finite, wmap, 0.0)
    values[~finite] = 0.0

    H, W = weight_sum.shape
    y0, Ay = _overlap_matrix(H, h, dy, scale, pixfrac)
    x0, Ax = _overlap_matrix(W, w, dx, scale, pixfrac)
    if Ay is None or Ax is None:
        return
    rows = slice(y0, y0 + Ay.shape[0])
    cols = slice(x0, x0 + Ax.shape[0])

    weight_sum[rows, cols] += _separable(Ay, Ax, wmap)
    weighted = values * (wmap if patch.ndim == 2 else wmap[..., None])
    data_sum[rows, cols] += _separable(Ay, Ax, weighted)


def _separable(Ay, Ax, values):
    """``Ay @ values @ Ax.T`` for each channel of ``(h, w[, C])`` values (sparse Ay, Ax)."""
    h, w = values.shape[:2]
    rest = values.shape[2:]
    tmp = Ay @ values.reshape(h, -1)  # (Hr, w * C)
    tmp = tmp.reshape((Ay.shape[0], w) + rest).swapaxes(0, 1)  # (w, Hr[, C])
    out = Ax @ tmp.reshape(w, -1)  # (Wr, Hr * C)
    return out.reshape((Ax.shape[0], Ay.shape[0]) + rest).swapaxes(0, 1)


def drizzle_finish(data_sum, weight_sum, fill=np.nan):
    """Turn drizzle accumulators into an image.

    Parameters
    ----------
    data_sum : array_like
        ``(H*, W*)`` or ``(H*, W*, C)`` weighted data sum from :func:`drizzle_add`.
    weight_sum : array_like
        ``(H*, W*)`` weight sum from :func:`drizzle_add`.
    fill : float, optional
        Value of output pixels that received no weight (no drop landed on them, or only
        rejected ones); default NaN.

    Returns
    -------
    numpy.ndarray
        float32, shape of ``data_sum``: ``data_sum / weight_sum`` where ``weight_sum > 0``,
        else ``fill``; same surface-brightness units (ADU per input pixel) as the input patches.

    Raises
    ------
    ValueError
        If the shapes do not match (``data_sum.shape[:2] != weight_sum.shape``).

    Notes
    -----
    The weighted mean of Fruchter & Hook (2002), PASP 114, 144.
    """
    data_sum = np.asarray(data_sum, dtype=np.float64)
    weight_sum = np.asarray(weight_sum, dtype=np.float64)
    if (
        weight_sum.ndim != 2
        or data_sum.ndim not in (2, 3)
        or data_sum.shape[:2] != weight_sum.shape
    ):
        raise ValueError(
            f"data_sum {data_sum.shape} and weight_sum {weight_sum.shape} do not match: "
            "expected (H*, W*[, C]) and (H*, W*)"
        )
    good = weight_sum > 0
    denom = np.where(good, weight_sum, 1.0)
    if data_sum.ndim == 3:
        good = good[..., None]
        denom = denom[..., None]
    return np.where(good, data_sum / denom, fill).astype(np.float32)


def upsample(image, scale, *, method="lanczos"):
    """Resize an image onto a finer grid by interpolation (the non-drizzle "upsampling").

    This is plain interpolation of one image, *not* drizzle: it cannot recover detail beyond
    the input's Nyquist limit (aliased frequencies stay aliased); it only gives the finer
    sampling that later sharpening (e.g. wavelets) may need.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(H, W, C)`` image, linear data (ADU); must be finite.
    scale : float
        Output pixels per input pixel (> 0); the output is ``(round(H * scale),
        round(W * scale))``.
    method : {"lanczos", "cubic", "linear"}, optional
        OpenCV interpolation: Lanczos (8x8 taps, ``INTER_LANCZOS4``, default), bicubic
        (Keys, a = -0.75) or bilinear.

    Returns
    -------
    numpy.ndarray
        float32, ``(round(H * scale), round(W * scale)[, C])``, same surface-brightness units.
        Lanczos and cubic kernels have negative lobes, so they can ring slightly (even below 0)
        next to sharp edges; values are not clipped.

    Raises
    ------
    ValueError
        If ``scale`` is not > 0, the output would be empty, ``method`` is unknown, or the
        image is not 2-D/3-D or contains NaN/inf.

    Notes
    -----
    Uses ``cv2.resize``, whose pixel-centre convention (input pixel centre ``i`` lands on
    output coordinate ``(i + 0.5) * scale - 0.5``) is that of :func:`drizzle_add` with zero
    offset, so upsampled and drizzled images are aligned.  C. E. Duchon, "Lanczos filtering in
    one and two dimensions", J. Appl. Meteor. 18, 1016 (1979); R. Keys, "Cubic convolution
    interpolation for digital image processing", IEEE Trans. ASSP 29, 1153 (1981).
    """
    scale = check_float("scale", scale, 0.0, strict=True)
    if method not in _INTERPOLATIONS:
        raise ValueError(f"method must be one of {sorted(_INTERPOLATIONS)}, got {method!r}")
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) array, got {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values; upsampling would spread them")
    height, width = image.shape[:2]
    out_h, out_w = int(round(height * scale)), int(round(width * scale))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"scale {scale} turns a {height} x {width} image into an empty one")
    src = np.ascontiguousarray(image, dtype=np.float32)
    planes = (
        [src] if src.ndim == 2 else [np.ascontiguousarray(src[..., c]) for c in range(src.shape[2])]
    )
    out = [cv2.resize(p, (out_w, out_h), interpolation=_INTERPOLATIONS[method]) for p in planes]
    return out[0] if src.ndim == 2 else np.stack(out, axis=-1)
