"""Image quality against a reference: PSNR and the one SSIM of the pipeline.

SSIM is the structural similarity of Wang, Bovik, Sheikh & Simoncelli (2004) with the
settings of that paper: local means, variances and covariance in a Gaussian window of
standard deviation 1.5 px sampled on 11 x 11 taps (normalised to sum 1), population
(weighted, not sample) statistics, ``C1 = (0.01 L)**2`` and ``C2 = (0.03 L)**2`` for a data
range ``L``, the SSIM map taken where the window lies wholly inside the image ("valid"
positions), averaged over those positions and over the channels. It equals scikit-image's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=L)`` (not that function's default 7 x 7 uniform window with sample covariance).

The same code serves as a training loss and metric (torch tensors, differentiable:
:func:`ssim`), and as the score of benchmarks and evaluations (numpy images, channels last:
:func:`image_ssim`).

References
----------
Z. Wang, A. C. Bovik, H. R. Sheikh & E. P. Simoncelli, "Image quality assessment: from error
visibility to structural similarity", IEEE Trans. Image Process. 13 (2004) 600-612.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from astroflow.checks import check_float, check_int

__all__ = [
    "MAX_PSNR_DB",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "as_batch",
    "image_ssim",
    "psnr",
    "ssim",
    "ssim_map",
]

#: Upper bound of :func:`psnr` (identical images), in dB: an MSE floor of 1e-10.
MAX_PSNR_DB = 100.0
#: SSIM window: taps per axis and Gaussian standard deviation (px), as in Wang et al. 2004.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def as_batch(x, y, name, dtype=torch.float32):
    """Two tensors of one shape as ``(N, C, H, W)`` batches of one float dtype.

    Parameters
    ----------
    x, y : torch.Tensor
        ``(N, C, H, W)``, ``(C, H, W)`` or ``(H, W)``, same shape.
    name : str
        The caller's name, for the messages.
    dtype : torch.dtype, optional
        The dtype of the batches. Default float32.

    Returns
    -------
    x, y : torch.Tensor
        ``(N, C, H, W)`` of ``dtype``.

    Raises
    ------
    TypeError
        If an input is not a tensor.
    ValueError
        If the shapes differ or have another number of dimensions.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} takes torch tensors")
    if x.shape != y.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"{name} takes (H, W), (C, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    while x.ndim < 4:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    return x.to(dtype), y.to(dtype)


def _reduce(values, reduction):
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def ssim_map(x, y, *, data_range=1.0, window=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """Local SSIM of two images at every valid window position (see the module docstring).

    Parameters
    ----------
    x, y : torch.Tensor
        ``(N, C, H, W)``, ``(C, H, W)`` or ``(H, W)``, same shape; computed in float64 if
        either is float64, else in float32. Differentiable.
    data_range : float, optional
        ``L`` of the constants ``C1 = (0.01 L)**2``, ``C2 = (0.03 L)**2`` (> 0): the range of
        the pixel values (1 for data on a 0-1 scale).
    window : int, optional
        Window taps per axis (odd, at most ``H`` and ``W``).
    sigma : float, optional
        Standard deviation of the Gaussian window (px, > 0).

    Returns
    -------
    torch.Tensor
        ``(N, C, H - window + 1, W - window + 1)``: SSIM in [-1, 1] at each position where the
        window lies inside the image; exactly 1 where the images agree.

    Raises
    ------
    ValueError
        Different shapes, an even or too large window, a non-positive sigma or data range.
    """
    # float64 only where asked for (evaluations); a loss stays in float32.
    wide = torch.float64 in (getattr(x, "dtype", None), getattr(y, "dtype", None))
    x, y = as_batch(x, y, "ssim", torch.float64 if wide else torch.float32)
    window = check_int("window", window, 1)
    if window % 2 == 0:
        raise ValueError(f"window must be odd, got {window}")
    sigma = check_float("sigma", sigma, 0.0, strict=True)
    data_range = check_float("data_range", data_range, 0.0, strict=True)
    if min(x.shape[-2:]) < window:
        raise ValueError(
            f"ssim: images of {x.shape[-2]}x{x.shape[-1]} px are smaller than the {window}-px "
            "window"
        )
    c = x.shape[1]
    t = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    gy, gx = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(a):
        return F.conv2d(F.conv2d(a, gy, groups=c), gx, groups=c)

    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def ssim(x, y, window=SSIM_WINDOW, sigma=SSIM_SIGMA, *, data_range=1.0, reduction="mean"):
    """Structural similarity (SSIM, Wang et al. 2004) of images, one value per image.

    The mean of :func:`ssim_map` over channels and positions. Differentiable, for use in
    losses.

    Parameters
    ----------
    x, y : torch.Tensor
        ``(N, C, H, W)``, ``(C, H, W)`` or ``(H, W)``, same shape.
    window, sigma, data_range : optional
        See :func:`ssim_map`.
    reduction : {"mean", "none"}, optional
        Mean over the images, or one value per image, ``(N,)``.

    Returns
    -------
    torch.Tensor
        SSIM in [-1, 1]; exactly 1 for identical images.

    Raises
    ------
    ValueError
        As :func:`ssim_map`, or for an unknown reduction.
    """
    smap = ssim_map(x, y, data_range=data_range, window=window, sigma=sigma)
    return _reduce(smap.mean(dim=(1, 2, 3)), reduction)


def image_ssim(reference, image, *, data_range, full=False):
    """SSIM of a numpy image against a reference (:func:`ssim_map`, in float64).

    Parameters
    ----------
    reference, image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` (channels last), same shape, at least 11 px a side.
    data_range : float
        Range ``L`` of the pixel values (> 0), e.g. 1 for display data, the truth's maximum for
        linear data.
    full : bool, optional
        Also return the SSIM map.

    Returns
    -------
    float
        SSIM: the mean over the valid positions and the channels.
    numpy.ndarray, only with ``full``
        float64 ``(H, W)``: the map averaged over the channels, NaN on the border of
        ``SSIM_WINDOW // 2`` px where the window leaves the image.

    Raises
    ------
    ValueError
        As :func:`ssim_map`, or for images that are not 2-D or 3-D.
    """
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(image, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise ValueError(f"images must be (H, W) or (H, W, C), got shape {a.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    tensors = [torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))) for v in (a, b)]
    smap = ssim_map(*tensors, data_range=data_range)[0].mean(dim=0).numpy()
    value = float(smap.mean())
    if not full:
        return value
    r = SSIM_WINDOW // 2
    padded = np.full(a.shape[:2], np.nan)
    padded[r : a.shape[0] - r, r : a.shape[1] - r] = smap
    return value, padded


def psnr(x, y, *, reduction="mean"):
    """Peak signal-to-noise ratio for data range 1, in dB: ``10 log10(1 / MSE)``.

    Parameters
    ----------
    x, y : torch.Tensor
        ``(N, C, H, W)``, ``(C, H, W)`` or ``(H, W)``, same shape.
    reduction : {"mean", "none"}, optional
        Mean of the per-image PSNRs, or one value per image, ``(N,)``.

    Returns
    -------
    torch.Tensor
        PSNR in dB, at most :data:`MAX_PSNR_DB` (identical images).
    """
    x, y = as_batch(x, y, "psnr")
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3)).clamp_min(10 ** (-MAX_PSNR_DB / 10))
    return _reduce(-10.0 * torch.log10(mse), reduction)
