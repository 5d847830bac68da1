"""Measures of star removal on real images, which need no starless truth.

A real image has no known starless version, so :func:`astroflow.restoration.starless.starless_metrics`
cannot judge a method on it. These measures compare the starless image with the input alone,
each in units of the input's noise, and each aimed at one defect a user sees:

* residual sources (:func:`residual_sources`): what SEP (Barbary 2016; Bertin & Arnouts 1996)
  still detects at 5 sigma after star removal, against what it detects before;
* hole depth (:func:`hole_depth`): where a bright star was, the starless image should sit on the
  local sky; a method that subtracts more than the star added leaves a dark hole, a negative depth;
* ring energy (:func:`ring_energy`): excess light left in an annulus 1-3 FWHM around each star
  (a halo the method did not remove), also per channel, as coloured rings are;
* change outside (:func:`outside_change`): away from every star, a star remover should leave the
  image as it was;
* spike excess (:func:`spike_excess`): what is left of the large saturated stars' diffraction
  spikes, along the directions they share (:func:`spike_angles`).

:func:`star_removal_measures` runs them all. The local-background and noise estimates are the
usual ones of aperture photometry (IRAF's ``phot``, photutils' ``ApertureStats``): the median of
an annulus for the sky and the normalised median absolute deviation (MAD x 1.4826) for the noise.

Domain
------
Every measure works on display data in ``[0, 1]``, as a user looks at the result and as the
network sees it: display-encoded 8/16-bit images are divided by their full scale, linear data
(ADU) are stretched with :func:`astroflow.restoration.starless.network_stretch` (the invertible
MTF autostretch of :func:`astroflow.stretch.auto_stretch` that clips nothing, with which
:func:`~astroflow.restoration.starless.remove_stars` gives linear data to the network); input
and starless image are stretched with the *input's* stretch, so that they compare
(:func:`measurement_pair`). Mono images are ``(H, W)`` or ``(H, W, 1)``, colour ones
``(H, W, 3)``; stars are detected on the grey image, the mean of the channels.

Noise
-----
The noise sigma is the pixel-to-pixel noise: the normalised MAD of the residual of the input
from its 5x5 median filter (:func:`noise_map`), globally (:func:`noise_sigma`) or in each star's
background annulus, divided by 0.954, the ratio of that MAD to the noise for white Gaussian
noise (measured on 4 million samples). It ignores nebulosity, gradients and stars larger than
a few pixels, which a plain MAD of the pixel values counts as noise; for noise correlated
between neighbouring pixels (a processed or resampled image) it is smaller than the spread of
a pixel value.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.ndimage as ndimage
import sep

from astroflow.restoration.starless import network_stretch

__all__ = [
    "StarCatalog",
    "count_sources",
    "crop_windows",
    "detect",
    "grey",
    "hole_depth",
    "measurement_pair",
    "noise_map",
    "noise_sigma",
    "outside_change",
    "residual_detections",
    "residual_objects",
    "residual_sources",
    "ring_energy",
    "saturated_stars",
    "spike_angles",
    "spike_arm",
    "spike_excess",
    "spike_reach",
    "star_removal_measures",
    "to_display",
]

MAD_TO_SIGMA = 1.4826
# 1.4826 MAD of noise_map(white Gaussian noise) / its sigma (4e6 samples: 0.9542)
RESIDUAL_MAD = 0.954


def _channels(image):
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim == 3 and image.shape[2] in (1, 3):
        return image
    raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")


def _check_finite(image, name):
    if not np.isfinite(image).all():
        raise ValueError(f"{name} holds NaN or infinite pixels (fill or crop them first)")


def _finite_pair(before, after):
    """``before, after`` (an input and its starless image), checked for one shape and finite pixels."""
    if before.shape != after.shape:
        raise ValueError(f"input {before.shape} and starless {after.shape} differ in shape")
    _check_finite(before, "input")
    _check_finite(after, "starless image")
    return before, after


def to_display(image, *, encoding, bits=None, stretch=None):
    """The display-domain version of an image that the measures work on.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``, any real dtype, finite.
    encoding : {"display", "linear"}
        ``"display"``: stretched values, either already in ``[0, 1]`` (float, ``bits`` None) or
        integers of ``bits`` bits (0..255 for 8, 0..65535 for 16); ``"linear"``: linear ADU.
    bits : int or None, optional
        Display data only: the bit depth of integer-valued data (8 or 16), which is divided by
        ``2**bits - 1``; None for data already in ``[0, 1]`` (uint8 and uint16 arrays are taken
        as 8 and 16 bits).
    stretch : astroflow.stretch.MTFStretch or None, optional
        Linear data only: the stretch to apply; None computes
        :func:`~astroflow.restoration.starless.network_stretch` (target background 0.2) of
        ``image`` itself.

    Returns
    -------
    display : numpy.ndarray
        ``(H, W, C)`` float32 in ``[0, 1]``, C = 1 or 3.
    stretch : astroflow.stretch.MTFStretch or None
        The stretch used (linear data), else None.

    Raises
    ------
    ValueError
        An unknown encoding or bit depth, a shape that is not an image, or non-finite pixels.
    """
    if encoding not in ("display", "linear"):
        raise ValueError(f"unknown encoding {encoding!r} (display or linear)")
    raw = np.asarray(image)
    if bits is None and raw.dtype == np.uint8:
        bits = 8
    elif bits is None and raw.dtype == np.uint16:
        bits = 16
    data = _channels(raw)
    _check_finite(data, "image")
    if encoding == "linear":
        stretch = stretch if stretch is not None else network_stretch(data)
        return stretch.apply(data), stretch
    if bits is not None:
        if bits not in (8, 16):
            raise ValueError(f"display data must be 8 or 16 bits, got {bits}")
        data = data / np.float32(2**bits - 1)
    return np.clip(data, 0.0, 1.0).astype(np.float32), None


def measurement_pair(starry, starless, *, encoding, bits=None):
    """Input and starless image in one display domain: the input's scale or stretch for both.

    Parameters
    ----------
    starry, starless : numpy.ndarray
        The input and a method's starless image, same shape and encoding (see
        :func:`to_display`).
    encoding : {"display", "linear"}
    bits : int or None, optional
        As in :func:`to_display`.

    Returns
    -------
    starry, starless : numpy.ndarray
        ``(H, W, C)`` float32 in ``[0, 1]``.

    Raises
    ------
    ValueError
        Shapes that differ, and as :func:`to_display`.
    """
    if np.shape(starry) != np.shape(starless):
        raise ValueError(f"input {np.shape(starry)} and starless {np.shape(starless)} differ in shape")
    before, stretch = to_display(starry, encoding=encoding, bits=bits)
    after, _ = to_display(starless, encoding=encoding, bits=bits, stretch=stretch)
    return before, after


def grey(image):
    """Mean of the channels.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32, C-contiguous (as SEP needs).
    """
    image = np.asarray(image, dtype=np.float32)
    return np.ascontiguousarray(image if image.ndim == 2 else image.mean(axis=2), dtype=np.float32)


def noise_map(plane):
    """High-pass residual of one plane, whose spread is the pixel noise.

    Parameters
    ----------
    plane : numpy.ndarray
        ``(H, W)`` float, finite.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32: ``plane`` minus its 5x5 median filter (OpenCV, edges replicated).
    """
    plane = np.ascontiguousarray(plane, dtype=np.float32)
    return plane - cv2.medianBlur(plane, 5)


def _mad_sigma(values):
    """Noise sigma from values of :func:`noise_map` (normalised MAD / RESIDUAL_MAD)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))) / RESIDUAL_MAD)


