"""Simulated deep-sky night: DSLR RAW frames (DNG) of a star field, with the known truth beside it.

The simulator is the workflow's embedded default target and the reference every stage is tested
against. It renders, deterministically from one seed, what a DSLR on a small refractor records in
one session: lights of a drifting, slowly rotating star field under a light-polluted sky (one
crossed by a satellite, one under cloud), darks, flats of an evenly lit screen and bias frames.

Signal chain of a frame (all per pixel of the RGGB mosaic)::

    signal_adu = flat * (sky + stars + trail) + dark_rate * t     (lights)
    electrons  = Poisson(signal_adu * gain)                        (shot noise of light and dark)
    raw        = clip(rint(electrons / gain + bias + N(0, read_noise / gain)), 0, white_level)

with ``bias`` = black level plus a fixed column/row pattern. The truth written beside the frames
is the noise-free ``sky + stars + trail`` of every light (what a perfect calibration returns), the
true flat, bias and dark-rate maps, the star list and the per-frame transforms.

Camera colour model: a source at 5800 K gives raw R:G:B = 0.5 : 1 : 0.7 (typical DSLR daylight
white-balance multipliers of about 2.0 and 1.4); star colours follow Planck's law at effective
wavelengths 600, 530 and 465 nm relative to that.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from pidng.core import RAW2DNG
from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, Orientation, PhotometricInterpretation
from pidng.dng import DNGTags, Tag, dngIFD, dngTag
from scipy.special import ndtr

from astroflow import __version__
from astroflow.io.atomic import atomic_write
from astroflow.io.fits import write_image
from astroflow.simulation import optics

PATTERN = "RGGB"
RAW_BITS = 14
FRAME_KINDS = {"lights": "light", "darks": "dark", "flats": "flat", "bias": "bias"}

CAMERA_RESPONSE_RGB = (0.5, 1.0, 0.7)
_REFERENCE_TEMPERATURE_K = 5800.0
_EFFECTIVE_WAVELENGTH_UM = np.array([0.600, 0.530, 0.465])
_PLANCK_C2_UM_K = 14387.77
# XYZ (D65) -> linear sRGB (IEC 61966-2-1); with the camera response it gives the DNG ColorMatrix1.
_XYZ_TO_SRGB = np.array(
    [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]
)
_BAYER_PATTERNS = {
    "RGGB": CFAPattern.RGGB,
    "BGGR": CFAPattern.BGGR,
    "GRBG": CFAPattern.GRBG,
    "GBRG": CFAPattern.GBRG,
}
_COLOUR_CODE = {"R": 0, "G": 1, "B": 2}
# Stars never sit at an exact sub-pixel phase, so the PSF core is integrated over each pixel by
# 3x3 oversampling (centroids unbiased to < 0.01 px for FWHM >= 2 px).
_OVERSAMPLE = 3
_MAX_STAMP_RADIUS_PX = 128


def cfa_index(shape, pattern=PATTERN):
    """Colour of every pixel of a Bayer mosaic.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the mosaic, px.
    pattern : str, optional
        Bayer pattern of the top-left 2x2 cell, one of ``RGGB``, ``BGGR``, ``GRBG``, ``GBRG``.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` int8: 0 for red, 1 for green, 2 for blue pixels.

    Raises
    ------
    ValueError
        If the pattern is not one of the four Bayer patterns.
    """
    if pattern not in _BAYER_PATTERNS:
        raise ValueError(
            f"unknown Bayer pattern {pattern!r}; expected one of {sorted(_BAYER_PATTERNS)}"
        )
    cell = np.array([_COLOUR_CODE[c] for c in pattern], dtype=np.int8).reshape(2, 2)
    height, width = shape
    reps = (-(-height // 2), -(-width // 2))
    return np.ascontiguousarray(np.tile(cell, reps)[:height, :width])


def colour_ratios(temperature_k):
    """Raw camera R, G, B signal of a blackbody relative to its green signal.

    Planck's law at effective wavelengths of 600, 530 and 465 nm, scaled so that a 5800 K source
    gives the camera response ``CAMERA_RESPONSE_RGB`` (0.5, 1, 0.7).

    Parameters
    ----------
    temperature_k : float or array_like
        Effective temperature(s), K (> 0).

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` float64, the green entry is 1.

    Raises
    ------
    ValueError
        If a temperature is not positive.
    """
    temperature = np.asarray(temperature_k, dtype=np.float64)
    if np.any(~(temperature > 0)):
        raise ValueError("temperatures must be positive (K)")

    def planck(t):
        lam = _EFFECTIVE_WAVELENGTH_UM
        x = _PLANCK_C2_UM_K / (lam * t[..., None])
        return lam**-5 / np.expm1(x)

    ref = planck(np.array(_REFERENCE_TEMPERATURE_K))
    radiance = planck(temperature)
    return radiance / radiance[..., 1:2] / (ref / ref[1]) * np.asarray(CAMERA_RESPONSE_RGB)


def moffat_alpha(fwhm_px, beta):
    """Moffat core width ``alpha`` (px) for a FWHM (px) and power index ``beta`` (Moffat 1969)."""
    return fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def render_stars(shape, x, y, flux, *, fwhm_px=3.0, moffat_beta=3.0, pattern=PATTERN, loss_adu=1.0):
    """Render point sources with a circular Moffat PSF integrated over each pixel.

    The PSF is ``(beta - 1) / (pi alpha^2) * (1 + r^2 / alpha^2)^-beta`` (Moffat 1969, A&A 3, 455),
    normalised to unit volume. Within 1.5 FWHM of the centre it is averaged over a 3x3 sub-pixel
    grid in every pixel; the wings are sampled at pixel centres. Each star is drawn in a stamp
    just large enough that the flux falling outside it is below ``loss_adu``.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the output, px.
    x, y : array_like
        ``(N,)`` star centres, px, 0-based, pixel centre at integer coordinates, x = column.
        Stars outside the frame contribute their wings where those fall inside.
    flux : array_like
        ``(N,)`` total flux, ADU, for a monochrome image; or ``(N, 3)`` R, G, B flux, ADU, that a
        full plane of that colour would receive (a mosaic pixel of colour c receives
        ``flux[:, c]`` times the PSF integral over that pixel).
    fwhm_px : float, optional
        PSF FWHM, px.
    moffat_beta : float, optional
        Moffat power index (> 1); 2.5 to 4.8 matches atmospheric seeing.
    pattern : str or None, optional
        Bayer pattern for ``(N, 3)`` fluxes: the result is a CFA mosaic. ``None`` gives an
        ``(H, W, 3)`` RGB image instead. Ignored for ``(N,)`` fluxes.
    loss_adu : float, optional
        Flux allowed to fall outside a star's stamp, ADU.

    Returns
    -------
    numpy.ndarray
        float32, ``(H, W)`` (mono or mosaic) or ``(H, W, 3)``, ADU.

    Raises
    ------
    ValueError
        If the shapes of ``x``, ``y`` and ``flux`` disagree, or the PSF parameters are invalid.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64)
    if x.shape != y.shape or flux.shape[0] != x.size or flux.ndim not in (1, 2):
        raise ValueError(f"x {x.shape}, y {y.shape} and flux {flux.shape} describe different stars")
    if flux.ndim == 2 and flux.shape[1] != 3:
        raise ValueError(f"flux must be (N,) or (N, 3), got {flux.shape}")
    if not fwhm_px > 0 or not moffat_beta > 1 or not loss_adu > 0:
        raise ValueError("fwhm_px and loss_adu must be > 0 and moffat_beta > 1")
    height, width = shape
    rgb = flux.ndim == 2 and pattern is None
    out = np.zeros((height, width, 3) if rgb else (height, width), dtype=np.float64)
    colours = cfa_index(shape, pattern) if flux.ndim == 2 and not rgb else None

    alpha = moffat_alpha(fwhm_px, moffat_beta)
    norm = (moffat_beta - 1.0) / (math.pi * alpha**2)
    peak = flux.max(axis=1) if flux.ndim == 2 else flux
    # Flux outside radius R of a Moffat is F (1 + R^2/alpha^2)^(1 - beta).
    ratio = np.maximum(peak, loss_adu) / loss_adu
    radius = alpha * np.sqrt(np.maximum(ratio ** (1.0 / (moffat_beta - 1.0)) - 1.0, 0.0))
    radius = np.clip(np.ceil(radius), math.ceil(2 * fwhm_px), _MAX_STAMP_RADIUS_PX).astype(int)
    core = math.ceil(1.5 * fwhm_px)
    sub = (np.arange(_OVERSAMPLE) + 0.5) / _OVERSAMPLE - 0.5

    def moffat(xs, ys, xc, yc):
        q = 1.0 + (((ys - yc) ** 2)[:, None] + ((xs - xc) ** 2)[None, :]) / alpha**2
        return q**-moffat_beta * norm

    for i in np.flatnonzero(peak > 0):
        xc, yc, r = x[i], y[i], radius[i]
        xr, yr = int(round(xc)), int(round(yc))
        x0, x1 = max(xr - r, 0), min(xr + r + 1, width)
        y0, y1 = max(yr - r, 0), min(yr + r + 1, height)
        if x0 >= x1 or y0 >= y1:
            continue
        psf = moffat(np.arange(x0, x1), np.arange(y0, y1), xc, yc)
        # Pixel-centre sampling is exact enough in the wings; only the core needs the integral.
        cx0, cx1 = max(xr - core, x0), min(xr + core + 1, x1)
        cy0, cy1 = max(yr - core, y0), min(yr + core + 1, y1)
        if cx0 < cx1 and cy0 < cy1:
            fine = moffat(
                (np.arange(cx0, cx1)[:, None] + sub).ravel(),
                (np.arange(cy0, cy1)[:, None] + sub).ravel(),
                xc,
                yc,
            )
            psf[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = fine.reshape(
                cy1 - cy0, _OVERSAMPLE, cx1 - cx0, _OVERSAMPLE
            ).mean(axis=(1, 3))
        if rgb:
            out[y0:y1, x0:x1] += psf[..., None] * flux[i]
        elif colours is not None:
            out[y0:y1, x0:x1] += psf * flux[i][colours[y0:y1, x0:x1]]
        else:
            out[y0:y1, x0:x1] += psf * flux[i]
    return out.astype(np.float32)


def write_dng(
    path,
    mosaic,
    *,
    exposure_s,
    timestamp,
    iso=800,
    black_level_adu=2048,
    white_level_adu=16383,
    pattern=PATTERN,
    make="astroflow",
    model="SimCam DSLR",
    description="",
):
    """Write a Bayer mosaic as an uncompressed DNG camera RAW file with pidng.

    The samples are stored unpacked in 16 bits (BitsPerSample = 16, as Adobe DNG Converter does
    for uncompressed data) because pidng's 14-bit packer and its lossless-JPEG encoder do not
    work (pidng 4.0.9, Python 3.11); the 14-bit range is declared by ``WhiteLevel``. Exposure
    time, ISO and DateTimeOriginal go into an EXIF sub-IFD, where LibRaw (rawpy) reads them.
    The file is written under a temporary name and renamed.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.dng`` path; parent folders are created.
    mosaic : numpy.ndarray
        ``(H, W)`` uint16 raw values, ADU, ``H`` and ``W`` even, none above ``white_level_adu``.
    exposure_s : float
        Exposure time, s (> 0).
    timestamp : datetime.datetime
        Start of the exposure (DateTime and DateTimeOriginal, to the second).
    iso : int, optional
        ISO speed (PhotographicSensitivity).
    black_level_adu : int, optional
        BlackLevel tag, ADU.
    white_level_adu : int, optional
        WhiteLevel tag, ADU (16383 for 14-bit data).
    pattern : str, optional
        Bayer pattern (CFAPattern tag).
    make, model : str, optional
        Camera Make and Model tags (UniqueCameraModel is ``make model``).
    description : str, optional
        ImageDescription tag.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If the mosaic is not 2-D uint16 with even sides, exceeds the white level, or the levels,
        exposure or pattern are invalid.
    """
    path = Path(path)
    mosaic = np.asarray(mosaic)
    if mosaic.dtype != np.uint16 or mosaic.ndim != 2:
        raise ValueError(f"{path}: mosaic must be 2-D uint16, got {mosaic.dtype} {mosaic.shape}")
    height, width = mosaic.shape
    if height % 2 or width % 2 or height == 0:
        raise ValueError(f"{path}: mosaic sides must be even and non-zero, got {mosaic.shape}")
    if not 0 <= black_level_adu < white_level_adu <= 65535:
        raise ValueError(
            f"{path}: need 0 <= black level < white level <= 65535, got "
            f"{black_level_adu}, {white_level_adu}"
        )
    if int(mosaic.max()) > white_level_adu:
        raise ValueError(
            f"{path}: mosaic holds {int(mosaic.max())} ADU, above the white level "
            f"{white_level_adu}"
        )
    if not exposure_s > 0:
        raise ValueError(f"{path}: exposure must be > 0 s, got {exposure_s}")
    if pattern not in _BAYER_PATTERNS:
        raise ValueError(f"{path}: unknown Bayer pattern {pattern!r}")

    stamp = timestamp.strftime("%Y:%m:%d %H:%M:%S")
    shutter = Fraction(exposure_s).limit_denominator(1_000_000)
    colour_matrix = np.diag(CAMERA_RESPONSE_RGB) @ _XYZ_TO_SRGB
    tags = _Tags()
    for tag, value in (
        (Tag.NewSubfileType, 0),
        (Tag.ImageWidth, width),
        (Tag.ImageLength, height),
        (Tag.TileWidth, width),
        (Tag.TileLength, height),
        (Tag.Orientation, Orientation.Horizontal),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1),
        (Tag.BitsPerSample, 16),
        (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, _BAYER_PATTERNS[pattern]),
        (Tag.BlackLevelRepeatDim, [1, 1]),
        (Tag.BlackLevel, int(black_level_adu)),
        (Tag.WhiteLevel, int(white_level_adu)),
        (Tag.ColorMatrix1, [[int(round(v * 10000)), 10000] for v in colour_matrix.ravel()]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
        (Tag.AsShotNeutral, [[int(round(v * 10000)), 10000] for v in CAMERA_RESPONSE_RGB]),
        (Tag.Make, make),
        (Tag.Model, model),
        (Tag.UniqueCameraModel, f"{make} {model}"),
        (Tag.DateTime, stamp),
        (Tag.DNGVersion, DNGVersion.V1_4),
        (Tag.DNGBackwardVersion, DNGVersion.V1_2),
    ):
        tags.set(tag, value)
    if description:
        tags.set(Tag.ImageDescription, description)
    exif = dngIFD()
    exif.tags.extend(
        [
            dngTag(Tag.ExposureTime, [[shutter.numerator, shutter.denominator]]),
            dngTag(Tag.PhotographicSensitivity, [int(iso)]),
            dngTag(Tag.DateTimeOriginal, stamp),
            dngTag(Tag.ExifVersion, list(b"0230")),
        ]
    )
    tags.add(_SubIFDTag(Tag.EXIF_IFD, [exif]))

    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    buffer = writer.convert(np.ascontiguousarray(mosaic, dtype="<u2"))
    atomic_write(path, lambda tmp: tmp.write_bytes(bytes(buffer)))
    return path


class _Tags(DNGTags):
    # pidng's DNGTags.set cannot hold a ready-made tag object (needed for the EXIF sub-IFD).
    def add(self, tag):
        self.__tags__[tag.Type] = tag


class _SubIFDTag(dngTag):
    # pidng 4.0.9 builds IFD-typed tags with a str placeholder and fails; a 4-byte offset works.
    def setValue(self, value):
        self.Value = b"\x00\x00\x00\x00"
        self.subIFD = value[0]


def simulate_night(
    outdir,
    *,
    seed=0,
    width=1024,
    height=768,
    n_lights=12,
    n_darks=6,
    n_flats=6,
    n_bias=6,
    light_exposure_s=120.0,
    dark_exposure_s=120.0,
    flat_exposure_s=1.0,
    bias_exposure_s=0.00025,
    iso=800,
    gain_e_per_adu=1.0,
    read_noise_e=3.0,
    black_level_adu=2048,
    white_level_adu=16383,
    bias_pattern_adu=2.0,
    dark_current_e_per_s=0.05,
    hot_pixel_fraction=2e-4,
    hot_pixel_e_per_s=30.0,
    warm_pixel_fraction=2e-3,
    warm_pixel_e_per_s=1.5,
    sky_adu_per_s=8.0,
    sky_rgb=(0.8, 1.0, 0.6),
    sky_gradient=0.3,
    sky_brightening=0.15,
    star_density=0.002,
    mag_bright=8.0,
    mag_faint=18.0,
    count_slope=0.33,
    zero_point_mag=19.0,
    fwhm_px=3.0,
    fwhm_jitter=0.08,
    moffat_beta=3.0,
    drift_px=40.0,
    dither_px=1.0,
    rotation_deg=0.3,
    satellite_frame="auto",
    satellite_adu=4000.0,
    satellite_fwhm_px=2.5,
    cloudy_frame="auto",
    cloudy_transparency=0.04,
    cloudy_sky_factor=2.5,
    vignetting=0.3,
    n_dust=4,
    prnu=0.005,
    flat_level=0.4,
    flat_rgb=(0.55, 1.0, 0.75),
    start_time="2024-03-09T21:30:00",
    frame_gap_s=15.0,
    make="astroflow",
    model="SimCam DSLR",
):
    """Render a DSLR deep-sky session as DNG RAW files, with its known truth.

    Everything is a deterministic function of ``seed`` and the settings: each component and
    frame draws from its own ``numpy.random.default_rng([seed, component, index])`` stream, so
    that changing the number of frames leaves the star field, flat, bias and dark maps as they
    were.

    Files written (numbering 1-based, 3 digits)::

        outdir/lights/light_001.dng ...   darks/dark_001.dng ...   flats/flat_001.dng ...
        outdir/bias/bias_001.dng ...
        outdir/truth/flat.fits            true flat, (H, W) float32 mosaic, median 1 per colour
                                          (R, G1+G2, B)
        outdir/truth/bias.fits            true bias, (H, W) float32, ADU (black level + pattern)
        outdir/truth/dark_rate.fits       true dark current, (H, W) float32, ADU/s (hot pixels in)
        outdir/truth/sky_light_001.fits   per light: noise-free sky + stars (+ trail), (H, W)
                                          float32 ADU, as through a flat of 1, without bias, dark
        outdir/truth/stars.csv            id, x, y (reference frame = light_001, px, 0-based,
                                          pixel centre integer; may lie outside the frame),
                                          magnitude, temperature_k, flux_r, flux_g, flux_b (ADU
                                          per light exposure that a full plane of that colour
                                          would receive, at transparency 1), fwhm_px (nominal)
        outdir/truth/transforms.csv       per light: frame, m00 m01 m02 m10 m11 m12 (affine
                                          reference (x, y) -> frame (x, y)), dx, dy (shift of the
                                          frame centre, px), rotation_deg (counter-clockwise in
                                          the x-right, y-down pixel grid, about the centre),
                                          fwhm_px, transparency, sky_g_adu (green sky at the
                                          centre), satellite, cloudy, satellite_x0, satellite_y0,
                                          satellite_x1, satellite_y1 (trail end points on the
                                          frame border, NaN without trail), date_obs, exposure_s
        outdir/truth/dust.csv             x, y, radius_px, depth of every dust mote
        outdir/truth/hot_pixels.csv       x, y, rate_adu_per_s, kind (hot | warm)
        outdir/truth/meta.json            all settings and derived camera/colour constants

    Frame files of an earlier run with the same names (``light_NNN.dng`` ..., ``sky_light_NNN``)
    are removed first, so that a smaller night leaves no stale frames; other files are kept.

    Parameters
    ----------
    outdir : str or os.PathLike
        Output folder (created).
    seed : int, optional
        Seed of the whole night.
    width, height : int, optional
        Frame size, px (even, >= 32).
    n_lights : int, optional
        Number of lights (>= 1); ``light_001`` defines the reference frame (identity transform).
    n_darks, n_flats, n_bias : int, optional
        Number of darks, flats and bias frames (>= 0).
    light_exposure_s, dark_exposure_s, flat_exposure_s, bias_exposure_s : float, optional
        Exposure times, s (> 0).
    iso : int, optional
        ISO recorded in EXIF (the gain is set by ``gain_e_per_adu``).
    gain_e_per_adu : float, optional
        Conversion gain, e-/ADU.
    read_noise_e : float, optional
        Read noise, e- RMS.
    black_level_adu : int, optional
        Black level (mean bias), ADU, written to the DNG BlackLevel tag.
    white_level_adu : int, optional
        Saturation / WhiteLevel, ADU (16383: 14-bit).
    bias_pattern_adu : float, optional
        RMS of the fixed column offsets, ADU; row offsets have half of it.
    dark_current_e_per_s : float, optional
        Median dark current of ordinary pixels, e-/s (log-normal spread 0.25).
    hot_pixel_fraction, hot_pixel_e_per_s : float, optional
        Fraction of hot pixels and their median dark current, e-/s (log-normal spread 0.8;
        the brightest saturate in a long dark).
    warm_pixel_fraction, warm_pixel_e_per_s : float, optional
        Same for warm pixels (log-normal spread 0.5).
    sky_adu_per_s : float, optional
        Green sky background at the frame centre in the first light, ADU/s.
    sky_rgb : tuple of float, optional
        Raw R, G, B sky brightness relative to green (light pollution is orange).
    sky_gradient : float, optional
        Peak-to-peak fractional change of the sky across the frame diagonal (light pollution
        gradient, linear in a seeded direction).
    sky_brightening : float, optional
        Fractional rise of the sky from the first to the last light.
    star_density : float, optional
        Stars per px^2 of sky (the field rendered covers the drift margins too).
    mag_bright, mag_faint : float, optional
        Magnitude range; counts follow ``log10 N(<m) = count_slope * m``, sampled stratified so
        that the brightest (saturating) stars are always there.
    count_slope : float, optional
        Slope of the differential number counts, dex per magnitude.
    zero_point_mag : float, optional
        Magnitude giving 1 ADU/s of green flux (``flux_g = t * 10^(-0.4 (m - zp))``).
    fwhm_px : float, optional
        Median seeing FWHM, px.
    fwhm_jitter : float, optional
        Log-normal frame-to-frame spread of the FWHM (clipped to +-15 %).
    moffat_beta : float, optional
        Moffat index of the PSF.
    drift_px : float, optional
        Tracking drift of the last light relative to the first, px (linear in time, seeded
        direction).
    dither_px : float, optional
        RMS random offset per frame added to the drift, px (none in light_001).
    rotation_deg : float, optional
        Field rotation of the last light, degrees (linear in time).
    satellite_frame : int, "auto" or None, optional
        1-based light crossed by a satellite trail; ``None`` for none; ``"auto"`` for light
        ``max(2, n_lights // 3)`` (light 4 of 12).
    satellite_adu : float, optional
        Peak green brightness of the trail, ADU.
    satellite_fwhm_px : float, optional
        Trail width (Gaussian FWHM), px.
    cloudy_frame : int, "auto" or None, optional
        1-based light taken through cloud; ``None`` for none; ``"auto"`` for light
        ``max(3, 3 * n_lights // 4)`` (light 9 of 12).
    cloudy_transparency : float, optional
        Fraction of star light passing the cloud.
    cloudy_sky_factor : float, optional
        Sky background of the cloudy light relative to a clear one (clouds reflect city light).
    vignetting : float, optional
        Fractional light loss in the frame corners of the true flat.
    n_dust : int, optional
        Number of dust motes (dark donuts) in the flat.
    prnu : float, optional
        Pixel response non-uniformity, RMS fraction.
    flat_level : float, optional
        Green level of the flats as a fraction of the range from black to white level.
    flat_rgb : tuple of float, optional
        Raw R, G, B brightness of the flat screen relative to green.
    start_time : str, optional
        ISO date-time of the first light (local time written to EXIF).
    frame_gap_s : float, optional
        Pause between consecutive frames, s.
    make, model : str, optional
        Camera make and model written to the DNG files.

    Returns
    -------
    dict
        The content of ``truth/meta.json``.

    Raises
    ------
    ValueError
        If a setting is out of range (sizes, counts, exposures, levels, frame numbers).
    """
    if satellite_frame == "auto":
        satellite_frame = max(2, n_lights // 3)
    if cloudy_frame == "auto":
        cloudy_frame = max(3, 3 * n_lights // 4)
    settings = dict(locals())
    settings.pop("outdir")
    _validate(settings)
    outdir = Path(outdir)
    shape = (height, width)
    colours = cfa_index(shape)
    t0 = dt.datetime.fromisoformat(start_time)

    def rng(component, index=0):
        return np.random.default_rng([seed, component, index])

    bias = _bias_map(rng(1), shape, black_level_adu, bias_pattern_adu)
    dark_e, hot = _dark_rate_map(
        rng(2),
        shape,
        dark_current_e_per_s,
        hot_pixel_fraction,
        hot_pixel_e_per_s,
        warm_pixel_fraction,
        warm_pixel_e_per_s,
    )
    dark_rate = dark_e / gain_e_per_adu
    flat, dust, optical_centre = _true_flat(rng(3), colours, vignetting, n_dust, prnu)
    stars = _star_field(
        rng(4),
        shape,
        star_density,
        mag_bright,
        mag_faint,
        count_slope,
        zero_point_mag,
        light_exposure_s,
        fwhm_px,
        margin=drift_px
        + 5 * dither_px
        + np.deg2rad(abs(rotation_deg)) * (width + height)
        + 4 * fwhm_px
        + 10,
    )
    frames = _light_geometry(
        rng(5), n_lights, shape, drift_px, dither_px, rotation_deg, fwhm_px, fwhm_jitter
    )

    _clear_stale(outdir)
    names = {
        kind: [f"{stem}_{i:03d}" for i in range(1, count + 1)]
        for (kind, stem), count in zip(FRAME_KINDS.items(), (n_lights, n_darks, n_flats, n_bias))
    }
    timeline = _timeline(
        t0,
        frame_gap_s,
        [
            (n_lights, light_exposure_s),
            (n_darks, dark_exposure_s),
            (n_bias, bias_exposure_s),
            (n_flats, flat_exposure_s),
        ],
    )
    dng = dict(
        iso=iso,
        black_level_adu=black_level_adu,
        white_level_adu=white_level_adu,
        make=make,
        model=model,
    )
    noise = dict(gain=gain_e_per_adu, read_noise_e=read_noise_e, white=white_level_adu)

    star_rgb = stars[["flux_r", "flux_g", "flux_b"]].to_numpy()
    # Light pollution comes from a fixed direction on the horizon.
    gradient_angle = rng(6).uniform(0.0, 2 * np.pi)
    sun_rgb = colour_ratios(_REFERENCE_TEMPERATURE_K)
    rows = []
    for i, name in enumerate(names["lights"]):
        geo = frames[i]
        number = i + 1
        cloudy = number == cloudy_frame
        transparency = cloudy_transparency if cloudy else 1.0
        sky_level = (
            sky_adu_per_s
            * light_exposure_s
            * (1.0 + sky_brightening * (i / max(n_lights - 1, 1)))
            * (cloudy_sky_factor if cloudy else 1.0)
        )
        matrix = geo["matrix"]
        fx = matrix[0, 0] * stars["x"] + matrix[0, 1] * stars["y"] + matrix[0, 2]
        fy = matrix[1, 0] * stars["x"] + matrix[1, 1] * stars["y"] + matrix[1, 2]
        truth = _sky(colours, sky_level, sky_rgb, sky_gradient, gradient_angle)
        truth += render_stars(
            shape, fx, fy, star_rgb * transparency, fwhm_px=geo["fwhm"], moffat_beta=moffat_beta
        )
        trail = (np.nan,) * 4
        if number == satellite_frame:
            image, trail = _satellite_trail(
                rng(7, number), colours, satellite_adu * sun_rgb, satellite_fwhm_px
            )
            truth += image
        raw = _expose(rng(10, number), flat * truth + dark_rate * light_exposure_s, bias, **noise)
        write_dng(
            outdir / "lights" / f"{name}.dng",
            raw,
            exposure_s=light_exposure_s,
            timestamp=timeline[0][i],
            description=f"astroflow simulated light {name}, seed {seed}",
            **dng,
        )
        write_image(
            outdir / "truth" / f"sky_{name}.fits",
            truth,
            header={
                "FRAME": name,
                "EXPTIME": light_exposure_s,
                "BUNIT": "ADU",
                "BAYERPAT": PATTERN,
                "FWHM": geo["fwhm"],
                "TRANSPAR": transparency,
                "SATELLIT": number == satellite_frame,
                "CLOUDY": cloudy,
                "SEED": seed,
            },
            history=[
                "astroflow.simulation.night: noise-free sky + stars (+ trail), flat = 1, no bias/dark"
            ],
        )
        rows.append(
            {
                "frame": name,
                **{f"m{r}{c}": matrix[r, c] for r in range(2) for c in range(3)},
                "dx": geo["dx"],
                "dy": geo["dy"],
                "rotation_deg": geo["rotation_deg"],
                "fwhm_px": geo["fwhm"],
                "transparency": transparency,
                "sky_g_adu": sky_level,
                "satellite": number == satellite_frame,
                "cloudy": cloudy,
                "satellite_x0": trail[0],
                "satellite_y0": trail[1],
                "satellite_x1": trail[2],
                "satellite_y1": trail[3],
                "date_obs": timeline[0][i].isoformat(),
                "exposure_s": light_exposure_s,
            }
        )

    flat_adu = flat_level * (white_level_adu - black_level_adu) * np.asarray(flat_rgb)
    for block, (kind, exposure) in enumerate(
        (("darks", dark_exposure_s), ("bias", bias_exposure_s), ("flats", flat_exposure_s)),
        start=1,
    ):
        for j, name in enumerate(names[kind]):
            signal = dark_rate * exposure
            if kind == "flats":
                # Panel brightness wanders by ~1 % between flats, as with a real EL panel.
                scale = 1.0 + 0.01 * rng(9, j + 1).standard_normal()
                signal = signal + scale * flat_adu[colours] * flat
            raw = _expose(rng(10 + block, j + 1), signal, bias, **noise)
            write_dng(
                outdir / kind / f"{name}.dng",
                raw,
                exposure_s=exposure,
                timestamp=timeline[block][j],
                description=f"astroflow simulated {FRAME_KINDS[kind]} {name}, seed {seed}",
                **dng,
            )

    truth_dir = outdir / "truth"
    common = {"BUNIT": "ADU", "BAYERPAT": PATTERN, "SEED": seed}
    write_image(
        truth_dir / "flat.fits",
        flat,
        header={**common, "BUNIT": ""},
        history=["astroflow.simulation.night: true flat, median 1 per CFA colour"],
    )
    write_image(
        truth_dir / "bias.fits",
        bias,
        header=common,
        history=["astroflow.simulation.night: true bias = black level + fixed column/row pattern"],
    )
    write_image(
        truth_dir / "dark_rate.fits",
        dark_rate,
        header={**common, "BUNIT": "ADU/s"},
        history=["astroflow.simulation.night: true dark current including hot and warm pixels"],
    )
    _atomic_text(truth_dir / "stars.csv", stars.to_csv(index=False))
    _atomic_text(truth_dir / "transforms.csv", pd.DataFrame(rows).to_csv(index=False))
    _atomic_text(truth_dir / "dust.csv", dust.to_csv(index=False))
    hot.insert(2, "rate_adu_per_s", hot.pop("rate_e_per_s") / gain_e_per_adu)
    _atomic_text(truth_dir / "hot_pixels.csv", hot.to_csv(index=False))

    meta = {
        "generator": "astroflow.simulate.simulate_night",
        "astroflow_version": __version__,
        "settings": settings,
        "camera": {
            "make": make,
            "model": model,
            "pattern": PATTERN,
            "raw_bits": RAW_BITS,
            "dng_bits_per_sample": 16,
            "iso": iso,
            "gain_e_per_adu": gain_e_per_adu,
            "read_noise_e": read_noise_e,
            "read_noise_adu": read_noise_e / gain_e_per_adu,
            "black_level_adu": black_level_adu,
            "white_level_adu": white_level_adu,
            "camera_response_rgb": list(CAMERA_RESPONSE_RGB),
            "reference_temperature_k": _REFERENCE_TEMPERATURE_K,
        },
        "flat_level_adu_rgb": flat_adu.tolist(),
        "vignetting_centre_xy": list(optical_centre),
        "reference_frame": names["lights"][0] if names["lights"] else None,
        "n_stars": int(len(stars)),
        "frames": names,
        "truth": {
            "flat": "truth/flat.fits",
            "bias": "truth/bias.fits",
            "dark_rate": "truth/dark_rate.fits",
            "sky": [f"truth/sky_{n}.fits" for n in names["lights"]],
            "stars": "truth/stars.csv",
            "transforms": "truth/transforms.csv",
            "dust": "truth/dust.csv",
            "hot_pixels": "truth/hot_pixels.csv",
        },
        "units": {
            "sky": "ADU",
            "flat": "dimensionless",
            "bias": "ADU",
            "dark_rate": "ADU/s",
            "star flux": "ADU per light exposure per full colour plane",
            "coordinates": "px, 0-based",
        },
    }
    text = json.dumps(meta, indent=2) + "\n"
    _atomic_text(truth_dir / "meta.json", text)
    return json.loads(text)


def _validate(s):
    problems = []
    if not (
        s["width"] >= 32 and s["height"] >= 32 and s["width"] % 2 == 0 and s["height"] % 2 == 0
    ):
        problems.append(f"width and height must be even and >= 32, got {s['width']}x{s['height']}")
    if s["n_lights"] < 1 or min(s["n_darks"], s["n_flats"], s["n_bias"]) < 0:
        problems.append("n_lights must be >= 1 and n_darks, n_flats, n_bias >= 0")
    for key in (
        "light_exposure_s",
        "dark_exposure_s",
        "flat_exposure_s",
        "bias_exposure_s",
        "gain_e_per_adu",
        "fwhm_px",
        "star_density",
    ):
        if not s[key] > 0:
            problems.append(f"{key} must be > 0, got {s[key]}")
    if not 0 <= s["black_level_adu"] < s["white_level_adu"] <= 65535:
        problems.append("need 0 <= black_level_adu < white_level_adu <= 65535")
    if not s["moffat_beta"] > 1:
        problems.append(f"moffat_beta must be > 1, got {s['moffat_beta']}")
    if not s["mag_bright"] < s["mag_faint"]:
        problems.append("mag_bright must be smaller (brighter) than mag_faint")
    if not 0 <= s["vignetting"] < 1 or not 0 < s["flat_level"] < 1:
        problems.append("vignetting must be in [0, 1) and flat_level in (0, 1)")
    for key in ("satellite_frame", "cloudy_frame"):
        if s[key] is not None and not 1 <= s[key] <= s["n_lights"]:
            problems.append(f"{key} must be None or 1..n_lights ({s['n_lights']}), got {s[key]}")
    try:
        dt.datetime.fromisoformat(s["start_time"])
    except (TypeError, ValueError):
        problems.append(f"start_time must be an ISO date-time, got {s['start_time']!r}")
    if problems:
        raise ValueError("simulate_night: " + "; ".join(problems))


def _bias_map(rng, shape, black_level, pattern_rms):
    height, width = shape
    columns = rng.normal(0.0, pattern_rms, width)
    rows = rng.normal(0.0, pattern_rms / 2, height)
    return (black_level + rows[:, None] + columns[None, :]).astype(np.float32)


def _dark_rate_map(rng, shape, median_rate, hot_fraction, hot_rate, warm_fraction, warm_rate):
    n_pix = shape[0] * shape[1]
    rate = median_rate * rng.lognormal(0.0, 0.25, n_pix)
    n_hot, n_warm = int(round(hot_fraction * n_pix)), int(round(warm_fraction * n_pix))
    where = rng.choice(n_pix, n_hot + n_warm, replace=False)
    rate[where[:n_hot]] = hot_rate * rng.lognormal(0.0, 0.8, n_hot)
    rate[where[n_hot:]] = warm_rate * rng.lognormal(0.0, 0.5, n_warm)
    y, x = np.divmod(where, shape[1])
    table = pd.DataFrame(
        {"x": x, "y": y, "rate_e_per_s": rate[where], "kind": ["hot"] * n_hot + ["warm"] * n_warm}
    )
    return rate.reshape(shape).astype(np.float32), table


def _true_flat(rng, colours, vignetting, n_dust, prnu):
    height, width = colours.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    # The optical axis is rarely on the sensor centre.
    cx = (width - 1) / 2 + rng.normal(0.0, 0.03) * width
    cy = (height - 1) / 2 + rng.normal(0.0, 0.03) * height
    r2 = (xx - cx) ** 2 + (yy - cy) ** 2
    corner2 = max((x - cx) ** 2 + (y - cy) ** 2 for x in (0, width - 1) for y in (0, height - 1))
    flat = optics.vignetting(r2, corner2, vignetting)
    dust = optics.draw_dust(rng, (height, width), n_dust)
    optics.apply_dust(flat, dust, xx, yy)
    flat *= 1.0 + prnu * rng.standard_normal(flat.shape)
    for c in range(3):
        flat[colours == c] /= np.median(flat[colours == c])
    return flat.astype(np.float32), dust, (cx, cy)


def _sample_magnitudes(rng, n, mag_bright, mag_faint, slope):
    # Inverse CDF of dN/dm ~ 10^(slope m), with one draw per stratum so the rare bright
    # stars appear in every night, not only in lucky seeds.
    u = (np.arange(n) + rng.uniform(size=n)) / n
    span = 10.0 ** (slope * (mag_faint - mag_bright)) - 1.0
    return rng.permutation(mag_bright + np.log10(1.0 + u * span) / slope)


def _star_field(
    rng, shape, density, mag_bright, mag_faint, slope, zero_point, exposure_s, fwhm_px, margin
):
    height, width = shape
    lo_x, hi_x = -margin, width - 1 + margin
    lo_y, hi_y = -margin, height - 1 + margin
    n = max(int(round(density * (hi_x - lo_x) * (hi_y - lo_y))), 1)
    x = rng.uniform(lo_x, hi_x, n)
    y = rng.uniform(lo_y, hi_y, n)
    mag = _sample_magnitudes(rng, n, mag_bright, mag_faint, slope)
    # Field stars are mostly G and K dwarfs; a log-normal around 5200 K spans M to B types.
    temperature = np.clip(5200.0 * rng.lognormal(0.0, 0.25, n), 2800.0, 20000.0)
    flux_g = exposure_s * 10.0 ** (-0.4 * (mag - zero_point))
    rgb = colour_ratios(temperature) * flux_g[:, None]
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1),
            "x": x,
            "y": y,
            "magnitude": mag,
            "temperature_k": temperature,
            "flux_r": rgb[:, 0],
            "flux_g": rgb[:, 1],
            "flux_b": rgb[:, 2],
            "fwhm_px": float(fwhm_px),
        }
    )


