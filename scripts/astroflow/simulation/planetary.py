"""Simulated planetary lucky-imaging sequence (a Jupiter-like disc through turbulence) with its truth.

A lucky-imaging stacker picks the sharpest frames (or the sharpest regions of each frame),
aligns them globally and locally and averages them. To measure one, this module renders a
synthetic planet with plenty of 1-4 px detail (:func:`planet_truth`) and a sequence of short
exposures of it through a simple model of atmospheric turbulence (:func:`simulate_sequence`),
keeping what a stacker should recover: the noise-free truth, each frame's global tip-tilt and
its seeing. :func:`write_sequence` writes the frames as 16-bit TIFF files with the truth beside
them.

Turbulence model (``turbulence="gaussian"``)
--------------------------------------------
Short exposures through the atmosphere are sharp only now and then: the probability that a
telescope of diameter ``D`` sees a nearly diffraction-limited instant falls as
``exp(-0.1557 (D / r0)^2)`` with Fried's parameter ``r0`` (Fried 1966, J. Opt. Soc. Am. 56,
1372; Fried 1978, J. Opt. Soc. Am. 68, 1651), and the image wanders and distorts as a whole
(tip-tilt) and region by region (anisoplanatism). Rather than propagate light through phase
screens, this stand-in draws those effects directly. Frame ``i`` is::

    B_i      = truth * G(sigma)  shifted by s_i        (Fourier domain: exact sub-pixel shift)
    B_i(y,x) = blend of B_i for sigma near sigma_i(y,x)  (spatially varying blur)
    S_i(y,x) = B_i(y - ly_i(y,x), x - lx_i(y,x))        (local displacement, cubic remap)
    frame_i  = (Poisson(max(S_i, 0)) + N(0, read_noise^2)) / gain

* ``s_i = (dy, dx)``: global tip-tilt, normal with RMS ``tip_tilt_px`` per axis, independent
  from frame to frame;
* ``sigma_i(y, x) = seeing_i * m_i(y, x)``: Gaussian blur sigma; ``seeing_i`` is the frame's
  seeing, ``m_i`` a smooth field of mean 1 and extremes ``1 +- blur_variation`` varying on the
  scale of ``region_px`` (some parts of a frame are sharper than others). A fraction
  ``good_fraction`` of the frames are lucky: their seeing lies in the lowest fifth of the
  ``blur_px`` range (``LUCKY_BAND``); the others lie above it, denser towards the high end;
* ``(ly_i, lx_i)``: smooth random displacement field with correlation length ``region_px``,
  zero mean over the frame (the mean displacement *is* the tip-tilt) and RMS ``local_px`` per
  axis;
* the spatially varying blur blends images blurred with a few sigmas, with per-pixel weights
  linear in sigma^2, so the blended PSF has the requested second moment at every pixel.

The blur is Gaussian and the PSF has no diffraction rings or speckles.

Turbulence model (``turbulence="kolmogorov"``)
----------------------------------------------
Each frame is the truth convolved with its own short-exposure PSF, the diffraction pattern of
the telescope pupil (``pupil_px`` across, optional central ``obstruction`` and ``spiders``)
through an independent Kolmogorov phase screen at ``D / r0 = d_over_r0``
(:func:`astroflow.simulation.turbulence.turbulent_psfs`): speckles, diffraction rings, and
tip-tilt from the screen's own low orders. The local displacement field (``local_px``, ``region_px``) is
applied on top as in the Gaussian model, for anisoplanatism. ``tip_tilt_px``, ``blur_px``,
``good_fraction`` and ``blur_variation`` do not apply: the screens decide how often a frame is
sharp. ``shifts`` are the PSF centroids, ``seeing`` the RMS radius per axis of each PSF about
its centroid (px; a Gaussian of that sigma has the same second moment), and the PSFs are kept
in :attr:`PlanetarySequence.psfs`. The truth is sampled at the PSF scale: ``lambda / D`` spans
2 px (Nyquist).

Truth and coordinates
---------------------
Pixel centres are at integer ``(y, x)``, 0-based. A frame with shift ``(dy, dx)`` shows at
``(y, x)`` the truth at ``(y - dy, x - dx)``: a feature at ``(y0, x0)`` of the truth appears at
``(y0 + dy, x0 + dx)`` in the frame. Aligning a frame therefore means shifting it by
``(-dy, -dx)`` (``skimage.registration.phase_cross_correlation(truth, frame)`` returns
``(-dy, -dx)``).

The shifts and blur are applied by FFT, i.e. periodically: whatever leaves one side of the
image re-enters on the other. The truth must therefore have an empty, flat sky border wider
than the largest displacement plus the blur; about ``4 tip_tilt_px + 4 local_px +
3 blur_px[1] (1 + blur_variation)`` px (:func:`border_margin`). :func:`simulate_sequence` warns
when the truth has signal within that border. :func:`planet_truth` with its defaults leaves
more than enough at ``radius_frac=0.3``.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from astroflow.checks import check_float as _check_float
from astroflow.checks import check_image
from astroflow.checks import check_int as _check_int
from astroflow.io.atomic import atomic_write
from astroflow.io.fits import write_image
from astroflow.simulation import turbulence as _turbulence

__all__ = [
    "LUCKY_BAND",
    "PlanetarySequence",
    "border_margin",
    "planet_truth",
    "simulate_sequence",
    "write_sequence",
]

#: Lucky frames have ``seeing < blur_px[0] + LUCKY_BAND * (blur_px[1] - blur_px[0])``; the other
#: frames have a seeing at or above that value.
LUCKY_BAND = 0.2
#: Planet model: sky background and peak of the disc (e- per frame), Jupiter's flattening and a
#: linear limb-darkening coefficient typical of Jupiter in visible light.
SKY_E = 20.0
PEAK_E = 2000.0
FLATTENING = 0.065
LIMB_DARKENING = 0.6
_OVERSAMPLE = 4
_MOON_RADIUS_PX = 1.25
TURBULENCE_MODELS = ("gaussian", "kolmogorov")
# Independent random streams, so that e.g. switching noise off leaves the atmosphere unchanged.
_STREAM_TRUTH, _STREAM_SEEING, _STREAM_TIPTILT, _STREAM_FIELDS, _STREAM_NOISE = range(5)
_FRAME_NAME = re.compile(r"^frame_\d{4,}\.(tif|fits)$")
_FORMATS = {"tiff": ".tif", "fits": ".fits"}


@dataclass
class PlanetarySequence:
    """A simulated lucky-imaging sequence and what a perfect stacker should recover from it.

    Attributes
    ----------
    frames : numpy.ndarray
        float32 ``(N, H, W)``: the frames in ADU (e- / gain; e- with the default gain 1), with
        photon and read noise; may be slightly negative in the sky where read noise dominates.
    truth : numpy.ndarray
        float32 ``(H, W)``: the noise-free, unblurred truth at shift ``(0, 0)``, in the units of
        the frames: what a perfect stack aligned to the truth's own pixel grid should equal.
    shifts : numpy.ndarray
        float64 ``(N, 2)``: true global tip-tilt ``(dy, dx)`` of each frame, px: frame content
        at ``(y, x)`` shows the truth at ``(y - dy, x - dx)``.
    seeing : numpy.ndarray
        float64 ``(N,)``: each frame's mean Gaussian blur sigma over the frame, px; smaller is
        sharper.
    local_rms : float
        RMS per axis of the local displacement fields over all frames and pixels, px.
    params : dict
        The arguments of :func:`simulate_sequence` that made it (for provenance).
    psfs : numpy.ndarray or None
        float32 ``(N, s, s)``: each frame's PSF (sum 1, centred at ``(s // 2, s // 2)``) for
        ``turbulence="kolmogorov"``; None for the Gaussian model.
    """

    frames: np.ndarray
    truth: np.ndarray
    shifts: np.ndarray
    seeing: np.ndarray
    local_rms: float
    params: dict = field(default_factory=dict)
    psfs: np.ndarray | None = None


def planet_truth(size=256, *, seed=0, radius_frac=0.3, moon=True):
    """A Jupiter-like disc with fine detail, on a flat sky: the truth of a planetary sequence.

    The disc (equator horizontal, flattening 0.065) has linear limb darkening (coefficient
    0.6) and a sharp, anti-aliased limb. Its latitude is divided into bright zones and dark
    belts of random width and brightness (an equatorial zone, two equatorial belts, tropical
    and temperate bands, darker polar regions). Band edges carry waves of 5-40 px wavelength
    and small-scale turbulent wiggles; dark festoons reach from the equatorial belt into the
    equatorial zone; the belts are streaky and the whole disc is mottled at 1-4 px; a few
    bright ovals and dark spots of 2-6 px (one with a bright collar) sit on the bands. Features
    are placed in longitude and latitude and foreshortened towards the limb. The image is
    rendered at 4x4 sub-pixels and averaged to pixels.

    Parameters
    ----------
    size : int, optional
        Width and height of the image, px (>= 32).
    seed : int, optional
        Seed of the random layout; the same seed gives the same image.
    radius_frac : float, optional
        Equatorial radius of the disc as a fraction of ``size`` (0.05 to 0.42). The default
        0.3 leaves a sky border of 0.2 ``size`` (51 px at 256) for the shifts of a sequence.
    moon : bool, optional
        Add a small moon, a disc 2.5 px across of 0.7 times the planet's peak brightness, near
        the equatorial plane 0.15-0.3 planet radii beyond the limb on a random side.

    Returns
    -------
    numpy.ndarray
        float32 ``(size, size)`` in e- per frame: sky background 20 e-, brightest disc pixel
        about 2000 e- above it.

    Raises
    ------
    ValueError
        If ``size`` is not an integer >= 32, ``radius_frac`` is outside [0.05, 0.42], or a moon
        is asked for and does not fit between the disc and the image edge.
    """
    size = _check_int("size", size, 32)
    radius_frac = _check_float("radius_frac", radius_frac, 0.05, high=0.42)
    rng = np.random.default_rng([_STREAM_TRUTH, _check_int("seed", seed, 0)])
    ss = _OVERSAMPLE
    n = size * ss
    coords = (np.arange(n) + 0.5) / ss - 0.5  # sub-pixel centres in output-pixel coordinates
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    cy = cx = (size - 1) / 2.0
    r_eq = radius_frac * size
    r_pol = r_eq * (1.0 - FLATTENING)
    xn = (xx - cx) / r_eq
    yn = (yy - cy) / r_pol
    r2 = xn**2 + yn**2
    inside = r2 < 1.0
    mu = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    coslat = np.sqrt(np.clip(1.0 - yn**2, 1e-6, 1.0))
    lon = np.arcsin(np.clip(xn / coslat, -1.0, 1.0))  # visible hemisphere, -pi/2 .. pi/2
    lat_px = yn * r_pol  # projected latitude, px from the equator

    # Fine turbulence (1-4 px), used both to wiggle band edges and to mottle the disc.
    fine = _bandpass_noise(rng, (n, n), 0.6 * ss, 2.5 * ss)
    streaks = _bandpass_noise(rng, (n, n), (0.5 * ss, 2.0 * ss), (2.0 * ss, 8.0 * ss))
    mottle = _bandpass_noise(rng, (n, n), 2.0 * ss, 6.0 * ss)

    # Bands: edges from the equator outwards; levels alternate zone (bright) / belt (dark).
    edges, levels = _band_layout(rng, r_pol)
    brightness = np.full((n, n), levels[0])
    edge_width = 0.35  # px: sharp but not aliased at 4x oversampling
    lon_grid = np.linspace(-np.pi / 2, np.pi / 2, 4096)
    for k, edge in enumerate(edges):
        # Waves along the edge: random wavelengths of 5-40 px at the centre of the disc, with
        # amplitudes falling with wavenumber (px), plus the fine turbulence below.
        n_waves = 8
        wavelength = rng.uniform(5.0, 40.0, n_waves)
        amplitude = rng.uniform(0.3, 1.0, n_waves) * (wavelength / 40.0) ** 0.5
        amplitude *= rng.uniform(0.6, 1.4) * 1.4 / np.sqrt(np.sum(amplitude**2))
        phase = rng.uniform(0, 2 * np.pi, n_waves)
        wave_1d = np.sum(
            amplitude[:, None]
            * np.sin(2 * np.pi * r_eq / wavelength[:, None] * lon_grid[None, :] + phase[:, None]),
            axis=0,
        )
        wave = np.interp(lon, lon_grid, wave_1d)
        shifted = lat_px + (wave + 0.6 * fine) * coslat  # waves shrink towards the poles' limb
        step = 0.5 * (1.0 + np.tanh((shifted - edge) / edge_width))
        brightness += (levels[k + 1] - levels[k]) * step
    # `levels` runs from the north pole (top row) down; belts are the dark levels. Belts are
    # streaky, zones smoother.
    darkness = np.clip((levels.max() - brightness) / (levels.max() - levels.min()), 0, 1)
    texture = 1.0 + (0.03 + 0.08 * darkness) * streaks + 0.03 * fine + 0.03 * mottle
    brightness = brightness * texture
    # Polar regions: darker.
    polar = _smoothstep(0.72, 1.0, np.abs(yn))
    brightness = brightness * (1.0 - 0.4 * polar)

    brightness *= _features(rng, xx, yy, cx, cy, r_eq, r_pol, edges)
    limb = 1.0 - LIMB_DARKENING * (1.0 - mu)
    disc = np.where(inside, brightness * limb, 0.0)
    disc = _bin(disc, ss)
    disc *= PEAK_E / disc.max()
    image = SKY_E + disc
    if moon:
        image += _moon(rng, xx, yy, cx, cy, r_eq, r_pol, size)
    return image.astype(np.float32)


def border_margin(tip_tilt_px=2.0, local_px=0.6, blur_px=(0.6, 2.5), blur_variation=0.3):
    """Width of the flat sky border a truth needs for a sequence, px.

    Four times the RMS tip-tilt and local displacement plus three times the largest blur sigma
    (rounded up): the shifted and blurred disc stays clear of the edges (where the periodic
    FFT shift would wrap it round) with a probability of better than 99.99% per frame.

    Parameters
    ----------
    tip_tilt_px, local_px, blur_px, blur_variation
        As in :func:`simulate_sequence`.

    Returns
    -------
    int
        Margin, px.
    """
    largest_sigma = float(max(blur_px)) * (1.0 + blur_variation)
    return int(math.ceil(4 * tip_tilt_px + 4 * local_px + 3 * largest_sigma))


def simulate_sequence(
    truth,
    n_frames=100,
    *,
    seed=0,
    tip_tilt_px=2.0,
    local_px=0.6,
    blur_px=(0.6, 2.5),
    good_fraction=0.15,
    region_px=48,
    read_noise=5.0,
    gain=1.0,
    blur_variation=0.3,
    photon_noise=True,
    turbulence="gaussian",
    d_over_r0=6.0,
    pupil_px=64,
    obstruction=0.0,
    spiders=0,
    psf_size=64,
):
    """Frames of a planet seen through turbulence, with the truth they were made from.

    See the module docstring for the model (a Gaussian-blur + tip-tilt stand-in for a
    Kolmogorov phase-screen simulation) and the sign convention of the shifts. Random draws
    come from separate streams per component and frame, so the same seed gives identical
    frames, and switching noise off or changing ``read_noise`` or ``gain`` leaves the
    shifts, seeing and displacement fields unchanged.

    Parameters
    ----------
    truth : numpy.ndarray
        ``(H, W)`` noise-free image in e- per frame (e.g. from :func:`planet_truth`), finite,
        at least 16x16. It must have a flat sky border of :func:`border_margin` px (a warning
        is issued otherwise): shifts and blur are periodic.
    n_frames : int, optional
        Number of frames N (>= 1).
    seed : int, optional
        Seed of all random draws.
    tip_tilt_px : float, optional
        RMS per axis of the global shift of each frame, px (>= 0).
    local_px : float, optional
        RMS per axis of the local displacement field, px (>= 0).
    blur_px : tuple of float, optional
        ``(low, high)`` range of the frames' seeing (mean Gaussian blur sigma), px,
        ``0 <= low <= high``.
    good_fraction : float, optional
        Fraction of lucky frames, in [0, 1]: ``round(good_fraction * n_frames)`` frames have a
        seeing in the lowest :data:`LUCKY_BAND` of the ``blur_px`` range, uniformly; the others
        above it, with a density rising linearly towards ``high``.
    region_px : float, optional
        Correlation length of the local displacement and blur-variation fields, px (> 0).
    read_noise : float, optional
        Gaussian read noise, e- RMS (>= 0).
    gain : float, optional
        e- per ADU (> 0): frames and the returned truth are divided by it.
    blur_variation : float, optional
        Relative variation of the blur across a frame, in [0, 1): its sigma ranges over
        ``seeing * (1 +- blur_variation)`` (before renormalising the mean to ``seeing``).
    photon_noise : bool, optional
        Draw Poisson photon noise on the signal; False (with ``read_noise=0``) gives noise-free
        frames.
    turbulence : {"gaussian", "kolmogorov"}, optional
        Turbulence model (see the module docstring): Gaussian blur with drawn seeing, or
        short-exposure PSFs through Kolmogorov phase screens.
    d_over_r0, pupil_px, obstruction, spiders, psf_size : optional
        Kolmogorov model only: telescope diameter over Fried's parameter, pupil diameter
        (px), central obstruction (fraction of the diameter), number of spider vanes and PSF
        side (px); see :func:`astroflow.simulation.turbulence.turbulent_psfs`. The truth needs
        an empty border of about ``psf_size / 2`` px.

    Returns
    -------
    PlanetarySequence
        Frames float32 ``(N, H, W)`` in ADU, truth float32 ``(H, W)`` in ADU, shifts float64
        ``(N, 2)`` px, seeing float64 ``(N,)`` px, local_rms px.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.

    Warns
    -----
    UserWarning
        If the truth has signal within :func:`border_margin` px of its edges (Kolmogorov model:
        ``psf_size / 2`` px).
    """
    truth = check_image("truth", truth, min_side=16, non_negative=True).astype(np.float64)
    n_frames = _check_int("n_frames", n_frames, 1)
    tip_tilt_px = _check_float("tip_tilt_px", tip_tilt_px, 0.0)
    local_px = _check_float("local_px", local_px, 0.0)
    read_noise = _check_float("read_noise", read_noise, 0.0)
    gain = _check_float("gain", gain, 0.0, strict=True)
    region_px = _check_float("region_px", region_px, 0.0, strict=True)
    good_fraction = _check_float("good_fraction", good_fraction, 0.0, high=1.0)
    blur_variation = _check_float("blur_variation", blur_variation, 0.0, high=1.0, high_open=True)
    try:
        low, high = (float(v) for v in blur_px)
    except (TypeError, ValueError):
        raise ValueError(
            f"blur_px must be a pair (low, high) of numbers, got {blur_px!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise ValueError(f"blur_px must satisfy 0 <= low <= high, got {blur_px!r}")
    if turbulence not in TURBULENCE_MODELS:
        raise ValueError(
            f"turbulence must be one of {TURBULENCE_MODELS}, got {turbulence!r}"
        )
    seed = _check_int("seed", seed, 0)
    camera = dict(photon_noise=photon_noise, read_noise=read_noise, gain=gain)
    fields = dict(local_px=local_px, region_px=region_px)
    if turbulence == "kolmogorov":
        # The PSFs' halo reaches psf_size / 2 px; a faint wrap-round there is already visible.
        _warn_if_crowded(truth, min(psf_size // 2, min(truth.shape) // 2), 1e-3, "psf_size / 2")
        # The PSFs, the convolution, the camera and the PSF moments are those of
        # astroflow.simulation.turbulence (as in its simulate_turbulent_sequence); added here are
        # the local displacement fields and noise drawn per frame from this module's streams.
        psfs = _turbulence.turbulent_psfs(
            n_frames, d_over_r0, np.random.default_rng([_STREAM_SEEING, seed]),
            pupil_px=pupil_px, obstruction=obstruction, spiders=spiders, size=psf_size,
        )
        shifts, seeing = _turbulence.psf_moments(psfs)
        blurred = _turbulence.convolved_frames(truth, psfs)  # frame i comes i-th
        frames, local_rms = _observe(
            lambda i, atmosphere: _local_warp(next(blurred), atmosphere), truth, seed,
            np.zeros(n_frames), blur_variation=0.0, **fields, **camera,
        )
        params = dict(
            n_frames=n_frames, seed=seed, local_px=local_px, region_px=region_px,
            read_noise=read_noise, gain=gain, photon_noise=bool(photon_noise),
            turbulence="kolmogorov", d_over_r0=float(d_over_r0), pupil_px=int(pupil_px),
            obstruction=float(obstruction), spiders=int(spiders), psf_size=int(psf_size),
        )
    else:
        margin = border_margin(tip_tilt_px, local_px, (low, high), blur_variation)
        _warn_if_crowded(truth, margin, 0.05, "border_margin")
        psfs = None
        seeing = _draw_seeing(seed, n_frames, low, high, good_fraction)
        shifts = np.random.default_rng([_STREAM_TIPTILT, seed]).normal(
            0.0, tip_tilt_px, (n_frames, 2)
        )
        spectrum = np.fft.rfft2(truth)
        fy = np.fft.fftfreq(truth.shape[0])[:, None]
        fx = np.fft.rfftfreq(truth.shape[1])[None, :]
        frames, local_rms = _observe(
            lambda i, atmosphere: _render_frame(
                spectrum, fy, fx, truth.shape, shifts[i], atmosphere
            ),
            truth, seed, seeing, blur_variation=blur_variation, **fields, **camera,
        )
        params = dict(
            n_frames=n_frames,
            seed=seed,
            tip_tilt_px=tip_tilt_px,
            local_px=local_px,
            blur_px=(low, high),
            good_fraction=good_fraction,
            region_px=region_px,
            read_noise=read_noise,
            gain=gain,
            blur_variation=blur_variation,
            photon_noise=bool(photon_noise),
            turbulence=turbulence,
        )
    return PlanetarySequence(
        frames=frames,
        truth=(truth / gain).astype(np.float32),
        shifts=shifts,
        seeing=seeing,
        local_rms=local_rms,
        params=params,
        psfs=psfs,
    )


def _observe(render, truth, seed, seeing, *, local_px, region_px, blur_variation, photon_noise,
             read_noise, gain):
    """The frames of a sequence, one at a time: turbulence fields, noise-free image, camera.

    Frame ``i`` draws its local displacement and blur-variation fields (:func:`_draw_atmosphere`,
    blur sigma ``seeing[i]``) from its own stream, is rendered noise-free by
    ``render(i, atmosphere)`` (e-) and exposed by :func:`astroflow.simulation.turbulence.expose`
    with noise from its own stream. Returns the frames, float32 ``(N, H, W)`` ADU, and the RMS
    per axis of the local displacements over all frames and pixels (px).
    """
    frames = np.empty((len(seeing),) + truth.shape, dtype=np.float32)
    local_sq = 0.0
    for i in range(len(seeing)):
        atmosphere = _draw_atmosphere(
            np.random.default_rng([_STREAM_FIELDS, seed, i]), truth.shape, seeing=seeing[i],
            local_px=local_px, region_px=region_px, blur_variation=blur_variation,
        )
        local_sq += float(np.mean(atmosphere["ly"] ** 2 + atmosphere["lx"] ** 2)) / 2.0
        frames[i] = _turbulence.expose(
            render(i, atmosphere), np.random.default_rng([_STREAM_NOISE, seed, i]),
            photon_noise=photon_noise, read_noise=read_noise, gain=gain,
        )
    return frames, math.sqrt(local_sq / len(seeing))


def write_sequence(seq, outdir, *, fmt="tiff"):
    """Write a sequence's frames and truth to disk.

    Layout::

        outdir/frames/frame_0001.tif ...   16-bit grey TIFF: round(clip(frame, 0, 65535))
        outdir/truth/truth.fits            float32 truth (ADU), with the simulation parameters
        outdir/truth/shifts.csv            columns frame (file name), dy, dx, seeing (px)

    Each file is written to a temporary name and renamed into place. Frame files
    (``frame_NNNN.tif`` / ``.fits``) left by an earlier run with more frames, or in the other
    format, are removed; other files in ``frames/`` are left alone.

    Parameters
    ----------
    seq : PlanetarySequence
        The sequence.
    outdir : str or os.PathLike
        Output folder, created if needed.
    fmt : {"tiff", "fits"}, optional
        ``"tiff"``: 16-bit integer TIFF (values clipped to 0..65535 and rounded);
        ``"fits"``: float32 FITS, unclipped.

    Returns
    -------
    list of pathlib.Path
        The frame files, in frame order.

    Raises
    ------
    ValueError
        If ``fmt`` is unknown or ``seq.frames`` is not ``(N, H, W)`` with N matching
        ``seq.shifts`` and ``seq.seeing``.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {tuple(_FORMATS)}, got {fmt!r}")
    frames = np.asarray(seq.frames)
    if frames.ndim != 3 or len(seq.shifts) != len(frames) or len(seq.seeing) != len(frames):
        raise ValueError(
            f"seq.frames must be (N, H, W) with N rows in seq.shifts and seq.seeing, got "
            f"{frames.shape}, {np.shape(seq.shifts)}, {np.shape(seq.seeing)}"
        )
    outdir = Path(outdir)
    frame_dir = outdir / "frames"
    truth_dir = outdir / "truth"
    frame_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    suffix = _FORMATS[fmt]
    paths = []
    for i, frame in enumerate(frames, start=1):
        path = frame_dir / f"frame_{i:04d}{suffix}"
        if fmt == "tiff":
            data = np.clip(np.rint(frame), 0, 65535).astype(np.uint16)
            atomic_write(path, lambda tmp, d=data: tifffile.imwrite(tmp, d, photometric="minisblack"))
        else:
            write_image(path, frame, header={"BUNIT": "adu", "FRAME": i})
        paths.append(path)
    keep = {p.name for p in paths}
    for old in frame_dir.iterdir():
        if old.is_file() and _FRAME_NAME.match(old.name) and old.name not in keep:
            old.unlink()

    params = dict(seq.params)
    header = {
        "BUNIT": "adu",
        "ORIGIN": "astroflow.simulation.planetary",
        "NFRAMES": len(frames),
        "LOCALRMS": float(seq.local_rms),
    }
    for key, card in (
        ("seed", "SIMSEED"),
        ("tip_tilt_px", "TIPTILT"),
        ("local_px", "LOCALPX"),
        ("good_fraction", "GOODFRAC"),
        ("region_px", "REGIONPX"),
        ("read_noise", "RDNOISE"),
        ("gain", "GAIN"),
        ("blur_variation", "BLURVAR"),
        ("turbulence", "TURBMODL"),
    ):
        if key in params:
            header[card] = params[key]
    if "blur_px" in params:
        header["BLURLOW"], header["BLURHIGH"] = (float(v) for v in params["blur_px"])
    write_image(truth_dir / "truth.fits", seq.truth, header=header)
    table = pd.DataFrame(
        {
            "frame": [p.name for p in paths],
            "dy": np.asarray(seq.shifts, dtype=np.float64)[:, 0],
            "dx": np.asarray(seq.shifts, dtype=np.float64)[:, 1],
            "seeing": np.asarray(seq.seeing, dtype=np.float64),
        }
    )
    atomic_write(truth_dir / "shifts.csv", lambda tmp: table.to_csv(tmp, index=False))
    return paths