def noise_sigma(plane, floor=1e-4):
    """Robust pixel noise of one plane.

    Parameters
    ----------
    plane : numpy.ndarray
        ``(H, W)`` float, finite (units of the data; display data in ``[0, 1]``).
    floor : float, optional
        Smallest value returned, so that a flat or coarsely quantised image does not give a
        zero noise.

    Returns
    -------
    float
        ``max(1.4826 MAD(noise_map(plane)) / 0.954, floor)``.
    """
    return max(_mad_sigma(noise_map(plane)), floor)


@dataclass
class StarCatalog:
    """Stars detected on an input, with the sizes the per-star measures use.

    Attributes
    ----------
    x, y : numpy.ndarray
        float64, centres (px, SEP barycentres; x along columns).
    peak : numpy.ndarray
        float64, brightest pixel above SEP's background, grey display units.
    fwhm : numpy.ndarray
        float64, px: diameter of the disc whose area is that of the star's pixels above half its
        peak (the FWHM of a round star, also of a flat-topped saturated one), at least 1.
    flux : numpy.ndarray
        float64, SEP isophotal flux (grey display units x px).
    mask : numpy.ndarray
        bool ``(H, W)``: SEP's segmentation of every detection.
    noise : float
        Global pixel noise of the grey input (:func:`noise_sigma`).
    rms : float
        SEP's global background RMS of the grey input (the detection threshold's unit).
    """

    x: np.ndarray
    y: np.ndarray
    peak: np.ndarray
    fwhm: np.ndarray
    flux: np.ndarray
    mask: np.ndarray
    noise: float
    rms: float

    def __len__(self):
        return len(self.x)

    def select(self, keep):
        """The catalogue of the stars where ``keep`` (bool or index array) is true."""
        return StarCatalog(self.x[keep], self.y[keep], self.peak[keep], self.fwhm[keep], self.flux[keep],
                           self.mask, self.noise, self.rms)


def _extract(plane, threshold_sigma, min_area, rms=None):
    background = sep.Background(plane)
    rms = background.globalrms if rms is None else rms
    data = plane - background.back()
    # SEP's limits are process-wide; raised (never lowered) so that a crowded field of a large
    # image does not overflow them (SEP's defaults: 300 000 pixels, 1024 sub-objects).
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), plane.size))
    sep.set_sub_object_limit(max(sep.get_sub_object_limit(), 4096))
    objects, seg = sep.extract(data, threshold_sigma, err=rms, minarea=min_area, segmentation_map=True)
    return objects, seg, data, float(background.globalrms)


