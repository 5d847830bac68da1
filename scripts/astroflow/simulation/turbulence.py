"""Kolmogorov turbulence simulator: phase screens, short-exposure PSFs and frames with known truth.

A deconvolution or lucky-imaging method is best measured on frames whose truth is known. This
module makes such frames from first principles instead of the Gaussian-blur stand-in of
:mod:`astroflow.simulation.planetary`:

1. a telescope pupil of ``n`` px diameter with an optional central obstruction and spider
   vanes (:func:`pupil`);
2. a Kolmogorov phase screen over it, with Fried parameter ``r0`` in pupil pixels
   (:func:`phase_screen`): an FFT screen with phase power spectrum
   ``Phi(f) = 0.023 r0^(-5/3) f^(-11/3)`` (Kolmogorov 1941; Fried 1966), plus subharmonics
   for the low orders (tip-tilt) that a periodic FFT grid misses (Lane, Glindemann & Dainty
   1992; Johansson & Gavel 1994);
3. the instantaneous (short-exposure) PSF of the pupil through the screen,
   ``|FFT(P exp(i phi))|^2`` (Fraunhofer diffraction, Goodman, *Introduction to Fourier
   Optics*, ch. 4 and 6) (:func:`short_exposure_psf`, :func:`turbulent_psfs`);
4. frames = truth convolved with each frame's PSF, with Poisson photon noise and Gaussian read
   noise (:func:`convolve`, :func:`convolved_frames`, :func:`expose`,
   :func:`simulate_turbulent_sequence`), the truth kept beside them; truths for a planet
   (:func:`astroflow.simulation.planetary.planet_truth`) or a star field
   (:func:`star_field_truth`).

The Kolmogorov model of :func:`astroflow.simulation.planetary.simulate_sequence`
(``turbulence="kolmogorov"``) is made of the same pieces (PSFs, convolution, camera, PSF
moments), with a local displacement field applied between the convolution and the camera.

Statistics the screens reproduce
--------------------------------
* Phase structure function ``D(r) = <(phi(x) - phi(x + r))^2> = 6.88 (r / r0)^(5/3)`` rad^2
  (Fried 1966);
* piston-removed phase variance over a circular aperture of diameter ``D``:
  ``1.0299 (D / r0)^(5/3)`` rad^2 (Noll 1976, J. Opt. Soc. Am. 66, 207), of which about 87 %
  is tip-tilt;
* long-exposure (seeing) FWHM ``~0.98 lambda / r0`` for ``D >> r0``; the diffraction-limited
  (Airy) FWHM is ``1.03 lambda / D``.

Units and sampling
------------------
Pupil and screens are sampled in pupil pixels (the pupil spans ``n`` px, so ``D = n`` px and
``r0`` is given in the same pixels; ``D / r0 = n / r0_px``). The PSF is the FFT of the pupil
field zero-padded to ``M = round(oversample * n)`` px, so one PSF pixel is ``lambda / (M dx)``
and ``lambda / D = M / n ~ oversample`` PSF px: ``oversample=2`` samples the diffraction
limit at Nyquist. The truth images are assumed to be sampled at that PSF pixel scale. Phases
are in radians, fluxes in e- (frames and returned truth in ADU = e- / gain).

Coordinates follow :mod:`astroflow.simulation.planetary`: pixel centres at integer ``(y, x)``,
0-based; a PSF (size ``s``) is centred at ``(s // 2, s // 2)``, and a PSF whose centroid is at
``(s // 2 + dy, s // 2 + dx)`` moves a feature at ``(y0, x0)`` of the truth to
``(y0 + dy, x0 + dx)`` in the frame (those offsets are :attr:`TurbulentSequence.shifts`).
Angles of spider vanes are measured from the +x axis (columns) towards +y (rows).

Screens are independent from frame to frame (no frozen flow): each frame is an independent
instant, as in lucky imaging with frames well apart in time.

References
----------
* Kolmogorov, A. N. 1941, Dokl. Akad. Nauk SSSR 30, 301.
* Fried, D. L. 1966, J. Opt. Soc. Am. 56, 1372.
* Noll, R. J. 1976, J. Opt. Soc. Am. 66, 207.
* Lane, R. G., Glindemann, A. & Dainty, J. C. 1992, Waves in Random Media 2, 209.
* Johansson, E. M. & Gavel, D. T. 1994, Proc. SPIE 2200, 372.
* Schmidt, J. D. 2010, *Numerical Simulation of Optical Wave Propagation*, SPIE, ch. 9.
* Goodman, J. W. 2005, *Introduction to Fourier Optics*, 3rd ed., Roberts & Co.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.fft
from scipy.special import erf

from astroflow.checks import check_float as _check_float
from astroflow.checks import check_image
from astroflow.checks import check_int as _check_int

__all__ = [
    "TurbulentSequence",
    "convolve",
    "convolved_frames",
    "expose",
    "phase_screen",
    "psf_moments",
    "pupil",
    "short_exposure_psf",
    "simulate_turbulent_sequence",
    "star_field_truth",
    "turbulent_psfs",
]

#: Kolmogorov phase power spectrum coefficient: Phi(f) = KOLMOGOROV_PSD * r0^(-5/3) f^(-11/3).
KOLMOGOROV_PSD = 0.023
#: Structure function coefficient: D(r) = 6.88 (r / r0)^(5/3) rad^2 (Fried 1966).
STRUCTURE_COEFF = 6.88
#: Piston-removed phase variance over the aperture, in units of (D / r0)^(5/3) (Noll 1976).
NOLL_PISTON_REMOVED = 1.0299
#: Number of subharmonic levels (each a 3x3 grid of frequencies 3x finer than the last).
N_SUBHARMONIC_LEVELS = 3

_SUPERSAMPLE = 4  # sub-pixels per axis to anti-alias the pupil's edges
_CHUNK = 32  # frames per FFT batch
_STREAM_SCREENS, _STREAM_NOISE = 1, 2


@dataclass
class TurbulentSequence:
    """Frames through Kolmogorov turbulence, with the truth and the PSFs that made them.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(N, H, W)`` float32 frames in ADU (e- / gain), with photon and read noise.
    truth : numpy.ndarray
        ``(H, W)`` float32 noise-free truth in ADU per frame (after any ``photons`` scaling);
        ``frames[i]`` has expectation ``convolve(truth, psfs[i])``.
    psfs : numpy.ndarray
        ``(N, s, s)`` float32 PSFs, each summing to 1, centred at ``(s // 2, s // 2)``.
    d_over_r0 : float
        Telescope diameter over Fried's parameter.
    params : dict
        All the other parameters (seed, pupil, noise, sampling ...).
    shifts : numpy.ndarray
        ``(N, 2)`` float64 ``(dy, dx)`` px: centroid of each PSF relative to its centre,
        i.e. each frame's tip-tilt (a truth feature at ``(y0, x0)`` lands near
        ``(y0 + dy, x0 + dx)``).
    """

    frames: np.ndarray
    truth: np.ndarray
    psfs: np.ndarray
    d_over_r0: float
    params: dict = field(default_factory=dict)
    shifts: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


# --- pupil and phase screens --------------------------------------------------------------


def pupil(n, *, obstruction=0.0, spiders=0, spider_width=0.02):
    """Transmission of a circular telescope pupil, optionally obstructed and with spider vanes.

    The aperture fills the ``n x n`` grid (diameter ``n`` px, centre ``((n - 1) / 2,
    (n - 1) / 2)``). Edges are anti-aliased by supersampling each pixel 4x4, so edge pixels
    carry their open fraction.

    Parameters
    ----------
    n : int
        Grid size and pupil diameter, px (>= 4).
    obstruction : float, optional
        Diameter of the central obstruction as a fraction of the pupil diameter, in [0, 1).
    spiders : int, optional
        Number of spider vanes (>= 0), radial half-lines from the centre, equally spaced in
        angle starting along +x (``spiders=4`` is the usual cross: vanes along +-x and +-y,
        which make diffraction spikes along the x and y axes of the PSF).
    spider_width : float, optional
        Width of each vane as a fraction of the pupil diameter, in [0, 0.5).

    Returns
    -------
    numpy.ndarray
        ``(n, n)`` float32 transmission in [0, 1].

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    n = _check_int("n", n, 4)
    obstruction = _check_float("obstruction", obstruction, 0.0, high=1.0, high_open=True)
    spiders = _check_int("spiders", spiders, 0)
    spider_width = _check_float("spider_width", spider_width, 0.0, high=0.5, high_open=True)
    s = _SUPERSAMPLE
    coords = ((np.arange(n * s) + 0.5) / s - n / 2.0) / n  # units of the diameter, centred
    y = coords[:, None]
    x = coords[None, :]
    r = np.hypot(y, x)
    open_ = r <= 0.5
    if obstruction > 0:
        open_ &= r >= obstruction / 2.0
    for k in range(spiders):
        theta = 2.0 * math.pi * k / spiders
        along = x * math.cos(theta) + y * math.sin(theta)
        across = -x * math.sin(theta) + y * math.cos(theta)
        open_ &= ~((along >= 0) & (np.abs(across) <= spider_width / 2.0))
    return open_.reshape(n, s, n, s).mean(axis=(1, 3)).astype(np.float32)


