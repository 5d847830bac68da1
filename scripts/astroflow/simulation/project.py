"""Simulated multi-night, multi-filter deep-sky project: mono FITS frames with the known truth.

What a mono camera behind a filter wheel records over several nights of one target: each
night (session) has its own pointing, seeing, sky and CCD temperature, and its own flats,
because the dust on the filters and sensor window moves between nights; each filter has its
own passband, so stars (from their temperature) and the emission nebula (Ha-, OIII- and
SII-bright regions) have different brightness through each.

Signal chain of a frame (per pixel, ADU)::

    lights: signal = flat_s * (sky_s,f + scene_f(frame)) + dark_rate_s * t
    flats:  signal = flat_s * panel_f * t_flat,f + dark_rate_s * t_flat,f
    darks:  signal = dark_rate_s * t;        bias: signal = 0
    raw    = clip(rint(Poisson(signal * gain) / gain + bias + N(0, read_noise / gain)), 0, white)

``flat_s`` is the same vignetting for every session (:func:`astroflow.simulation.optics.
vignetting`) times the dust of session ``s`` times the sensor's fixed PRNU; ``dark_rate_s`` is
the sensor's dark current map scaled to the session's CCD temperature (doubling every
``dark_doubling_c``). ``scene_f`` is the sky's truth through filter ``f``: Moffat stars whose
per-filter flux follows a blackbody of their temperature through the filter's passband, plus
the nebula's line emission that the filter passes.

The reference grid of every truth image is the first light of the first session and filter
(identity transform). The nebula's knots are at least 4 % of the frame wide and are not blurred
by the PSF; every filter of a night sees the same flat (dust on the sensor window, not on the
filters).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from scipy import ndimage

from astroflow import __version__
from astroflow.io.atomic import atomic_write
from astroflow.io.fits import write_image
from astroflow.simulation import optics
from astroflow.simulation.night import (
    _atomic_text,
    _bias_map,
    _dark_rate_map,
    _expose,
    _sample_magnitudes,
    _sky,
    _timeline,
    render_stars,
)

__all__ = [
    "EMISSION_LINES_NM",
    "FILTERS",
    "filter_fluxes",
    "invert_affine",
    "line_transmission",
    "project_layout",
    "sample_affine",
    "session_names",
    "simulate_project",
    "target_sessions",
]

#: Top-hat passbands: filter -> (blue edge nm, red edge nm, peak transmission). LRGB after
#: Baader's and Astronomik's broadband sets (the B band reaches OIII at 500.7 nm, as theirs
#: do, so OIII shows in B and G), narrowband filters 6 nm wide.
FILTERS = {
    "L": (400.0, 700.0, 0.95),
    "R": (590.0, 700.0, 0.95),
    "G": (490.0, 580.0, 0.95),
    "B": (390.0, 505.0, 0.95),
    "Ha": (653.3, 659.3, 0.90),
    "OIII": (497.7, 503.7, 0.90),
    "SII": (668.7, 674.7, 0.90),
}
#: Rest wavelengths of the nebula's emission lines, nm.
EMISSION_LINES_NM = {"Ha": 656.28, "OIII": 500.69, "SII": 671.65}
#: Filter whose flux a star's magnitude gives (``flux = t 10^(-0.4 (m - zp))`` through it).
MAGNITUDE_BAND = "G"
FRAME_KINDS = ("lights", "darks", "flats", "bias")
_STEMS = {"lights": "light", "darks": "dark", "flats": "flat", "bias": "bias"}
IMAGETYP = {"lights": "Light Frame", "darks": "Dark Frame", "flats": "Flat Field", "bias": "Bias Frame"}
_BAND_INDEX = {band: i for i, band in enumerate(FILTERS)}
_PLANCK_C2_NM_K = 1.438777e7
_BAND_SAMPLES = 257


def session_names(n_sessions):
    """Names of the sessions of a project: ``night1``, ``night2``...

    Parameters
    ----------
    n_sessions : int
        Number of sessions (>= 1).

    Returns
    -------
    list of str
    """
    return [f"night{k}" for k in range(1, int(n_sessions) + 1)]


def project_layout(outdir, *, sessions, filters, n_lights, n_darks, n_flats, n_bias):
    """The frame files :func:`simulate_project` writes, by folder, before they exist.

    Parameters
    ----------
    outdir : str
        Project folder.
    sessions : int
        Number of sessions (nights).
    filters : sequence of str
        Filters, each a key of :data:`FILTERS`.
    n_lights, n_darks, n_flats, n_bias : int
        Lights and flats per session and filter; darks and bias per session.

    Returns
    -------
    dict of str to list of str
        Normalised folder path (``outdir/{session}/lights_{filter}``, ``darks``,
        ``flats_{filter}``, ``bias``) -> its files, in order; folders with no frames are left
        out. The form of ``planned`` in :func:`astroflow.workflow.discovery.find_frames`.
    """
    counts = {"lights": n_lights, "darks": n_darks, "flats": n_flats, "bias": n_bias}
    layout = {}
    for session in session_names(sessions):
        for kind in FRAME_KINDS:
            for band in filters if kind in ("lights", "flats") else [None]:
                folder = os.path.normpath(os.path.join(outdir, session, f"{kind}_{band}" if band else kind))
                stem = "_".join(p for p in (_STEMS[kind], session, band) if p)
                files = [os.path.join(folder, f"{stem}_{i:03d}.fits") for i in range(1, counts[kind] + 1)]
                if files:
                    layout[folder] = files
    return layout


def target_sessions(outdir, *, sessions, filters, n_darks=1, n_flats=1, n_bias=1):
    """The ``sessions:`` of a deep-sky target that uses a simulated project.

    One target session per night and filter (``night1_R``...): its lights and flats are that
    filter's, its darks and bias the night's.

    Parameters
    ----------
    outdir : str
        Project folder.
    sessions : int
        Number of nights.
    filters : sequence of str
    n_darks, n_flats, n_bias : int, optional
        Frame counts; a kind with none is left out of the sessions.

    Returns
    -------
    dict of str to dict
        Session name -> ``{lights, darks, flats, bias, filter}`` (folder paths).
    """
    out = {}
    for night in session_names(sessions):
        for band in filters:
            entry = {"lights": f"{outdir}/{night}/lights_{band}"}
            if n_darks:
                entry["darks"] = f"{outdir}/{night}/darks"
            if n_flats:
                entry["flats"] = f"{outdir}/{night}/flats_{band}"
            if n_bias:
                entry["bias"] = f"{outdir}/{night}/bias"
            entry["filter"] = band
            out[f"{night}_{band}"] = entry
    return out


def _planck_photons(wavelength_nm, temperature_k):
    # Photon radiance per nm, up to a constant: B_lambda / (h c / lambda) ~ lambda^-4 / (e^x - 1).
    x = _PLANCK_C2_NM_K / (wavelength_nm * temperature_k)
    return wavelength_nm**-4.0 / np.expm1(x)


def _band_signal(band, temperature_k):
    lo, hi, peak = FILTERS[band]
    lam = np.linspace(lo, hi, _BAND_SAMPLES)
    t = np.asarray(temperature_k, dtype=np.float64)[..., None]
    return peak * np.trapezoid(_planck_photons(lam, t), lam, axis=-1)


def filter_fluxes(temperature_k, filters, flux_magnitude_band=1.0):
    """Photon flux of blackbodies through each filter, scaled to a flux in the magnitude band.

    The signal through filter ``f`` is ``T_f * integral of n_lambda(T) over its passband``
    (photon radiance ``n_lambda = B_lambda / (h c / lambda)``, Planck's law; a sensor of flat
    quantum efficiency; trapezoidal rule on 257 wavelengths), scaled so that the signal
    through :data:`MAGNITUDE_BAND` (G) is ``flux_magnitude_band``.

    Parameters
    ----------
    temperature_k : float or array_like
        ``(N,)`` effective temperatures, K (> 0).
    filters : sequence of str
        Keys of :data:`FILTERS`.
    flux_magnitude_band : float or array_like, optional
        ``(N,)`` flux through the G band, any unit (ADU per exposure).

    Returns
    -------
    dict of str to numpy.ndarray
        Filter -> ``(N,)`` float64 flux, the unit of ``flux_magnitude_band``.

    Raises
    ------
    ValueError
        If a temperature is not positive or a filter is unknown.
    """
    temperature = np.asarray(temperature_k, dtype=np.float64)
    if np.any(~(temperature > 0)):
        raise ValueError("temperatures must be positive (K)")
    unknown = [f for f in filters if f not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filters {unknown}; expected some of {sorted(FILTERS)}")
    ref = _band_signal(MAGNITUDE_BAND, temperature)
    scale = np.asarray(flux_magnitude_band, dtype=np.float64) / ref
    return {f: _band_signal(f, temperature) * scale for f in filters}


def line_transmission(band, line):
    """Transmission of filter ``band`` at emission line ``line`` (top-hat passbands).

    Parameters
    ----------
    band : str
        Key of :data:`FILTERS`.
    line : str
        Key of :data:`EMISSION_LINES_NM`.

    Returns
    -------
    float
        The filter's peak transmission if the line lies in its passband, else 0.
    """
    lo, hi, peak = FILTERS[band]
    return peak if lo <= EMISSION_LINES_NM[line] <= hi else 0.0


def simulate_project(
    outdir,
    *,
    seed=20261202,
    width=256,
    height=256,
    sessions=2,
    filters=("R", "G"),
    n_lights=3,
    n_darks=2,
    n_flats=2,
    n_bias=2,
    light_exposure_s=60.0,
    ccd_temp_c=(-10.0, -15.0),
    gain_e_per_adu=1.0,
    read_noise_e=5.0,
    bias_level_adu=500,
    white_level_adu=65535,
    bias_pattern_adu=1.5,
    dark_current_e_per_s=0.02,
    dark_reference_c=-10.0,
    dark_doubling_c=6.3,
    hot_pixel_fraction=2e-4,
    hot_pixel_e_per_s=5.0,
    warm_pixel_fraction=2e-3,
    warm_pixel_e_per_s=0.3,
    sky_adu_per_s_nm=0.05,
    sky_spread=0.3,
    sky_gradient=0.2,
    star_density=0.002,
    mag_bright=9.0,
    mag_faint=17.0,
    count_slope=0.33,
    zero_point_mag=19.0,
    fwhm_px=2.8,
    seeing_spread=0.25,
    fwhm_jitter=0.08,
    moffat_beta=3.0,
    pointing_px=12.0,
    pointing_rotation_deg=0.5,
    dither_px=3.0,
    nebula_adu_per_s=1.5,
    vignetting=0.3,
    n_dust=4,
    prnu=0.005,
    flat_level=0.4,
    flat_panel_adu_per_s_nm=100.0,
    start_time="2024-03-09T21:30:00",
    frame_gap_s=10.0,
    instrument="astroflow SimCam mono",
):
    """Render a multi-night, multi-filter project of mono FITS frames, with its known truth.

    Everything is a deterministic function of ``seed`` and the settings: each component, session
    and frame draws from its own ``numpy.random.default_rng([seed, component, ...])`` stream, so
    that changing frame counts leaves the sky, the sensor and each night's dust as they were.

    Files written (``{s}`` a session ``night1``..., ``{f}`` a filter, numbering 1-based)::

        outdir/{s}/lights_{f}/light_{s}_{f}_001.fits ...   uint16 (BZERO 32768), keywords
        outdir/{s}/flats_{f}/flat_{s}_{f}_001.fits ...      IMAGETYP, FILTER (lights, flats),
        outdir/{s}/darks/dark_{s}_001.fits ...              EXPTIME, CCD-TEMP, SET-TEMP,
        outdir/{s}/bias/bias_{s}_001.fits ...               XBINNING, YBINNING, EGAIN,
                                                            DATE-OBS, INSTRUME, ROWORDER
        outdir/truth/scene_{f}.fits        the sky's truth through filter f on the reference
                                           grid: stars (Moffat, FWHM fwhm_px) + nebula, no sky
                                           background, flat 1, no bias or dark; float32 ADU per
                                           light exposure
        outdir/truth/sky_{frame}.fits      per light: noise-free sky background + scene as that
                                           light sees it (its transform and seeing), flat 1,
                                           float32 ADU (what a perfect calibration returns)
        outdir/truth/flat_{s}.fits         true flat of session s (vignetting x dust x PRNU),
                                           median 1, float32
        outdir/truth/dust_{s}.fits         the dust of session s alone (1 where clean), sensor
                                           grid, float32
        outdir/truth/dust_{s}_reference.fits  the same on the reference grid: mean over the
                                           session's lights of the dust seen through each
                                           light's transform
        outdir/truth/dust_{s}.csv          its motes: x, y, radius_px, depth (sensor grid),
                                           x_ref, y_ref (reference grid, mean transform)
        outdir/truth/bias.fits             true bias, float32 ADU
        outdir/truth/dark_rate_{s}.fits    true dark current at session s's temperature, ADU/s
        outdir/truth/stars.csv             id, x, y (reference grid, px, 0-based), magnitude,
                                           temperature_k, flux_{f} (ADU per light exposure)
        outdir/truth/frames.csv            per light: frame, session, filter, m00...m12 (affine
                                           reference (x, y) -> frame (x, y)), fwhm_px, sky_adu,
                                           exposure_s, ccd_temp_c, date_obs
        outdir/truth/meta.json             settings, derived constants, file lists

    Files of an earlier run with these names are removed first from the folders written.

    Parameters
    ----------
    outdir : str or os.PathLike
        Project folder (created).
    seed : int, optional
        Seed of the whole project.
    width, height : int, optional
        Frame size, px (>= 32).
    sessions : int, optional
        Number of nights (>= 1), named ``night1``...
    filters : sequence of str, optional
        Filters of the wheel (keys of :data:`FILTERS`), each shot every night.
    n_lights, n_flats : int, optional
        Lights (>= 1) and flats (>= 0) per night and filter.
    n_darks, n_bias : int, optional
        Darks (at the light exposure) and bias frames per night (>= 0).
    light_exposure_s : float, optional
        Exposure of every light, s.
    ccd_temp_c : float or sequence of float, optional
        CCD temperature of each night, degC (cycled when shorter than ``sessions``).
    gain_e_per_adu, read_noise_e : float, optional
        Conversion gain, e-/ADU, and read noise, e- RMS.
    bias_level_adu, white_level_adu : int, optional
        Mean bias and saturation, ADU.
    bias_pattern_adu : float, optional
        RMS of the fixed column offsets, ADU (row offsets half of it).
    dark_current_e_per_s : float, optional
        Median dark current at ``dark_reference_c``, e-/s.
    dark_reference_c, dark_doubling_c : float, optional
        Temperature of that dark current, and the temperature rise that doubles it, degC.
    hot_pixel_fraction, hot_pixel_e_per_s, warm_pixel_fraction, warm_pixel_e_per_s : float, optional
        Hot and warm pixels and their median dark current at ``dark_reference_c``, e-/s.
    sky_adu_per_s_nm : float, optional
        Median sky continuum, ADU/s per nm of passband (times the filter's transmission).
    sky_spread : float, optional
        Log-normal spread of the sky level between nights.
    sky_gradient : float, optional
        Peak-to-peak fractional sky gradient across the diagonal (direction drawn per night).
    star_density, mag_bright, mag_faint, count_slope, zero_point_mag : float, optional
        Star field: stars per px^2, magnitude range, slope of the counts (dex/mag), magnitude
        giving 1 ADU/s through the G band.
    fwhm_px : float, optional
        Median seeing FWHM, px (also the FWHM of the stars of ``scene_{f}``).
    seeing_spread : float, optional
        Half-width of the uniform spread of each night's seeing, fraction of ``fwhm_px``.
    fwhm_jitter : float, optional
        Log-normal frame-to-frame spread of the FWHM within a night (clipped to +-15 %).
    moffat_beta : float, optional
        Moffat index of the PSF.
    pointing_px, pointing_rotation_deg : float, optional
        Half-width of the uniform offset (px, x and y) and rotation (degrees) of each night's
        pointing against the first night.
    dither_px : float, optional
        RMS dither of each light about its night's pointing, px (none in the reference light).
    nebula_adu_per_s : float, optional
        Peak Ha surface brightness of the nebula, ADU/s per px through a filter of
        transmission 1.
    vignetting : float, optional
        Fractional light loss in the farthest corner.
    n_dust : int, optional
        Dust motes per night, placed apart from every other night's motes.
    prnu : float, optional
        Pixel response non-uniformity, RMS fraction (the sensor's, the same every night).
    flat_level : float, optional
        Level of the flats as a fraction of the range from bias to white level.
    flat_panel_adu_per_s_nm : float, optional
        Flat panel brightness, ADU/s per nm of passband; sets each filter's flat exposure.
    start_time : str, optional
        ISO date-time of the first light; night ``k`` starts ``k - 1`` days later.
    frame_gap_s : float, optional
        Pause between frames, s.
    instrument : str, optional
        INSTRUME keyword.

    Returns
    -------
    dict
        The content of ``truth/meta.json``.

    Raises
    ------
    ValueError
        If a setting is out of range or a filter is unknown.
    """
    filters = list(filters)
    temps = [float(t) for t in np.atleast_1d(ccd_temp_c)]
    settings = dict(locals())
    settings.pop("outdir")
    settings["ccd_temp_c"] = temps
    settings.pop("temps")
    _validate(settings)
    outdir = Path(outdir)
    shape = (height, width)
    nights = session_names(sessions)
    night_temps = [temps[k % len(temps)] for k in range(sessions)]
    t0 = dt.datetime.fromisoformat(start_time)
    layout = project_layout(
        str(outdir),
        sessions=sessions,
        filters=filters,
        n_lights=n_lights,
        n_darks=n_darks,
        n_flats=n_flats,
        n_bias=n_bias,
    )

    def rng(*index):
        return np.random.default_rng([seed, *index])

    zeros = np.zeros(shape, dtype=np.int8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    # the sensor: bias, dark current, PRNU and the optical axis stay from night to night
    bias = _bias_map(rng(1), shape, bias_level_adu, bias_pattern_adu)
    dark_e, hot = _dark_rate_map(
        rng(2),
        shape,
        dark_current_e_per_s,
        hot_pixel_fraction,
        hot_pixel_e_per_s,
        warm_pixel_fraction,
        warm_pixel_e_per_s,
    )
    r_optics = rng(3)
    cx = (width - 1) / 2 + r_optics.normal(0.0, 0.03) * width
    cy = (height - 1) / 2 + r_optics.normal(0.0, 0.03) * height
    corner2 = max((x - cx) ** 2 + (y - cy) ** 2 for x in (0, width - 1) for y in (0, height - 1))
    vignette = optics.vignetting((xx - cx) ** 2 + (yy - cy) ** 2, corner2, vignetting)
    response = 1.0 + prnu * r_optics.standard_normal(shape)

    # the sky: stars and nebula on the reference grid
    margin = pointing_px + 4 * dither_px + np.deg2rad(pointing_rotation_deg) * (width + height) + 4 * fwhm_px + 10
    stars = _star_field(
        rng(4),
        shape,
        filters,
        star_density,
        mag_bright,
        mag_faint,
        count_slope,
        zero_point_mag,
        light_exposure_s,
        margin,
    )
    nebula = _nebula_components(rng(5), shape, nebula_adu_per_s)

    def scene(band, matrix, fwhm):
        # the truth through `band` in a frame whose transform (reference -> frame) is `matrix`
        fx = matrix[0, 0] * stars.x + matrix[0, 1] * stars.y + matrix[0, 2]
        fy = matrix[1, 0] * stars.x + matrix[1, 1] * stars.y + matrix[1, 2]
        image = render_stars(
            shape,
            fx.to_numpy(),
            fy.to_numpy(),
            stars[f"flux_{band}"].to_numpy(),
            fwhm_px=fwhm,
            moffat_beta=moffat_beta,
        ).astype(np.float64)
        inverse = invert_affine(matrix)
        xr = inverse[0, 0] * xx + inverse[0, 1] * yy + inverse[0, 2]
        yr = inverse[1, 0] * xx + inverse[1, 1] * yy + inverse[1, 2]
        for line, components in nebula.items():
            transmission = line_transmission(band, line)
            if transmission:
                image += transmission * light_exposure_s * _nebula_map(components, xr, yr)
        return image

    _clear_stale(outdir, layout)
    truth_dir = outdir / "truth"
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for band in filters:
        write_image(
            truth_dir / f"scene_{band}.fits",
            scene(band, identity, fwhm_px),
            header={"FILTER": band, "EXPTIME": light_exposure_s, "BUNIT": "ADU", "FWHM": fwhm_px, "SEED": seed},
            history=["astroflow.simulation.project: stars + nebula through the filter, reference grid"],
        )

    noise = dict(gain=gain_e_per_adu, read_noise_e=read_noise_e, white=white_level_adu)
    rows, placed = [], []
    for k, night in enumerate(nights):
        r_night = rng(6, k)
        if k == 0:
            pointing = identity
        else:
            theta = np.deg2rad(r_night.uniform(-pointing_rotation_deg, pointing_rotation_deg))
            shift = r_night.uniform(-pointing_px, pointing_px, 2)
            pointing = _rotation_about(theta, (width - 1) / 2, (height - 1) / 2, shift)
        seeing = fwhm_px * r_night.uniform(1.0 - seeing_spread, 1.0 + seeing_spread) if k else fwhm_px
        sky_factor = float(np.exp(sky_spread * r_night.standard_normal()))
        gradient_angle = r_night.uniform(0.0, 2 * np.pi)
        temp = night_temps[k]
        dark_rate = (dark_e * 2.0 ** ((temp - dark_reference_c) / dark_doubling_c) / gain_e_per_adu).astype(np.float32)

        motes = _separated_dust(rng(7, k), shape, n_dust, placed)
        placed.append(motes)
        dust = optics.apply_dust(np.ones(shape), motes, xx, yy)
        flat = vignette * dust * response
        flat /= np.median(flat)
        flat = flat.astype(np.float32)

        lights_per_band = [(band, i) for band in filters for i in range(n_lights)]
        exposures = [(n_lights * len(filters), light_exposure_s), (n_darks, light_exposure_s), (n_bias, 0.0)]
        flat_exposure = {
            band: _flat_exposure(band, flat_level, white_level_adu - bias_level_adu, flat_panel_adu_per_s_nm)
            for band in filters
        }
        exposures += [(n_flats, flat_exposure[band]) for band in filters]
        timeline = _timeline(t0 + dt.timedelta(days=k), frame_gap_s, exposures)
        common = {
            "INSTRUME": instrument,
            "CCD-TEMP": temp,
            "SET-TEMP": temp,
            "XBINNING": 1,
            "YBINNING": 1,
            "EGAIN": gain_e_per_adu,
        }

        dust_reference = np.zeros(shape)
        matrices = []
        for j, (band, i) in enumerate(lights_per_band):
            fi = _BAND_INDEX[band]
            r_frame = rng(8, k, fi, i)
            offset = r_frame.normal(0.0, dither_px, 2)
            fwhm = seeing * float(np.clip(np.exp(fwhm_jitter * r_frame.standard_normal()), 0.85, 1.15))
            if k == 0 and j == 0:
                offset, fwhm = np.zeros(2), fwhm_px
            matrix = pointing.copy()
            matrix[:, 2] += offset
            matrices.append(matrix)
            lo, hi, transmission = FILTERS[band]
            sky_level = sky_adu_per_s_nm * (hi - lo) * transmission * light_exposure_s * sky_factor
            truth = _sky(zeros, sky_level, (1.0,), sky_gradient, gradient_angle).astype(np.float64)
            truth += scene(band, matrix, fwhm)
            raw = _expose(rng(10, k, fi, i), flat * truth + dark_rate * light_exposure_s, bias, **noise)
            name = f"light_{night}_{band}_{i + 1:03d}"
            path = outdir / night / f"lights_{band}" / f"{name}.fits"
            stamp = timeline[0][j]
            _write_raw(
                path,
                raw,
                {
                    **common,
                    "IMAGETYP": IMAGETYP["lights"],
                    "FILTER": band,
                    "EXPTIME": light_exposure_s,
                    "DATE-OBS": stamp.isoformat(),
                    "OBJECT": "SIMPROJECT",
                },
            )
            write_image(
                truth_dir / f"sky_{name}.fits",
                truth,
                header={
                    "FRAME": name,
                    "FILTER": band,
                    "EXPTIME": light_exposure_s,
                    "BUNIT": "ADU",
                    "FWHM": fwhm,
                    "SEED": seed,
                },
                history=["astroflow.simulation.project: noise-free sky + scene, flat = 1, no bias/dark"],
            )
            # the reference pixel p sees the sensor at matrix p
            dust_reference += sample_affine(dust, matrix)
            rows.append(
                {
                    "frame": name,
                    "session": night,
                    "filter": band,
                    **{f"m{r}{c}": matrix[r, c] for r in range(2) for c in range(3)},
                    "fwhm_px": fwhm,
                    "sky_adu": sky_level,
                    "exposure_s": light_exposure_s,
                    "ccd_temp_c": temp,
                    "date_obs": stamp.isoformat(),
                }
            )
        dust_reference /= len(lights_per_band)
        mean = np.mean(matrices, axis=0)
        inverse = invert_affine(mean)
        motes = motes.assign(
            x_ref=inverse[0, 0] * motes.x + inverse[0, 1] * motes.y + inverse[0, 2],
            y_ref=inverse[1, 0] * motes.x + inverse[1, 1] * motes.y + inverse[1, 2],
        )

        # (kind, filter, count, exposure, slot in the timeline, random stream): the streams
        # follow the filter's name, not its place in the list
        calibration = [("darks", None, n_darks, light_exposure_s, 1, 1), ("bias", None, n_bias, 0.0, 2, 2)]
        calibration += [
            ("flats", band, n_flats, flat_exposure[band], 3 + b, 3 + _BAND_INDEX[band])
            for b, band in enumerate(filters)
        ]
        flat_adu = flat_level * (white_level_adu - bias_level_adu)
        for kind, band, count, exposure, slot, stream in calibration:
            for j in range(count):
                signal = dark_rate * exposure
                if kind == "flats":
                    # Panel brightness wanders by ~1 % between flats, as with a real EL panel.
                    signal = signal + (1.0 + 0.01 * rng(9, k, stream, j).standard_normal()) * flat_adu * flat
                raw = _expose(rng(11, k, stream, j), signal, bias, **noise)
                folder = f"{kind}_{band}" if band else kind
                path = Path(layout[os.path.normpath(outdir / night / folder)][j])
                header = {
                    **common,
                    "IMAGETYP": IMAGETYP[kind],
                    "EXPTIME": exposure,
                    "DATE-OBS": timeline[slot][j].isoformat(),
                }
                if band:
                    header["FILTER"] = band
                _write_raw(path, raw, header)

        write_image(
            truth_dir / f"flat_{night}.fits",
            flat,
            header={"SESSION": night, "SEED": seed},
            history=["astroflow.simulation.project: true flat (vignetting x dust x PRNU), median 1"],
        )
        write_image(
            truth_dir / f"dust_{night}.fits",
            dust,
            header={"SESSION": night, "SEED": seed},
            history=["astroflow.simulation.project: the session's dust alone, sensor grid"],
        )
        write_image(
            truth_dir / f"dust_{night}_reference.fits",
            dust_reference,
            header={"SESSION": night, "SEED": seed},
            history=["astroflow.simulation.project: the session's dust on the reference grid, mean over its lights"],
        )
        write_image(
            truth_dir / f"dark_rate_{night}.fits",
            dark_rate,
            header={"SESSION": night, "CCD-TEMP": temp, "BUNIT": "ADU/s", "SEED": seed},
            history=["astroflow.simulation.project: true dark current at the session's temperature"],
        )
        _atomic_text(truth_dir / f"dust_{night}.csv", motes.to_csv(index=False))

    write_image(
        truth_dir / "bias.fits",
        bias,
        header={"BUNIT": "ADU", "SEED": seed},
        history=["astroflow.simulation.project: true bias = level + fixed column/row pattern"],
    )
    _atomic_text(truth_dir / "stars.csv", stars.to_csv(index=False))
    _atomic_text(truth_dir / "frames.csv", pd.DataFrame(rows).to_csv(index=False))
    hot.insert(2, "rate_adu_per_s_at_reference", hot.pop("rate_e_per_s") / gain_e_per_adu)
    _atomic_text(truth_dir / "hot_pixels.csv", hot.to_csv(index=False))

    meta = {
        "generator": "astroflow.simulation.project.simulate_project",
        "astroflow_version": __version__,
        "settings": settings,
        "sessions": nights,
        "filters": filters,
        "ccd_temp_c": dict(zip(nights, night_temps)),
        "filter_passbands_nm": {f: list(FILTERS[f]) for f in filters},
        "line_transmission": {f: {line: line_transmission(f, line) for line in EMISSION_LINES_NM} for f in filters},
        "flat_exposure_s": {
            f: _flat_exposure(f, flat_level, white_level_adu - bias_level_adu, flat_panel_adu_per_s_nm) for f in filters
        },
        "vignetting_centre_xy": [cx, cy],
        "reference_frame": rows[0]["frame"],
        "n_stars": int(len(stars)),
        "frames": {folder: [Path(p).name for p in paths] for folder, paths in layout.items()},
        "target_sessions": target_sessions(
            str(outdir), sessions=sessions, filters=filters, n_darks=n_darks, n_flats=n_flats, n_bias=n_bias
        ),
        "units": {
            "scene": "ADU per light exposure",
            "star flux": "ADU per light exposure",
            "flat": "dimensionless, median 1",
            "dark_rate": "ADU/s",
            "coordinates": "px, 0-based, pixel centre integer",
        },
    }
    text = json.dumps(meta, indent=2) + "\n"
    _atomic_text(truth_dir / "meta.json", text)
    return json.loads(text)


def _validate(s):
    problems = []
    if s["width"] < 32 or s["height"] < 32:
        problems.append(f"width and height must be >= 32, got {s['width']}x{s['height']}")
    if s["sessions"] < 1 or s["n_lights"] < 1 or min(s["n_darks"], s["n_flats"], s["n_bias"]) < 0:
        problems.append("sessions and n_lights must be >= 1 and n_darks, n_flats, n_bias >= 0")
    if not s["filters"] or len(set(s["filters"])) != len(s["filters"]):
        problems.append(f"filters must be a non-empty list without repeats, got {s['filters']}")
    unknown = [f for f in s["filters"] if f not in FILTERS]
    if unknown:
        problems.append(f"unknown filters {unknown}; expected some of {sorted(FILTERS)}")
    if not s["ccd_temp_c"]:
        problems.append("ccd_temp_c must name at least one temperature")
    for key in (
        "light_exposure_s",
        "gain_e_per_adu",
        "fwhm_px",
        "star_density",
        "dark_doubling_c",
        "flat_panel_adu_per_s_nm",
    ):
        if not s[key] > 0:
            problems.append(f"{key} must be > 0, got {s[key]}")
    if not 0 <= s["bias_level_adu"] < s["white_level_adu"] <= 65535:
        problems.append("need 0 <= bias_level_adu < white_level_adu <= 65535")
    if not s["moffat_beta"] > 1 or not s["mag_bright"] < s["mag_faint"]:
        problems.append("need moffat_beta > 1 and mag_bright < mag_faint")
    if not 0 <= s["vignetting"] < 1 or not 0 < s["flat_level"] < 1 or not 0 <= s["seeing_spread"] < 1:
        problems.append("vignetting and seeing_spread must be in [0, 1) and flat_level in (0, 1)")
    try:
        dt.datetime.fromisoformat(s["start_time"])
    except (TypeError, ValueError):
        problems.append(f"start_time must be an ISO date-time, got {s['start_time']!r}")
    if problems:
        raise ValueError("simulate_project: " + "; ".join(problems))


def _rotation_about(theta, cx, cy, shift):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, cx - c * cx + s * cy + shift[0]], [s, c, cy - s * cx - c * cy + shift[1]]])


def invert_affine(matrix):
    """The inverse of a ``(2, 3)`` affine transform, as ``(2, 3)`` float64."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def sample_affine(image, matrix):
    """Resample an image through an affine map: output pixel ``p`` takes ``image`` at ``matrix p``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` image.
    matrix : numpy.ndarray
        ``(2, 3)`` affine map of output ``(x, y, 1)`` to input ``(x, y)``, px.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float64, bilinear (:func:`scipy.ndimage.affine_transform`, order 1), edges
        repeated.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    # scipy works in (row, column) order
    rows_cols = np.array([[matrix[1, 1], matrix[1, 0]], [matrix[0, 1], matrix[0, 0]]])
    offset = np.array([matrix[1, 2], matrix[0, 2]])
    return ndimage.affine_transform(
        np.asarray(image, dtype=np.float64), rows_cols, offset=offset, order=1, mode="nearest"
    )


def _flat_exposure(band, level, span_adu, panel_adu_per_s_nm):
    lo, hi, transmission = FILTERS[band]
    return round(level * span_adu / (panel_adu_per_s_nm * (hi - lo) * transmission), 2) or 0.01


def _star_field(rng, shape, filters, density, mag_bright, mag_faint, slope, zero_point, exposure_s, margin):
    height, width = shape
    lo_x, hi_x, lo_y, hi_y = -margin, width - 1 + margin, -margin, height - 1 + margin
    n = max(int(round(density * (hi_x - lo_x) * (hi_y - lo_y))), 1)
    x, y = rng.uniform(lo_x, hi_x, n), rng.uniform(lo_y, hi_y, n)
    mag = _sample_magnitudes(rng, n, mag_bright, mag_faint, slope)
    # Field stars are mostly G and K dwarfs; a log-normal around 5200 K spans M to B types.
    temperature = np.clip(5200.0 * rng.lognormal(0.0, 0.3, n), 2800.0, 20000.0)
    fluxes = filter_fluxes(temperature, filters, exposure_s * 10.0 ** (-0.4 * (mag - zero_point)))
    table = pd.DataFrame({"id": np.arange(1, n + 1), "x": x, "y": y, "magnitude": mag, "temperature_k": temperature})
    for band in filters:
        table[f"flux_{band}"] = fluxes[band]
    return table


def _nebula_components(rng, shape, peak):
    # Elliptical Gaussian knots: an Ha region (SII in it, weaker and more compact) and an
    # OIII region on the other side of the field, overlapping it a little.
    height, width = shape
    size = min(width, height)

    def knots(centre, n, sigma_range, amplitude_range, spread):
        out = []
        for _ in range(n):
            out.append(
                {
                    "x": centre[0] * width + rng.normal(0.0, spread) * size,
                    "y": centre[1] * height + rng.normal(0.0, spread) * size,
                    "sigma_px": rng.uniform(*sigma_range) * size,
                    "axis_ratio": rng.uniform(0.4, 1.0),
                    "angle": rng.uniform(0.0, np.pi),
                    "amplitude": rng.uniform(*amplitude_range) * peak,
                }
            )
        return out

    ha = knots(rng.uniform(0.3, 0.42, 2), 4, (0.05, 0.12), (0.4, 1.0), 0.06)
    sii = [dict(k, sigma_px=0.8 * k["sigma_px"], amplitude=k["amplitude"] * rng.uniform(0.2, 0.45)) for k in ha]
    oiii = knots(rng.uniform(0.58, 0.7, 2), 3, (0.04, 0.09), (0.3, 0.8), 0.05)
    return {"Ha": ha, "OIII": oiii, "SII": sii}


def _nebula_map(components, x, y):
    out = np.zeros(np.shape(x))
    for k in components:
        c, s = math.cos(k["angle"]), math.sin(k["angle"])
        u = (x - k["x"]) * c + (y - k["y"]) * s
        v = -(x - k["x"]) * s + (y - k["y"]) * c
        out += k["amplitude"] * np.exp(-0.5 * ((u / k["sigma_px"]) ** 2 + (v / (k["axis_ratio"] * k["sigma_px"])) ** 2))
    return out


def _separated_dust(rng, shape, n_dust, others):
    # "The dust moved": a night's motes lie clear of every earlier night's, so that each
    # night's dust can be measured on its own in a stack of all of them.
    earlier = pd.concat(others, ignore_index=True) if others else None
    accepted = []
    for _ in range(1000 * max(n_dust, 1)):
        if len(accepted) == n_dust:
            break
        mote = optics.draw_dust(rng, shape, 1)
        rows = [earlier] if earlier is not None else []
        rows += accepted
        if rows:
            near = pd.concat(rows, ignore_index=True)
            gap = np.hypot(near.x - mote.x[0], near.y - mote.y[0]) - 1.5 * (near.radius_px + mote.radius_px[0])
            if (gap < 0).any():
                continue
        accepted.append(mote)
    if len(accepted) < n_dust:
        raise ValueError(
            f"simulate_project: no room for {n_dust} separated dust motes per night in a {shape[1]}x{shape[0]} frame"
        )
    if not accepted:
        return optics.draw_dust(rng, shape, 0)
    return pd.concat(accepted, ignore_index=True)


def _write_raw(path, raw, header):
    # What a camera driver writes: uint16 (stored as int16 + BZERO 32768), rows top-down.
    hdu = fits.PrimaryHDU(np.ascontiguousarray(raw, dtype=np.uint16))
    for key, value in header.items():
        hdu.header[key] = value
    hdu.header["ROWORDER"] = "TOP-DOWN"
    atomic_write(path, lambda tmp: fits.HDUList([hdu]).writeto(tmp, overwrite=True))


_STALE = re.compile(r"^(light|dark|flat|bias)_night\d+(_[A-Za-z0-9]+)?_\d{3}\.fits$")
_STALE_TRUTH = re.compile(
    r"^(sky_light_.*|scene_.*|flat_night\d+|dust_night\d+(_reference)?|dark_rate_night\d+)\.fits$"
)


def _clear_stale(outdir, layout):
    for folder in layout:
        folder = Path(folder)
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and _STALE.match(path.name):
                    path.unlink()
    truth = outdir / "truth"
    if truth.is_dir():
        for path in truth.iterdir():
            if path.is_file() and (_STALE_TRUTH.match(path.name) or re.match(r"^dust_night\d+\.csv$", path.name)):
                path.unlink()