def detect(image, *, threshold_sigma=5.0, min_area=4):
    """Detect the stars of a display-domain image with SEP and measure their sizes.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data (any units; the grey image is used), finite.
    threshold_sigma : float, optional
        Detection threshold in units of SEP's global background RMS.
    min_area : int, optional
        Minimum connected pixels above the threshold.

    Returns
    -------
    StarCatalog
        Brightest (largest isophotal flux) first.

    Raises
    ------
    ValueError
        Non-finite pixels.
    """
    plane = grey(image)
    _check_finite(plane, "image")
    objects, seg, data, rms = _extract(plane, threshold_sigma, min_area)
    n = len(objects)
    if n:
        inside = seg > 0
        labels = seg[inside] - 1
        half = data[inside] >= 0.5 * objects["peak"][labels]
        area = np.bincount(labels[half], minlength=n).astype(np.float64)
        fwhm = np.maximum(2.0 * np.sqrt(area / np.pi), 1.0)
    else:
        fwhm = np.zeros(0)
    order = np.argsort(-objects["flux"], kind="stable") if n else np.zeros(0, int)
    return StarCatalog(
        x=np.asarray(objects["x"], np.float64)[order],
        y=np.asarray(objects["y"], np.float64)[order],
        peak=np.asarray(objects["peak"], np.float64)[order],
        fwhm=fwhm[order],
        flux=np.asarray(objects["flux"], np.float64)[order],
        mask=seg > 0,
        noise=noise_sigma(plane),
        rms=rms,
    )


def count_sources(image, threshold_sigma=5.0, min_area=4):
    """Compact sources SEP finds in an image, above its own background RMS.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` (any units; the grey image is used), finite.
    threshold_sigma : float, optional
        Detection threshold above SEP's global background RMS.
    min_area : int, optional
        Minimum connected pixels.

    Returns
    -------
    int
        Number of SEP extractions (Barbary 2016). :func:`residual_sources` compares two images
        at the input's threshold instead.
    """
    return len(_extract(grey(image), threshold_sigma, min_area)[0])


def residual_sources(starry, starless, *, threshold_sigma=5.0, min_area=4):
    """Sources SEP detects before and after star removal, at one threshold for both.

    Parameters
    ----------
    starry, starless : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data of one scale (:func:`measurement_pair`);
        stars are detected on the grey image, after SEP's background map of each is subtracted.
    threshold_sigma : float, optional
        Detection threshold in units of SEP's global background RMS of the *input*, used for
        both images (the starless image's own RMS, lower once the stars are gone, would lower
        the threshold after).
    min_area : int, optional
        Minimum connected pixels.

    Returns
    -------
    dict
        ``sources_before``, ``sources_after`` (int), ``removed_fraction``
        (``1 - after / before``; NaN without sources before) and ``threshold`` (the absolute
        threshold, grey display units).

    Raises
    ------
    ValueError
        Non-finite pixels.
    """
    objects, residual, rms = residual_objects(starry, starless, threshold_sigma=threshold_sigma, min_area=min_area)
    n0, n1 = len(objects), len(residual)
    return {
        "sources_before": n0,
        "sources_after": n1,
        "removed_fraction": 1.0 - n1 / n0 if n0 else float("nan"),
        "threshold": threshold_sigma * rms,
    }


def residual_objects(starry, starless, *, threshold_sigma=5.0, min_area=4):
    """SEP detections before and after star removal, at the input's threshold for both.

    Parameters
    ----------
    starry, starless : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data of one scale, finite.
    threshold_sigma : float, optional
        Threshold in units of SEP's global background RMS of the input (Barbary 2016).
    min_area : int, optional
        Minimum connected pixels.

    Returns
    -------
    before, after : numpy.ndarray
        SEP object records (fields ``x``, ``y``, ``a``, ``b``, ``theta``, ``peak``, ``flux``...)
        of the input and of the starless image.
    rms : float
        The input's global background RMS (grey display units).

    Raises
    ------
    ValueError
        Non-finite pixels.
    """
    before = grey(starry)
    _check_finite(before, "input")
    objects, _, _, rms = _extract(before, threshold_sigma, min_area)
    return objects, residual_detections(starless, rms, threshold_sigma=threshold_sigma, min_area=min_area), rms


def residual_detections(starless, rms, *, threshold_sigma=5.0, min_area=4):
    """SEP detections of a starless image at a threshold set by the input's background RMS.

    Parameters
    ----------
    starless : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data, finite.
    rms : float
        The input's global background RMS (grey display units; :class:`StarCatalog`'s ``rms``).
    threshold_sigma : float, optional
        Threshold in units of ``rms``.
    min_area : int, optional
        Minimum connected pixels.

    Returns
    -------
    numpy.ndarray
        SEP object records (fields ``x``, ``y``, ``a``, ``b``, ``theta``, ``peak``, ``flux``...).

    Raises
    ------
    ValueError
        Non-finite pixels.
    """
    after = grey(starless)
    _check_finite(after, "starless image")
    return _extract(after, threshold_sigma, min_area, rms=rms)[0]


def _annulus_pixels(shape, x, y, r_in, r_out):
    """Index arrays (rows, cols) of pixels with r_in <= distance < r_out from (x, y)."""
    h, w = shape
    r = int(np.ceil(r_out))
    y0, y1 = max(int(np.floor(y)) - r, 0), min(int(np.floor(y)) + r + 2, h)
    x0, x1 = max(int(np.floor(x)) - r, 0), min(int(np.floor(x)) + r + 2, w)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (yy - y) ** 2 + (xx - x) ** 2
    keep = (d2 >= r_in**2) & (d2 < r_out**2)
    return yy[keep], xx[keep]


def _radii(fwhm, core, ring, sky):
    """Core radius, ring annulus and sky annulus (px) for a star of this FWHM."""
    r_core = max(core * fwhm, 1.0)
    ring_in, ring_out = max(ring[0] * fwhm, r_core), max(ring[1] * fwhm, r_core + 2.0)
    sky_in = max(sky[0] * fwhm, ring_out + 1.0)
    sky_out = max(sky[1] * fwhm, sky_in + 3.0)
    return r_core, (ring_in, ring_out), (sky_in, sky_out)