def phase_screen(n, r0_px, rng, *, subharmonics=True):
    """A Kolmogorov phase screen (FFT method with Lane et al. subharmonics).

    White complex Gaussian noise is shaped by the square root of the Kolmogorov phase power
    spectrum ``Phi(f) = 0.023 r0^(-5/3) f^(-11/3)`` rad^2 px^2 (f in cycles/px) on the
    ``n x n`` FFT grid (frequency step ``1 / n``, the zero frequency left out) and transformed
    back; the real part is the screen (Schmidt 2010, ``ft_phase_screen``). A periodic grid
    has no power below ``1 / n`` and underestimates the low orders (tip-tilt) badly, so with
    ``subharmonics`` three levels of 3x3 subharmonic frequencies, spaced ``1 / (3^p n)`` for
    ``p = 1, 2, 3``, are added (Lane, Glindemann & Dainty 1992; Johansson & Gavel 1994;
    Schmidt 2010, ``ft_sh_phase_screen``). The screen then follows the structure function
    ``6.88 (r / r0)^(5/3)`` rad^2 to ~10 % out to ``r ~ n / 2``.

    Parameters
    ----------
    n : int
        Screen size, px (>= 4).
    r0_px : float
        Fried parameter, px (> 0).
    rng : numpy.random.Generator or int or None
        Random generator (or a seed for :func:`numpy.random.default_rng`).
    subharmonics : bool, optional
        Add the subharmonics (recommended whenever tip-tilt matters).

    Returns
    -------
    numpy.ndarray
        ``(n, n)`` float64 phase, rad, zero mean of the subharmonic part (piston arbitrary).

    Raises
    ------
    ValueError
        If ``n`` or ``r0_px`` is out of range.
    """
    n = _check_int("n", n, 4)
    r0_px = _check_float("r0_px", r0_px, 0.0, strict=True)
    return _screens(n, r0_px, np.random.default_rng(rng), 1, subharmonics)[0]


