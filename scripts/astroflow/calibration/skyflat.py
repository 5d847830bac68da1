"""A master flat from the lights themselves (a "sky flat"), for nights without flats.

The lights of a night drift and are dithered across the sensor while vignetting and dust stay
put on it. Each light (bias and dark already subtracted, still in sensor coordinates and still a
mosaic for a colour camera) is divided by its own sky level, its stars and bright nebulosity are
masked, and the lights are combined pixel by pixel in sensor coordinates with a robust estimator
that ignores the masked pixels: what is left is the sensor's response to a flat sky. This is the
"sky flat" (or "supersky flat") of CCD imaging (Tyson 1986, JOSA A 3, 2131; the median of dithered
object frames in IRAF's ``ccdred.mkskyflat``, Massey 1997, "A User's Guide to CCD Reductions with
IRAF"). The stars are found with SEP (Barbary 2016, the Source Extractor algorithms of Bertin &
Arnouts 1996), the shifts between the lights with the registration module's star matching
(:func:`astroflow.deepsky.register.find_transform`, astroalign asterisms refined by least
squares).

What is ours: a second pass that divides each light by a low-order polynomial fitted to its
ratio with the first estimate (the sky gradient of each light changes through the night and must
not leak into the flat) and masks what stands out of that ratio (bright nebulosity, a galaxy);
hole filling and smoothing by normalised convolution per CFA colour plane, at a scale
(``smooth_px``) small enough to keep dust donuts; and the refusal, with its reason, when the
lights are too few or do not move on the sensor: then the median would keep the stars.

The result is normalised like a master flat of :func:`astroflow.calibration.calibrate.master_flat`
(median 1 per CFA colour), so that :func:`astroflow.calibration.calibrate.calibrate_light` uses it
unchanged. Its header says ``FLATTYPE = 'SKY'``, how many lights went into it (``NCOMBINE``) and
how far they moved (``DITHERPX``, ``DITHMAX``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sep
from astropy.io import fits
from astropy.stats import sigma_clip
from astropy.utils.exceptions import AstropyUserWarning
from scipy import ndimage

from astroflow.calibration.calibrate import SKY_FLAT_TYPE, _normalise
from astroflow.calibration.debayer import cfa_colour_cells, validate_pattern
from astroflow.checks import check_float, check_int
from astroflow.deepsky.register import RegistrationError, find_transform
from astroflow.io.framestore import FrameStore

__all__ = [
    "SKY_FLAT_TYPE",
    "SkyFlatRefused",
    "SkyFlatResult",
    "SkyFlatWarning",
    "dither_between",
    "light_mask",
    "sky_flat",
]

log = logging.getLogger(__name__)

_COMBINES = ("median", "sigma_clip")
# Stars kept per light for the matching (astroalign uses the 50 brightest; the refinement more).
_MAX_STARS = 300
# Block size (px) of the per-light gradient fit and of the nebulosity mask.
_BLOCK = 32


class SkyFlatRefused(ValueError):
    """The lights cannot make a sky flat: too few of them, or they do not move on the sensor.

    Attributes
    ----------
    reason : str
        Why, in words (also the message).
    summary : dict
        What was measured before the refusal (see :attr:`SkyFlatResult.summary`), with
        ``accepted`` False.
    """

    def __init__(self, reason, summary):
        super().__init__(reason)
        self.reason = reason
        self.summary = summary


class SkyFlatWarning(UserWarning):
    """A light could not be matched to the others (its shift is unknown), or a sky flat was refused."""


@dataclass
class SkyFlatResult:
    """A sky flat and how it was made.

    Attributes
    ----------
    flat : numpy.ndarray
        float32 ``(H, W)``, dimensionless, median 1 per CFA colour (or over the image for mono).
    header : astropy.io.fits.Header
        ``IMAGETYP = 'MASTER FLAT'``, ``FLATTYPE = 'SKY'``, ``NCOMBINE`` (lights), ``DITHERPX``
        (median shift between two lights, px), ``DITHMAX`` (largest, px), ``SMOOTHPX``,
        ``NFILLED`` (pixels no light saw unmasked, filled), ``COMBMETH``, ``BAYERPAT`` for a
        mosaic, and HISTORY.
    lights : pandas.DataFrame
        One row per light: ``frame``, ``sky`` (ADU, median of the unmasked pixels),
        ``masked_fraction``, ``n_stars``, ``dx``, ``dy`` (px, shift of the frame centre onto the
        first matched light), ``rotation_deg``, ``matched`` (bool).
    summary : dict
        ``accepted``, ``reason``, ``n_lights``, ``n_matched``, ``dither_px``, ``dither_max_px``,
        ``min_lights``, ``min_dither_px``, ``smooth_px``, ``filled_pixels`` and ``lights`` (the
        table as records): what the rule writes as JSON.
    """

    flat: np.ndarray
    header: fits.Header
    lights: pd.DataFrame
    summary: dict = field(default_factory=dict)


def light_mask(image, bayer_pattern=None, *, mask_sigma, grow_px, background_box=32):
    """Stars and other compact sources of one light, as a mask, and their positions.

    Detection is SEP's (a meshed background, then thresholded extraction) on the light, or on
    the 2x2 superpixel mean of a mosaic so that every colour of a star is found together.
    Each source's segment is grown by ``grow_px`` to cover the wings below the threshold. Larger
    masks cost more than the wings they hide: on simulated nights a disc of 2.5 isophotal radii
    around each source doubled the error of the sky flat, for the pixels that fewer lights see.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` mono or CFA mosaic, linear ADU (bias and dark subtracted); NaN for pixels
        known to be bad. Not modified.
    bayer_pattern : str, optional
        Bayer pattern of a mosaic; None for mono.
    mask_sigma : float
        Detection threshold in background RMS (> 0).
    grow_px : int
        Dilation of each source's segment, px of the light (>= 0).
    background_box : int, optional
        Mesh of SEP's background, px of the light: small enough that the vignetting inside one
        mesh does not count as noise.

    Returns
    -------
    mask : numpy.ndarray
        bool ``(H, W)``, True on the sources.
    stars : numpy.ndarray
        float64 ``(N, 2)`` ``(x, y)`` centres of the sources in the light's pixels (0-based),
        brightest first, at most 300.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D (or has odd sides for a mosaic), a setting is out of range, or
        the pattern is unknown.
    """
    mask_sigma = check_float("mask_sigma", mask_sigma, 0.0, strict=True)
    grow_px = check_int("grow_px", grow_px, 0)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"light_mask needs a 2-D light (mono or CFA), got shape {image.shape}")
    factor = 1
    plane = image
    if bayer_pattern is not None:
        validate_pattern(bayer_pattern)
        if image.shape[0] % 2 or image.shape[1] % 2:
            raise ValueError(f"a CFA mosaic must have even sides, got shape {image.shape}")
        plane = image.reshape(image.shape[0] // 2, 2, image.shape[1] // 2, 2).mean(axis=(1, 3))
        factor = 2
    plane = np.ascontiguousarray(plane, dtype=np.float32)
    bad = ~np.isfinite(plane)
    if bad.any():
        plane = np.where(bad, np.nanmedian(plane), plane).astype(np.float32)
    box = max(8, min(background_box // factor, *plane.shape))
    background = sep.Background(plane, bw=box, bh=box)
    data = plane - background.back()
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), plane.size))
    sep.set_sub_object_limit(max(sep.get_sub_object_limit(), 4096))
    objects, seg = sep.extract(
        data, mask_sigma, err=background.globalrms, minarea=5, segmentation_map=True
    )
    mask = seg > 0
    grow = int(np.ceil(grow_px / factor))
    if grow and mask.any():
        disk = np.hypot(*np.mgrid[-grow : grow + 1, -grow : grow + 1]) <= grow
        mask = ndimage.binary_dilation(mask, structure=disk)
    if factor > 1:
        mask = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    order = np.argsort(-objects["flux"], kind="stable")[:_MAX_STARS]
    # a superpixel's centre lies between the four pixels it averages
    stars = np.column_stack([objects["x"][order], objects["y"][order]]).astype(np.float64)
    stars = stars * factor + (factor - 1) / 2.0
    return mask, stars


def dither_between(matrices, shape, *, grid=3):
    """How far the sky moves on the sensor between two lights, for every pair of lights.

    The displacement of a pair is the median, over a ``grid x grid`` set of points spread over
    the frame, of the distance a sensor point moves between the two lights; a rotation about
    the centre moves the corners although it leaves the centre in place.

    Parameters
    ----------
    matrices : sequence of numpy.ndarray
        ``(3, 3)`` light -> reference pixel transforms of the matched lights.
    shape : tuple of int
        ``(H, W)`` of the lights.
    grid : int, optional
        Points per side of the grid.

    Returns
    -------
    numpy.ndarray
        float64, one displacement (px) per pair of lights; empty for fewer than two.
    """
    height, width = shape[:2]
    ys, xs = np.meshgrid(np.linspace(0, height - 1, grid), np.linspace(0, width - 1, grid), indexing="ij")
    points = np.column_stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    out = []
    for a, b in itertools.combinations(matrices, 2):
        moved = points @ (np.linalg.inv(b) @ a).T
        out.append(float(np.median(np.hypot(moved[:, 0] - points[:, 0], moved[:, 1] - points[:, 1]))))
    return np.asarray(out, dtype=np.float64)


def sky_flat(
    lights,
    bayer_pattern=None,
    *,
    names=None,
    min_lights=5,
    min_dither_px=5.0,
    smooth_px=4.0,
    mask_sigma=3.0,
    mask_grow_px=2,
    combine="median",
    iterations=2,
    gradient_order=1,
    nebula_sigma=5.0,
    bad_pixels=None,
    memory_mb=1024,
):
    """Make a master flat from bias- and dark-subtracted lights in sensor coordinates.

    Parameters
    ----------
    lights : sequence of numpy.ndarray or of callable
        ``(H, W)`` mono or CFA lights, float ADU, bias and dark subtracted, not flat-fielded,
        not debayered, not registered; or functions of no argument that return one (each is
        called once, so that one light at a time is in memory).
    bayer_pattern : str, optional
        Bayer pattern of the mosaics (from the ingested header's ``BAYERPAT``); None for mono.
    names : sequence of str, optional
        Names of the lights, for the table and the messages; ``light_0``... by default.
    min_lights : int, optional
        Fewest lights for a sky flat (>= 2); fewer: refused.
    min_dither_px : float, optional
        Smallest median displacement between two lights (px, see :func:`dither_between`);
        less: refused, since the stars would stay in the median.
    smooth_px : float, optional
        Gaussian sigma (px of the mosaic) of the smoothing of the combination: large enough to
        average the noise of a few lights, small enough to keep the rims of dust donuts
        (> 0).
    mask_sigma : float, optional
        Star detection threshold (background RMS) of the masks.
    mask_grow_px : int, optional
        Growth of every mask, px.
    combine : {"median", "sigma_clip"}, optional
        Per-pixel estimator over the unmasked lights: median, or mean after 3-sigma clipping
        about the median (MAD sigma).
    iterations : int, optional
        1: one combination; 2 or more: each further pass divides every light by a polynomial
        surface of ``gradient_order`` fitted to its ratio with the last flat, masks the blocks
        of that ratio that stand more than ``nebula_sigma`` robust sigmas above it (bright
        nebulosity, a galaxy), and combines again.
    gradient_order : int, optional
        Polynomial order of the per-light sky gradient (0: a level only).
    nebula_sigma : float, optional
        Threshold of the nebulosity mask, robust sigmas of a light's block ratios.
    bad_pixels : numpy.ndarray, optional
        bool ``(H, W)``, pixels to ignore in every light (hot pixels of the master dark).
    memory_mb : float, optional
        Memory budget (MiB) of the combination, which reads the lights back in row blocks.

    Returns
    -------
    SkyFlatResult

    Raises
    ------
    SkyFlatRefused
        If fewer than ``min_lights`` lights are given, fewer than two could be matched, or the
        median displacement between lights is below ``min_dither_px`` (the reason says which,
        with the numbers).
    ValueError
        If a setting is out of range, the lights differ in shape, a light is not 2-D (or has odd
        sides for a mosaic), or ``bad_pixels`` does not match the lights.
    """
    min_lights = check_int("min_lights", min_lights, 2)
    min_dither_px = check_float("min_dither_px", min_dither_px, 0.0)
    smooth_px = check_float("smooth_px", smooth_px, 0.0, strict=True)
    iterations = check_int("iterations", iterations, 1)
    gradient_order = check_int("gradient_order", gradient_order, 0)
    nebula_sigma = check_float("nebula_sigma", nebula_sigma, 0.0, strict=True)
    memory_mb = check_float("memory_mb", memory_mb, 0.0, strict=True)
    if combine not in _COMBINES:
        raise ValueError(f"unknown combine {combine!r}: expected one of {', '.join(_COMBINES)}")
    pattern = validate_pattern(bayer_pattern) if bayer_pattern is not None else None
    settings = {"min_lights": min_lights, "min_dither_px": min_dither_px, "smooth_px": smooth_px}

    with tempfile.TemporaryDirectory(prefix="astroflow-skyflat-") as tmp, contextlib.ExitStack() as opened:
        lights = list(lights)
        if names is not None and len(names) != len(lights):
            raise ValueError(f"{len(names)} names for {len(lights)} lights")
        rows, stars, shape, frames = [], [], None, None
        for index, light in enumerate(lights):
            name = names[index] if names is not None else f"light_{index}"
            data = np.array(light() if callable(light) else light, dtype=np.float32)
            if shape is None:
                shape = data.shape
                if bad_pixels is not None and np.shape(bad_pixels) != shape:
                    raise ValueError(
                        f"bad pixel mask of shape {np.shape(bad_pixels)} does not match the lights' {shape}"
                    )
            elif data.shape != shape:
                raise ValueError(f"light {name} has shape {data.shape}, but the first light has {shape}")
            if bad_pixels is not None:
                data[np.asarray(bad_pixels, dtype=bool)] = np.nan
            mask, found = light_mask(data, pattern, mask_sigma=mask_sigma, grow_px=mask_grow_px)
            data[mask] = np.nan
            sky = _colour_medians(data, pattern)
            data = _divide_colours(data, sky, pattern)
            if frames is None:
                frames = opened.enter_context(FrameStore(Path(tmp) / "lights.f32", (len(lights), *shape)))
            frames.write(index, data)
            stars.append(found)
            rows.append(
                {
                    "frame": name,
                    "sky": float(np.mean(list(sky.values()))),
                    "masked_fraction": float(np.mean(~np.isfinite(data))),
                    "n_stars": len(found),
                }
            )
            log.info("sky flat: %s: sky %.1f ADU, %d sources masked (%.1f%% of pixels)",
                     name, rows[-1]["sky"], len(found), 100 * rows[-1]["masked_fraction"])
        table = pd.DataFrame(rows, columns=["frame", "sky", "masked_fraction", "n_stars"])
        n = len(table)
        if n < min_lights:
            _refuse(f"only {n} light(s), fewer than min_lights = {min_lights}", table, settings)
        table, matrices = _match(table, stars)
        pairs = dither_between(matrices, shape)
        n_matched = len(matrices)
        settings.update(n_matched=n_matched)
        if n_matched < 2:
            _refuse(
                f"the dither cannot be measured: stars of only {n_matched} of {n} lights could be matched",
                table, settings,
            )
        dither, dither_max = float(np.median(pairs)), float(np.max(pairs))
        settings.update(dither_px=dither, dither_max_px=dither_max)
        if dither < min_dither_px:
            _refuse(
                f"the lights do not move on the sensor: median shift between two lights {dither:.2f} px "
                f"(largest {dither_max:.2f} px) is below min_dither_px = {min_dither_px}",
                table, settings,
            )
        flat, filled = _combine_smooth(frames, pattern, combine, smooth_px, memory_mb)
        for _ in range(iterations - 1):
            for i in range(len(frames)):
                frames.write(i, _flatten_light(frames.read([i])[0], flat, pattern, gradient_order, nebula_sigma))
            flat, filled = _combine_smooth(frames, pattern, combine, smooth_px, memory_mb)
    flat = _normalise(flat, pattern, "sky flat")
    header = fits.Header()
    header["IMAGETYP"] = "MASTER FLAT"
    header["FLATTYPE"] = (SKY_FLAT_TYPE, "flat made from the lights (sky flat)")
    if pattern:
        header["BAYERPAT"] = pattern
    header["NCOMBINE"] = (n, "lights combined")
    header["DITHERPX"] = (round(dither, 3), "[px] median shift between two lights")
    header["DITHMAX"] = (round(dither_max, 3), "[px] largest shift between two lights")
    header["SMOOTHPX"] = (smooth_px, "[px] Gaussian sigma of the smoothing")
    header["NFILLED"] = (filled, "pixels masked in every light, filled")
    header["COMBMETH"] = (combine, "per-pixel combination of the lights")
    header.add_history(
        f"sky flat: {n} lights, each divided by its sky and its sources masked (SEP, {mask_sigma} sigma, "
        f"grown {mask_grow_px} px), {combine} per pixel"
    )
    header.add_history(
        f"sky flat: {iterations} pass(es), per-light gradient of order {gradient_order}, nebulosity "
        f"mask {nebula_sigma} sigma; smoothed sigma {smooth_px} px per CFA colour; median 1 per colour"
    )
    header.add_history(f"sky flat: median shift between lights {dither:.2f} px (largest {dither_max:.2f} px)")
    summary = _summary(True, "", table, settings, filled_pixels=filled)
    return SkyFlatResult(flat.astype(np.float32), header, table, summary)


def _refuse(reason, table, settings):
    summary = _summary(False, reason, table, settings)
    log.warning("sky flat refused: %s", reason)
    warnings.warn(f"sky flat refused: {reason}", SkyFlatWarning, stacklevel=3)
    raise SkyFlatRefused(reason, summary)


def _summary(accepted, reason, table, settings, **extra):
    summary = {
        "accepted": accepted,
        "reason": reason,
        "n_lights": len(table),
        "n_matched": settings.get("n_matched", 0),
        "dither_px": settings.get("dither_px"),
        "dither_max_px": settings.get("dither_max_px"),
        "min_lights": settings["min_lights"],
        "min_dither_px": settings["min_dither_px"],
        "smooth_px": settings["smooth_px"],
    }
    summary.update(extra)
    clean = table.astype(object).where(pd.notna(table), None)
    summary["lights"] = clean.to_dict(orient="records")
    return summary


def _match(table, stars):
    """Transforms of the lights onto the first light that can be matched; the table with shifts."""
    table = table.assign(dx=np.nan, dy=np.nan, rotation_deg=np.nan, matched=False)
    usable = [i for i, s in enumerate(stars) if len(s) >= 3]
    if not usable:
        return table, []
    ref = usable[0]
    matrices = []
    for i in usable:
        if i == ref:
            matrix = np.eye(3)
        else:
            try:
                matrix, _, _ = find_transform(stars[i], stars[ref], model="similarity")
            except RegistrationError as exc:
                message = f"sky flat: {table.at[i, 'frame']} not matched to {table.at[ref, 'frame']}: {exc}"
                log.warning(message)
                warnings.warn(message, SkyFlatWarning, stacklevel=3)
                continue
        matrices.append(matrix)
        table.loc[i, ["dx", "dy"]] = matrix[:2, 2]
        table.at[i, "rotation_deg"] = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
        table.at[i, "matched"] = True
    return table, matrices


def _groups(pattern):
    """{colour: [CFA cell offsets]} of a mosaic; {"image": [None]} for mono."""
    if pattern is None:
        return {"image": [None]}
    return cfa_colour_cells(pattern)


def _cell(data, offset):
    return data if offset is None else data[offset[0] :: 2, offset[1] :: 2]


def _colour_medians(data, pattern):
    medians = {}
    for colour, cells in _groups(pattern).items():
        values = np.concatenate([_cell(data, c).ravel() for c in cells])
        values = values[np.isfinite(values)]
        level = float(np.median(values)) if values.size else np.nan
        if not np.isfinite(level) or level <= 0:
            raise ValueError(
                f"sky flat: the sky of a light ({colour}) is {level} after bias and dark subtraction, "
                "not positive: not a usable light"
            )
        medians[colour] = level
    return medians


def _divide_colours(data, levels, pattern):
    out = np.array(data, dtype=np.float32)
    for colour, cells in _groups(pattern).items():
        for c in cells:
            view = _cell(out, c)
            view /= np.float32(levels[colour])
    return out


def _combine_smooth(frames, pattern, combine, smooth_px, memory_mb):
    """Per-pixel combination of the stored lights, then hole filling and smoothing per cell plane."""
    n, height, width = frames.shape
    # the median and the clipping hold a few copies of the block
    rows = int(memory_mb * 2**20 // max(1, n * width * 4 * 6))
    rows = max(2, rows - rows % 2)
    raw = np.empty((height, width), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: holes, filled below
        for y0 in range(0, height, rows):
            y1 = min(height, y0 + rows)
            cube = frames.read(range(n), (y0, y1, 0, width))
            if combine == "median":
                raw[y0:y1] = np.nanmedian(cube, axis=0)
            else:
                warnings.simplefilter("ignore", AstropyUserWarning)  # NaN: the masked pixels
                clipped = sigma_clip(
                    cube, sigma=3.0, axis=0, maxiters=5, cenfunc="median", stdfunc="mad_std", masked=True
                )
                raw[y0:y1] = np.ma.filled(clipped.mean(axis=0).astype(np.float32), np.nan)
    holes = ~np.isfinite(raw)
    smoothed = np.empty_like(raw)
    cells = [None] if pattern is None else [(0, 0), (0, 1), (1, 0), (1, 1)]
    scale = 1.0 if pattern is None else 2.0
    for c in cells:
        _cell(smoothed, c)[...] = _smooth_fill(_cell(raw, c), smooth_px / scale)
    return smoothed, int(holes.sum())


def _smooth_fill(plane, sigma):
    """Normalised Gaussian convolution of a plane with NaN holes; holes filled at growing scales."""
    valid = np.isfinite(plane)
    if not valid.any():
        raise ValueError("sky flat: every pixel of a colour plane is masked in every light")
    values = np.where(valid, plane, 0.0).astype(np.float64)
    weight = valid.astype(np.float64)
    out = np.full(plane.shape, np.nan)
    s = sigma
    while True:
        num = ndimage.gaussian_filter(values, s, mode="nearest")
        den = ndimage.gaussian_filter(weight, s, mode="nearest")
        good = den > 1e-3
        todo = ~np.isfinite(out) & good
        out[todo] = num[todo] / den[todo]
        if np.isfinite(out).all():
            return out.astype(np.float32)
        s *= 2.0


def _flatten_light(normalised, flat, pattern, order, nebula_sigma):
    """A light divided by its own sky gradient relative to ``flat``, its bright nebulosity masked."""
    ratio = normalised / flat
    out = np.array(normalised, dtype=np.float32)
    for cells in _groups(pattern).values():
        planes = [_cell(ratio, c) for c in cells]
        height, width = planes[0].shape
        block = _BLOCK if pattern is None else _BLOCK // 2
        ny, nx = max(1, height // block), max(1, width // block)
        by, bx = height // ny, width // nx
        stacked = np.stack([p[: ny * by, : nx * bx] for p in planes])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            blocks = np.nanmedian(
                stacked.reshape(len(planes), ny, by, nx, bx).transpose(1, 3, 0, 2, 4).reshape(ny, nx, -1),
                axis=2,
            )
        yc = (np.arange(ny) + 0.5) * by
        xc = (np.arange(nx) + 0.5) * bx
        gy, gx = np.meshgrid(yc / height - 0.5, xc / width - 0.5, indexing="ij")
        use = np.isfinite(blocks)
        keep = use.copy()
        surface = None
        for _ in range(3):
            design = _poly_terms(gx[keep], gy[keep], order)
            coef, *_ = np.linalg.lstsq(design, blocks[keep], rcond=None)
            model = _poly_terms(gx.ravel(), gy.ravel(), order) @ coef
            surface = model.reshape(ny, nx)
            resid = blocks - surface
            sigma = 1.482602218505602 * np.nanmedian(np.abs(resid[keep] - np.nanmedian(resid[keep])))
            new = use & (resid <= nebula_sigma * max(sigma, 1e-6))
            if np.array_equal(new, keep) or new.sum() < design.shape[1]:
                break
            keep = new
        nebula = use & ~keep & (blocks - surface > 0)
        py, px = np.mgrid[0:height, 0:width]
        full = (_poly_terms(((px + 0.5) / width - 0.5).ravel(), ((py + 0.5) / height - 0.5).ravel(), order) @ coef)
        # not renormalised: the level of a light relative to the flat is part of what is fitted
        full = full.reshape(height, width).astype(np.float32)
        masked = nebula[np.clip(py // by, 0, ny - 1), np.clip(px // bx, 0, nx - 1)]
        for c in cells:
            view = _cell(out, c)
            view /= full
            view[masked] = np.nan
    return out


def _poly_terms(x, y, order):
    return np.column_stack([x**i * y**j for i in range(order + 1) for j in range(order + 1 - i)])