# --- turbulence fields and the Gaussian model ------------------------------------------------


def _draw_seeing(seed, n_frames, low, high, good_fraction):
    """Per-frame seeing: an exact number of lucky frames in the lowest band, the rest above."""
    rng = np.random.default_rng([_STREAM_SEEING, seed])
    n_good = int(round(good_fraction * n_frames))
    lucky = np.zeros(n_frames, dtype=bool)
    lucky[rng.permutation(n_frames)[:n_good]] = True
    u_lucky = rng.random(n_frames)
    u_poor = rng.random(n_frames)
    t = np.where(lucky, LUCKY_BAND * u_lucky, LUCKY_BAND + (1.0 - LUCKY_BAND) * np.sqrt(u_poor))
    return low + (high - low) * t


def _draw_atmosphere(rng, shape, *, seeing, local_px, region_px, blur_variation):
    """One frame's turbulence besides tip-tilt: local displacement and blur-sigma maps (px)."""
    ly = _smooth_field(rng, shape, region_px) * local_px
    lx = _smooth_field(rng, shape, region_px) * local_px
    variation = _smooth_field(rng, shape, region_px)
    peak = float(np.abs(variation).max())
    multiplier = 1.0 + blur_variation * variation / peak if peak > 0 else np.ones(shape)
    multiplier /= multiplier.mean()
    return {"ly": ly, "lx": lx, "sigma": seeing * multiplier}