def _screens(n, r0, rng, count, subharmonics):
    """``count`` independent ``(n, n)`` Kolmogorov screens, float64 rad (see phase_screen)."""
    scale = math.sqrt(KOLMOGOROV_PSD) * r0 ** (-5.0 / 6.0)
    grid_amp, sub_amps = _amplitudes(n)
    noise = rng.standard_normal((count, n, n)) + 1j * rng.standard_normal((count, n, n))
    screens = scipy.fft.ifft2(noise * (grid_amp * scale), axes=(-2, -1)).real * (n * n)
    if subharmonics:
        x = np.arange(n) - n / 2.0
        low = np.zeros((count, n, n))
        for p, amp in enumerate(sub_amps, start=1):
            fs = np.array([-1.0, 0.0, 1.0]) / (3**p * n)
            c = rng.standard_normal((count, 3, 3)) + 1j * rng.standard_normal((count, 3, 3))
            e = np.exp(2j * np.pi * fs[:, None] * x[None, :])  # (3, n): exp(i 2 pi f x)
            low += np.einsum("ay,kab,bx->kyx", e, c * (amp * scale), e, optimize=True).real
        low -= low.mean(axis=(1, 2), keepdims=True)
        screens += low
    return screens


@functools.lru_cache(maxsize=8)
def _amplitudes(n):
    """Fourier amplitudes ``sqrt(w) * delta_f`` for ``r0 = 1`` and a unit PSD coefficient.

    ``w`` is the spectrum ``f^(-11/3)`` averaged over each frequency cell (4x4 points) rather
    than sampled at its centre, and (on the FFT grid) summed with the 8 aliases
    ``f + (+-1, +-1)`` cycles/px that pixel sampling folds in. Sampling the steep spectrum at
    cell centres under-weights the innermost cells and leaves the structure function 10-25 %
    low; cell averages bring it to within ~10 % of ``6.88 (r / r0)^(5/3)`` for
    ``1 <= r <= n / 2`` px. Returns the ``(n, n)`` FFT-grid amplitudes (zero frequency 0) and
    one ``(3, 3)`` array per subharmonic level (centre 0).
    """
    f = np.fft.fftfreq(n)
    grid = _cell_mean(f[:, None], f[None, :], 1.0 / n, aliases=1)
    grid[0, 0] = 0.0
    grid_amp = np.sqrt(grid) / n
    subs = []
    for p in range(1, N_SUBHARMONIC_LEVELS + 1):
        df = 1.0 / (3**p * n)
        fs = np.array([-1.0, 0.0, 1.0]) * df
        fy, fx = fs[:, None] + 0 * fs[None, :], fs[None, :] + 0 * fs[:, None]
        fx = np.where((fy == 0) & (fx == 0), df, fx)  # centre cell: dropped below
        w = _cell_mean(fy, fx, df, aliases=0)
        w[1, 1] = 0.0
        subs.append(np.sqrt(w) * df)
    return grid_amp, tuple(subs)


