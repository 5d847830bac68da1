"""Synthetic training pairs for the star-removal network: modelled stars added to starless skies.

As nox did ("charvey2718/nox, physically modelled synthetic stars"), every sample is a pair made
in the linear domain and only then given a display transform:

    starless_lin = B + n_B                   (background and its own noise: the target)
    starry_lin   = B + n_B + S + n_S          (the network input)

``B`` is a noise-free, non-negative starless sky (procedural nebulosity, a real photograph mixed
with nebulosity, or a mostly dark sky; galaxies and nebula knots belong to it), ``S`` the light of
the stars after saturation, ``n_B`` the shot and read noise of the background and ``n_S`` the
extra shot noise of the stars: both images share the *same* background noise realisation, so the
network learns to remove stars, not noise. Saturated pixels are flat at the saturation level.

Every physical ingredient has a parameter drawn per sample (see :func:`render_sample`, which
lists them and their ranges; ``Sample.params`` records the values used):

* background -- fractal (power-law spectrum) clouds in a few emission colours (H-alpha red,
  OIII teal, reflection blue, broadband dust, SHO gold), sharp filaments (ridged noise), dark
  absorbing dust lanes (reddening, also dimming the stars behind them), a sky pedestal with a
  light-pollution gradient, vignetting; or one of the scikit-image sample photographs
  (randomly cropped, rescaled, rotated, dimmed, blurred less than the stars, mixed with
  nebulosity); or a dark sky with faint airglow/IFN; plus small galaxies (Sersic profiles) and
  nebula knots, intrinsically extended (at least ~FWHM / 4 in size) and blurred by the field PSF,
  so they are always broader than the stars;
* stars -- from ~20 to ~2000 per 256 x 256 px with a power-law (Pareto) flux distribution from
  the noise floor up; Moffat (Moffat 1969, A&A 3, 455) or Airy-pattern PSFs with a field FWHM
  of 1.5-15 px (log-uniform) and a small star-to-star scatter, field ellipticity up to 0.3,
  coma (an offset, broader wing growing with the distance from the optical centre), chromatic
  fringing (per-channel PSF size and lateral shift), colours from 3000-15000 K blackbodies
  (:func:`astroflow.simulate.colour_ratios`), bloated cores of bright stars, halos, 4
  diffraction spikes in "reflector" fields and a saturation level (flat-topped cores);
* camera -- Poisson shot noise at a random gain plus Gaussian read noise, added in the linear
  domain: the noise is stretched with the stars, as in real data;
* display -- an MTF autostretch (:mod:`astroflow.stretch`; PixInsight STF / Siril) computed
  from the starry image and applied to both, or a linear black/white normalisation standing
  for already-stretched 8/16-bit data; both exactly invertible (:func:`invert_display`).

Realism effects (issue 12: real stars do not look like clean Moffats in a stretched image),
each on in a drawn fraction of the samples (probabilities in :func:`render_sample`), from a
random stream of their own, so that :data:`EFFECTS_OFF` gives back exactly the samples of the
first version:

* bloated saturated cores -- a low saturation level and a few stars far above it: saturation,
  then the stretch, turn the core white (all channels at 1) and leave the star's colour in the
  rim;
* wide halos -- a faint, broad second Moffat of low beta (scattered light);
* guiding errors -- all star light smeared along a wandering path (trailed, elongated stars);
* chromatic aberration -- besides the lateral colour and per-channel sizes: constant R/B
  offsets (atmospheric dispersion) and a bloated blue channel (achromat halos);
* diffraction spikes of several kinds -- 4 (Newtonian spider, any angle), 6 + 2 minor (JWST),
  none (refractors);
* crowded Milky Way fields -- thousands of small, mostly faint stars;
* bright nebulosity behind the stars -- emission 3-20 x brighter;
* 8-bit and JPEG files -- the starry input and the starless target through the same encoder
  (:func:`_encode` says why);
* real star stamps -- stars cut from real frames (:mod:`astroflow.simulation.starstamps`)
  pasted instead of synthetic PSFs, resampled, rotated, flipped, coloured per channel, in the
  linear domain before saturation, noise and stretch (``stamps`` of :func:`render_sample`).

Shards (:func:`make_shard`) hold many samples in one compressed ``.npz`` file.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import fft as sfft
from scipy import special

from astroflow.checks import check_float, check_int
from astroflow.io.atomic import atomic_write
from astroflow.simulation.night import colour_ratios, moffat_alpha
from astroflow.simulation.starstamps import StampLibrary, paste_stamp
from astroflow.stretch import MTFStretch, auto_stretch

log = logging.getLogger(__name__)

__all__ = [
    "BACKGROUND_KINDS",
    "EFFECTS_OFF",
    "ENCODINGS",
    "PHOTOS",
    "Sample",
    "VERSION",
    "invert_display",
    "load_shard",
    "make_shard",
    "render_sample",
]

VERSION = 1
BACKGROUND_KINDS = ("nebula", "photo", "dark")
_KIND_PROBABILITIES = (0.45, 0.30, 0.25)
# scikit-image sample images that load offline and hold no stars (hubble_deep_field has stars).
PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "page",
    "text",
    "horse",
    "grass",
    "gravel",
    "brick",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "cat",
    "clock",
)
# Linear RGB colours of emission / reflection components (max 1), jittered per sample.
_PALETTE = {
    "ha": (1.0, 0.12, 0.08),
    "oiii": (0.08, 0.85, 0.90),
    "reflection": (0.45, 0.62, 1.0),
    "dust": (0.85, 0.62, 0.45),
    "sho_gold": (1.0, 0.75, 0.25),
}
_PALETTE_WEIGHTS = (0.35, 0.25, 0.15, 0.15, 0.10)
_AIRY_K_FWHM = 3.2327  # 2 J1(x)/x squared is 1/2 at x = 1.61634: k = 3.2327 / FWHM
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_STAMP_RADII = (3, 4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128)
_TABLE_STEP = 256  # samples of tabulated PSF profiles per unit of scaled radius
_RENDER_THRESHOLD = 0.05  # stars are drawn out to where they fall below this x sky noise sigma
_OVERRIDABLE = {
    "n_stars",
    "fwhm",
    "psf",
    "beta",
    "ellipticity",
    "ellipticity_angle",
    "fwhm_scatter",
    "bloat",
    "coma",
    "coma_fraction",
    "coma_offset",
    "chromatic",
    "halo",
    "halo_fraction",
    "halo_sigma_fwhm",
    "spikes",
    "spike_angle",
    "spike_strength",
    "spike_width_fwhm",
    "flux_slope",
    "snr_min",
    "dynamic_range",
    "temperature_ref",
    "dust_star_fraction",
    "display",
    "target_background",
    "linked",
    "shadows_clip",
    "white_percentile",
    "black_fraction",
    "n_galaxies",
    "n_knots",
    "gain",
    "read_noise_e",
    "sky_adu",
    "saturation_snr",
    "vignetting",
    "gradient",
    "background_blur",
}
# Realism effects (issue 12): each on in a drawn fraction of the samples, drawn from a stream of
# their own (see _draw_effects); EFFECTS_OFF switches them all off.
EFFECTS_OFF = {
    "saturated_cores": False,
    "wide_halo": False,
    "trail": False,
    "dispersion": False,
    "blue_bloat": False,
    "spike_kind": "newtonian",
    "crowded": False,
    "bright_nebula": False,
    "encoding": "float",
    "stamps": False,
}
ENCODINGS = ("float", "uint8", "jpeg")
_EFFECT_KEYS = {
    "heavy_saturation_snr",
    "heavy_dynamic_range",
    "heavy_bloat",
    "wide_halo_fraction",
    "wide_halo_beta",
    "wide_halo_fwhm",
    "trail_length",
    "trail_angle",
    "trail_wobble",
    "trail_seed",
    "dispersion_px",
    "dispersion_angle",
    "blue_bloat_scale",
    "spike_minor",
    "crowded_n_stars",
    "crowded_fwhm",
    "crowded_flux_slope",
    "crowded_snr_min",
    "nebula_boost",
    "jpeg_quality",
    "jpeg_subsampling",
    "stamp_fraction",
}
_OVERRIDABLE |= set(EFFECTS_OFF) | _EFFECT_KEYS
# real star stamps (astroflow.simulation.starstamps)
_STAMP_NOISE = 0.3  # a pasted stamp brings at most this x the local sky sigma of its own noise
_STAMP_SCALES = (0.7, 4.0)  # resampling factors allowed (pasted FWHM / stamp FWHM)
_STAMP_MIN_SNR = 1.0  # fainter stars stay synthetic (their shape is lost in the noise)
_STAMP_MAX_STARS = 1500  # per sample, the brightest candidates
_JPEG_SAMPLING = {"420": "IMWRITE_JPEG_SAMPLING_FACTOR_420", "444": "IMWRITE_JPEG_SAMPLING_FACTOR_444"}


@dataclass
class Sample:
    """One synthetic training pair.

    Attributes
    ----------
    starry, starless : numpy.ndarray
        ``(H, W, C)`` float32 in ``[0, 1]``, display domain: network input and target (for the
        ``uint8`` and ``jpeg`` encodings, multiples of 1/255 as decoded from the file).
    footprint : numpy.ndarray
        ``(H, W)`` bool, pixels where the added stars (noise-free, after saturation) exceed
        0.5 x the local background noise sigma in at least one channel (linear domain).
    star_flux_linear : float
        Total star light added to the frame (sum of ``S`` over pixels and channels), ADU.
    linear_starry, linear_starless : numpy.ndarray
        ``(H, W, C)`` float32, ADU: the images before the display transform (the starless
        one may dip below 0 where read noise exceeds a faint sky, as in bias-subtracted data).
    stretch : dict
        JSON-serialisable display transform, see :func:`invert_display`: ``{"kind": "mtf",
        "low", "high", "shadows", "midtones" (per-channel lists), "target_background",
        "linked", "shadows_clip"}`` or ``{"kind": "none", "black", "white"}`` (no non-linear
        stretch: ``display = clip((linear - black) / (white - black), 0, 1)``).
    kind : str
        Background kind, one of :data:`BACKGROUND_KINDS`.
    params : dict
        Every parameter drawn for this sample (JSON-serialisable).
    stars : dict of numpy.ndarray
        Catalogue of the rendered stars (also those just outside the frame whose light reaches
        it): ``x``, ``y`` (px, pixel centres at integers, x = column), ``flux`` ``(N, C)`` total
        flux per channel after dust and vignetting (ADU), ``fwhm`` (px), ``temperature`` (K),
        ``peak_snr`` (peak over the local background sigma, brightest channel, before
        saturation, after trailing), ``stamp`` (index of the real stamp pasted for the star
        in the library given, -1 for a synthetic PSF).
    objects : list of dict
        Galaxies and nebula knots (part of the starless truth): ``kind``, ``x``, ``y``,
        ``radius`` (px), ``peak_snr`` (after the PSF blur, over the sky sigma).
    """

    starry: np.ndarray
    starless: np.ndarray
    footprint: np.ndarray
    star_flux_linear: float
    linear_starry: np.ndarray
    linear_starless: np.ndarray
    stretch: dict
    kind: str = "nebula"
    params: dict = field(default_factory=dict)
    stars: dict = field(default_factory=dict)
    objects: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# public API


def render_sample(rng, size=256, *, channels=3, kind=None, overrides=None, stamps=None):
    """Render one synthetic starry/starless training pair.

    Parameters drawn per sample (``U`` uniform, ``logU`` log-uniform; areas scale with
    ``(size / 256)**2``):

    * kind: nebula 45 %, photo 30 %, dark 25 %;
    * camera: gain ``logU(0.3, 4)`` e-/ADU, read noise ``U(1.5, 10)`` e-, sky pedestal
      ``logU(30, 3000)`` ADU with a neutral-to-sodium tint, gradient ``U(0, 0.4)`` of the sky
      across the frame, vignetting ``U(0, 0.35)`` at the corners, saturation
      ``logU(200, 6000)`` sky sigmas above the brightest background pixel;
    * stars: count ``logU(20, 2000)`` (at most one per 6.7 FWHM^2), Pareto fluxes of index
      ``U(0.5, 1.1)`` from a peak of ``U(0.5, 3)`` sky sigmas over a dynamic range
      ``logU(1e3, 1e6)``; PSF Moffat (70 %, beta ``U(1.5, 5)``) or Airy (30 %), field FWHM
      ``logU(1.5, 15)`` px with ``U(2, 8)`` % scatter, bright cores broadened by
      ``U(0, 0.3)`` x FWHM per decade above 50 sigma; ellipticity ``U(0, 0.3)`` (half of the
      fields, else ``U(0, 0.06)``) at a field angle; coma in 25 % (wing of ``U(0.1, 0.35)`` of
      the flux, 1.8x broader, offset ``U(0.3, 1)`` FWHM at the corners, radial from an optical
      centre); chromatic fringing in 40 % of RGB fields (R and B FWHM ``+-12 %``, lateral
      shift ``U(0, 0.8)`` px at the corners); temperatures ``logU(3000, 15000)`` K, white
      balanced at ``U(5000, 7000)`` K; halos in 50 % (``logU(0.5, 5)`` % of the flux in a
      Gaussian of sigma ``U(3, 8)`` x FWHM); 4 diffraction spikes in 30 % (intensity falling as
      ``1 / d**2``, so the visible length grows as the square root of the flux); in nebula
      fields ``U(0.5, 0.9)`` of the stars lie behind the dust;
    * background: 1-3 emission components of ``logU(0.03, 4)`` x sky (lognormal clouds of a
      ``k**-U(2.6, 3.8)`` spectrum), filaments in 60 %, dust lanes of peak optical depth
      ``logU(0.3, 3)`` in 60 %; photographs at ``logU(1, 10)`` x sky, mixed with nebulosity
      in half of them; dark skies with 0.5-3 % airglow and IFN in half of them;
    * objects: galaxies (Sersic, n ``U(0.5, 2.5)``, effective radius ``logU(1.5, 5)`` px, axis
      ratio ``U(0.3, 1)``) and knots (1-3 Gaussians of sigma ``U(1.5, 4)`` px), sizes times
      ``max(1, FWHM / 4)``, peak ``logU(3, 60)`` sky sigmas after the PSF blur; photographs
      are blurred by ``U(0.1, 0.6)`` of the PSF sigma, other backgrounds by ``U(0.5, 1)``;
    * display: MTF autostretch with probability 0.6 (target background ``U(0.1, 0.3)``;
      unlinked with the shadows clipped at -2.8 MADs or not at all, or, 25 %, linked without
      shadows clipping), else linear normalisation
      ``(x - black) / (white - black)`` with the black point at ``U(0.6, 1)`` x the 1st
      percentile and the white point at the ``U(99.5, 99.99)`` percentile, moved where needed
      so that the median lands in ``[0.08, 0.35]``.

    Realism effects (keys of ``Sample.params``; :data:`EFFECTS_OFF` switches them all off):

    * ``saturated_cores`` 30 %: saturation at ``logU(20, 300)`` sky sigmas, dynamic range at
      least ``logU(1e4, 1e6)``, core bloat at least ``U(0.15, 0.5)``, plus 1-5 stars (per
      256^2 px) whose peak is ``logU(2, 300)`` x the saturation level;
    * ``wide_halo`` 50 %: ``logU(1, 10)`` % of the flux in a Moffat of beta ``U(1.2, 2)`` and
      FWHM ``logU(3, 12)`` x the field FWHM;
    * ``trail`` 25 %: a path of ``logU(0.5, 4)`` FWHM (at most pad / 2 px) at a random angle,
      wandering across by up to ``U(0, 0.25)`` x its length, at an uneven speed; it smears
      the stars and the sky alike (galaxies are trailed too);
    * ``dispersion`` 30 % (RGB): R and B offset by ``+-U(0.2, 1.5) / 2`` px along a random
      direction; ``blue_bloat`` 20 % (RGB): B FWHM ``x (1 + U(0.15, 0.5))``;
    * ``spike_kind`` (when ``spikes``): ``"newtonian"`` 65 % (4), ``"jwst"`` 35 % (6 spikes
      60 degrees apart and a minor pair of ``U(0.15, 0.5)`` of their strength);
    * ``crowded`` 15 %: ``logU(1500, 6000)`` stars, FWHM ``logU(1.3, 3.5)`` px, Pareto index
      ``U(0.9, 1.4)``, faintest peak ``U(0.3, 1.5)`` sky sigmas, at most one star per 2 FWHM^2;
    * ``bright_nebula`` 30 %: nebulosity ``logU(3, 20)`` x brighter (``nebula_gain``);
    * ``encoding``: ``"float"`` 70 %, ``"uint8"`` 15 %, ``"jpeg"`` 15 % (quality ``50-95``,
      chroma 4:2:0 70 % or 4:4:4), applied to both images;
    * ``stamps`` 60 % (with a library): a fraction ``U(0.3, 1)`` of the stars of peak SNR >= 1
      near the frame become real stamps where one fits (:func:`_assign_stamps`).

    Parameters
    ----------
    rng : numpy.random.Generator or seed
        Source of randomness (from :func:`numpy.random.default_rng`, which is applied to
        anything else, e.g. an int or a list of ints; it is spawned into
        independent streams for the field, background, objects, stars and noise); the sample
        is a deterministic function of its state.
    size : int, optional
        Height and width, px (>= 32).
    channels : int, optional
        3 (RGB) or 1 (mono).
    kind : str or None, optional
        Background kind, one of :data:`BACKGROUND_KINDS`; ``None`` draws one.
    overrides : dict or None, optional
        Fixed values for drawn parameters (keys as in ``Sample.params``, e.g. ``n_stars``,
        ``fwhm``, ``psf`` ("moffat" or "airy"), ``spikes``, ``halo``, ``coma``, ``chromatic``,
        ``display`` ("mtf" or "none"), ``n_galaxies``, ``n_knots``); for tests and ablations.
        Every random draw is made whatever the overrides, so the rest of the sample is the same.
        Overriding a parameter that an effect sets (``saturation_snr``, ``n_stars``, ``fwhm``...)
        keeps the value given.
    stamps : StampLibrary or str or os.PathLike or None, optional
        Real star stamps (:func:`astroflow.simulation.realstars.build_stamp_library`), or the
        ``.npz`` file of a saved library; ``None`` or an empty library: synthetic PSFs only.

    Returns
    -------
    Sample
        The pair, its linear versions, footprint, star flux, display transform and truth.

    Raises
    ------
    ValueError
        For an unknown ``kind`` or override, ``channels`` not 1 or 3, or ``size < 32``.

    Notes
    -----
    Sources: nox ("charvey2718/nox, physically modelled synthetic stars") for the approach;
    Moffat (1969, A&A 3, 455) and the Airy pattern ``(2 J1(x) / x)**2`` for the PSFs; the MTF
    autostretch of PixInsight / Siril for the display transform.
    """
    size = check_int("size", size, 32)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if kind is not None and kind not in BACKGROUND_KINDS:
        raise ValueError(f"kind must be one of {BACKGROUND_KINDS} or None, got {kind!r}")
    overrides = dict(overrides or {})
    unknown = set(overrides) - _OVERRIDABLE
    if unknown:
        raise ValueError(f"unknown overrides: {sorted(unknown)}")

    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    # the first five streams are those of version 1: with EFFECTS_OFF the samples are its samples
    r_field, r_bg, r_obj, r_star, r_noise, r_effects, r_stamp, r_bright = rng.spawn(8)
    p = _draw_params(r_field, size, channels, kind)
    p.update(_draw_effects(r_effects, size))
    p.update(overrides)
    _derive_params(p, size, channels, set(overrides))

    sky_sigma = math.sqrt(p["sky_adu"] / p["gain"] + (p["read_noise_e"] / p["gain"]) ** 2)
    background, tau = _background(r_bg, p, size)
    objects_layer, objects = _objects(r_obj, p, size, sky_sigma)
    sigma_psf = p["fwhm"] * _FWHM_TO_SIGMA
    objects_layer = _blur(objects_layer, sigma_psf)
    if p["trail"]:  # guiding errors smear the whole sky, galaxies and nebulae too
        background, objects_layer = _smear(background, p), _smear(objects_layer, p)
    vig = _vignette(p, *np.meshgrid(np.arange(size), np.arange(size), indexing="xy"), size)
    background = (background + objects_layer) * vig[..., None]
    for obj in objects:
        iy, ix = int(round(obj["y"])), int(round(obj["x"]))
        obj["peak_snr"] = float(objects_layer[iy, ix].max() * vig[iy, ix] / sky_sigma)
    background = _to_channels(background, channels)
    tau = None if tau is None else _to_channels(tau, channels)

    sigma_b = np.sqrt(background / p["gain"] + (p["read_noise_e"] / p["gain"]) ** 2)
    cat = _star_catalogue(r_star, p, size, channels, tau, sigma_b, sky_sigma, r_bright)
    saturation = float(background.max() + p["saturation_snr"] * sky_sigma)
    library = _stamp_library(stamps)
    pastes = _assign_stamps(r_stamp, p, cat, library, size, saturation, background)
    stars = _render_stars(p, cat, size, channels, sky_sigma, pastes, library)
    _update_catalogue(p, cat, pastes, library)

    # camera: Poisson(B g) + Poisson(S g) = Poisson((B + S) g); S is clipped at saturation first
    gain = p["gain"]
    p["saturation_adu"] = saturation
    saturated = background + stars >= saturation
    star_light = np.minimum(background + stars, saturation) - background
    noise_b = r_noise.poisson(background * gain) / gain - background
    noise_b += r_noise.normal(0.0, p["read_noise_e"] / gain, background.shape)
    noise_s = r_noise.poisson(star_light * gain) / gain - star_light
    starless_lin = background + noise_b
    starry_lin = np.minimum(starless_lin + star_light + noise_s, saturation)
    starry_lin[saturated] = saturation
    footprint = (star_light > 0.5 * sigma_b).any(axis=-1)

    linear_starry = starry_lin.astype(np.float32)
    linear_starless = starless_lin.astype(np.float32)
    disp_starry, disp_starless, stretch = _display(p, linear_starry, linear_starless)
    # 8-bit / JPEG files: both images through the same encoder (see _encode)
    disp_starry, disp_starless = _encode(p, disp_starry), _encode(p, disp_starless)
    return Sample(
        starry=disp_starry,
        starless=disp_starless,
        footprint=footprint,
        star_flux_linear=float(star_light.sum()),
        linear_starry=linear_starry,
        linear_starless=linear_starless,
        stretch=stretch,
        kind=p["kind"],
        params=_jsonable(p),
        stars=cat["public"],
        objects=objects,
    )


def invert_display(display, stretch):
    """Map display values back to linear ADU (exact where the display was not clipped).

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W, C)`` values in ``[0, 1]`` (``Sample.starry`` / ``starless``).
    stretch : dict
        ``Sample.stretch`` (or an entry of a shard's ``meta["stretch"]``).

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)`` float32 linear values, ADU.

    Raises
    ------
    ValueError
        If ``stretch["kind"]`` is not ``"mtf"`` or ``"none"``.

    Notes
    -----
    MTF inverse: ``MTF(1 - m, y)`` (PixInsight / Siril), via :meth:`MTFStretch.invert`.
    """
    display = np.asarray(display)
    if stretch.get("kind") == "mtf":
        shape = (1, 1, -1)
        mtf_stretch = MTFStretch(
            low=np.asarray(stretch["low"], dtype=np.float64).reshape(shape),
            high=np.asarray(stretch["high"], dtype=np.float64).reshape(shape),
            shadows=np.asarray(stretch["shadows"], dtype=np.float64).reshape(shape),
            midtones=np.asarray(stretch["midtones"], dtype=np.float64).reshape(shape),
        )
        return mtf_stretch.invert(display)
    if stretch.get("kind") == "none":
        black, white = float(stretch["black"]), float(stretch["white"])
        return (display.astype(np.float64) * (white - black) + black).astype(np.float32)
    raise ValueError(f"unknown display transform {stretch.get('kind')!r}")


def make_shard(path, n_samples, seed, *, size=256, channels=3, stamps=None, mono_fraction=0.0):
    """Write a shard of synthetic training pairs to a compressed ``.npz`` file.

    Sample ``i`` is ``render_sample(np.random.default_rng([*seed, i]), size, channels=...,
    stamps=...)`` (``[seed, i]`` for an integer seed), so a shard is a deterministic function
    of ``(seed, size, channels, stamps, mono_fraction)``: the same arguments give identical
    arrays. In an RGB shard, a fraction ``mono_fraction`` of the samples (drawn per sample from
    the stream ``[*seed, i, 1]``) are rendered mono and stored as three equal channels, which is
    how :func:`astroflow.restoration.starnet.predictor` gives a mono image to the network: a
    mono camera's grey stars on a grey sky, without the colour that tells an RGB star from a
    knot of nebulosity. Measured on the workflow's real SBIG stack (2026-12-03; median
    fraction of the stars' peak removed by the network): 0.97 with ``models/starless-v1.pt``,
    0.92 with ``models/starless.pt`` (fine-tuned on RGB data), 0.79 after 3000 more steps on
    RGB shards, and with a quarter of the samples mono 0.83 after 3000 steps but 0.76 after
    4200: the mono samples do not stop that drift (``models/starless.json``,
    ``fine_tunes_not_shipped_2026_12_03``).

    Parameters
    ----------
    path : str or os.PathLike
        Output file (written as given, by :func:`astroflow.io.atomic.atomic_write`).
    n_samples : int
        Number of samples (>= 1).
    seed : int or sequence of int
        Non-negative seed entropy.
    size : int, optional
        Height and width of the samples, px.
    channels : int, optional
        3 (RGB) or 1 (mono).
    stamps : StampLibrary or str or os.PathLike or None, optional
        Real star stamps (:mod:`astroflow.simulation.starstamps`), or the ``.npz`` file of a
        saved library. ``None`` or an empty library: synthetic PSFs only (logged).
    mono_fraction : float, optional
        Share of the samples of an RGB shard rendered mono, in ``[0, 1]`` (ignored when
        ``channels`` is 1).

    Returns
    -------
    None
        The file holds ``starry`` and ``starless`` ``(N, C, H, W)`` uint16 (display value
        x 65535, rounded), ``footprint`` ``(N, H, W)`` uint8, ``star_flux`` ``(N,)`` float64
        (ADU) and ``meta``, a JSON string with ``version``, ``seed``, ``size``, ``channels``,
        ``n_samples``, per-sample ``kind``, ``stretch`` (see :func:`invert_display`; it
        applies to the stored values divided by 65535), ``encoding`` (``"float"``,
        ``"uint8"`` or ``"jpeg"``: the stretch inverts the 8-bit ones only up to their
        rounding and compression), ``stamp_stars`` (stars pasted from real stamps), ``mono``
        (the sample was rendered mono: all of a mono shard's), ``mono_fraction``, and ``stamps``, the library's
        :meth:`StampLibrary.summary` (or None).

    Raises
    ------
    ValueError
        If ``n_samples < 1`` or the seed, size, channels or mono fraction are invalid.
    """
    n_samples = check_int("n_samples", n_samples, 1)
    mono_fraction = check_float("mono_fraction", mono_fraction, 0.0, high=1.0)
    entropy = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]
    if any(s < 0 for s in entropy):
        raise ValueError(f"seed entries must be non-negative, got {seed}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    library = _stamp_library(stamps)
    if library is None or len(library) == 0:
        log.info("no real star stamps given: synthetic PSFs only")
    shape = (n_samples, channels, size, size)
    starry = np.empty(shape, dtype=np.uint16)
    starless = np.empty(shape, dtype=np.uint16)
    footprint = np.empty((n_samples, size, size), dtype=np.uint8)
    star_flux = np.empty(n_samples, dtype=np.float64)
    kinds, stretches, encodings, stamp_stars, monos = [], [], [], [], []
    for i in range(n_samples):
        rng = np.random.default_rng(entropy + [i])
        mono = channels == 1 or bool(np.random.default_rng(entropy + [i, 1]).random() < mono_fraction)
        s = render_sample(rng, size, channels=1 if mono else 3, stamps=library)
        starry[i] = _to_uint16(s.starry)  # in an RGB shard, a mono sample's channel broadcasts to all three
        starless[i] = _to_uint16(s.starless)
        footprint[i] = s.footprint
        star_flux[i] = s.star_flux_linear
        kinds.append(s.kind)
        stretches.append(s.stretch)
        encodings.append(s.params["encoding"])
        stamp_stars.append(int((s.stars["stamp"] >= 0).sum()))
        monos.append(mono)
    meta = {
        "version": VERSION,
        "seed": entropy[0] if np.isscalar(seed) else entropy,
        "size": int(size),
        "channels": int(channels),
        "n_samples": n_samples,
        "layout": "NCHW",
        "scale": 65535,
        "kind": kinds,
        "stretch": stretches,
        "encoding": encodings,
        "stamp_stars": stamp_stars,
        "mono": monos,
        "mono_fraction": mono_fraction,
        "stamps": None if library is None else library.summary(),
    }

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                starry=starry,
                starless=starless,
                footprint=footprint,
                star_flux=star_flux,
                meta=np.array(json.dumps(meta)),
            )

    atomic_write(path, write)


def load_shard(path):
    """Read a shard written by :func:`make_shard`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.

    Returns
    -------
    dict
        ``starry``, ``starless``: ``(N, C, H, W)`` float32 in ``[0, 1]`` (display domain);
        ``footprint``: ``(N, H, W)`` bool; ``star_flux``: ``(N,)`` float64, ADU; ``meta``: dict.

    Raises
    ------
    ValueError
        If the file lacks one of the arrays or was written by another format version.
    """
    with np.load(path, allow_pickle=False) as z:
        missing = {"starry", "starless", "footprint", "star_flux", "meta"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a synthstars shard (missing {sorted(missing)})")
        meta = json.loads(str(z["meta"]))
        if meta.get("version") != VERSION:
            raise ValueError(f"{path}: shard version {meta.get('version')}, expected {VERSION}")
        scale = np.float32(1.0 / 65535.0)
        return {
            "starry": z["starry"].astype(np.float32) * scale,
            "starless": z["starless"].astype(np.float32) * scale,
            "footprint": z["footprint"].astype(bool),
            "star_flux": z["star_flux"].astype(np.float64),
            "meta": meta,
        }


# --------------------------------------------------------------------------------------------
# parameters


def _logu(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _draw_params(rng, size, channels, kind):
    """All per-sample scalars, drawn in a fixed order whatever their values."""
    p = {}
    u_kind = rng.random()
    p["kind"] = (
        kind
        or BACKGROUND_KINDS[
            int(np.searchsorted(np.cumsum(_KIND_PROBABILITIES), u_kind, side="right"))
        ]
    )
    p["channels"] = channels
    p["size"] = size
    # camera and sky
    p["gain"] = _logu(rng, 0.3, 4.0)
    p["read_noise_e"] = float(rng.uniform(1.5, 10.0))
    p["sky_adu"] = _logu(rng, 30.0, 3000.0)
    lp = rng.uniform()
    tint = np.array([1.0, 1.0 - 0.25 * lp, 1.0 - 0.5 * lp]) * np.exp(rng.normal(0, 0.06, 3))
    p["sky_colour"] = (tint / tint[1]).tolist()
    p["gradient"] = float(rng.uniform(0.0, 0.4 if p["kind"] != "dark" else 0.15))
    p["gradient_angle"] = float(rng.uniform(0, 2 * math.pi))
    p["vignetting"] = float(rng.uniform(0.0, 0.35))
    p["vignette_cx"] = float(rng.uniform(0.35, 0.65))
    p["vignette_cy"] = float(rng.uniform(0.35, 0.65))
    p["saturation_snr"] = _logu(rng, 200.0, 6000.0)
    p["background_blur"] = float(rng.uniform(0.5, 1.0))
    # stars
    p["n_stars"] = _logu(rng, 20.0, 2000.0) * (size / 256.0) ** 2
    p["fwhm"] = _logu(rng, 1.5, 15.0)
    p["psf"] = "airy" if rng.random() < 0.3 else "moffat"
    p["beta"] = float(rng.uniform(1.5, 5.0))
    elongated = rng.random() < 0.5
    p["ellipticity"] = float(rng.uniform(0.0, 0.3 if elongated else 0.06))
    p["ellipticity_angle"] = float(rng.uniform(0, math.pi))
    p["fwhm_scatter"] = float(rng.uniform(0.02, 0.08))
    p["bloat"] = float(rng.uniform(0.0, 0.3))
    p["coma"] = bool(rng.random() < 0.25)
    p["coma_fraction"] = float(rng.uniform(0.1, 0.35))
    p["coma_offset"] = float(rng.uniform(0.3, 1.0))
    p["optical_cx"] = float(rng.uniform(0.1, 0.9) * size)
    p["optical_cy"] = float(rng.uniform(0.1, 0.9) * size)
    p["chromatic"] = bool(rng.random() < 0.4)
    p["chroma_scale"] = rng.uniform(-0.12, 0.12, 2).tolist()
    p["chroma_shift"] = float(rng.uniform(0.0, 0.8))
    p["halo"] = bool(rng.random() < 0.5)
    p["halo_fraction"] = _logu(rng, 0.005, 0.05)
    p["halo_sigma_fwhm"] = float(rng.uniform(3.0, 8.0))
    p["spikes"] = bool(rng.random() < 0.3)
    p["spike_angle"] = float(rng.uniform(0, math.pi / 2))
    p["spike_strength"] = _logu(rng, 0.01, 0.05)
    p["spike_width_fwhm"] = float(rng.uniform(0.2, 0.4))
    p["flux_slope"] = float(rng.uniform(0.5, 1.1))
    p["snr_min"] = float(rng.uniform(0.5, 3.0))
    p["dynamic_range"] = _logu(rng, 1e3, 1e6)
    p["temperature_ref"] = float(rng.uniform(5000.0, 7000.0))
    p["dust_star_fraction"] = float(rng.uniform(0.5, 0.9))
    # objects
    if p["kind"] == "dark":
        p["n_galaxies"] = int(_logu(rng, 2.0, 16.0))
    else:
        p["n_galaxies"] = int(rng.integers(0, 5))
    p["n_knots"] = int(rng.integers(0, 9)) if p["kind"] == "nebula" else int(rng.integers(0, 3))
    # display
    p["display"] = "mtf" if rng.random() < 0.6 else "none"
    p["target_background"] = float(rng.uniform(0.1, 0.3))
    p["linked"] = bool(rng.random() < 0.25)
    p["shadows_clip"] = -2.8 if rng.random() < 0.5 else -1e9
    if p["linked"]:  # a linked stretch of an unbalanced sky would crush a whole channel
        p["shadows_clip"] = -1e9
    p["white_percentile"] = float(rng.uniform(99.5, 99.99))
    p["black_fraction"] = float(rng.uniform(0.6, 1.0))
    return p


def _draw_effects(rng, size):
    """The realism effects of issue 12, drawn in a fixed order whatever their values (their
    own stream: the other parameters do not depend on them)."""
    e = {}
    # bloated saturated cores: a low saturation level, many bright stars, broader bright cores
    e["saturated_cores"] = bool(rng.random() < 0.3)
    e["heavy_saturation_snr"] = _logu(rng, 20.0, 300.0)
    e["heavy_dynamic_range"] = _logu(rng, 1e4, 1e6)
    e["heavy_bloat"] = float(rng.uniform(0.15, 0.5))
    # wide halos: a second, faint Moffat of low beta and large width (scattered light)
    e["wide_halo"] = bool(rng.random() < 0.5)
    e["wide_halo_fraction"] = _logu(rng, 0.01, 0.1)
    e["wide_halo_beta"] = float(rng.uniform(1.2, 2.0))
    e["wide_halo_fwhm"] = _logu(rng, 3.0, 12.0)  # x the field FWHM
    # guiding errors: trailed stars along a direction, with a wobble and an uneven speed
    e["trail"] = bool(rng.random() < 0.25)
    e["trail_length"] = _logu(rng, 0.5, 4.0)  # x the field FWHM
    e["trail_angle"] = float(rng.uniform(0, math.pi))
    e["trail_wobble"] = float(rng.uniform(0.0, 0.25))  # x the length, across the trail
    e["trail_seed"] = int(rng.integers(2**31))
    # atmospheric dispersion (constant R / B offsets) and achromat blue halos
    e["dispersion"] = bool(rng.random() < 0.3)
    e["dispersion_px"] = float(rng.uniform(0.2, 1.5))  # R to B
    e["dispersion_angle"] = float(rng.uniform(0, 2 * math.pi))
    e["blue_bloat"] = bool(rng.random() < 0.2)
    e["blue_bloat_scale"] = float(rng.uniform(0.15, 0.5))
    # diffraction spikes, when there are spikes: 4 (Newtonian spider) or 6 + 2 (JWST)
    e["spike_kind"] = "jwst" if rng.random() < 0.35 else "newtonian"
    e["spike_minor"] = float(rng.uniform(0.15, 0.5))
    # crowded Milky Way fields: thousands of small stars, most of them faint
    e["crowded"] = bool(rng.random() < 0.15)
    e["crowded_n_stars"] = _logu(rng, 1500.0, 6000.0) * (size / 256.0) ** 2
    e["crowded_fwhm"] = _logu(rng, 1.3, 3.5)
    e["crowded_flux_slope"] = float(rng.uniform(0.9, 1.4))
    e["crowded_snr_min"] = float(rng.uniform(0.3, 1.5))
    # bright nebulosity behind the stars
    e["bright_nebula"] = bool(rng.random() < 0.3)
    e["nebula_boost"] = _logu(rng, 3.0, 20.0)
    # the file the picture came in: float (16-bit and more), 8-bit, or 8-bit JPEG
    u = rng.random()
    e["encoding"] = "float" if u < 0.7 else "uint8" if u < 0.85 else "jpeg"
    e["jpeg_quality"] = int(rng.integers(50, 96))
    e["jpeg_subsampling"] = "420" if rng.random() < 0.7 else "444"
    # real star stamps (when a library is given)
    e["stamps"] = bool(rng.random() < 0.6)
    e["stamp_fraction"] = float(rng.uniform(0.3, 1.0))
    return e


def _derive_params(p, size, channels, overridden):
    if p["psf"] not in ("moffat", "airy"):
        raise ValueError(f"psf must be 'moffat' or 'airy', got {p['psf']!r}")
    if p["display"] not in ("mtf", "none"):
        raise ValueError(f"display must be 'mtf' or 'none', got {p['display']!r}")
    if p["encoding"] not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {p['encoding']!r}")
    if p["spike_kind"] not in ("newtonian", "jwst"):
        raise ValueError(f"spike_kind must be 'newtonian' or 'jwst', got {p['spike_kind']!r}")
    if p["jpeg_subsampling"] not in _JPEG_SAMPLING:
        raise ValueError(f"jpeg_subsampling must be '420' or '444', got {p['jpeg_subsampling']!r}")

    def take(key, value):  # an effect sets a parameter, unless the caller fixed it
        if key not in overridden:
            p[key] = value

    if p["saturated_cores"]:
        take("saturation_snr", p["heavy_saturation_snr"])
        take("dynamic_range", max(p["dynamic_range"], p["heavy_dynamic_range"]))
        take("bloat", max(p["bloat"], p["heavy_bloat"]))
    if p["crowded"]:
        take("n_stars", p["crowded_n_stars"])
        take("fwhm", p["crowded_fwhm"])
        take("flux_slope", p["crowded_flux_slope"])
        take("snr_min", p["crowded_snr_min"])
    if "n_stars" not in overridden:  # crowding: at most one star per 6.7 (crowded: 2) FWHM^2
        density = 0.5 if p["crowded"] else 0.15
        p["n_stars"] = min(p["n_stars"], density * size * size / p["fwhm"] ** 2)
    p["pad"] = max(16, size // 4)
    if channels == 1:
        p["chromatic"] = p["dispersion"] = p["blue_bloat"] = False
    p["nebula_gain"] = p["nebula_boost"] if p["bright_nebula"] else 1.0


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# --------------------------------------------------------------------------------------------
# background


def _to_channels(image, channels):
    return image if channels == 3 else image.mean(axis=-1, keepdims=True)


def _blur(image, sigma):
    if sigma < 0.3:
        return image
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _vignette(p, x, y, size):
    d2 = ((x - p["vignette_cx"] * size) ** 2 + (y - p["vignette_cy"] * size) ** 2) / (
        0.5 * size * size
    )
    return np.clip(1.0 - p["vignetting"] * d2, 0.2, 1.0)


def _fractal_fields(rng, size, slopes):
    """``len(slopes)`` Gaussian random fields with power spectra ``k**-slope``, ``(n, H, W)``,
    zero mean and unit standard deviation each (generated 1.3x larger and cropped, so they do
    not wrap around)."""
    n = sfft.next_fast_len(int(size * 1.3) + 4, real=True)
    ky = sfft.fftfreq(n)[:, None]
    kx = sfft.rfftfreq(n)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = 1.0
    white = rng.standard_normal((len(slopes), n, n), dtype=np.float32)
    spec = sfft.rfft2(white, axes=(-2, -1))
    for i, slope in enumerate(slopes):
        spec[i] *= (k ** (-0.5 * slope)).astype(np.float32)
        spec[i, 0, 0] = 0.0
    fields = sfft.irfft2(spec, s=(n, n), axes=(-2, -1))[:, :size, :size]
    fields = fields - fields.mean(axis=(1, 2), keepdims=True)
    return fields / np.maximum(fields.std(axis=(1, 2), keepdims=True), 1e-12)


def _palette_colour(rng):
    names = list(_PALETTE)
    name = names[int(rng.choice(len(names), p=_PALETTE_WEIGHTS))]
    colour = np.asarray(_PALETTE[name]) * np.exp(rng.normal(0.0, 0.1, 3))
    return np.clip(colour / colour.max(), 0.0, 1.0)


def _nebulosity(rng, p, size, strength):
    """Emission clouds, filaments and dust: ``(emission (H, W, 3), tau (H, W, 3) or None)``,
    ADU. ``strength`` scales the emission (relative to the sky level)."""
    sky = p["sky_adu"]
    fields = _fractal_fields(rng, size, rng.uniform(2.6, 3.8, 6))
    emission = np.zeros((size, size, 3), dtype=np.float64)
    n_comp = int(rng.integers(1, 4))
    colours = []
    for j in range(n_comp):
        colour = _palette_colour(rng)
        colours.append(colour)
        contrast = rng.uniform(0.6, 1.6)
        cloud = np.exp(contrast * fields[j])
        cloud /= cloud.mean()
        amp = sky * strength * _logu(rng, 0.03, 4.0)
        emission += amp * cloud[..., None] * colour
    if rng.random() < 0.6:  # filaments: ridges along the zero contours of a field
        width = rng.uniform(0.15, 0.6)
        power = rng.uniform(2.0, 6.0)
        ridge = np.clip(1.0 - np.abs(fields[3]) / width, 0.0, 1.0) ** power
        mask = np.exp(fields[4])
        mask /= mask.mean()
        amp = sky * strength * _logu(rng, 0.05, 3.0)
        emission += amp * (ridge * mask)[..., None] * colours[int(rng.integers(len(colours)))]
    tau = None
    if rng.random() < 0.6:  # dark lanes: optical depth, reddening (blue absorbed most)
        tau0 = _logu(rng, 0.3, 3.0)
        thr = rng.uniform(-0.3, 1.0)
        lanes = np.clip(fields[5] - thr, 0.0, None)
        lanes = lanes / max(float(lanes.max()), 1e-6)
        tau = tau0 * lanes[..., None] * np.array([0.8, 1.0, 1.25])
        emission *= np.exp(-tau)
    return emission, tau


@functools.cache
def _photo(name):
    """A scikit-image sample photograph as linear float32 RGB ``(h, w, 3)`` in ``[0, 1]``."""
    from skimage import data

    img = np.asarray(getattr(data, name)())
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3])
    scale = 640.0 / max(img.shape[:2])
    if scale < 1.0:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    img = np.clip(img, 0.0, 1.0) ** 2.2  # sRGB-ish decoding to linear light
    img.setflags(write=False)
    return img


def _photograph(rng, size):
    """A random crop of a sample photograph, rescaled, rotated, flipped: ``(H, W, 3)``."""
    name = PHOTOS[int(rng.integers(len(PHOTOS)))]
    img = _photo(name)
    h, w = img.shape[:2]
    scale = _logu(rng, 0.25, 1.0) * min(h, w) / size  # source px per output px
    angle = rng.uniform(0, 2 * math.pi)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    half = 0.71 * scale * size
    cx = rng.uniform(min(half, w / 2), max(w - half, w / 2))
    cy = rng.uniform(min(half, h / 2), max(h - half, h / 2))
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    a = np.array([[c * flip, -s], [s * flip, c]])
    centre = np.array([cx, cy]) - a @ np.array([size / 2.0, size / 2.0])
    m = np.hstack([a, centre[:, None]]).astype(np.float64)
    out = cv2.warpAffine(
        img,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    if rng.random() < 0.3:  # desaturate, then maybe tint
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
        if rng.random() < 0.5:
            out = out * _palette_colour(rng)
    out = np.clip(out, 0.0, 1.0) ** rng.uniform(0.7, 1.5)
    return out.astype(np.float64), name


def _background(rng, p, size):
    """Noise-free starless sky before vignetting, ``(H, W, 3)`` ADU, and the dust optical
    depth ``(H, W, 3)`` (or None)."""
    sky = p["sky_adu"]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    ramp = (
        (xx - size / 2) * math.cos(p["gradient_angle"])
        + (yy - size / 2) * math.sin(p["gradient_angle"])
    ) / size
    pedestal = sky * (1.0 + p["gradient"] * ramp)[..., None] * np.asarray(p["sky_colour"])
    kind = p["kind"]
    gain = p.get("nebula_gain", 1.0)  # bright nebulosity (an effect): x 3-20
    if kind == "nebula":
        content, tau = _nebulosity(rng, p, size, gain)
    elif kind == "photo":
        photo, name = _photograph(rng, size)
        p["photo"] = name
        # photographs keep detail finer than the field PSF (sharpened, drizzled or simply
        # not-a-star structure the network must leave alone)
        photo = _blur(photo, p["fwhm"] * _FWHM_TO_SIGMA * rng.uniform(0.1, 0.6))
        p["photo_amplitude"] = _logu(rng, 1.0, 10.0)  # x sky, at photo value 1
        content = sky * p["photo_amplitude"] * photo
        tau = None
        if rng.random() < 0.5:
            nebula, tau = _nebulosity(rng, p, size, rng.uniform(0.2, 1.0) * gain)
            if tau is not None:
                content *= np.exp(-tau)
            content += _blur(nebula, p["fwhm"] * _FWHM_TO_SIGMA * p["background_blur"])
        return pedestal + content, tau
    else:
        glow = _fractal_fields(rng, size, [rng.uniform(3.0, 4.0)])[0]
        content = (sky * rng.uniform(0.005, 0.03) * np.exp(0.5 * glow))[..., None] * np.ones(3)
        tau = None
        if rng.random() < 0.5:  # faint integrated flux nebula
            ifn, _ = _nebulosity(rng, p, size, rng.uniform(0.01, 0.05))
            content += ifn
    content = _blur(content, p["fwhm"] * _FWHM_TO_SIGMA * p["background_blur"])
    return pedestal + content, tau


def _objects(rng, p, size, sky_sigma):
    """Galaxies and nebula knots before the PSF blur: ``((H, W, 3) ADU, list of dict)``.

    Each object is scaled so that its peak after the PSF blur is the drawn number of sky
    sigmas (before vignetting)."""
    layer = np.zeros((size, size, 3), dtype=np.float64)
    objects = []
    sigma_psf = p["fwhm"] * _FWHM_TO_SIGMA
    white = colour_ratios(p["temperature_ref"])
    grow = max(1.0, p["fwhm"] / 4.0)  # unresolved objects would be stars: keep them extended

    def add(kind, profile, x, y, radius, colour, peak_snr):
        r = int(min(math.ceil(radius + 3.0 * sigma_psf), size // 3))
        x0, y0 = int(round(x)), int(round(y))
        gy, gx = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1].astype(np.float64)
        stamp = profile(gx - x, gy - y)
        blurred_peak = float(_blur(stamp, sigma_psf).max())
        stamp *= peak_snr * sky_sigma / max(blurred_peak, 1e-12)
        ys, xs = slice(max(y0 - r, 0), min(y0 + r + 1, size)), slice(
            max(x0 - r, 0), min(x0 + r + 1, size)
        )
        sub = stamp[
            ys.start - (y0 - r) : ys.stop - (y0 - r), xs.start - (x0 - r) : xs.stop - (x0 - r)
        ]
        layer[ys, xs] += sub[..., None] * colour
        objects.append({"kind": kind, "x": float(x), "y": float(y), "radius": float(radius / 2)})

    def rotated(dx, dy, q, pa):
        u = dx * math.cos(pa) + dy * math.sin(pa)
        v = dy * math.cos(pa) - dx * math.sin(pa)
        return q * u * u + v * v / q

    for _ in range(p["n_galaxies"]):
        x, y = rng.uniform(0.05, 0.95, 2) * size
        n = rng.uniform(0.5, 2.5)
        re = _logu(rng, 1.5, 5.0) * grow
        q = rng.uniform(0.3, 1.0)
        pa = rng.uniform(0, math.pi)
        colour = colour_ratios(rng.uniform(3800.0, 9000.0)) / white
        peak_snr = _logu(rng, 3.0, 60.0)
        b = 2.0 * n - 1.0 / 3.0 + 0.009876 / n
        bulge = rng.random() < 0.4

        def sersic(dx, dy, n=n, re=re, q=q, pa=pa, b=b, bulge=bulge):
            r = np.sqrt(rotated(dx, dy, q, pa) + 0.25)
            out = np.exp(-b * (r / re) ** (1.0 / n))
            if bulge:
                out = 0.6 * out + 0.4 * np.exp(-3.0 * (r / (0.5 * re)) ** 0.5)
            return out

        add("galaxy", sersic, x, y, 4.0 * re / math.sqrt(q), colour, peak_snr)
    for _ in range(p["n_knots"]):
        x, y = rng.uniform(0.05, 0.95, 2) * size
        colour = _palette_colour(rng)
        sigma = rng.uniform(1.5, 4.0) * grow
        q = rng.uniform(0.5, 1.0)
        pa = rng.uniform(0, math.pi)
        peak_snr = _logu(rng, 3.0, 60.0)
        n_sub = int(rng.integers(1, 4))
        subs = [(0.0, 0.0, 1.0)] + [
            (*rng.normal(0.0, 1.2 * sigma, 2), rng.uniform(0.3, 0.8)) for _ in range(n_sub - 1)
        ]

        def knot(dx, dy, sigma=sigma, q=q, pa=pa, subs=subs):
            out = 0.0
            for ox, oy, amp in subs:
                out = out + amp * np.exp(-0.5 * rotated(dx - ox, dy - oy, q, pa) / sigma**2)
            return out

        add("knot", knot, x, y, 4.0 * sigma / math.sqrt(q), colour, peak_snr)
    return layer, objects


# --------------------------------------------------------------------------------------------
# stars


def _peak_per_flux(p, fwhm):
    """Central value of the unit-flux core PSF, 1/px^2 (Moffat or Airy)."""
    if p["psf"] == "moffat":
        alpha = moffat_alpha(fwhm, p["beta"])
        return (p["beta"] - 1.0) / (math.pi * alpha**2)
    k = _AIRY_K_FWHM / fwhm
    return k * k / (4.0 * math.pi)


def _star_catalogue(rng, p, size, channels, tau, sigma_b, sky_sigma, r_bright=None):
    pad = p["pad"]
    area = (size + 2 * pad) ** 2 / size**2
    n = int(rng.poisson(p["n_stars"] * area))
    x = rng.uniform(-pad, size + pad, n)
    y = rng.uniform(-pad, size + pad, n)
    # Pareto fluxes between f_min (peak = snr_min sky sigmas) and f_min x dynamic range
    f_min = p["snr_min"] * sky_sigma / _peak_per_flux(p, p["fwhm"])
    a = p["flux_slope"]
    u = rng.random(n)
    flux = f_min * (1.0 - u * (1.0 - p["dynamic_range"] ** -a)) ** (-1.0 / a)
    temperature = np.exp(rng.uniform(math.log(3000.0), math.log(15000.0), n))
    scatter = np.exp(rng.normal(0.0, p["fwhm_scatter"], n))
    behind = rng.random(n) < p["dust_star_fraction"]
    if p["saturated_cores"] and r_bright is not None:
        # a few very bright stars in the frame, 2-300 x the saturation level at their peak
        nb = int(r_bright.integers(1, 6) * max(1.0, (size / 256.0) ** 2))
        bx, by = r_bright.uniform(0, size - 1, nb), r_bright.uniform(0, size - 1, nb)
        ratio = np.exp(r_bright.uniform(math.log(2.0), math.log(300.0), nb))
        bflux = ratio * p["saturation_snr"] * sky_sigma / _peak_per_flux(p, p["fwhm"])
        bt = np.exp(r_bright.uniform(math.log(3000.0), math.log(15000.0), nb))
        bscatter = np.exp(r_bright.normal(0.0, p["fwhm_scatter"], nb))
        x, y, flux = np.concatenate([x, bx]), np.concatenate([y, by]), np.concatenate([flux, bflux])
        temperature = np.concatenate([temperature, bt])
        scatter = np.concatenate([scatter, bscatter])
        behind = np.concatenate([behind, np.zeros(nb, dtype=bool)])
        p["n_bright_stars"] = nb
    colour = colour_ratios(temperature) / colour_ratios(p["temperature_ref"])
    colour = colour if channels == 3 else colour.mean(axis=1, keepdims=True)
    ix = np.clip(np.rint(x), 0, size - 1).astype(np.int64)
    iy = np.clip(np.rint(y), 0, size - 1).astype(np.int64)
    atten = _vignette(p, x, y, size)[:, None] * np.ones((1, channels))
    if tau is not None:
        atten = atten * np.where(behind[:, None], np.exp(-tau[iy, ix]), 1.0)
    flux_c = flux[:, None] * colour * atten
    # bloated cores: bright stars broader, by `bloat` FWHM per decade above 50 sky sigmas
    snr0 = flux * _peak_per_flux(p, p["fwhm"]) / sky_sigma
    bloat = 1.0 + p["bloat"] * np.log10(np.maximum(snr0 / 50.0, 1.0))
    fwhm = p["fwhm"] * scatter * bloat
    peak = flux_c.max(axis=1) * _peak_per_flux(p, fwhm)
    local_sigma = sigma_b[iy, ix].max(axis=1)
    public = {
        "x": x,
        "y": y,
        "flux": flux_c,
        "fwhm": fwhm,
        "temperature": temperature,
        "peak_snr": peak / local_sigma,
    }
    return {
        "x": x,
        "y": y,
        "flux": flux_c,
        "fwhm": fwhm,
        "peak": peak,
        "local_sigma": local_sigma,
        "public": public,
    }


class _Profile:
    """A unit-flux radial PSF profile, tabulated in the scaled radius ``rho`` (px times
    ``inv_scale``) at ``1 / _TABLE_STEP`` spacing, with the field ellipticity applied to the
    offsets. Moffat: ``(beta - 1) / (pi alpha^2) (1 + rho^2)^-beta``, ``rho = r / alpha``
    (Moffat 1969); Airy: ``k^2 / (4 pi) (2 J1(rho) / rho)^2``, ``rho = k r``, ``k = 3.2327 /
    FWHM`` (Airy pattern, normalised to unit volume)."""

    def __init__(self, p, kind, beta, rho_max):
        self.kind, self.beta = kind, beta
        self.q = 1.0 - p["ellipticity"]
        self.cos = math.cos(p["ellipticity_angle"])
        self.sin = math.sin(p["ellipticity_angle"])
        rho = np.arange(int(rho_max * _TABLE_STEP) + 2, dtype=np.float64) / _TABLE_STEP
        if kind == "moffat":
            table = (1.0 + rho * rho) ** -beta
        else:
            x = np.maximum(rho, 1e-6)
            table = (2.0 * special.j1(x) / x) ** 2
        self.table = table.astype(np.float32)
        self.last = len(table) - 1

    def scale_norm(self, fwhm):
        """Per-star ``inv_scale`` (1/px) and ``norm`` (1/px^2) for FWHMs ``fwhm`` (px)."""
        if self.kind == "moffat":
            alpha = moffat_alpha(fwhm, self.beta)
            return 1.0 / alpha, (self.beta - 1.0) / (math.pi * alpha**2)
        k = _AIRY_K_FWHM / fwhm
        return k, k * k / (4.0 * math.pi)

    def __call__(self, dx, dy, inv_scale, norm):
        """PSF at offsets ``dx`` ``(N, 1, K)``, ``dy`` ``(N, K, 1)`` for ``(N, 1, 1)`` scales."""
        u = dx * self.cos + dy * self.sin
        v = dy * self.cos - dx * self.sin
        r2 = self.q * u * u + v * v * (1.0 / self.q)  # area preserving: same normalisation
        rho = np.sqrt(r2)
        rho *= inv_scale * np.float32(_TABLE_STEP)
        rho += np.float32(0.5)
        idx = rho.astype(np.int32)
        np.minimum(idx, self.last, out=idx)
        out = self.table[idx]
        out *= norm
        return out


def _stamp_radius(p, peak_adu, fwhm, threshold):
    """Radius (px) where a star of central value ``peak_adu`` falls below ``threshold``."""
    ratio = np.maximum(peak_adu / threshold, 1.0 + 1e-9)
    if p["psf"] == "moffat":
        alpha = moffat_alpha(fwhm, p["beta"])
        r = alpha * np.sqrt(np.maximum(ratio ** (1.0 / p["beta"]) - 1.0, 0.0))
    else:  # ring envelope 8 / (pi x^3)
        r = (8.0 * ratio / math.pi) ** (1.0 / 3.0) / (_AIRY_K_FWHM / fwhm)
    r = r / math.sqrt(1.0 - p["ellipticity"])
    if p["coma"]:
        r = r * 1.8 + p["coma_offset"] * fwhm
    return np.maximum(r + 1.0, 1.5 * fwhm)


def _render_stars(p, cat, size, channels, sky_sigma, pastes=None, library=None):
    """Star light ``S`` in the frame, ``(H, W, C)`` float64 ADU, before saturation.

    Every star is drawn in a stamp out to where it falls below ``_RENDER_THRESHOLD`` sky
    sigmas (at most ``2 pad`` px, tapered smoothly to zero over the outer quarter); stamps are
    grouped by size and evaluated in vectorised chunks from tabulated profiles. The core
    (1.5 FWHM) is averaged over an ``n x n`` sub-pixel grid (pixel integration) for
    FWHM < 5 px. Halos and spikes come from :func:`_extended_light`. The stars that
    :func:`_assign_stamps` gave a real stamp are pasted instead (:func:`paste_stamp`).
    Guiding errors (``trail``) then smear all the star light with :func:`_trail_kernel`."""
    pad = p["pad"]
    off = 2 * pad  # canvas origin: stars lie in [-pad, size + pad), stamps reach pad further
    side = size + 4 * pad
    x, y, flux, fwhm = cat["x"], cat["y"], cat["flux"], cat["fwhm"]
    assign = pastes["stamp"] if pastes is not None else np.full(x.size, -1)

    size_fwhm = fwhm * (1.0 + p["blue_bloat_scale"]) if p["blue_bloat"] and channels == 3 else fwhm
    radius = _stamp_radius(p, cat["peak"], size_fwhm, _RENDER_THRESHOLD * sky_sigma)
    radii = np.asarray([r for r in _STAMP_RADII if r < 2 * pad] + [2 * pad])
    bucket = radii[np.minimum(np.searchsorted(radii, radius), len(radii) - 1)]
    reaches = (x + bucket >= 0) & (x - bucket <= size - 1)
    reaches &= (y + bucket >= 0) & (y - bucket <= size - 1)
    reaches &= assign < 0

    # coma offsets and lateral colour grow with the distance from the optical centre;
    # atmospheric dispersion moves R and B by constant offsets, an achromat bloats B
    rx = (x - p["optical_cx"]) / (size / math.sqrt(2.0))
    ry = (y - p["optical_cy"]) / (size / math.sqrt(2.0))
    if channels == 3 and (p["chromatic"] or p["dispersion"] or p["blue_bloat"]):
        scales, shifts, consts = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [(0.0, 0.0)] * 3
        if p["chromatic"]:
            scales = [1.0 + p["chroma_scale"][0], 1.0, 1.0 + p["chroma_scale"][1]]
            shifts = [p["chroma_shift"], 0.0, -p["chroma_shift"]]
        if p["blue_bloat"]:
            scales[2] *= 1.0 + p["blue_bloat_scale"]
        if p["dispersion"]:
            d = 0.5 * p["dispersion_px"]
            dx, dy = d * math.cos(p["dispersion_angle"]), d * math.sin(p["dispersion_angle"])
            consts = [(dx, dy), (0.0, 0.0), (-dx, -dy)]
        passes = [([c], scales[c], shifts[c], consts[c]) for c in range(3)]
    else:
        passes = [(list(range(channels)), 1.0, 0.0, (0.0, 0.0))]
    min_fwhm = float(fwhm.min()) * min(s for _, s, _, _ in passes) if fwhm.size else 1.0
    reach = (2 * pad * math.sqrt(2.0) + 4.0) / math.sqrt(1.0 - p["ellipticity"])
    core = _Profile(p, p["psf"], p["beta"], 0.0)
    core = _Profile(p, p["psf"], p["beta"], reach * float(core.scale_norm(min_fwhm)[0]))
    if p["coma"]:
        wing_beta = p["beta"] if p["psf"] == "moffat" else 2.5
        wing = _Profile(p, "moffat", wing_beta, reach / moffat_alpha(1.8 * min_fwhm, wing_beta))
    nsub = 3 if p["fwhm"] < 2.5 else 2 if p["fwhm"] < 5.0 else 1
    sub = ((np.arange(nsub) + 0.5) / nsub - 0.5).astype(np.float32)
    inner = int(math.ceil(1.5 * p["fwhm"]))

    planes = np.zeros((channels, side * side), dtype=np.float64)
    for r in np.unique(bucket[reaches]):
        sel_all = np.flatnonzero(reaches & (bucket == r))
        k = 2 * r + 1
        g = np.arange(-r, r + 1)
        gf = g.astype(np.float32)
        c_in = min(r, inner)
        # round, smooth edge where the stamp truncates the wings (no square outlines)
        t = np.clip((r - np.hypot(gf[None, :], gf[:, None])) / (0.25 * r), 0.0, 1.0)
        taper = (t * t * (3.0 - 2.0 * t)).astype(np.float32)[None]
        gi = gf[r - c_in : r + c_in + 1]
        per_chunk = max(1, 150_000 // (k * k))
        for start in range(0, sel_all.size, per_chunk):
            sel = sel_all[start : start + per_chunk]
            cx, cy = x[sel] + off, y[sel] + off
            ix, iy = np.rint(cx).astype(np.int64), np.rint(cy).astype(np.int64)
            rows = iy[:, None, None] + g[None, :, None]
            cols = ix[:, None, None] + g[None, None, :]
            if r > pad:  # big stamps of bright stars may leave the canvas: drop that part
                valid = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)
                rows, cols = np.clip(rows, 0, side - 1), np.clip(cols, 0, side - 1)
            idx = (rows * side + cols).ravel()
            for chans, scale, shift, (cdx, cdy) in passes:
                fx = (cx - ix + shift * rx[sel] + cdx).astype(np.float32)[:, None, None]
                fy = (cy - iy + shift * ry[sel] + cdy).astype(np.float32)[:, None, None]
                inv, norm = core.scale_norm(fwhm[sel] * scale)
                inv = inv.astype(np.float32)[:, None, None]
                norm = norm.astype(np.float32)[:, None, None]
                stamp = core(gf[None, None, :] - fx, gf[None, :, None] - fy, inv, norm)
                if nsub > 1:  # pixel integration of the core
                    acc = np.zeros((sel.size, gi.size, gi.size), dtype=np.float32)
                    for oy in sub:
                        for ox in sub:
                            acc += core(
                                gi[None, None, :] + ox - fx, gi[None, :, None] + oy - fy, inv, norm
                            )
                    stamp[:, r - c_in : r + c_in + 1, r - c_in : r + c_in + 1] = acc / (nsub * nsub)
                if p["coma"]:
                    f = np.float32(p["coma_fraction"])
                    kx = (p["coma_offset"] * fwhm[sel] * rx[sel]).astype(np.float32)
                    ky = (p["coma_offset"] * fwhm[sel] * ry[sel]).astype(np.float32)
                    w_inv, w_norm = wing.scale_norm(1.8 * fwhm[sel] * scale)
                    stamp *= np.float32(1.0) - f
                    stamp += f * wing(
                        gf[None, None, :] - fx - kx[:, None, None],
                        gf[None, :, None] - fy - ky[:, None, None],
                        w_inv.astype(np.float32)[:, None, None],
                        w_norm.astype(np.float32)[:, None, None],
                    )
                stamp *= taper
                if r > pad:
                    stamp *= valid
                for c in chans:
                    weights = (stamp * flux[sel, c].astype(np.float32)[:, None, None]).ravel()
                    planes[c] += np.bincount(idx, weights=weights, minlength=side * side)

    planes = planes.reshape(channels, side, side)
    if p["halo"] or p["spikes"] or p["wide_halo"]:
        planes += _extended_light(p, x + off, y + off, flux, side)
    if library is not None:
        canvas = np.moveaxis(planes, 0, -1)  # a view: pasting writes into planes
        for i in np.flatnonzero(assign >= 0):
            j = assign[i]
            paste_stamp(
                canvas,
                library.stamps[j],
                x[i] + off,
                y[i] + off,
                flux[i],
                scale=fwhm[i] / library.fwhm[j],
                angle=pastes["angle"][i],
                flip=bool(pastes["flip"][i]),
                offset=library.offset[j],
            )
    if p["trail"]:
        kernel = _trail_kernel(p)[::-1, ::-1]  # filter2D correlates
        for c in range(channels):
            planes[c] = cv2.filter2D(planes[c], cv2.CV_64F, kernel, borderType=cv2.BORDER_CONSTANT)
    stars = planes[:, off : off + size, off : off + size]
    return np.clip(np.moveaxis(stars, 0, -1), 0.0, None)


def _trail_kernel(p):
    """Unit-sum kernel of a guiding error: a path of ``trail_length`` FWHM (at most pad / 2 px)
    along ``trail_angle``, wandering across by up to ``trail_wobble`` x its length (a Brownian
    bridge), travelled at an uneven speed (lognormal dwell times), splatted bilinearly."""
    length = min(p["trail_length"] * p["fwhm"], 0.5 * p["pad"])
    rng = np.random.default_rng(p["trail_seed"])
    n = max(8, int(math.ceil(4.0 * length)))
    along = np.linspace(-0.5, 0.5, n) * length
    walk = np.cumsum(rng.normal(0.0, 1.0, n))
    walk -= np.linspace(walk[0], walk[-1], n)
    walk *= p["trail_wobble"] * length / max(float(np.abs(walk).max()), 1e-9)
    dwell = np.exp(rng.normal(0.0, 0.4, n))
    ca, sa = math.cos(p["trail_angle"]), math.sin(p["trail_angle"])
    xs, ys = along * ca - walk * sa, along * sa + walk * ca
    half = int(math.ceil(max(np.abs(xs).max(), np.abs(ys).max()))) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    x0, y0 = np.floor(xs + half).astype(int), np.floor(ys + half).astype(int)
    tx, ty = xs + half - x0, ys + half - y0
    for dy_, wy in ((0, 1 - ty), (1, ty)):
        for dx_, wx in ((0, 1 - tx), (1, tx)):
            np.add.at(kernel, (y0 + dy_, x0 + dx_), dwell * wx * wy)
    return kernel / kernel.sum()


def _smear(image, p):
    """An ``(H, W, C)`` sky image convolved with the trail kernel (mirrored at the edges)."""
    kernel = _trail_kernel(p)[::-1, ::-1]
    out = cv2.filter2D(image.astype(np.float64), cv2.CV_64F, kernel, borderType=cv2.BORDER_REFLECT)
    return out.reshape(image.shape)


def _trail_peak_factor(p):
    """Peak of a Gaussian star of the field FWHM after trailing, over its peak before."""
    sigma = p["fwhm"] * _FWHM_TO_SIGMA
    kernel = _trail_kernel(p)
    half = kernel.shape[0] // 2 + int(math.ceil(4 * sigma)) + 1
    g = np.arange(-half, half + 1)
    star = np.exp(-0.5 * (g[None, :] ** 2 + g[:, None] ** 2) / sigma**2)
    smeared = cv2.filter2D(star, cv2.CV_64F, kernel[::-1, ::-1], borderType=cv2.BORDER_CONSTANT)
    return float(smeared.max() / star.max())


def _extended_light(p, x, y, flux, side):
    """Halos and diffraction spikes of all stars: point sources (bilinear) convolved by FFT
    with a field kernel that is linear in flux, ``(C, side, side)`` ADU. Spike intensity falls
    as ``1 / (1 + (d / d0)**2)`` along 4 directions, so its visible length grows as the square
    root of the flux; the kernel is tapered to zero at ``pad`` px."""
    pad = p["pad"]
    channels = flux.shape[1]
    offs = np.fft.fftfreq(side, 1.0 / side)
    yy, xx = offs[:, None], offs[None, :]
    rr = np.hypot(xx, yy)
    kernel = np.zeros((side, side), dtype=np.float64)
    fwhm = p["fwhm"]
    if p["halo"]:
        sig = min(p["halo_sigma_fwhm"] * fwhm, pad / 3.0)
        halo = np.exp(-0.5 * (rr / sig) ** 2)
        kernel += p["halo_fraction"] * halo / halo.sum()
    if p["spikes"]:
        amp = p["spike_strength"] * _peak_per_flux(p, fwhm)
        width = max(0.5, p["spike_width_fwhm"] * fwhm)
        d0 = fwhm
        a0 = p["spike_angle"]
        if p["spike_kind"] == "jwst":  # hexagonal segments: 6 spikes, and 2 minor ones (strut)
            lines = [(a0, 1.0), (a0 + math.pi / 3, 1.0), (a0 + 2 * math.pi / 3, 1.0)]
            lines.append((a0 + math.pi / 2, p["spike_minor"]))
        else:  # a Newtonian's 4-vane spider
            lines = [(a0, 1.0), (a0 + math.pi / 2, 1.0)]
        for angle, strength in lines:
            along = xx * math.cos(angle) + yy * math.sin(angle)
            across = -xx * math.sin(angle) + yy * math.cos(angle)
            line = amp * np.exp(-0.5 * (across / width) ** 2) / (1.0 + (along / d0) ** 2)
            kernel += line if strength == 1.0 else strength * line
    taper = np.clip((pad - rr) / (0.25 * pad), 0.0, 1.0)
    kernel *= taper
    if p["wide_halo"]:  # a faint, broad Moffat of low beta: light scattered in the optics
        beta = p["wide_halo_beta"]
        alpha = moffat_alpha(p["wide_halo_fwhm"] * fwhm, beta)
        wide = (1.0 + (rr / alpha) ** 2) ** -beta * taper
        kernel += p["wide_halo_fraction"] * wide / wide.sum()
    # bilinear point sources
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    tx, ty = x - x0, y - y0
    points = np.zeros((channels, side * side))
    for dy_, wy in ((0, 1 - ty), (1, ty)):
        for dx_, wx in ((0, 1 - tx), (1, tx)):
            idx = (y0 + dy_) * side + x0 + dx_
            for c in range(channels):
                points[c] += np.bincount(idx, weights=flux[:, c] * wx * wy, minlength=side * side)
    spec = sfft.rfft2(points.reshape(channels, side, side), axes=(-2, -1))
    spec *= sfft.rfft2(kernel)[None]
    return sfft.irfft2(spec, s=(side, side), axes=(-2, -1))


def _stamp_library(stamps):
    """``stamps`` as a StampLibrary (None, a library, or the path of a saved one)."""
    if stamps is None or isinstance(stamps, StampLibrary):
        return stamps
    if isinstance(stamps, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(stamps))
        st = os.stat(path)
        return _load_library(path, st.st_mtime_ns, st.st_size)
    raise TypeError(f"stamps must be a StampLibrary, a path or None, got {type(stamps).__name__}")


@functools.lru_cache(maxsize=4)
def _load_library(path, mtime_ns, size):  # cached per file version
    return StampLibrary.load(path)


def _assign_stamps(rng, p, cat, library, size, saturation, background):
    """Which stars become real stamps (index into the library, -1: synthetic), with a random
    rotation and flip each.

    With ``p["stamps"]``, each star near the frame of peak SNR >= ``_STAMP_MIN_SNR`` is a
    candidate with probability ``stamp_fraction`` (the ``_STAMP_MAX_STARS`` brightest
    candidates at most). It takes a stamp drawn uniformly among those that fit: resampling
    factor (star FWHM / stamp FWHM) in ``_STAMP_SCALES``; the stamp's own noise, pasted at the
    star's flux, below ``_STAMP_NOISE`` x the local sky sigma; saturated stamps for stars that
    saturate (their plateau scaled above the saturation level), unsaturated ones for the others.
    A star without a fitting stamp stays synthetic. The draws are made whatever the library."""
    n = cat["x"].size
    u_use, u_pick = rng.random(n), rng.random(n)
    angle, flip = rng.uniform(0.0, 2.0 * math.pi, n), rng.random(n) < 0.5
    out = {"stamp": np.full(n, -1, dtype=np.int64), "angle": angle, "flip": flip}
    if library is None or len(library) == 0 or not p["stamps"] or n == 0:
        return out
    x, y = cat["x"], cat["y"]
    snr = cat["public"]["peak_snr"]
    cand = (u_use < p["stamp_fraction"]) & (snr >= _STAMP_MIN_SNR)
    cand &= (x > -8) & (x < size + 7) & (y > -8) & (y < size + 7)
    idx = np.flatnonzero(cand)
    if idx.size > _STAMP_MAX_STARS:
        idx = idx[np.argsort(-snr[idx], kind="stable")[:_STAMP_MAX_STARS]]
    if idx.size == 0:
        return out
    ix = np.clip(np.rint(x[idx]), 0, size - 1).astype(np.int64)
    iy = np.clip(np.rint(y[idx]), 0, size - 1).astype(np.int64)
    sat_excess = saturation - background[iy, ix].max(axis=1)  # star light that saturates
    flux = cat["flux"][idx].max(axis=1)
    ratio = cat["fwhm"][idx][:, None] / library.fwhm[None, :]
    ok = (ratio >= _STAMP_SCALES[0]) & (ratio <= _STAMP_SCALES[1])
    ok &= flux[:, None] * library.noise[None, :] <= (
        _STAMP_NOISE * cat["local_sigma"][idx][:, None] * ratio**2
    )
    saturating = cat["peak"][idx] >= sat_excess
    ok &= library.saturated[None, :] == saturating[:, None]
    ok &= ~library.saturated[None, :] | (
        flux[:, None] * library.peak[None, :] >= 1.2 * sat_excess[:, None] * ratio**2
    )
    count = ok.sum(axis=1)
    has = count > 0
    k = np.minimum((u_pick[idx] * count).astype(np.int64), np.maximum(count - 1, 0))
    pick = np.argmax(np.cumsum(ok, axis=1) > k[:, None], axis=1)
    out["stamp"][idx[has]] = pick[has]
    return out


def _update_catalogue(p, cat, pastes, library):
    """Peak SNRs of pasted stars and after trailing; which stars are real stamps."""
    public = cat["public"]
    assign = pastes["stamp"]
    public["stamp"] = assign.copy()
    pasted = np.flatnonzero(assign >= 0)
    if pasted.size:
        scale = cat["fwhm"][pasted] / library.fwhm[assign[pasted]]
        peak = cat["flux"][pasted].max(axis=1) * library.peak[assign[pasted]] / scale**2
        public["peak_snr"][pasted] = peak / cat["local_sigma"][pasted]
    if p["trail"]:
        public["peak_snr"] = public["peak_snr"] * _trail_peak_factor(p)


# --------------------------------------------------------------------------------------------
# display


def _display(p, starry, starless):
    """Display transform computed from the starry image, applied to both; clipped to [0, 1]."""
    if p["display"] == "mtf":
        st = auto_stretch(
            starry,
            target_background=p["target_background"],
            shadows_clip=p["shadows_clip"],
            linked=p["linked"],
        )
        stretch = {
            "kind": "mtf",
            "low": np.ravel(st.low).tolist(),
            "high": np.ravel(st.high).tolist(),
            "shadows": np.ravel(st.shadows).tolist(),
            "midtones": np.ravel(st.midtones).tolist(),
            "target_background": p["target_background"],
            "linked": p["linked"],
            "shadows_clip": p["shadows_clip"],
        }
        out_starry, out_starless = st.apply(starry), st.apply(starless)
    else:
        black = p["black_fraction"] * float(np.percentile(starry, 1.0))
        white = float(np.percentile(starry, p["white_percentile"]))
        median = float(np.median(starry))
        # as in stretched 8/16-bit data, the sky displays at 0.08-0.35 (stars may clip)
        white = min(white, black + (median - black) / 0.08)
        white = max(white, black + (median - black) / 0.35, black + 1e-3)
        stretch = {"kind": "none", "black": black, "white": white}
        scale = 1.0 / (white - black)
        out_starry = ((starry.astype(np.float64) - black) * scale).astype(np.float32)
        out_starless = ((starless.astype(np.float64) - black) * scale).astype(np.float32)
    return (np.clip(out_starry, 0.0, 1.0), np.clip(out_starless, 0.0, 1.0), stretch)


def _encode(p, image):
    """The display image as stored in a file of ``p["encoding"]``: unchanged (``float``),
    rounded to 8 bits (``uint8``), or 8 bits through a JPEG encoder and decoder of quality
    ``jpeg_quality`` and chroma subsampling ``jpeg_subsampling`` (OpenCV's libjpeg).

    The starry input and the starless target go through the same encoder: away from the stars
    both are the same 8-bit values (and the same JPEG blocks, which are coded independently),
    so the network learns to remove the stars, and their compression artefacts, but to keep the
    artefacts of the background, as they are part of everything else."""
    if p["encoding"] == "float":
        return image
    u8 = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if p["encoding"] == "jpeg":
        params = [
            cv2.IMWRITE_JPEG_QUALITY,
            int(p["jpeg_quality"]),
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            getattr(cv2, _JPEG_SAMPLING[p["jpeg_subsampling"]]),
        ]
        if u8.shape[2] == 3:
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), params)
            u8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        else:
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., 0]), params)
            u8 = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)[..., None]
        if not ok:  # pragma: no cover - OpenCV always encodes 8-bit images
            raise RuntimeError("JPEG encoding failed")
    return (u8.astype(np.float32) * np.float32(1.0 / 255.0)).astype(np.float32)


def _to_uint16(image):
    """``(H, W, C)`` float in [0, 1] -> ``(C, H, W)`` uint16 (x 65535, rounded)."""
    return np.rint(np.moveaxis(np.clip(image, 0.0, 1.0), -1, 0) * 65535.0).astype(np.uint16)