def _render_frame(spectrum, fy, fx, shape, shift, atmosphere, n_levels=4):
    """Noise-free frame: exact FFT shift and spatially varying Gaussian blur, then local warp."""
    dy, dx = shift
    shifted = spectrum * np.exp(-2j * np.pi * (fy * dy + fx * dx))
    f2 = fy**2 + fx**2
    sigma = atmosphere["sigma"]
    var = sigma**2
    v_low, v_high = float(var.min()), float(var.max())
    if v_high - v_low < 1e-6:
        levels = np.array([0.5 * (v_low + v_high)])
        position = np.zeros(shape)
    else:
        levels = np.linspace(v_low, v_high, n_levels)
        position = (var - v_low) / (v_high - v_low) * (n_levels - 1)
    image = np.zeros(shape)
    for k, level in enumerate(levels):
        weight = np.clip(1.0 - np.abs(position - k), 0.0, 1.0)
        if not weight.any():
            continue
        blurred = np.fft.irfft2(shifted * np.exp(-2 * np.pi**2 * level * f2), s=shape)
        image += weight * blurred
    return _local_warp(image, atmosphere)


def _local_warp(image, atmosphere):
    """Move the content of a noise-free frame by its local displacement field (cubic remap)."""
    ly, lx = atmosphere["ly"], atmosphere["lx"]
    if not (np.any(ly) or np.any(lx)):
        return image
    grid_y, grid_x = np.indices(image.shape, dtype=np.float32)
    return cv2.remap(
        image.astype(np.float32),
        (grid_x - lx).astype(np.float32),
        (grid_y - ly).astype(np.float32),
        interpolation=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT_101,
    ).astype(np.float64)