def _cell_mean(fy, fx, df, *, aliases, q=4):
    """Mean of ``|f|^(-11/3)`` over square cells of side ``df`` centred at ``(fy, fx)``."""
    u = ((np.arange(q) + 0.5) / q - 0.5) * df
    total = np.zeros(np.broadcast(fy, fx).shape)
    for my in range(-aliases, aliases + 1):
        for mx in range(-aliases, aliases + 1):
            gy = np.asarray(fy)[..., None, None] + my + u[:, None]
            gx = np.asarray(fx)[..., None, None] + mx + u[None, :]
            total += np.mean((gy**2 + gx**2) ** (-11.0 / 6.0), axis=(-2, -1))
    return total


# --- PSFs ---------------------------------------------------------------------------------


def short_exposure_psf(pupil_mask, phase, *, oversample=2, size=None):
    """Instantaneous PSF of a pupil through a phase screen: ``|FFT(P exp(i phi))|^2``.

    The complex field ``P exp(i phi)`` is zero-padded to ``M = round(oversample * n)`` px and
    Fourier transformed (Fraunhofer diffraction; Goodman, *Introduction to Fourier Optics*).
    ``lambda / D`` spans ``M / n`` PSF px (``oversample=2``: Nyquist sampling of the
    diffraction limit; the Airy FWHM is then ``1.03 * 2`` px).

    Parameters
    ----------
    pupil_mask : numpy.ndarray
        ``(n, n)`` pupil transmission (e.g. :func:`pupil`), non-negative, not all zero.
    phase : numpy.ndarray
        ``(n, n)`` phase, rad (e.g. :func:`phase_screen`); zeros give the diffraction limit.
    oversample : float, optional
        FFT padding factor (>= 1).
    size : int, optional
        Side of the returned PSF, px (>= 1); default ``M``. The PSF is cropped (or
        zero-padded) about its centre and renormalised.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float32 PSF, non-negative, summing to 1, centred at
        ``(size // 2, size // 2)`` (a flat phase puts the peak there exactly).

    Raises
    ------
    ValueError
        If the shapes differ or are not square, ``pupil_mask`` is empty or negative, or
        ``oversample`` or ``size`` is out of range.
    """
    mask = np.asarray(pupil_mask, dtype=np.float64)
    ph = np.asarray(phase, dtype=np.float64)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"pupil_mask must be a square 2-D array, got shape {mask.shape}")
    if ph.shape != mask.shape:
        raise ValueError(f"phase must have the pupil's shape {mask.shape}, got {ph.shape}")
    if not np.all(np.isfinite(ph)):
        raise ValueError("phase must be finite")
    _check_mask(mask)
    m, size = _check_sampling(mask.shape[0], oversample, size)
    return _psfs(mask, ph[None], m, size)[0]


def _check_mask(mask):
    if not np.all(np.isfinite(mask)) or mask.min() < 0 or not mask.any():
        raise ValueError("pupil_mask must be finite, non-negative and not all zero")


def _check_sampling(n, oversample, size):
    oversample = _check_float("oversample", oversample, 1.0)
    m = int(round(oversample * n))
    size = m if size is None else _check_int("size", size, 1)
    return m, size


def _psfs(mask, phases, m, size):
    """PSFs (count, size, size) float32 of ``mask`` through ``phases`` (count, n, n)."""
    n = mask.shape[0]
    out = np.empty((len(phases), size, size), dtype=np.float32)
    c = m // 2
    lo = c - size // 2
    # Rows/columns of the (fftshifted) M x M PSF kept in the crop, and where they go.
    src = np.arange(max(lo, 0), min(lo + size, m))
    dst = src - lo
    for start in range(0, len(phases), _CHUNK):
        ph = phases[start : start + _CHUNK]
        field_ = np.zeros((len(ph), m, m), dtype=np.complex64)
        field_[:, :n, :n] = mask * np.exp(1j * ph)
        spectrum = scipy.fft.fft2(field_, axes=(-2, -1))
        spectrum = np.fft.fftshift(spectrum, axes=(-2, -1))
        power = spectrum.real**2 + spectrum.imag**2
        crop = np.zeros((len(ph), size, size), dtype=np.float64)
        crop[:, dst[:, None], dst[None, :]] = power[:, src[:, None], src[None, :]]
        crop /= crop.sum(axis=(1, 2), keepdims=True)
        out[start : start + len(ph)] = crop
    return out