def _per_star(starry, starless, stars, core, ring, sky, min_sky_pixels=12):
    """Core mean, ring mean, sky level and sky noise of the starless image, per star and channel.

    Returns arrays (N, C): core, ring, sky, noise (NaN where too few sky pixels).
    """
    before, after = _channels(starry), _channels(starless)
    _check_finite(before, "input")
    _check_finite(after, "starless image")
    n, c = len(stars), before.shape[2]
    residual = np.stack([noise_map(before[:, :, k]) for k in range(c)], axis=2)
    floor = [0.5 * noise_sigma(before[:, :, k]) for k in range(c)]
    out = {key: np.full((n, c), np.nan) for key in ("core", "ring", "sky", "noise")}
    for i in range(n):
        r_core, (ring_in, ring_out), (sky_in, sky_out) = _radii(stars.fwhm[i], core, ring, sky)
        x, y = stars.x[i], stars.y[i]
        sy, sx = _annulus_pixels(after.shape[:2], x, y, sky_in, sky_out)
        if sy.size < min_sky_pixels:
            continue
        cy, cx = _annulus_pixels(after.shape[:2], x, y, 0.0, r_core)
        if cy.size == 0:  # cannot happen for a centre inside the image (r_core >= 1 px)
            continue
        ry, rx = _annulus_pixels(after.shape[:2], x, y, ring_in, ring_out)
        for k in range(c):
            level = float(np.median(after[sy, sx, k]))
            out["sky"][i, k] = level
            out["noise"][i, k] = max(_mad_sigma(residual[sy, sx, k]), floor[k])
            out["core"][i, k] = float(after[cy, cx, k].mean())
            out["ring"][i, k] = float(after[ry, rx, k].mean()) if ry.size else np.nan
    return out


def _bright(stars, min_peak_sigma, max_stars):
    keep = np.flatnonzero(stars.peak >= min_peak_sigma * stars.noise)[:max_stars]
    return stars.select(keep)


def hole_depth(starry, starless, stars=None, *, min_peak_sigma=10.0, max_stars=50, core=0.5,
               sky=(4.0, 6.0), worst_percentile=5.0):
    """How far below the local sky the starless image falls where each bright star was.

    For each bright star of the input and each channel, the mean of the starless image over
    the star's core (a disc of radius ``core`` x FWHM, at least 1 px) less the local sky, the
    median of the starless image in an annulus ``sky[0]``-``sky[1]`` FWHM from the centre,
    divided by the local noise, the noise sigma of the input's high-pass residual
    (:func:`noise_map`) in that annulus (at least half the channel's global noise). A star's
    depth is that of its darkest channel: a hole in one channel of a colour image is a
    coloured hole (a white star on red nebulosity over-subtracted in red leaves a blue-grey
    spot). A perfect removal gives about 0, a hole (more subtracted than the star added) a
    negative depth, light left behind a positive one.

    Parameters
    ----------
    starry, starless : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data of one scale (:func:`measurement_pair`), finite.
    stars : StarCatalog or None, optional
        Stars of the input (:func:`detect`); detected here when None.
    min_peak_sigma : float, optional
        Bright stars: peak above SEP's background at least this many global noise sigmas...
    max_stars : int, optional
        ... and the ``max_stars`` brightest of those by flux (stretched images compress the
        peaks of bright stars, so a count, not a peak level, says which stars are bright; in a
        galaxy field the nucleus may be among them).
    core : float, optional
        Core radius in FWHM.
    sky : tuple of float, optional
        Inner and outer radius of the sky annulus in FWHM (at least 3 px wide, outside the ring
        annulus of :func:`ring_energy`).
    worst_percentile : float, optional
        Percentile reported as the worst hole.

    Returns
    -------
    dict
        In noise sigmas (NaN without bright stars): ``hole_median`` and ``hole_worst`` (the
        ``worst_percentile`` percentile) of the darkest-channel depth, ``hole_grey_median`` of
        the depth of the grey image; ``hole_stars``: bright stars measured; ``hole_depths``:
        float64 ``(N,)`` darkest-channel depth per star, brightest first.

    Raises
    ------
    ValueError
        Non-finite pixels or shapes that are not images.
    """
    stars = detect(starry) if stars is None else stars
    bright = _bright(stars, min_peak_sigma, max_stars)
    before, after = _channels(starry), _channels(starless)
    g = _per_star(grey(before), grey(after), bright, core, (core, core), sky)
    depth_grey = ((g["core"] - g["sky"]) / g["noise"])[:, 0]
    if before.shape[2] > 1:
        m = _per_star(before, after, bright, core, (core, core), sky)
        depth = np.min((m["core"] - m["sky"]) / m["noise"], axis=1)
    else:
        depth = depth_grey
    ok = np.isfinite(depth) & np.isfinite(depth_grey)
    depth, depth_grey = depth[ok], depth_grey[ok]
    nan = float("nan")
    return {
        "hole_median": float(np.median(depth)) if depth.size else nan,
        "hole_worst": float(np.percentile(depth, worst_percentile)) if depth.size else nan,
        "hole_grey_median": float(np.median(depth_grey)) if depth.size else nan,
        "hole_stars": int(depth.size),
        "hole_depths": depth,
    }