def _smooth_field(rng, shape, corr_px):
    """Zero-mean, unit-RMS Gaussian random field with correlation length ``corr_px`` (1/e)."""
    height, width = shape
    step = max(corr_px / 4.0, 1.0)
    grid = (int(math.ceil(height / step)) + 1, int(math.ceil(width / step)) + 1)
    coarse = ndimage.gaussian_filter(
        rng.standard_normal(grid), sigma=corr_px / 2.0 / step, mode="wrap"
    )
    fine = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    fine = fine.astype(np.float64) - fine.mean()
    rms = float(np.sqrt(np.mean(fine**2)))
    return fine / rms if rms > 0 else fine


# --- planet rendering ---------------------------------------------------------------------


def _band_layout(rng, r_pol):
    """Band edges (px of projected latitude, ascending) and the levels of the bands between them.

    Each hemisphere gets its own bands outwards from the equatorial zone (level 1): a wide,
    dark equatorial belt, then narrower zones and belts alternating up to ~0.92 of the polar
    radius; the last band reaches the pole.
    """
    equator_half = rng.uniform(0.06, 0.10)
    hemispheres = []
    for _ in range(2):
        bounds = [equator_half + rng.uniform(-0.01, 0.01)]
        widths = [rng.uniform(0.13, 0.18), *rng.uniform(0.07, 0.15, 8)]
        for w in widths:
            if bounds[-1] + w > 0.92:
                break
            bounds.append(bounds[-1] + w)
        levels = [1.0]
        for j in range(1, len(bounds) + 1):
            if j == 1:
                levels.append(rng.uniform(0.52, 0.64))  # equatorial belt
            elif j % 2:
                levels.append(rng.uniform(0.62, 0.78))  # belt
            else:
                levels.append(rng.uniform(0.88, 1.0))  # zone
        hemispheres.append((np.asarray(bounds) * r_pol, levels))
    (north_bounds, north_levels), (south_bounds, south_levels) = hemispheres
    edges = np.concatenate([-north_bounds[::-1], south_bounds])
    levels = np.array([*north_levels[:0:-1], 1.0, *south_levels[1:]])
    return edges, levels


