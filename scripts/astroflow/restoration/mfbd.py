"""Multi-frame blind deconvolution (MFBD) of lucky-imaging sequences, by gradient descent in torch.

The sky is one latent image ``x``; frame ``i`` is ``x`` convolved with its own short-exposure
point-spread function (PSF) ``h_i``, plus a sky pedestal and noise. ``x`` and all the ``h_i``
are fitted together so that the simulated frames match the recorded ones (Schulz 1993;
Harmeling et al. 2009; Hirsch et al. 2011). The gradients come from torch autograd, as in
TensoRez, whose weaknesses this implementation is built to avoid:

* **Memory independent of the number of frames.** Frames are read ``batch`` at a time from an
  :class:`astroflow.io.framestore.FrameStore` (or any object with ``len``, ``shape`` and
  ``read(indices, region)``); only a minibatch is ever on the device, so per-iteration memory
  is ``O(batch * H * W)``. The only ``O(N)`` state is the PSF logits and their Adam moments,
  ``3 N s^2`` floats kept on the CPU. This is the online / stochastic scheme of Harmeling et
  al. (2009) and Hirsch et al. (2011), who process one frame (here: one minibatch) at a time.
* **Faster convergence.** Each frame's PSF starts from a Wiener estimate of the kernel that
  maps the initial latent (the lucky stack) onto that frame, so it already holds the frame's
  tip-tilt and gross shape; each minibatch first refines its PSFs by ``psf_steps`` Adam steps
  with the latent fixed (per-frame Adam moments persist across epochs), then takes one Adam
  step on the latent (alternating minimisation, as in Schulz 1993 and Hirsch et al. 2011);
  the latent's learning rate follows a cosine decay to a tenth of ``lr`` over the run, which
  damps the minibatch noise of the last epochs.
* **No negative PSF lobes.** ``h_i = softmax(logits_i)`` over a circular support
  ``dy^2 + dx^2 <= (psf_size // 2)^2`` (logits outside are ``-inf``): every PSF is
  non-negative, sums to 1 and is exactly 0 outside the circle, by construction.
* **No brightening background.** The frames are modelled as ``b + x (*) h_i`` with a fixed sky
  pedestal ``b`` per channel and ``x >= 0`` (projected after every step). The PSFs are
  normalised, so the model conserves flux and the background of ``x`` cannot drift; ``x >= 0``
  stops dark rings (and the glow that a solver adds to make up for them) around a planet.

Model and objective
-------------------
The pedestal is ``b = p_0.5 - 0.25 (p_50 - p_0.5)`` (percentiles of the initial latent, per
channel). Where sky fills most of the field (a planet) ``p_50 - p_0.5`` is about the noise and
``b`` sits just under the sky, so positivity pins the background without clipping its noise;
on a target filling the field (the Moon) ``b`` lies well under the darkest blurred pixels,
leaving room for the shadows that deconvolution deepens. All intensities are normalised,
``d_i = (frame_i - b) / scale`` with ``scale`` the 99.5th percentile of ``init - p_0.5``, so
learning rates do not depend on the units (the result scales exactly with the input).

The latent lives on the frame grid padded by ``r = psf_size // 2`` px on every side
(edge-padded from ``init``), and ``x (*) h_i`` is computed by FFT (``torch.fft.rfft2``, PSF
zero-padded and centred on pixel (0, 0) of the grid) on a grid at least that large, then
cropped to the frame: a "valid" convolution without wrap-around, whose padding takes the light
the PSFs carry in from outside the field. PSF pixel ``(s // 2, s // 2)`` is the zero offset
and light at ``+(dy, dx)`` from it moves the image by ``+(dy, dx)``, as in
:func:`astroflow.turbulence.convolve`. The objective of a minibatch ``B`` is::

    J = sum_(i in B, c, p) m_icp w_ic (x_c (*) h_i - d_ic)^2 / sum m  +  tv_weight * TV(x)

with ``m`` 0 on missing (NaN) pixels and 1 elsewhere, ``w_ic = (sigma_ref / sigma_ic)^2`` the
relative inverse noise variance of frame ``i``, channel ``c`` (``sigma`` from the median
absolute deviation of a Laplacian of the frame, ``sigma_ref`` its median over all frames;
clipped to [0.01, 100]), and ``TV`` the mean over the latent's pixels of the
Charbonnier-smoothed gradient magnitude ``sqrt(dx^2 + dy^2 + eps^2) - eps``, ``eps = 1e-3``
(Charbonnier et al. 1997). ``tv_weight`` is in units of the normalised intensity: the TV
gradient balances a mean data residual of about ``tv_weight / 2`` of ``scale``. Colour frames
share one PSF per frame across channels (turbulence is nearly achromatic).

A shift of the latent with the opposite shift of every PSF leaves the fit unchanged, and a
solver can drift along it until PSFs leave their support. The frames are aligned on ``init``,
so the PSFs' mean centroid belongs at zero: after every epoch a whole-pixel mean offset is
moved from the PSFs into the latent (the latent stays registered with the frames' mean).

Missing data: NaN (or infinite) frame pixels get zero weight; NaN in ``init`` are filled from
finite neighbours for the start. The result is NaN only where ``init`` is NaN and no frame
has data.

Isoplanatic patches
-------------------
With ``patch > 0`` the field is cut into overlapping square patches (evenly spread, overlaps
of at least ``overlap``), each solved on its own, with its own per-frame PSFs, pedestal and
scale, from only its region of the frames, and the results blended with separable ``sin^2``
ramps over the overlaps (:func:`astroflow.blend.blend_ramp`: zero on the outer quarter of
each overlap, where a patch's latent is least constrained; no ramp at the image's edges),
normalised so that the weights of every pixel sum to 1 (the ramps of two neighbours already
add up to 1, as for the tiles of :mod:`astroflow.nets.tiling`).

Choices measured (96 px Jupiter, 24 frames, D/r0 4-6, 20 epochs)
---------------------------------------------------------------
MFBD from the mean stack gains 5-7 dB PSNR over it (e.g. 17.7 -> 24.5 dB). Starting PSFs
from Gaussians (at the Wiener centroid) lost 0.2-2.5 dB; blurring the Wiener PSFs made no
difference. Fourier-preconditioned (Newton-like) latent steps converged 3x faster with known
PSFs but gained nothing blind and lifted the sky by 1-3 ADU; Poisson-Gaussian per-pixel
weights slowed convergence. With a constant latent rate more epochs made things worse (the
minibatch noise), with the cosine decay they help on those small sequences (20 -> 40
epochs: +0.9 dB). Started from the truth the solver stays near 33 dB, so what limits it from a
blurred start is the slow pull along the blur ambiguity of joint estimation (the estimated PSFs
stay somewhat narrower than the true ones; Levin et al. 2009).

Defaults (``benchmarks/deconvolution.py``: 128 frames of 256 px at D/r0 4 and 8, started from
the lucky stack): with ``psf_lr=0.1, tv_weight=0.002, epochs=20`` the result peaked after a few
epochs and then degraded (31.5 -> 29.4 dB at D/r0 4: the PSFs, moving fast, soak up detail
that belongs in the latent). Slower PSFs (``psf_lr=0.03``), a lighter TV (``5e-4``) and 10
epochs gave 36.6 / 29.0 dB (D/r0 4 / 8) against 29.4 / 26.7 dB; ``psf_steps=2`` instead of 5
is twice as fast for the same score. Those are the defaults; they were chosen on that benchmark.
There the sky 2-12 px outside the limb ends within 0.1 % of the peak of the truth at D/r0 4
(+1.7 % at D/r0 8: some halo left). On a short sequence (24 frames of 96 px, 30 latent updates)
the slow PSFs keep the wide wings of their Wiener start (the positive part of its noise) long
enough for the latent to dig a dark moat around the limb, held at ``b`` by ``x >= 0``;
``psf_lr=0.1, psf_steps=5`` avoid it there. Taking the noise off the Wiener start removed the
moat but cost 5.8 dB at D/r0 4 on the benchmark; a PSF-only first epoch did not remove it.

References
----------
* Schulz, T. J. 1993, "Multiframe blind deconvolution of astronomical images", J. Opt. Soc.
  Am. A 10, 1064.
* Harmeling, S., Hirsch, M., Sra, S. & Schoelkopf, B. 2009, "Online blind deconvolution for
  astronomical imaging", IEEE ICCP 2009.
* Hirsch, M., Harmeling, S., Sra, S. & Schoelkopf, B. 2011, "Online multi-frame blind
  deconvolution with super-resolution and saturation correction", A&A 531, A9.
* Levin, A., Weiss, Y., Durand, F. & Freeman, W. T. 2009, "Understanding and evaluating blind
  deconvolution algorithms", IEEE CVPR 2009.
* Charbonnier, P., Blanc-Feraud, L., Aubert, G. & Barlaud, M. 1997, "Deterministic
  edge-preserving regularization in computed imaging", IEEE Trans. Image Proc. 6, 298.
* Kingma, D. P. & Ba, J. 2015, "Adam: a method for stochastic optimization", ICLR.
* TensoRez (multi-frame deconvolution with torch autograd): the idea, not its code.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import scipy.fft
import torch
from scipy import ndimage

from astroflow.blend import blend_ramp
from astroflow.checks import check_float, check_int, check_region

__all__ = ["SingleFrameWarning", "multiframe_deconvolve"]

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8  # Adam (Kingma & Ba 2015)
_TV_EPS = 1e-3  # Charbonnier smoothing of the TV, normalised units
_LR_FLOOR = 0.1  # the latent's learning rate decays (cosine) to this fraction of lr
_SKY_PERCENTILE = 0.5  # the pedestal b starts from this percentile of init, per channel ...
_SKY_MARGIN = 0.25  # ... lowered by this fraction of (median - that percentile)
_SCALE_PERCENTILE = 99.5  # scale: this percentile of init - sky
_PSF_FLOOR = 1e-3  # floor added to the initial PSFs, relative to their peak
_WEIGHT_CLIP = 100.0  # relative noise weights are clipped to [1/_WEIGHT_CLIP, _WEIGHT_CLIP]


class SingleFrameWarning(UserWarning):
    """Only one frame: multi-frame blind deconvolution degenerates to single-frame blind
    deconvolution, which is ill-posed; the result leans on the initial latent and the TV
    regularisation."""


# --- frames in memory ----------------------------------------------------------------------


class _ArrayFrames:
    """In-memory adapter: a numpy array ``(N, H, W[, C])`` with the reading API of
    :class:`astroflow.io.framestore.FrameStore`."""

    def __init__(self, array):
        self.array = array
        self.shape = tuple(array.shape)

    def __len__(self):
        return self.shape[0]

    def read(self, indices, region=None):
        y0, y1, x0, x1 = check_region("region", region, self.shape[1], self.shape[2])
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        return np.asarray(self.array[idx, y0:y1, x0:x1], dtype=np.float32)


# --- the solver ------------------------------------------------------------------------------


def multiframe_deconvolve(
    frames,
    init,
    *,
    psf_size=31,
    epochs=10,
    batch=8,
    lr=0.02,
    psf_lr=0.03,
    psf_steps=2,
    tv_weight=0.0005,
    patch=0,
    overlap=32,
    device="auto",
    seed=0,
    progress=None,
):
    """Multi-frame blind deconvolution: one latent image and one PSF per frame, fitted jointly.

    Parameters
    ----------
    frames : astroflow.io.framestore.FrameStore or numpy.ndarray or object
        ``N`` frames ``(N, H, W)`` or ``(N, H, W, C)``, ADU, globally aligned on ``init`` to
        within a few px (residual shifts are absorbed by the PSFs). Either a numpy array or
        any object with ``len()``, ``.shape`` and ``.read(indices, region)`` like
        :class:`astroflow.io.framestore.FrameStore`; at most ``batch`` frames are read at a
        time. NaN marks missing pixels, which are left out of the data term.
    init : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` initial latent, ADU (the lucky stack). NaN allowed (filled
        from finite neighbours for the start).
    psf_size : int, optional
        Diameter of the circular PSF support, px; odd, >= 3 and at most the image's (or the
        patch's) smaller side.
    epochs : int, optional
        Passes over all frames (>= 1).
    batch : int, optional
        Frames per minibatch (>= 1): one latent update per minibatch.
    lr : float, optional
        Adam learning rate of the latent, in units of ``scale`` (decays by a cosine to a tenth
        of it over the run).
    psf_lr : float, optional
        Adam learning rate of the PSF logits (natural-log units).
    psf_steps : int, optional
        PSF updates per minibatch before its latent update (>= 0).
    tv_weight : float, optional
        Weight of the smoothed total variation of the latent (>= 0), normalised units (see the
        module notes).
    patch : int, optional
        0: one PSF per frame for the whole field. > 0: isoplanatic patches of this size (px),
        each solved on its own with its own PSFs, blended over ``overlap`` px.
    overlap : int, optional
        Overlap of neighbouring patches, px (``0 <= 2 * overlap < patch``).
    device : str or torch.device, optional
        ``"auto"``: ``"cuda"`` when available, else ``"cpu"``; or any torch device.
    seed : int, optional
        Seed of the minibatch shuffling (a private :class:`torch.Generator`): the same inputs
        and seed give identical results on the CPU.
    progress : callable, optional
        Called after every latent update with that iteration's record (see ``history``).

    Returns
    -------
    latent : numpy.ndarray
        float32, the shape of ``init``, ADU: the deconvolved image ``x + b`` (``b`` the sky
        pedestal; ``x >= 0``). NaN only where ``init`` is NaN and no frame has data.
    info : dict
        ``history`` (list of dicts per iteration: ``iteration``, ``epoch``, ``patch``,
        ``loss``, ``data_loss`` (weighted mean squared residual, normalised units), ``chi2``
        (``data_loss / sigma_ref^2``: reduced chi^2 against the frames' robust, mostly
        sky-set noise; photon noise on a bright target keeps it above 1), ``tv``, ``lr``
        (the latent's), ``seconds`` (since the start)); ``psfs`` (float32 ``(N, s, s)``,
        each >= 0, sum 1, zero outside the support circle ``dy^2 + dx^2 <= (s // 2)^2``; the
        first patch's when ``patch > 0``); ``n_patches``; ``patches`` (``(y0, y1, x0, x1)``
        of each);
        ``device``; ``seconds``; ``iterations`` (latent updates, all patches);
        ``iterations_per_second``; ``frames`` (N); ``scale`` (ADU per normalised unit, first
        patch); ``sky`` (pedestal ``b`` per channel, ADU, first patch); ``noise`` (float32
        ``(N, C)`` per-frame noise estimate, ADU, first patch).

    Raises
    ------
    ValueError
        If ``frames`` is empty or not 3-D/4-D, its frames do not match ``init``'s shape,
        ``init`` has no finite pixel, ``psf_size`` is even, < 3 or larger than the image (or
        patch), ``batch``, ``epochs`` < 1, ``psf_steps`` < 0, a learning rate is not positive,
        ``tv_weight`` is negative or the patch geometry is invalid; the message names the
        argument.

    Warns
    -----
    SingleFrameWarning
        With a single frame (blind deconvolution of one frame is ill-posed); it still runs.

    Notes
    -----
    Each epoch visits the frames in a fresh random order in minibatches of ``batch``. For a
    minibatch: (1) ``psf_steps`` Adam steps on its frames' PSF logits with the latent fixed
    (one FFT of the latent shared by all of them); (2) one Adam step on the latent over the
    minibatch's data term plus ``tv_weight * TV``; (3) ``x <- max(x, 0)``. After each epoch
    a whole-pixel mean PSF offset is moved into the latent (re-centring). Memory per
    iteration is ``O(batch * H * W)`` whatever ``N``; compute per iteration is
    ``(psf_steps + 1) * batch`` pairs of FFTs of the padded field. See the module docstring
    for the model and the references.
    """
    source = _as_frames(frames)
    n = len(source)
    shape = tuple(int(v) for v in source.shape)
    init = np.asarray(init)
    if not np.issubdtype(init.dtype, np.number) or np.issubdtype(init.dtype, np.complexfloating):
        raise ValueError(f"init must hold real numbers, got dtype {init.dtype}")
    if init.ndim not in (2, 3):
        raise ValueError(f"init must be (H, W) or (H, W, C), got shape {init.shape}")
    if len(shape) not in (3, 4):
        raise ValueError(f"frames must be (N, H, W) or (N, H, W, C), got shape {shape}")
    if n == 0 or shape[0] == 0:
        raise ValueError("frames has zero length: no frame to deconvolve")
    if n != shape[0]:
        raise ValueError(f"frames has len() {n} but shape {shape}")
    if shape[1:] != init.shape:
        raise ValueError(
            f"frames of shape {shape[1:]} do not match init of shape {init.shape} "
            "(frames must be (N,) + init.shape)"
        )
    if not np.isfinite(init).any():
        raise ValueError("init has no finite pixel")
    height, width = init.shape[:2]
    psf_size = check_int("psf_size", psf_size, 3)
    if psf_size % 2 == 0:
        raise ValueError(f"psf_size must be odd (a PSF centred on a pixel), got {psf_size}")
    if psf_size > min(height, width):
        raise ValueError(
            f"psf_size ({psf_size} px) is larger than the image ({height} x {width} px)"
        )
    epochs = check_int("epochs", epochs, 1)
    batch = check_int("batch", batch, 1)
    psf_steps = check_int("psf_steps", psf_steps, 0)
    seed = check_int("seed", seed, 0)
    lr = check_float("lr", lr, 0.0, strict=True)
    psf_lr = check_float("psf_lr", psf_lr, 0.0, strict=True)
    tv_weight = check_float("tv_weight", tv_weight, 0.0)
    patch = check_int("patch", patch, 0)
    overlap = check_int("overlap", overlap, 0)
    if patch > 0:
        if 2 * overlap >= patch:
            raise ValueError(
                f"patch ({patch} px) must be larger than twice the overlap ({overlap} px)"
            )
        if psf_size > min(patch, height, width):
            raise ValueError(f"psf_size ({psf_size} px) is larger than the patch ({patch} px)")
    if progress is not None and not callable(progress):
        raise ValueError("progress must be callable or None")
    dev = _resolve_device(device)
    if n == 1:
        warnings.warn(
            "only one frame: multi-frame blind deconvolution degenerates to single-frame "
            "blind deconvolution (ill-posed); the result is held near init by the TV term",
            SingleFrameWarning,
            stacklevel=2,
        )

    mono = init.ndim == 2
    init3 = init.astype(np.float32, copy=False)
    if mono:
        init3 = init3[:, :, None]
    missing = ~np.isfinite(init3)
    if missing.any():  # fill once for the whole field, so that every patch sees its context
        init3 = _fill_nan(init3).astype(np.float32)
    regions = _patch_regions(height, width, patch, overlap)
    clock = {"start": time.perf_counter(), "iteration": 0}
    history = []
    out = np.zeros(init3.shape, dtype=np.float64)
    wsum = np.zeros((height, width), dtype=np.float64)
    first = None
    for k, (y0, y1, x0, x1) in enumerate(regions):
        weight = _patch_weight(regions, k)
        result = _solve(
            source,
            init3[y0:y1, x0:x1],
            (y0, y1, x0, x1),
            mono=mono,
            psf_size=psf_size,
            epochs=epochs,
            batch=batch,
            lr=lr,
            psf_lr=psf_lr,
            psf_steps=psf_steps,
            tv_weight=tv_weight,
            device=dev,
            seed=seed,
            patch_index=k,
            clock=clock,
            history=history,
            progress=progress,
        )
        if first is None:
            first = result
        out[y0:y1, x0:x1] += result["latent"] * weight[:, :, None]
        wsum[y0:y1, x0:x1] += weight
    latent = (out / wsum[:, :, None]).astype(np.float32)
    if missing.any():
        cover = _coverage(source, batch, init3.shape)
        latent[missing & ~cover] = np.nan
    seconds = time.perf_counter() - clock["start"]
    iterations = clock["iteration"]
    info = {
        "history": history,
        "psfs": first["psfs"],
        "n_patches": len(regions),
        "patches": [tuple(r) for r in regions],
        "device": str(dev),
        "seconds": seconds,
        "iterations": iterations,
        "iterations_per_second": iterations / seconds if seconds > 0 else float("inf"),
        "frames": n,
        "scale": first["scale"],
        "sky": first["sky"],
        "noise": first["noise"],
    }
    return (latent[:, :, 0] if mono else latent), info


def _solve(
    source,
    init,
    region,
    *,
    mono,
    psf_size,
    epochs,
    batch,
    lr,
    psf_lr,
    psf_steps,
    tv_weight,
    device,
    seed,
    patch_index,
    clock,
    history,
    progress,
):
    """MFBD of one region of the frames.

    Returns a dict: ``latent`` (h, w, C) float64 ADU, ``psfs`` (N, s, s) float32, ``scale``,
    ``sky`` (list, ADU) and ``noise`` ((N, C) float32, ADU).
    """
    n = len(source)
    h, w, c = init.shape
    r = psf_size // 2
    norm = _Normaliser(init)
    support = _support(psf_size)
    logits, noise = _prepass(source, region, mono, batch, norm, psf_size, support)

    # Relative inverse-variance weights of the frames and channels.
    sigma = np.where(np.isfinite(noise) & (noise > 0), noise, np.nan)
    sigma_ref = float(np.nanmedian(sigma)) if np.isfinite(sigma).any() else 1.0
    sigma = np.maximum(np.where(np.isfinite(sigma), sigma, sigma_ref), sigma_ref * 1e-3)
    weights = torch.from_numpy(
        np.clip((sigma_ref / sigma) ** 2, 1.0 / _WEIGHT_CLIP, _WEIGHT_CLIP).astype(np.float32)
    )

    # The latent on the frame grid padded by r; the FFT grid at least that large.
    hp, wp = h + 2 * r, w + 2 * r
    fh = scipy.fft.next_fast_len(hp, real=True)
    fw = scipy.fft.next_fast_len(wp, real=True)
    start = np.pad(norm.start, ((r, r), (r, r), (0, 0)), mode="edge").transpose(2, 0, 1)
    x = torch.from_numpy(np.ascontiguousarray(start, dtype=np.float32)).to(device).clamp_(min=0.0)
    x_m, x_v, x_t = torch.zeros_like(x), torch.zeros_like(x), 0
    p_m, p_v = torch.zeros_like(logits), torch.zeros_like(logits)
    p_t = torch.zeros(n, dtype=torch.float32)
    support_t = torch.from_numpy(support).to(device)
    generator = torch.Generator().manual_seed(seed)
    iters_per_epoch = math.ceil(n / batch)
    total = epochs * iters_per_epoch

    def psf_spectrum(lg):
        """rfft2 of the PSFs of logits ``lg`` (b, s, s), centred at (0, 0) of the FFT grid."""
        psf = _softmax_psf(lg, support_t)
        grid = torch.nn.functional.pad(psf, (0, fw - psf_size, 0, fh - psf_size))
        return torch.fft.rfft2(torch.roll(grid, shifts=(-r, -r), dims=(1, 2)))

    def latent_spectrum(lat):
        return torch.fft.rfft2(torch.nn.functional.pad(lat, (0, fw - wp, 0, fh - hp)))

    def data_term(x_spec, h_spec, d, m, wt):
        """Weighted mean squared residual over the valid pixels of the minibatch."""
        conv = torch.fft.irfft2(x_spec[None] * h_spec[:, None], s=(fh, fw))
        res = (conv[:, :, r : r + h, r : r + w] - d) * m
        return (wt[:, :, None, None] * res * res).sum() / m.sum().clamp(min=1.0)

    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for first in range(0, n, batch):
            idx = sorted(order[first : first + batch])
            idx_t = torch.tensor(idx)
            d, m = norm.frames(_read(source, idx, region, mono), device)
            wt = weights[idx_t].to(device)

            # (1) psf_steps Adam steps on this minibatch's PSF logits, latent fixed.
            with torch.no_grad():
                x_spec = latent_spectrum(x)
            lg = logits[idx_t].to(device)
            pm, pv, pt = (a[idx_t].to(device) for a in (p_m, p_v, p_t))
            for _ in range(psf_steps):
                lg.requires_grad_(True)
                loss = data_term(x_spec, psf_spectrum(lg), d, m, wt)
                (grad,) = torch.autograd.grad(loss * (h * w), lg)
                lg = lg.detach()
                with torch.no_grad():
                    pt += 1
                    _adam(lg, grad, pm, pv, pt[:, None, None], psf_lr)
            logits[idx_t] = lg.cpu()
            p_m[idx_t], p_v[idx_t], p_t[idx_t] = pm.cpu(), pv.cpu(), pt.cpu()

            # (2) one Adam step on the latent, PSFs fixed; (3) positivity.
            with torch.no_grad():
                h_spec = psf_spectrum(lg)
            x.requires_grad_(True)
            data_loss = data_term(latent_spectrum(x), h_spec, d, m, wt)
            tv = _charbonnier_tv(x)
            loss = data_loss + tv_weight * tv
            (grad,) = torch.autograd.grad(loss * (h * w), x)
            x = x.detach()
            x_t += 1
            frac = (x_t - 1) / max(total - 1, 1)
            step_lr = lr * (_LR_FLOOR + (1.0 - _LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * frac)))
            with torch.no_grad():
                _adam(x, grad, x_m, x_v, torch.tensor(float(x_t)), step_lr)
                x.clamp_(min=0.0)

            clock["iteration"] += 1
            data_value = float(data_loss.detach())
            record = {
                "iteration": clock["iteration"],
                "epoch": epoch,
                "patch": patch_index,
                "loss": float(loss.detach()),
                "data_loss": data_value,
                "chi2": data_value / sigma_ref**2,
                "tv": float(tv.detach()),
                "lr": step_lr,
                "seconds": time.perf_counter() - clock["start"],
            }
            history.append(record)
            if progress is not None:
                progress(record)

        # Re-centre: the frames are aligned on init, so the PSFs' mean centroid belongs at 0;
        # a whole-pixel mean offset of the PSFs is moved into the latent.
        shift = _mean_centroid(logits, support)
        if shift != (0, 0):
            x, x_m, x_v = (_shift_latent(a, shift) for a in (x, x_m, x_v))
            back = (-shift[0], -shift[1])
            logits = _shift_psf(logits, back, None)
            p_m, p_v = _shift_psf(p_m, back, 0.0), _shift_psf(p_v, back, 0.0)

    with torch.no_grad():
        psfs = _softmax_psf(logits.to(device), support_t).cpu().numpy().astype(np.float32)
    latent = x.cpu().numpy().transpose(1, 2, 0)[r : r + h, r : r + w].astype(np.float64)
    return {
        "latent": norm.to_adu(latent),
        "psfs": psfs,
        "scale": norm.scale,
        "sky": norm.sky.tolist(),
        "noise": (noise * norm.scale).astype(np.float32),
    }


class _Normaliser:
    """Sky pedestal ``b`` and ``scale`` of a region, from its initial latent.

    ``b = p_0.5 - 0.25 (p_50 - p_0.5)`` per channel (percentiles of the NaN-filled init): on a
    planet or star field, where the sky fills most of the frame, ``p_50 - p_0.5`` is about the
    sky noise and ``b`` sits just below the sky, so ``x >= 0`` pins the background without
    clipping its noise; on an extended target filling the field (the Moon), ``b`` lies well below
    the darkest blurred pixels, leaving room for shadows that deconvolution deepens.
    ``scale`` is the 99.5th percentile of ``init - p_0.5`` over all channels.
    """

    def __init__(self, init):
        filled = _fill_nan(init)
        c = filled.shape[2]
        low = np.array([np.percentile(filled[:, :, k], _SKY_PERCENTILE) for k in range(c)])
        mid = np.array([np.percentile(filled[:, :, k], 50.0) for k in range(c)])
        scale = float(np.percentile(filled - low, _SCALE_PERCENTILE))
        if not math.isfinite(scale) or scale <= 0:
            scale = float(np.max(np.abs(filled - low)))
        if not math.isfinite(scale) or scale <= 0:
            scale = 1.0
        self.sky = low - _SKY_MARGIN * (mid - low)
        self.scale = scale
        self.start = (filled - self.sky) / scale  # (h, w, C) normalised initial latent

    def normalise(self, data):
        return (data - self.sky.astype(np.float32)) / np.float32(self.scale)

    def frames(self, data, device):
        """Normalised frames (b, C, h, w) with NaN set to 0, and their 0/1 validity mask."""
        norm = self.normalise(data)
        finite = np.isfinite(norm)
        d = np.where(finite, norm, 0.0).astype(np.float32).transpose(0, 3, 1, 2)
        m = finite.astype(np.float32).transpose(0, 3, 1, 2)
        return (
            torch.from_numpy(np.ascontiguousarray(d)).to(device),
            torch.from_numpy(np.ascontiguousarray(m)).to(device),
        )

    def to_adu(self, latent):
        return latent * self.scale + self.sky


def _prepass(source, region, mono, batch, norm, psf_size, support):
    """Read every frame once, ``batch`` at a time: noise sigma and initial PSF logits.

    Returns ``logits`` float32 tensor (N, s, s) (CPU) and ``noise`` float64 (N, C), normalised
    units (NaN where it could not be measured).
    """
    n = len(source)
    h, w, c = norm.start.shape
    noise = np.empty((n, c), dtype=np.float64)
    logits = torch.empty((n, psf_size, psf_size), dtype=torch.float32)
    ref = norm.start.mean(axis=2)
    win = _window(h, w, psf_size // 2)
    ref_spec = scipy.fft.rfft2((ref - ref.mean()) * win)
    for first in range(0, n, batch):
        idx = list(range(first, min(first + batch, n)))
        data = norm.normalise(_read(source, idx, region, mono))
        for j, i in enumerate(idx):
            noise[i] = [_noise_sigma(data[j, :, :, k]) for k in range(c)]
            lum = np.where(np.isfinite(data[j]), data[j], norm.start).mean(axis=2)
            sig = noise[i][np.isfinite(noise[i])]
            logits[i] = torch.from_numpy(
                _wiener_psf(
                    ref_spec,
                    (lum - lum.mean()) * win,
                    psf_size,
                    support,
                    float(sig.mean()) if sig.size else 0.0,
                )
            )
    return logits, noise


# --- pieces ----------------------------------------------------------------------------------


def _mean_centroid(logits, support):
    """Integer (dy, dx) nearest to the mean centroid of all PSFs, px from their centre."""
    with torch.no_grad():
        probs = _softmax_psf(logits, torch.from_numpy(support))
        r = logits.shape[1] // 2
        grid = torch.arange(-r, r + 1, dtype=torch.float64)
        cy = float((probs.sum(dim=2).double() * grid).sum(dim=1).mean())
        cx = float((probs.sum(dim=1).double() * grid).sum(dim=1).mean())
    return int(round(cy)), int(round(cx))


def _shift_latent(x, shift):
    """(C, H, W) image with its content moved by (dy, dx) px; the edges are repeated."""
    dy, dx = shift
    c, hh, ww = x.shape
    py, px = abs(dy), abs(dx)
    padded = torch.nn.functional.pad(x[None], (px, px, py, py), mode="replicate")[0]
    return padded[:, py - dy : py - dy + hh, px - dx : px - dx + ww].contiguous()


def _shift_psf(arr, shift, fill):
    """(N, s, s) array with its content moved by (dy, dx) px.

    Vacated pixels get ``fill``, or with ``fill=None`` each frame's smallest value (logits: a
    negligible probability).
    """
    dy, dx = shift
    n, s, _ = arr.shape
    py, px = abs(dy), abs(dx)
    pad = (px, px, py, py)
    if fill is None:
        low = arr.reshape(n, -1).min(dim=1).values[:, None, None]
        padded = torch.nn.functional.pad(arr - low, pad, value=0.0) + low
    else:
        padded = torch.nn.functional.pad(arr, pad, value=fill)
    return padded[:, py - dy : py - dy + s, px - dx : px - dx + s].contiguous()


def _adam(param, grad, m, v, t, lr):
    """In-place Adam step (Kingma & Ba 2015) with bias correction; ``t`` the step count(s)."""
    m.mul_(_BETA1).add_(grad, alpha=1.0 - _BETA1)
    v.mul_(_BETA2).addcmul_(grad, grad, value=1.0 - _BETA2)
    m_hat = m / (1.0 - _BETA1**t)
    v_hat = v / (1.0 - _BETA2**t)
    param.sub_(lr * m_hat / (v_hat.sqrt() + _ADAM_EPS))


def _softmax_psf(logits, support):
    """PSFs (b, s, s): softmax of the logits over the support circle, exactly 0 outside."""
    b, s, _ = logits.shape
    masked = logits.masked_fill(~support, float("-inf"))
    return torch.softmax(masked.reshape(b, s * s), dim=1).reshape(b, s, s)


def _support(size):
    """Boolean (s, s) circle ``dy^2 + dx^2 <= (s // 2)^2`` about the centre pixel."""
    r = size // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r


def _charbonnier_tv(x):
    """Mean over pixels and channels of ``sqrt(dx^2 + dy^2 + eps^2) - eps`` (forward diffs)."""
    dx = x[:, :-1, 1:] - x[:, :-1, :-1]
    dy = x[:, 1:, :-1] - x[:, :-1, :-1]
    return (torch.sqrt(dx * dx + dy * dy + _TV_EPS**2) - _TV_EPS).mean()


def _window(h, w, r):
    """Separable apodisation (raised-cosine edges of ~2r px) against FFT wrap-around."""

    def edge(n):
        prof = np.ones(n)
        k = min(2 * r, n // 4)
        if k > 0:
            ramp = blend_ramp(k, rim=0)
            prof[:k] = ramp
            prof[n - k :] = ramp[::-1]
        return prof

    return np.outer(edge(h), edge(w))


def _wiener_psf(ref_spec, frame, size, support, sigma):
    """Initial PSF logits: Wiener estimate of the kernel that maps the reference onto a frame.

    ``K = F conj(A) / (|A|^2 + lambda)`` (``A``, ``F`` the spectra of the apodised, mean-free
    reference and frame; ``lambda`` the frame's white-noise power ``h w sigma^2``, at least
    ``1e-6 max |A|^2``), transformed back, cropped about zero offset to ``size``, its positive
    part plus a floor of ``_PSF_FLOOR`` times its peak, masked to the support and normalised.
    Returned as float32 natural logs (pixels outside the support get the smallest value, so
    that re-centring shifts never move a large logit into the support).
    """
    h, w = frame.shape
    power = np.abs(ref_spec) ** 2
    lam = max(h * w * float(sigma) ** 2, 1e-6 * float(power.max()), 1e-30)
    kernel = scipy.fft.irfft2(scipy.fft.rfft2(frame) * np.conj(ref_spec) / (power + lam), s=(h, w))
    r = size // 2
    iy = (np.arange(size) - r) % h
    ix = (np.arange(size) - r) % w
    k = np.clip(kernel[np.ix_(iy, ix)], 0.0, None)
    peak = float(k.max())
    if not math.isfinite(peak) or peak <= 0:
        k = np.zeros((size, size))
        k[r, r] = peak = 1.0
    k = (k + _PSF_FLOOR * peak) * support
    logk = np.log(np.where(support, k / k.sum(), 1.0))
    return np.where(support, logk, logk[support].min()).astype(np.float32)


def _noise_sigma(plane):
    """Robust white-noise sigma of a plane: MAD of its 4-neighbour Laplacian / sqrt(20)."""
    if plane.shape[0] < 3 or plane.shape[1] < 3:
        vals = plane[np.isfinite(plane)]
        return float(1.4826 * np.median(np.abs(vals - np.median(vals)))) if vals.size else math.nan
    lap = (
        4.0 * plane[1:-1, 1:-1]
        - plane[:-2, 1:-1]
        - plane[2:, 1:-1]
        - plane[1:-1, :-2]
        - plane[1:-1, 2:]
    )
    vals = lap[np.isfinite(lap)]
    if vals.size == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(vals - np.median(vals))) / math.sqrt(20.0))


def _fill_nan(image):
    """(h, w, C) float64 copy with NaN/inf replaced by a Gaussian-weighted mean of finite
    neighbours (growing scales), finally by the channel's median."""
    out = image.astype(np.float64)
    for k in range(out.shape[2]):
        plane = out[:, :, k]
        bad = ~np.isfinite(plane)
        if not bad.any():
            continue
        if bad.all():
            plane[:] = 0.0
            continue
        good = (~bad).astype(np.float64)
        values = np.where(bad, 0.0, plane)
        for sigma in (1.0, 3.0, 9.0, 27.0):
            num = ndimage.gaussian_filter(values, sigma, mode="nearest")
            den = ndimage.gaussian_filter(good, sigma, mode="nearest")
            ok = bad & (den > 1e-6)
            plane[ok] = num[ok] / den[ok]
            bad &= ~ok
            if not bad.any():
                break
        if bad.any():
            plane[bad] = np.median(values[good > 0])
    return out


def _read(source, idx, region, mono):
    """Frames ``idx`` of ``region`` as float32 (b, h, w, C)."""
    data = np.asarray(source.read(idx, region), dtype=np.float32)
    return data[..., None] if mono else data


def _coverage(source, batch, shape):
    """Boolean (H, W, C): some frame has a finite value there (read ``batch`` frames at a time)."""
    cover = np.zeros(shape, dtype=bool)
    n = len(source)
    mono = len(source.shape) == 3
    for start in range(0, n, batch):
        data = _read(source, list(range(start, min(start + batch, n))), None, mono)
        cover |= np.isfinite(data).any(axis=0)
    return cover


def _axis_tiles(length, patch, overlap):
    """Start positions of patches along one axis, evenly spread, overlapping by >= overlap."""
    if length <= patch:
        return [0], length
    stride = patch - overlap
    count = max(2, -(-(length - overlap) // stride))
    starts = np.round(np.linspace(0, length - patch, count)).astype(int).tolist()
    return starts, patch


def _patch_regions(height, width, patch, overlap):
    if patch <= 0:
        return [(0, height, 0, width)]
    ys, ph = _axis_tiles(height, patch, overlap)
    xs, pw = _axis_tiles(width, patch, overlap)
    return [(y, y + ph, x, x + pw) for y in ys for x in xs]


def _profile(starts, size, k):
    """1-D blending profile of tile ``k`` (starts sorted): ramps only where a neighbour overlaps."""
    prof = np.ones(size)
    lo = starts[k]
    if k > 0:
        ov = starts[k - 1] + size - lo
        if ov > 0:
            prof[:ov] = np.minimum(prof[:ov], blend_ramp(ov))
    if k < len(starts) - 1:
        ov = lo + size - starts[k + 1]
        if ov > 0:
            prof[size - ov :] = np.minimum(prof[size - ov :], blend_ramp(ov)[::-1])
    return prof


def _patch_weight(regions, k):
    """Blending weight (h, w) of patch ``k``; the caller normalises by the sum over patches."""
    y0, y1, x0, x1 = regions[k]
    ys = sorted({r[0] for r in regions})
    xs = sorted({r[2] for r in regions})
    py = _profile(ys, y1 - y0, ys.index(y0))
    px = _profile(xs, x1 - x0, xs.index(x0))
    return np.outer(py, px)


def _as_frames(frames):
    if isinstance(frames, np.ndarray):
        if frames.ndim not in (3, 4):
            raise ValueError(f"frames must be (N, H, W) or (N, H, W, C), got shape {frames.shape}")
        return _ArrayFrames(frames)
    for attr in ("shape", "read", "__len__"):
        if not hasattr(frames, attr):
            raise ValueError(
                "frames must be a numpy array or have len(), .shape and .read(indices, region) "
                f"like FrameStore; {type(frames).__name__} has no {attr}"
            )
    return frames


def _resolve_device(device):
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto' or a torch device, got {device!r}") from exc