def ring_energy(starry, starless, stars=None, *, min_peak_sigma=10.0, max_stars=500, ring=(1.0, 3.0),
                sky=(4.0, 6.0)):
    """Light the starless image keeps (or lacks) in an annulus around each star.

    For each star of the input with a peak of at least ``min_peak_sigma`` noise sigmas, the
    mean of the starless image over the annulus ``ring[0]``-``ring[1]`` FWHM from the centre
    less the local sky (median of the starless image ``sky[0]``-``sky[1]`` FWHM out), in units
    of the local noise (as :func:`hole_depth`); computed on the grey image and on each channel.
    A halo left behind is a positive excess, a dark ring a negative one.

    Parameters
    ----------
    starry, starless : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data of one scale (:func:`measurement_pair`), finite.
    stars : StarCatalog or None, optional
        Stars of the input (:func:`detect`); detected here when None.
    min_peak_sigma : float, optional
        Stars measured: peak at least this many global noise sigmas above SEP's background.
    max_stars : int, optional
        At most this many, the brightest by flux.
    ring, sky : tuple of float, optional
        Inner and outer radii in FWHM of the ring and of the sky annulus.

    Returns
    -------
    dict
        Medians over the stars, in noise sigmas (NaN without stars): ``ring_excess``, of the grey
        image; ``ring_channel_max``, of each star's largest per-channel excess (equal to
        ``ring_excess`` for mono, larger where a ring is coloured); ``ring_abs``, of the absolute
        grey excess (rings of either sign); ``ring_stars``: stars measured.

    Raises
    ------
    ValueError
        Non-finite pixels or shapes that are not images.
    """
    stars = detect(starry) if stars is None else stars
    chosen = _bright(stars, min_peak_sigma, max_stars)
    g = _per_star(grey(starry), grey(starless), chosen, 0.5, ring, sky)
    excess = ((g["ring"] - g["sky"]) / g["noise"])[:, 0]
    before, after = _channels(starry), _channels(starless)
    if before.shape[2] > 1:
        per = _per_star(before, after, chosen, 0.5, ring, sky)
        channel_max = np.max((per["ring"] - per["sky"]) / per["noise"], axis=1)
    else:
        channel_max = excess
    ok = np.isfinite(excess) & np.isfinite(channel_max)
    nan = float("nan")
    return {
        "ring_excess": float(np.median(excess[ok])) if ok.any() else nan,
        "ring_channel_max": float(np.median(channel_max[ok])) if ok.any() else nan,
        "ring_abs": float(np.median(np.abs(excess[ok]))) if ok.any() else nan,
        "ring_stars": int(ok.sum()),
    }


def outside_change(starry, starless, stars=None, *, grow=2.0, min_grow=3):
    """How much the starless image differs from the input away from every star.

    Parameters
    ----------
    starry, starless : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data of one scale (:func:`measurement_pair`), finite.
    stars : StarCatalog or None, optional
        Stars of the input (:func:`detect`); detected here when None.
    grow : float, optional
        SEP's segmentation of every detection is dilated by ``grow`` x the median FWHM of the
        stars (px), at least ``min_grow`` px.
    min_grow : int, optional
        Smallest dilation (px).

    Returns
    -------
    dict
        On the grey image outside the dilated star masks, in units of the global noise sigma:
        ``outside_rms`` (RMS of starless - input), ``outside_max`` (largest absolute
        difference), ``outside_bias`` (mean difference); ``outside_fraction``: the fraction of
        the image they cover. NaN where the masks cover everything.

    Raises
    ------
    ValueError
        Non-finite pixels, or shapes that differ.
    """
    before, after = _finite_pair(grey(starry), grey(starless))
    stars = detect(before) if stars is None else stars
    radius = max(int(np.ceil(grow * np.median(stars.fwhm))) if len(stars) else 0, min_grow)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    masked = cv2.dilate(stars.mask.astype(np.uint8), disc) > 0
    outside = ~masked
    nan = float("nan")
    if not outside.any():
        return {"outside_rms": nan, "outside_max": nan, "outside_bias": nan, "outside_fraction": 0.0}
    diff = (after - before)[outside].astype(np.float64) / stars.noise
    return {
        "outside_rms": float(np.sqrt(np.mean(diff**2))),
        "outside_max": float(np.abs(diff).max()),
        "outside_bias": float(diff.mean()),
        "outside_fraction": float(outside.mean()),
    }