def _features(rng, xx, yy, cx, cy, r_eq, r_pol, edges):
    """Multiplicative map of ovals, spots and festoons (1 where there is none)."""
    out = np.ones_like(xx)
    coords = xx[0]  # the same sub-pixel centres along both axes

    def window(y0, x0, radius):
        """Slices of the sub-pixel grid within ``radius`` px of (y0, x0)."""
        ys = np.searchsorted(coords, [y0 - radius, y0 + radius])
        xs = np.searchsorted(coords, [x0 - radius, x0 + radius])
        return slice(*ys), slice(*xs)

    def place(lon0, lat0):
        """Image position of (longitude, projected latitude px) and the foreshortening there."""
        coslat = math.sqrt(max(1.0 - (lat0 / r_pol) ** 2, 0.0))
        return cy + lat0, cx + r_eq * coslat * math.sin(lon0), math.cos(lon0)

    def oval(y0, x0, ax, ay, contrast, collar=0.0):
        win = window(y0, x0, 2.5 * max(ax, ay))
        s = ((xx[win] - x0) / ax) ** 2 + ((yy[win] - y0) / ay) ** 2
        bump = np.exp(-(s**2))  # super-Gaussian: flat core, sharp edge at s ~ 1
        ring = np.exp(-(((np.sqrt(s) - 1.35) / 0.22) ** 2)) if collar else 0.0
        out[win] *= 1.0 + contrast * bump + collar * ring

    # Ovals and spots on band edges and in zones: 2-6 px across.
    n_spots = int(rng.integers(7, 12))
    for j in range(n_spots):
        lon0 = rng.uniform(-1.05, 1.05)
        lat0 = rng.choice(edges) + rng.uniform(-2.0, 2.0)
        size = rng.uniform(1.0, 3.0)  # semi-axis along longitude, px
        elongation = rng.uniform(0.55, 0.8)
        contrast = rng.uniform(0.25, 0.45) if j % 3 else -rng.uniform(0.25, 0.4)
        if abs(lat0) > 0.85 * r_pol:
            continue
        y0, x0, fore = place(lon0, lat0)
        oval(y0, x0, size * fore, size * elongation, contrast)
    # A red-spot-like oval with a bright collar, 6 px across, south of the equator.
    south = edges[edges > 0]
    if len(south) >= 2:
        lat0 = 0.5 * (south[1] + south[2]) if len(south) >= 3 else south[1] + 3.0
        y0, x0, fore = place(rng.uniform(-0.6, 0.6), lat0)
        oval(y0, x0, 3.0 * fore, 2.0, -0.25, collar=0.18)
    # Festoons: thin dark streaks from the northern equatorial belt into the equatorial zone.
    north_eq = edges[edges < 0].max() if np.any(edges < 0) else -0.08 * r_pol
    for _ in range(int(rng.integers(4, 8))):
        lon0 = rng.uniform(-1.1, 1.1)
        length = rng.uniform(6.0, 14.0)
        angle = rng.uniform(0.35, 0.9) * rng.choice([-1.0, 1.0])  # from the meridian, rad
        width = rng.uniform(0.5, 0.9)
        y0, x0, fore = place(lon0, north_eq)
        uy, ux = math.cos(angle), math.sin(angle) * fore
        win = window(y0, x0, length + 3.0)
        along = (yy[win] - y0) * uy + (xx[win] - x0) * ux
        across = -(yy[win] - y0) * ux + (xx[win] - x0) * uy
        taper = np.where((along > 0) & (along < length), 1.0 - along / length, 0.0)
        out[win] *= 1.0 - 0.3 * taper * np.exp(-0.5 * (across / width) ** 2)
    return out