def _light_geometry(rng, n_lights, shape, drift_px, dither_px, rotation_deg, fwhm_px, jitter):
    height, width = shape
    cx, cy = (width - 1) / 2, (height - 1) / 2
    direction = rng.uniform(0.0, 2 * np.pi)
    frames = []
    for i in range(n_lights):
        phase = i / max(n_lights - 1, 1)
        dx, dy = drift_px * phase * np.cos(direction), drift_px * phase * np.sin(direction)
        offset = rng.normal(0.0, dither_px, 2)
        fwhm = fwhm_px * float(np.clip(np.exp(jitter * rng.standard_normal()), 0.85, 1.15))
        if i:
            dx, dy = dx + offset[0], dy + offset[1]
        else:
            dx, dy = 0.0, 0.0
        theta = np.deg2rad(rotation_deg * phase)
        c, s = np.cos(theta), np.sin(theta)
        matrix = np.array([[c, -s, cx - c * cx + s * cy + dx], [s, c, cy - s * cx - c * cy + dy]])
        frames.append(
            {
                "matrix": matrix,
                "dx": float(dx),
                "dy": float(dy),
                "rotation_deg": float(rotation_deg * phase),
                "fwhm": fwhm,
            }
        )
    return frames


def _sky(colours, level, sky_rgb, gradient, angle):
    height, width = colours.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    half_diagonal = 0.5 * math.hypot(width - 1, height - 1)
    along = (xx - (width - 1) / 2) * np.cos(angle) + (yy - (height - 1) / 2) * np.sin(angle)
    ramp = 1.0 + 0.5 * gradient * along / half_diagonal
    return (level * np.asarray(sky_rgb, dtype=np.float32)[colours] * ramp).astype(np.float32)