def saturated_stars(display, stars=None, *, min_fwhm_ratio=4.0, saturation=0.98, min_core=9, max_stars=50,
                    threshold_sigma=5.0):
    """The large saturated stars of a display image: bloated cores that are white in every channel.

    A bright star in a stretched image is a disc clipped to white in every channel with a
    coloured rim and a wide halo; a network trained on smaller stars can leave it whole
    (measured on the Cave Nebula: its three brightest stars). Galaxy cores and nebula knots
    that are as large and as bright clip in one or two channels, not in all: on the real images
    of ``benchmarks/starless_real.py`` the white cores of the Cave's stars cover 17-83 px, those
    of the Hubble Deep Field's saturated ellipticals 0-6 px, its one bright star 12 px, and the
    Cave's red nebula knots 0 px.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data in ``[0, 1]``, finite.
    stars : StarCatalog or None, optional
        :func:`detect` of ``display`` (detected here when None).
    min_fwhm_ratio : float, optional
        Least FWHM, in units of the median FWHM of all detections.
    saturation : float, optional
        Display level from which a pixel counts as clipped (0.98 is 250 of 255).
    min_core : int, optional
        Least clipped pixels (every channel at or above ``saturation``) within one FWHM of the
        centre.
    max_stars : int, optional
        Most stars returned, brightest first.
    threshold_sigma : float, optional
        SEP detection threshold when ``stars`` is None, see :func:`detect`.

    Returns
    -------
    StarCatalog
        The saturated stars among ``stars``, brightest first.
    """
    image = _channels(display)
    stars = detect(image, threshold_sigma=threshold_sigma) if stars is None else stars
    if not len(stars.x):
        return stars
    white = image.min(axis=2) >= saturation
    h, w = white.shape
    found = []
    for i in np.flatnonzero(stars.fwhm >= min_fwhm_ratio * np.median(stars.fwhm)):
        x, y, f = stars.x[i], stars.y[i], stars.fwhm[i]
        r = int(np.ceil(f))
        y0, x0 = max(0, int(y) - r), max(0, int(x) - r)
        yy, xx = np.mgrid[y0 : min(h, int(y) + r + 1), x0 : min(w, int(x) + r + 1)]
        core = white[y0 : y0 + yy.shape[0], x0 : x0 + yy.shape[1]] & (np.hypot(xx - x, yy - y) <= f)
        if core.sum() >= min_core:
            found.append(i)
            if len(found) == max_stars:
                break
    return stars.select(np.array(found, dtype=int))


# Offsets (px) across a spike's line: on the spike, and the reference either side of it.
SPIKE_ON = np.arange(-2.0, 3.0)
SPIKE_REFERENCE = np.array([-7.0, -6.0, -5.0, -4.0, 4.0, 5.0, 6.0, 7.0])


def _line_samples(image, x, y, angles, t, offsets):
    """Bilinear samples ``(A, T, S, C)`` of ``image`` at ``(x, y) + t u + s v`` for each angle.

    ``u = (cos a, sin a)`` runs along the line, ``v = (-sin a, cos a)`` across it; angles in
    degrees, counter-clockwise from +x with y down the rows.
    """
    th = np.radians(np.asarray(angles, dtype=np.float64))
    cos, sin = np.cos(th)[:, None, None], np.sin(th)[:, None, None]
    tt, ss = np.asarray(t, dtype=np.float64)[None, :, None], np.asarray(offsets, dtype=np.float64)[None, None, :]
    px, py = x + tt * cos - ss * sin, y + tt * sin + ss * cos
    coords = np.stack([py.ravel(), px.ravel()])
    planes = [ndimage.map_coordinates(image[:, :, k], coords, order=1, mode="nearest").reshape(px.shape)
              for k in range(image.shape[2])]
    return np.stack(planes, axis=-1)


def spike_reach(fwhm, reach, max_radius):
    """Inner and outer distance (px) along a spike from the centre of a star of FWHM ``fwhm`` (px)."""
    return max(3, int(round(0.25 * fwhm))), int(min(max_radius, np.ceil(reach * fwhm)))