def _moon(rng, xx, yy, cx, cy, r_eq, r_pol, size):
    """A small anti-aliased disc beside the planet, near its equatorial plane."""
    side = rng.choice([-1.0, 1.0])
    distance = r_eq * (1.0 + rng.uniform(0.15, 0.3))
    room = (size - 1) / 2.0 - 3.0 * _MOON_RADIUS_PX
    if room < r_eq + 2.0 * _MOON_RADIUS_PX + 2.0:
        raise ValueError(
            f"radius_frac={r_eq / size:g} leaves no room for the moon; use a smaller "
            "radius_frac or moon=False"
        )
    distance = min(distance, room)
    my = cy + rng.uniform(-0.1, 0.1) * r_pol
    mx = cx + side * distance
    inside = ((yy - my) ** 2 + (xx - mx) ** 2) < _MOON_RADIUS_PX**2
    return 0.7 * PEAK_E * _bin(inside.astype(np.float64), _OVERSAMPLE)


def _bandpass_noise(rng, shape, sigma_small, sigma_large):
    """Unit-RMS periodic noise between two Gaussian scales (sigmas may be (sy, sx) pairs)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]

    def gauss(sigma):
        sy, sx = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (2,))
        return np.exp(-2 * np.pi**2 * ((sy * fy) ** 2 + (sx * fx) ** 2))

    white = np.fft.rfft2(rng.standard_normal(shape))
    band = np.fft.irfft2(white * (gauss(sigma_small) - gauss(sigma_large)), s=shape)
    return band / band.std()


def _bin(image, factor):
    h, w = image.shape
    return image.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --- checks ---------------------------------------------------------------------------------


def _warn_if_crowded(truth, margin, tolerance, source):
    """Warn if the truth has signal within ``margin`` px of its edges (periodic wrap-round).

    Signal is a deviation from the median of that border strip above ``tolerance`` times the
    truth's peak over it; ``source`` names where the margin comes from, for the message.
    """
    strip = np.ones(truth.shape, dtype=bool)
    if 2 * margin < min(truth.shape):
        strip[margin:-margin, margin:-margin] = False
    sky = float(np.median(truth[strip]))
    scale = float(truth.max()) - sky
    deviation = float(np.abs(truth[strip] - sky).max())
    if scale > 0 and deviation > tolerance * scale:
        warnings.warn(
            f"truth has signal within {margin} px ({source}) of its edges (up to {deviation:.3g} "
            f"off the sky of {sky:.3g}); shifted frames wrap it round to the other side: give "
            "the truth a wider empty sky border",
            UserWarning,
            stacklevel=3,
        )