def turbulent_psfs(
    n_frames,
    d_over_r0,
    rng,
    *,
    pupil_px=64,
    obstruction=0.0,
    spiders=0,
    oversample=2,
    size=64,
    spider_width=0.02,
    subharmonics=True,
):
    """Short-exposure PSFs through independent Kolmogorov screens, one per frame.

    Each frame draws its own :func:`phase_screen` of ``pupil_px`` px with
    ``r0 = pupil_px / d_over_r0`` px over :func:`pupil` and makes its
    :func:`short_exposure_psf`. The mean of many is the long-exposure (seeing) PSF, of FWHM
    ``~0.98 lambda / r0 = 0.98 * oversample * d_over_r0`` px for ``D >> r0``. Keep ``r0``
    at 2 pupil px or more (``d_over_r0 <= pupil_px / 2``) so the screen resolves it, and
    ``size`` larger than a few seeing FWHMs so the crop keeps the halo.

    Parameters
    ----------
    n_frames : int
        Number of PSFs N (>= 1).
    d_over_r0 : float
        Telescope diameter over Fried's parameter (>= 0; 0 gives N diffraction-limited PSFs).
    rng : numpy.random.Generator or int or None
        Random generator (or a seed).
    pupil_px : int, optional
        Pupil (and screen) diameter, px (>= 4).
    obstruction, spiders, spider_width : optional
        Pupil geometry, see :func:`pupil`.
    oversample : float, optional
        FFT padding factor (>= 1): ``lambda / D`` spans ~``oversample`` PSF px.
    size : int, optional
        Side of each PSF, px (>= 1).
    subharmonics : bool, optional
        Add low-order subharmonics to the screens (see :func:`phase_screen`).

    Returns
    -------
    numpy.ndarray
        ``(N, size, size)`` float32 PSFs, each non-negative and summing to 1, centred at
        ``(size // 2, size // 2)``.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    n_frames = _check_int("n_frames", n_frames, 1)
    d_over_r0 = _check_float("d_over_r0", d_over_r0, 0.0)
    pupil_px = _check_int("pupil_px", pupil_px, 4)
    if d_over_r0 > pupil_px / 2.0:
        raise ValueError(
            f"d_over_r0 must be <= pupil_px / 2 = {pupil_px / 2:g} (r0 of at least 2 pupil px), "
            f"got {d_over_r0!r}: raise pupil_px"
        )
    mask = pupil(pupil_px, obstruction=obstruction, spiders=spiders, spider_width=spider_width)
    m, size = _check_sampling(pupil_px, oversample, size)
    rng = np.random.default_rng(rng)
    out = np.empty((n_frames, size, size), dtype=np.float32)
    for start in range(0, n_frames, _CHUNK):
        count = min(_CHUNK, n_frames - start)
        if d_over_r0 > 0:
            phases = _screens(pupil_px, pupil_px / d_over_r0, rng, count, subharmonics)
        else:
            phases = np.zeros((count, pupil_px, pupil_px))
        out[start : start + count] = _psfs(mask, phases, m, size)
    return out


# --- frames -------------------------------------------------------------------------------


def convolve(image, psf, *, boundary="periodic"):
    """FFT convolution of an image with a centred PSF, same-size output.

    ``out(y, x) = sum_(j, k) psf(j, k) image(y - (j - s_y // 2), x - (k - s_x // 2))``: the
    PSF's pixel ``(s_y // 2, s_x // 2)`` is the zero offset, so a PSF whose light lies at
    ``+(dy, dx)`` from its centre shifts the image by ``+(dy, dx)``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` image, finite.
    psf : numpy.ndarray
        ``(s_y, s_x)`` PSF, finite (not renormalised here; any size, also larger than the
        image).
    boundary : {"periodic", "zero"}, optional
        ``"periodic"`` (default): circular convolution, light leaving one side re-enters on
        the other and the total flux is conserved exactly (as the shifts of
        :mod:`astroflow.simulation.planetary`); give the truth an empty border of about half
        the PSF. ``"zero"``: linear convolution of the image padded with zeros (light
        spreading past the edges is lost).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float64 convolved image.

    Raises
    ------
    ValueError
        If ``image`` or ``psf`` is not a finite 2-D array, or ``boundary`` is unknown.
    """
    kernel = np.asarray(psf, dtype=np.float64)
    if kernel.ndim != 2 or kernel.size == 0 or not np.all(np.isfinite(kernel)):
        raise ValueError(f"psf must be a finite, non-empty 2-D array, got shape {kernel.shape}")
    return next(convolved_frames(image, kernel[None], boundary=boundary))


def convolved_frames(image, psfs, *, boundary="periodic"):
    """Noise-free frames: an image convolved with each PSF of a stack in turn.

    Each frame is :func:`convolve` of ``image`` with ``psfs[i]``; the image's spectrum is
    computed once for all of them.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` image, finite (e.g. a truth in e- per frame).
    psfs : numpy.ndarray
        ``(N, s_y, s_x)`` PSFs, finite (not renormalised here).
    boundary : {"periodic", "zero"}, optional
        Edge handling, see :func:`convolve`.

    Returns
    -------
    iterator of numpy.ndarray
        ``N`` float64 ``(H, W)`` frames, in the order of ``psfs``; one is in memory at a time.
        FFT round-off leaves values of about ``1e-12`` of the peak below zero where the truth is
        dark (clip before drawing photons, as :func:`expose` does).

    Raises
    ------
    ValueError
        If ``image`` is not a finite 2-D array, ``psfs`` not a finite 3-D one, or ``boundary``
        is unknown (raised at the call, before the first frame).
    """
    img = np.asarray(image, dtype=np.float64)
    kernels = np.asarray(psfs)
    if img.ndim != 2 or img.size == 0 or not np.all(np.isfinite(img)):
        raise ValueError(f"image must be a finite, non-empty 2-D array, got shape {img.shape}")
    if kernels.ndim != 3 or kernels.size == 0 or not np.all(np.isfinite(kernels)):
        raise ValueError(
            f"psfs must be a finite, non-empty (N, s_y, s_x) array, got shape {kernels.shape}"
        )
    if boundary not in ("periodic", "zero"):
        raise ValueError(f"boundary must be 'periodic' or 'zero', got {boundary!r}")
    height, width = img.shape
    if boundary == "zero":
        shape = (height + kernels.shape[1], width + kernels.shape[2])
        padded = np.zeros(shape)
        padded[:height, :width] = img
    else:
        shape, padded = img.shape, img
    spectrum = scipy.fft.rfft2(padded)
    return (_convolve_periodic(spectrum, kernel, shape)[:height, :width] for kernel in kernels)


def _wrap_kernel(kernel, shape):
    """The PSF folded onto a periodic ``shape`` grid with its centre at (0, 0)."""
    sy, sx = kernel.shape
    iy = (np.arange(sy) - sy // 2) % shape[0]
    ix = (np.arange(sx) - sx // 2) % shape[1]
    wrapped = np.zeros(shape)
    np.add.at(wrapped, (iy[:, None], ix[None, :]), kernel)
    return wrapped


def _convolve_periodic(spectrum, kernel, shape):
    return scipy.fft.irfft2(spectrum * scipy.fft.rfft2(_wrap_kernel(kernel, shape)), s=shape)


def expose(signal, rng, *, photon_noise, read_noise, gain):
    """A noise-free frame through a camera: photon noise, read noise, electrons to ADU.

    ``(Poisson(max(signal, 0)) + N(0, read_noise^2)) / gain``: the camera of every simulated
    lucky-imaging sequence (:func:`simulate_turbulent_sequence`,
    :func:`astroflow.simulation.planetary.simulate_sequence`): shot noise on the
    photo-electrons and Gaussian read noise, no bias, no quantisation, no saturation.

    Parameters
    ----------
    signal : numpy.ndarray
        Expected photo-electrons per pixel, e- (negative values count as 0).
    rng : numpy.random.Generator
        Source of the noise (Poisson first, then the read noise).
    photon_noise : bool
        Draw Poisson photon noise; False keeps the expectation.
    read_noise : float
        Gaussian read noise, e- RMS (>= 0; 0 draws nothing).
    gain : float
        e- per ADU (> 0).

    Returns
    -------
    numpy.ndarray
        float64, the shape of ``signal``: the frame in ADU.
    """
    signal = np.clip(signal, 0.0, None)
    electrons = rng.poisson(signal).astype(np.float64) if photon_noise else signal
    if read_noise > 0:
        electrons = electrons + rng.normal(0.0, read_noise, electrons.shape)
    return electrons / gain


def psf_moments(psfs):
    """Centroid and RMS radius of each PSF of a stack.

    Parameters
    ----------
    psfs : numpy.ndarray
        ``(N, s_y, s_x)`` PSFs, each summing to 1, centred at ``(s_y // 2, s_x // 2)``.

    Returns
    -------
    shifts : numpy.ndarray
        float64 ``(N, 2)``: ``(dy, dx)`` of each centroid from the centre pixel, px: a frame
        made with that PSF shows the truth moved by ``(dy, dx)`` (its tip-tilt).
    rms : numpy.ndarray
        float64 ``(N,)``: RMS radius per axis about the centroid,
        ``sqrt((var_y + var_x) / 2)``, px (a Gaussian of that sigma has the same second moment).
    """
    p = np.asarray(psfs, dtype=np.float64)
    rows, cols = p.sum(axis=2), p.sum(axis=1)  # marginals along y and x, (N, s_y), (N, s_x)
    gy = np.arange(p.shape[1]) - p.shape[1] // 2
    gx = np.arange(p.shape[2]) - p.shape[2] // 2
    cy, cx = (rows * gy).sum(axis=1), (cols * gx).sum(axis=1)
    var_y = (rows * (gy - cy[:, None]) ** 2).sum(axis=1)
    var_x = (cols * (gx - cx[:, None]) ** 2).sum(axis=1)
    return np.stack([cy, cx], axis=1), np.sqrt((var_y + var_x) / 2.0)


def simulate_turbulent_sequence(
    truth,
    n_frames=100,
    *,
    d_over_r0=5.0,
    seed=0,
    pupil_px=64,
    obstruction=0.0,
    spiders=0,
    psf_size=64,
    photons=None,
    read_noise=2.0,
    gain=1.0,
    oversample=2,
    spider_width=0.02,
    photon_noise=True,
    boundary="periodic",
):
    """Frames of a truth image seen through Kolmogorov turbulence, with truth and PSFs.

    Frame ``i`` is ``(Poisson(max(truth (*) psf_i, 0)) + N(0, read_noise^2)) / gain`` with
    ``psf_i`` from :func:`turbulent_psfs`, ``(*)`` :func:`convolve` (:func:`convolved_frames`)
    and the camera of :func:`expose`; ``shifts`` are the PSFs' centroids
    (:func:`psf_moments`). The truth is assumed
    sampled at the PSF pixel scale (``lambda / D`` = ~``oversample`` px). PSFs and noise come
    from separate random streams of ``seed``: the same seed gives identical frames, and
    changing the noise leaves the PSFs unchanged.

    Parameters
    ----------
    truth : numpy.ndarray
        ``(H, W)`` noise-free image, e- per frame, finite, non-negative, at least 16x16
        (e.g. :func:`astroflow.simulation.planetary.planet_truth` or :func:`star_field_truth`).
        With the default periodic boundary, give it an empty border of ~``psf_size / 2`` px.
    n_frames : int, optional
        Number of frames N (>= 1).
    d_over_r0 : float, optional
        Telescope diameter over Fried's parameter (>= 0, <= ``pupil_px / 2``).
    seed : int, optional
        Seed of all random draws (>= 0).
    pupil_px, obstruction, spiders, spider_width, oversample : optional
        Pupil and sampling, see :func:`turbulent_psfs`.
    psf_size : int, optional
        Side of the PSFs, px (>= 1).
    photons : float, optional
        If given (> 0), the truth is scaled so that its total flux is ``photons`` e- per frame;
        by default it is used as is (e- per frame).
    read_noise : float, optional
        Gaussian read noise, e- RMS (>= 0).
    gain : float, optional
        e- per ADU (> 0): frames and the returned truth are divided by it.
    photon_noise : bool, optional
        Draw Poisson photon noise (False with ``read_noise=0`` gives noise-free frames).
    boundary : {"periodic", "zero"}, optional
        Edge handling of the convolution, see :func:`convolve`.

    Returns
    -------
    TurbulentSequence
        Frames float32 ``(N, H, W)`` ADU, truth float32 ``(H, W)`` ADU, PSFs float32
        ``(N, psf_size, psf_size)``, ``d_over_r0``, params, shifts ``(N, 2)`` px.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    img = check_image("truth", truth, min_side=16, non_negative=True).astype(np.float64)
    n_frames = _check_int("n_frames", n_frames, 1)
    seed = _check_int("seed", seed, 0)
    read_noise = _check_float("read_noise", read_noise, 0.0)
    gain = _check_float("gain", gain, 0.0, strict=True)
    if photons is not None:
        photons = _check_float("photons", photons, 0.0, strict=True)
        total = float(img.sum())
        if total <= 0:
            raise ValueError("photons needs a truth with positive total flux")
        img = img * (photons / total)
    psfs = turbulent_psfs(
        n_frames,
        d_over_r0,
        np.random.default_rng([_STREAM_SCREENS, seed]),
        pupil_px=pupil_px,
        obstruction=obstruction,
        spiders=spiders,
        oversample=oversample,
        size=psf_size,
        spider_width=spider_width,
    )
    noise_rng = np.random.default_rng([_STREAM_NOISE, seed])
    frames = np.empty((n_frames,) + img.shape, dtype=np.float32)
    for i, signal in enumerate(convolved_frames(img, psfs, boundary=boundary)):
        frames[i] = expose(
            signal, noise_rng, photon_noise=photon_noise, read_noise=read_noise, gain=gain
        )
    shifts, _ = psf_moments(psfs)
    params = dict(
        n_frames=n_frames,
        d_over_r0=float(d_over_r0),
        seed=seed,
        pupil_px=int(pupil_px),
        obstruction=float(obstruction),
        spiders=int(spiders),
        spider_width=float(spider_width),
        oversample=float(oversample),
        psf_size=int(psfs.shape[1]),
        photons=photons,
        read_noise=read_noise,
        gain=gain,
        photon_noise=bool(photon_noise),
        boundary=boundary,
        r0_px=(pupil_px / d_over_r0) if d_over_r0 > 0 else math.inf,
        lambda_over_d_px=int(round(float(oversample) * pupil_px)) / pupil_px,
    )
    return TurbulentSequence(
        frames=frames,
        truth=(img / gain).astype(np.float32),
        psfs=psfs,
        d_over_r0=float(d_over_r0),
        params=params,
        shifts=shifts,
    )


# --- truths -------------------------------------------------------------------------------


def star_field_truth(
    size=256,
    *,
    n_stars=30,
    seed=0,
    flux_range=(1e3, 1e5),
    sigma_px=0.0,
    border=None,
    background=0.0,
):
    """A star field truth: point sources on a flat sky, with their table.

    Star fluxes are log-uniform in ``flux_range`` (many faint, few bright stars). With
    ``sigma_px=0`` each star is a delta function on one pixel (integer positions); otherwise
    a tiny circular Gaussian of that sigma at a sub-pixel position, integrated over the pixels
    (so its pixels sum to its flux).

    Parameters
    ----------
    size : int or tuple of int, optional
        Image side, px, or ``(H, W)`` (each >= 16).
    n_stars : int, optional
        Number of stars (>= 0).
    seed : int, optional
        Random seed (>= 0).
    flux_range : tuple of float, optional
        ``(low, high)`` star flux, e- per frame, ``0 < low <= high``.
    sigma_px : float, optional
        Gaussian sigma of each star, px (>= 0; 0: delta functions).
    border : int, optional
        Stars keep at least this many px from the edges (>= 0, < half the size): an empty
        border for the periodic convolution of :func:`simulate_turbulent_sequence` (half the
        default ``psf_size``). Default ``min(32, min(H, W) // 4)``.
    background : float, optional
        Flat sky level, e- per px per frame (>= 0).

    Returns
    -------
    truth : numpy.ndarray
        ``(H, W)`` float32, e- per frame.
    stars : pandas.DataFrame
        One row per star: ``x``, ``y`` (px, pixel centres at integers) and ``flux`` (e-).

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"size must be an int or a pair (H, W), got {size!r}")
        height, width = (_check_int("size", s, 16) for s in size)
    else:
        height = width = _check_int("size", size, 16)
    n_stars = _check_int("n_stars", n_stars, 0)
    seed = _check_int("seed", seed, 0)
    sigma_px = _check_float("sigma_px", sigma_px, 0.0)
    background = _check_float("background", background, 0.0)
    border = min(32, min(height, width) // 4) if border is None else border
    border = _check_int("border", border, 0)
    if 2 * border >= min(height, width):
        raise ValueError(f"border must be < half the image size, got {border!r}")
    try:
        low, high = (float(v) for v in flux_range)
    except (TypeError, ValueError):
        raise ValueError(f"flux_range must be a pair (low, high), got {flux_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"flux_range must satisfy 0 < low <= high, got {flux_range!r}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(border, width - 1 - border, n_stars)
    y = rng.uniform(border, height - 1 - border, n_stars)
    flux = np.exp(rng.uniform(math.log(low), math.log(high), n_stars))
    truth = np.full((height, width), background, dtype=np.float64)
    if sigma_px == 0:
        x, y = np.round(x), np.round(y)
        np.add.at(truth, (y.astype(int), x.astype(int)), flux)
    else:
        radius = int(math.ceil(5 * sigma_px)) + 1
        for xs, ys, fs in zip(x, y, flux):
            iy = np.arange(max(int(ys) - radius, 0), min(int(ys) + radius + 2, height))
            ix = np.arange(max(int(xs) - radius, 0), min(int(xs) + radius + 2, width))
            gy = _pixel_gauss(iy, ys, sigma_px)
            gx = _pixel_gauss(ix, xs, sigma_px)
            truth[iy[:, None], ix[None, :]] += fs * gy[:, None] * gx[None, :]
    stars = pd.DataFrame({"x": x, "y": y, "flux": flux})
    return truth.astype(np.float32), stars


def _pixel_gauss(idx, centre, sigma):
    """Fraction of a 1-D Gaussian falling in each pixel [i - 0.5, i + 0.5]."""
    s = sigma * math.sqrt(2.0)
    return 0.5 * (erf((idx + 0.5 - centre) / s) - erf((idx - 0.5 - centre) / s))