def _satellite_trail(rng, colours, peak_rgb, fwhm_px):
    height, width = colours.shape
    px = rng.uniform(0.2, 0.8) * (width - 1)
    py = rng.uniform(0.2, 0.8) * (height - 1)
    phi = rng.uniform(0.0, np.pi)
    ux, uy = np.cos(phi), np.sin(phi)
    # Where the line through (px, py) leaves the frame's outer pixel edges.
    ts = []
    for edge, origin, step, other_origin, other_step, other_max in (
        (-0.5, px, ux, py, uy, height - 0.5),
        (width - 0.5, px, ux, py, uy, height - 0.5),
        (-0.5, py, uy, px, ux, width - 0.5),
        (height - 0.5, py, uy, px, ux, width - 0.5),
    ):
        if abs(step) > 1e-12:
            t = (edge - origin) / step
            if -0.5 - 1e-9 <= other_origin + t * other_step <= other_max + 1e-9:
                ts.append(t)
    t0, t1 = min(ts), max(ts)
    ends = (px + t0 * ux, py + t0 * uy, px + t1 * ux, py + t1 * uy)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    distance = -(xx - px) * uy + (yy - py) * ux
    sigma = fwhm_px / (2 * math.sqrt(2 * math.log(2)))
    # Gaussian cross-section integrated across each pixel (1-D, along the normal).
    profile = (
        sigma
        * math.sqrt(2 * math.pi)
        * (ndtr((distance + 0.5) / sigma) - ndtr((distance - 0.5) / sigma))
    )
    image = np.asarray(peak_rgb)[colours] * profile
    return image.astype(np.float32), tuple(float(v) for v in ends)


def _expose(rng, signal_adu, bias, *, gain, read_noise_e, white):
    electrons = rng.poisson(np.maximum(signal_adu, 0.0) * gain)
    adu = electrons / gain + bias + rng.standard_normal(bias.shape) * (read_noise_e / gain)
    return np.clip(np.rint(adu), 0, white).astype(np.uint16)


def _timeline(start, gap_s, blocks):
    out, now = [], start
    for count, exposure in blocks:
        stamps = []
        for _ in range(count):
            stamps.append(now)
            now = now + dt.timedelta(seconds=exposure + gap_s)
        out.append(stamps)
    return out


_STALE = re.compile(r"^(light|dark|flat|bias|sky_light)_\d{3}\.(dng|fits)$")


def _clear_stale(outdir):
    for sub in (*FRAME_KINDS, "truth"):
        folder = outdir / sub
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and _STALE.match(path.name):
                    path.unlink()


def _atomic_text(path, text):
    atomic_write(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")))