def spike_angles(image, stars, *, min_z=3.0, separation=10, max_lines=4, reach=4.0, max_radius=200):
    """Directions of the diffraction spikes that an image's bright stars share.

    A telescope's spikes (the vanes of a Newtonian's secondary, a refractor's focuser clip, a
    JWST-like hexagonal pupil) point the same way for every star of a frame. For each star a
    line through its centre is sampled at every whole degree of ``[0, 180)`` (both arms), and the
    line's excess over two parallel strips 4-7 px to either side (which cancels the star's round
    halo and a nebula's gradient) is taken, as the median along the inner half of each arm and
    the smaller of the two arms (a spike runs through the star; a filament or a chain of stars
    on one side is not one). The stars' excesses are summed per angle, and the angles where the
    sum stands ``min_z`` robust standard deviations (1.4826 MAD over the 180 angles) above its
    median, each the largest within ``separation`` degrees, are the spikes. On the Cave
    Nebula's 12 saturated stars (crossed spikes): in the input, a crowded field, 3 and 87
    degrees up to ``min_z`` 3 (none at 3.5); in what the network and the profile subtraction
    left, 1 and 92 degrees up to ``min_z`` 4 (none at 5); after :func:`subtract_spikes`, none
    down to ``min_z`` 2.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` float32 display data in ``[0, 1]``.
    stars : astroflow.restoration.starmetrics.StarCatalog
        The stars to look at (:func:`astroflow.restoration.starmetrics.saturated_stars`).
    min_z : float, optional
        Least robust z-score of a spike.
    separation : int, optional
        Least angle between two spikes (degrees).
    max_lines : int, optional
        Most lines returned (a line is two opposite spikes).
    reach, max_radius : float, optional
        Length of a line's arms: ``reach`` FWHM, at most ``max_radius`` px.

    Returns
    -------
    numpy.ndarray
        ``(L,)`` int degrees in ``[0, 180)``, strongest first; empty without stars or spikes.
    """
    image = np.asarray(image, dtype=np.float32)
    if not len(stars.x):
        return np.zeros(0, dtype=int)
    grey = image.mean(axis=2, keepdims=True)
    angles = np.arange(180)
    total = np.zeros(180)
    offsets = np.concatenate([SPIKE_ON[1:-1], SPIKE_REFERENCE])
    for x, y, fwhm in zip(stars.x, stars.y, stars.fwhm):
        inner, outer = spike_reach(fwhm, reach, max_radius)
        t = np.arange(inner, outer, dtype=np.float64)
        k = max(4, len(t) // 2)
        arms = []
        for sign in (1.0, -1.0):
            v = _line_samples(grey, x, y, angles, sign * t[:k], offsets)[..., 0]
            arms.append(np.median(v[:, :, :3].mean(axis=2) - np.median(v[:, :, 3:], axis=2), axis=1))
        total += np.minimum(*arms)
    spread = 1.4826 * np.median(np.abs(total - np.median(total)))
    if spread <= 0:
        return np.zeros(0, dtype=int)
    z = (total - np.median(total)) / spread
    found = []
    for a in np.argsort(z)[::-1]:
        if z[a] < min_z or len(found) == max_lines:
            break
        near = (a + np.arange(-separation, separation + 1)) % 180
        if z[a] >= z[near].max() and all(min(abs(a - b), 180 - abs(a - b)) > separation for b in found):
            found.append(int(a))
    return np.array(found, dtype=int)


def spike_arm(display, image, x, y, angle, inner, outer, *, sigma, end=0.5):
    """One spike arm of a star, measured on the input and on a starless image.

    Both images are sampled along the arm (``inner`` to ``outer`` px from the centre ``x, y``, at
    ``angle`` degrees) on lines ``SPIKE_ON`` px across it and on reference lines
    ``SPIKE_REFERENCE`` px to either side; each line's excess over the median of the references
    at the same distance is smoothed along the arm (5 px). The arm ends where the input's
    excess on the middle three lines, smoothed over 9 px, first falls below ``end`` times
    ``sigma``.

    Parameters
    ----------
    display, image : numpy.ndarray
        ``(H, W, C)`` float32 display data: the input and a starless image.
    x, y : float
        The star's centre (px).
    angle : float
        Direction of the arm, degrees counter-clockwise from +x (rows down).
    inner, outer : int
        Distances along the arm (px), from :func:`spike_reach`.
    sigma : float
        Noise sigma (display units) of the grey input.
    end : float, optional
        The input's excess, in ``sigma``, at which the arm ends.

    Returns
    -------
    e_in, e_image : numpy.ndarray
        ``(T, S, C)`` float64 excesses (display units), ``T = outer - inner`` positions 1 px
        apart from ``inner``, ``S = len(SPIKE_ON)``.
    stop : int
        Positions of the arm before it ends (0 to ``T``).
    reference_in, reference_image : numpy.ndarray
        ``(T, C)`` float64, the median of the reference lines (the sky either side) of each.
    """
    t = np.arange(inner, outer, dtype=np.float64)
    offsets = np.concatenate([SPIKE_ON, SPIKE_REFERENCE])
    on = len(SPIKE_ON)
    raw, references = [], []
    for plane in (display, image):
        v = _line_samples(plane, x, y, [angle], t, offsets)[0]  # (T, S, C)
        references.append(np.median(v[:, on:], axis=1))
        raw.append(v[:, :on] - references[-1][:, None])
    line = ndimage.uniform_filter1d(raw[0][:, 1:-1].mean(axis=(1, 2)), 9, mode="nearest")
    below = np.flatnonzero(line < end * sigma)
    stop = int(below[0]) if len(below) else len(t)
    e_in, e_image = (ndimage.uniform_filter1d(e, 5, axis=0, mode="nearest") for e in raw)
    return e_in, e_image, stop, references[0], references[1]


def spike_excess(starry, starless, stars=None, *, angles=None, reach=4.0, max_radius=200, end=0.5):
    """What a star removal left of the diffraction spikes of the large saturated stars.

    The spikes' directions are found on the input (:func:`spike_angles`); along each arm of each
    star, as far as the input's spike reaches (:func:`spike_arm`), the mean excess of the
    starless image over the reference lines either side, on the middle three lines (grey).
    Positive: a spike remains; about 0: it is gone.

    Parameters
    ----------
    starry, starless : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` display data of one scale (:func:`measurement_pair`), finite.
    stars : StarCatalog or None, optional
        The stars (:func:`saturated_stars` of the input when None).
    angles : numpy.ndarray or None, optional
        Spike directions (degrees); :func:`spike_angles` of the input when None.
    reach, max_radius, end : float, optional
        See :func:`spike_reach` and :func:`spike_arm`.

    Returns
    -------
    dict
        ``spike_lines`` (directions found), ``spike_arms`` (arms measured, at least 1 px long),
        ``spike_before`` and ``spike_excess`` (mean excess of the input and of the starless
        image over those arms, noise sigmas of the grey input; NaN without arms).

    Raises
    ------
    ValueError
        Shapes that differ, or non-finite pixels.
    """
    before, after = _finite_pair(_channels(starry), _channels(starless))
    stars = saturated_stars(before) if stars is None else stars
    sigma = noise_sigma(grey(before))
    angles = spike_angles(before, stars) if angles is None else np.asarray(angles)
    values_in, values_out = [], []
    for x, y, fwhm in zip(stars.x, stars.y, stars.fwhm):
        inner, outer = spike_reach(fwhm, reach, max_radius)
        for angle in angles:
            for direction in (angle, angle + 180.0):
                e_in, e_out, stop, _, _ = spike_arm(before, after, x, y, direction, inner, outer, sigma=sigma,
                                                    end=end)
                if stop:
                    values_in.append(e_in[:stop, 1:-1].mean() / sigma)
                    values_out.append(e_out[:stop, 1:-1].mean() / sigma)
    nan = float("nan")
    return {
        "spike_lines": len(angles),
        "spike_arms": len(values_out),
        "spike_before": float(np.mean(values_in)) if values_in else nan,
        "spike_excess": float(np.mean(values_out)) if values_out else nan,
    }


def star_removal_measures(starry, starless, *, encoding, bits=None, threshold_sigma=5.0):
    """All the real-image measures of one star removal.

    Parameters
    ----------
    starry, starless : numpy.ndarray
        The input and the method's starless image, same shape, ``(H, W)``, ``(H, W, 1)`` or
        ``(H, W, 3)``, finite; in the input's own encoding.
    encoding : {"display", "linear"}
        See :func:`to_display`; linear data are stretched with the input's network stretch.
    bits : int or None, optional
        See :func:`to_display`.
    threshold_sigma : float, optional
        SEP detection threshold (the input's background RMS) of the sources and stars.

    Returns
    -------
    dict
        The scalars of :func:`residual_sources`, :func:`hole_depth`, :func:`ring_energy` and
        :func:`outside_change` (not the per-star arrays); ``noise``, the global noise sigma
        of the grey input in display units; and, for the large saturated stars alone
        (:func:`saturated_stars`, whose halos the medians over all stars do not see),
        ``saturated_stars`` (how many were measured), ``saturated_ring`` and
        ``saturated_ring_channel_max`` (:func:`ring_energy`'s ``ring_excess`` and
        ``ring_channel_max`` over them; NaN without any), and their diffraction spikes'
        ``spike_lines``, ``spike_arms``, ``spike_before`` and ``spike_excess``
        (:func:`spike_excess`).

    Raises
    ------
    ValueError
        As the functions it calls.
    """
    before, after = measurement_pair(starry, starless, encoding=encoding, bits=bits)
    stars = detect(before, threshold_sigma=threshold_sigma)
    result = {"noise": stars.noise}
    result.update(residual_sources(before, after, threshold_sigma=threshold_sigma))
    holes = hole_depth(before, after, stars)
    holes.pop("hole_depths")
    result.update(holes)
    result.update(ring_energy(before, after, stars))
    result.update(outside_change(before, after, stars))
    bright = saturated_stars(before, stars)
    saturated = ring_energy(before, after, bright, min_peak_sigma=0.0)
    result.update({"saturated_stars": saturated["ring_stars"], "saturated_ring": saturated["ring_excess"],
                   "saturated_ring_channel_max": saturated["ring_channel_max"]})
    result.update(spike_excess(before, after, bright))
    return result


def crop_windows(display, size):
    """Centres of the crops that show a star remover's defects: bright stars, a crowded field,
    nebulosity.

    Parameters
    ----------
    display : numpy.ndarray
        ``(H, W, C)`` float32 display data in ``[0, 1]`` (:func:`measurement_pair`), the input.
    size : int
        Crop side, px.

    Returns
    -------
    dict
        ``{name: (y, x)}`` (px, crop centres kept ``size / 2`` inside the image where it is large
        enough) for ``"bright"`` (the brightest SEP detection, :func:`detect`), ``"bright2"`` (the
        brightest one at least a crop away, absent when there is none: the brightest may be a
        galaxy's nucleus), ``"crowded"`` (the most detections in a crop) and ``"nebula"`` (the
        most large-scale structure: the largest local variance of the median-filtered,
        Gaussian-smoothed grey image, where stars are gone); the first two are absent when
        nothing is detected away from the edges.
    """
    h, w = display.shape[:2]
    half = size // 2
    stars = detect(display)

    def inside_image(y, x):
        return int(np.clip(y, half, max(h - half, half))), int(np.clip(x, half, max(w - half, half)))

    compact = stars.fwhm < size / 4  # not a nebula's or a galaxy's broad glow
    inside = np.flatnonzero((stars.x > 8) & (stars.x < w - 8) & (stars.y > 8) & (stars.y < h - 8) & compact)
    windows = {}
    if inside.size:
        first = inside[0]
        windows["bright"] = inside_image(stars.y[first], stars.x[first])
        away = inside[np.hypot(stars.x[inside] - stars.x[first], stars.y[inside] - stars.y[first]) > size]
        if away.size:
            windows["bright2"] = inside_image(stars.y[away[0]], stars.x[away[0]])

    def edges_off(field):
        field[:half], field[h - half :], field[:, :half], field[:, w - half :] = -1, -1, -1, -1
        return field

    counts = np.zeros((h, w), np.float32)
    counts[np.clip(stars.y.astype(int), 0, h - 1), np.clip(stars.x.astype(int), 0, w - 1)] = 1
    density = edges_off(cv2.boxFilter(counts, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT))
    windows["crowded"] = inside_image(*np.unravel_index(int(np.argmax(density)), density.shape))
    g = cv2.GaussianBlur(cv2.medianBlur(np.ascontiguousarray(grey(display)), 5), (0, 0), 4)
    mean = cv2.boxFilter(g, -1, (size, size))
    spread = edges_off(cv2.boxFilter(g * g, -1, (size, size)) - mean**2)
    windows["nebula"] = inside_image(*np.unravel_index(int(np.argmax(spread)), spread.shape))
    return windows
