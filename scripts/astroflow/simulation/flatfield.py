"""Synthetic flat-field artifacts over clean skies: training data of the flat-correction network.

Every sample follows the image model of FlatAI (a network trained on synthetic flat-field
artifacts)::

    observed = clean x flat + gradient + noise

``clean`` is a linear sky in ADU with stars and nebulosity: a sky of the star-removal simulator
(:func:`astroflow.simulation.synthstars.render_sample`, mono, with its own vignetting and
gradient switched off: nebulae, photographs mixed with nebulosity, dark skies with galaxies,
already carrying its shot and read noise), or the Hubble Deep Field photograph shipped inside
scikit-image (``skimage.data.hubble_deep_field``, loaded offline, linearised, randomly cropped,
turned and flipped, on a sky pedestal, with noise).  ``flat`` (mean 1) and ``gradient`` (ADU)
are drawn by :func:`artifact_fields`:

* vignetting -- the cos^4-like falloff ``(1 + r^2 / r_v^2)^-2`` of the night simulator
  (:mod:`astroflow.simulation.night`) or a polynomial ``1 - a r^2 - b r^4``, about an optical
  axis off the frame centre, losing up to 45 % at the farthest corner;
* an illumination tilt of the flat (up to 4 % across the frame);
* dust motes -- out-of-focus donuts (a dark ring with a lighter middle, the shadow of a speck
  on a filter or window in a converging beam), in-focus dark specks, and a few faint bright
  motes (reflections);
* photo-response non-uniformity (PRNU) -- per-pixel Gaussian gain scatter;
* gradients -- linear and quadratic light-pollution or moonlight gradients, and amplifier glow
  decaying from a corner or an edge.

:func:`grid_pair` turns a sample into the network's data on the frame-scale grid of
:mod:`astroflow.calibration.flatgrid`, and :func:`make_shard` writes many to an ``.npz`` shard.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from astroflow.calibration.flatgrid import to_grid
from astroflow.checks import check_int
from astroflow.io.atomic import atomic_write
from astroflow.simulation import optics
from astroflow.simulation.synthstars import render_sample as render_sky

__all__ = [
    "SKY_KINDS",
    "FlatSample",
    "artifact_fields",
    "grid_pair",
    "make_shard",
    "render_sample",
]

VERSION = 1
#: Clean skies: the star-removal simulator's, or the Hubble Deep Field photograph.
SKY_KINDS = ("synthetic", "hubble")
_SKY_PROBABILITIES = (0.8, 0.2)
_INPUT_CLIP = 8.0  # grid inputs above this x the median are nebula cores: clipped in the shard


@dataclass
class FlatSample:
    """One synthetic frame with flat-field artifacts.

    Attributes
    ----------
    observed : numpy.ndarray
        ``(H, W)`` float32 ADU: ``clean x flat + gradient`` plus the gradient's shot noise.
    clean : numpy.ndarray
        ``(H, W)`` float32 ADU, the sky without artifacts (with its own noise).
    flat : numpy.ndarray
        ``(H, W)`` float32, mean 1, including PRNU.
    gradient : numpy.ndarray
        ``(H, W)`` float32 ADU, >= 0, smooth.
    kind : str
        One of :data:`SKY_KINDS`.
    params : dict
        The drawn parameters (JSON-serialisable), including ``sky_adu``.
    region : numpy.ndarray or None
        ``(H, W)`` float32 faint extended region added to ``clean`` (ADU) when asked for.
    """

    observed: np.ndarray
    clean: np.ndarray
    flat: np.ndarray
    gradient: np.ndarray
    kind: str
    params: dict = field(default_factory=dict)
    region: np.ndarray | None = None


def _logu(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _dust(rng, flat, size_px):
    """Multiply dust motes into ``flat`` in place; return their list (JSON-serialisable)."""
    height, width = flat.shape
    n = 0 if rng.random() < 0.15 else int(_logu(rng, 1.0, 60.0))
    motes = []
    for _ in range(n):
        x, y = rng.uniform(-0.05, 1.05) * width, rng.uniform(-0.05, 1.05) * height
        kind = rng.choice(["donut", "speck", "bright"], p=[0.78, 0.12, 0.10])
        if kind == "donut":
            radius = _logu(rng, 0.006, 0.05) * size_px
            depth = _logu(rng, 0.003, 0.06)
            hole, lift = rng.uniform(0.3, 0.65), rng.uniform(0.3, 0.8)
        elif kind == "speck":
            radius = _logu(rng, 0.003, 0.01) * size_px
            depth, hole, lift = _logu(rng, 0.01, 0.15), 0.5, 0.0
        else:
            radius = _logu(rng, 0.01, 0.05) * size_px
            depth, hole, lift = -_logu(rng, 0.002, 0.01), 0.5, 0.0
        radius = max(radius, 1.5)
        soft = max(0.5, rng.uniform(0.06, 0.2) * radius)
        reach = int(math.ceil(radius + 8 * soft))
        y0, y1 = max(0, int(y) - reach), min(height, int(y) + reach + 1)
        x0, x1 = max(0, int(x) - reach), min(width, int(x) + reach + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(xx - x, yy - y)
        flat[y0:y1, x0:x1] *= 1.0 - depth * optics.dust_shadow(r, radius, soft, hole, lift)
        motes.append({"kind": str(kind), "x": x, "y": y, "radius_px": radius, "depth": depth})
    return motes


def artifact_fields(rng, shape, sky_adu=1.0):
    """Draw a flat field and a sky gradient for a frame.

    Parameters drawn (``U`` uniform, ``logU`` log-uniform; ``r`` is the distance from the
    optical axis over the distance of the farthest corner):

    * vignetting: corner loss ``U(0, 0.45)``, cos^4-like ``(1 + r^2 k)^-2`` (70 %) or
      ``1 - a r^2 - b r^4`` with ``a / (a + b) = U(0, 1)`` (30 %), axis at ``U(0.3, 0.7)`` of
      the frame in x and y (:func:`astroflow.simulation.optics.vignetting`);
    * illumination tilt of the flat: ``U(0, 0.04)`` across the frame at a random angle;
    * dust (none in 15 % of frames, else ``logU(1, 60)`` motes anywhere up to 5 % beyond the
      frame): donuts (78 %; radius ``logU(0.006, 0.05)`` of the frame side, depth
      ``logU(0.003, 0.06)``, the middle ``U(0.3, 0.65)`` of the radius lighter by
      ``U(0.3, 0.8)`` of the depth), in-focus specks (12 %; radius ``logU(0.003, 0.01)``, depth
      ``logU(0.01, 0.15)``), faint bright motes (10 %; radius ``logU(0.01, 0.05)``, brightening
      ``logU(0.002, 0.01)``); soft edges ``U(0.06, 0.2)`` of the radius;
    * PRNU: Gaussian, sigma ``U(0, 0.01)`` per pixel;
    * gradient, in units of ``sky_adu``: linear ``U(0, 0.3)`` across the frame at a random
      angle, quadratic ``U(0, 0.15)`` about a random point; amplifier glow in 30 % of frames,
      ``logU(0.05, 1)`` at a corner or an edge decaying over ``U(0.04, 0.2)`` of the frame;
      then shifted to a minimum of 0.

    Parameters
    ----------
    rng : numpy.random.Generator or seed
        Source of randomness (:func:`numpy.random.default_rng` is applied to anything else).
    shape : tuple of int
        ``(H, W)`` of the frame.
    sky_adu : float, optional
        Sky level the gradient is scaled to, ADU.

    Returns
    -------
    flat : numpy.ndarray
        ``(H, W)`` float32, mean exactly 1 (to float32 rounding).
    gradient : numpy.ndarray
        ``(H, W)`` float32 ADU, non-negative, minimum 0.
    params : dict
        The drawn values, JSON-serialisable (``motes`` lists the dust).

    Notes
    -----
    FlatAI's list of artifacts (vignetting, dust motes dark and bright, in and out of focus,
    PRNU, linear gradients, amplifier glow); the vignetting law is the one of
    :mod:`astroflow.simulation.night`.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    height, width = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xx / max(width - 1, 1), yy / max(height - 1, 1)
    p = {"sky_adu": float(sky_adu)}
    # vignetting
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    loss = float(rng.uniform(0.0, 0.45))
    cosine = bool(rng.random() < 0.7)
    share = float(rng.uniform(0.0, 1.0))
    r2 = (u - cx) ** 2 + (v - cy) ** 2
    r2 /= max((a - cx) ** 2 + (b - cy) ** 2 for a in (0.0, 1.0) for b in (0.0, 1.0))
    if cosine:
        flat = optics.vignetting(r2, 1.0, loss)
    else:
        flat = 1.0 - loss * (share * r2 + (1.0 - share) * r2**2)
    p.update(vignetting=loss, vignetting_law="cos4" if cosine else "polynomial", axis=[cx, cy])
    tilt, angle = float(rng.uniform(0.0, 0.04)), float(rng.uniform(0.0, 2.0 * math.pi))
    flat *= 1.0 + tilt * ((u - 0.5) * math.cos(angle) + (v - 0.5) * math.sin(angle))
    p.update(tilt=tilt, tilt_angle=angle)
    p["motes"] = _dust(rng, flat, min(height, width))
    prnu = float(rng.uniform(0.0, 0.01))
    flat *= 1.0 + prnu * rng.standard_normal(flat.shape)
    p["prnu"] = prnu
    flat /= flat.mean()
    # gradients
    linear, angle = float(rng.uniform(0.0, 0.3)), float(rng.uniform(0.0, 2.0 * math.pi))
    gradient = linear * ((u - 0.5) * math.cos(angle) + (v - 0.5) * math.sin(angle))
    quadratic, qx, qy = float(rng.uniform(0.0, 0.15)), rng.uniform(-0.5, 1.5), rng.uniform(-0.5, 1.5)
    gradient = gradient + quadratic * ((u - qx) ** 2 + (v - qy) ** 2) / 2.0
    p.update(linear=linear, linear_angle=angle, quadratic=quadratic, quadratic_centre=[qx, qy])
    glow = None
    if rng.random() < 0.3:
        amplitude, scale = _logu(rng, 0.05, 1.0), float(rng.uniform(0.04, 0.2))
        where = int(rng.integers(0, 8))  # 4 corners, then 4 edges
        if where < 4:
            gx, gy = float(where % 2), float(where // 2)
            d = np.hypot(u - gx, v - gy)
        else:
            d = [u, 1.0 - u, v, 1.0 - v][where - 4]
        gradient = gradient + amplitude * np.exp(-d / scale)
        glow = {"amplitude": amplitude, "scale": scale, "where": where}
    p["glow"] = glow
    gradient = (gradient - gradient.min()) * sky_adu
    return flat.astype(np.float32), gradient.astype(np.float32), p


@functools.lru_cache(maxsize=1)
def _hubble():
    import skimage.data

    grey = skimage.data.hubble_deep_field().astype(np.float32).mean(axis=2) / 255.0
    return grey**2.2  # undo the display gamma of the 8-bit photograph, roughly


def _hubble_sky(rng, size):
    """The Hubble Deep Field, cropped, turned, linear, on a sky pedestal, with noise (ADU)."""
    image = _hubble()
    side = int(rng.uniform(0.4, 1.0) * min(image.shape))
    y, x = int(rng.integers(0, image.shape[0] - side + 1)), int(rng.integers(0, image.shape[1] - side + 1))
    crop = np.rot90(image[y : y + side, x : x + side], int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)
    sky, gain, read = _logu(rng, 30.0, 3000.0), _logu(rng, 0.3, 4.0), float(rng.uniform(1.5, 10.0))
    light = sky + _logu(rng, 3.0, 100.0) * sky * crop
    noisy = rng.poisson(light * gain) / gain + rng.normal(0.0, read / gain, light.shape)
    return noisy.astype(np.float32), {"sky_adu": sky, "gain": gain, "read_noise_e": read}


def render_sample(rng, size=512, *, kind=None, faint_region=False):
    """Render one frame with flat-field artifacts, and its truth.

    Parameters
    ----------
    rng : numpy.random.Generator or seed
        Source of randomness; the sample is a deterministic function of its state.
    size : int, optional
        Height and width, px (>= 64).
    kind : str or None, optional
        Clean sky, one of :data:`SKY_KINDS` (80 % synthetic, 20 % Hubble when None).
    faint_region : bool, optional
        Add a faint extended region to the clean sky (a 2-D Gaussian of sigma ``U(0.04, 0.1)``
        of the frame, peak ``U(0.03, 0.15)`` x the sky, centred in the middle half of the frame;
        returned as ``region``), to measure whether a correction keeps its flux.

    Returns
    -------
    FlatSample

    Raises
    ------
    ValueError
        Unknown ``kind`` or ``size < 64``.
    """
    size = check_int("size", size, 64)
    if kind is not None and kind not in SKY_KINDS:
        raise ValueError(f"kind must be one of {SKY_KINDS} or None, got {kind!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    r_kind, r_sky, r_fields, r_noise, r_region = rng.spawn(5)
    u_kind = r_kind.random()
    kind = kind or SKY_KINDS[int(np.searchsorted(np.cumsum(_SKY_PROBABILITIES), u_kind, side="right"))]
    if kind == "synthetic":
        sky = render_sky(
            r_sky, size, channels=1, overrides={"vignetting": 0.0, "gradient": 0.0, "encoding": "float"}
        )
        clean = sky.linear_starry[..., 0]
        params = {k: sky.params[k] for k in ("sky_adu", "gain", "read_noise_e", "kind")}
    else:
        clean, params = _hubble_sky(r_sky, size)
    region = None
    if faint_region:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        sigma = r_region.uniform(0.04, 0.1) * size
        cx, cy = r_region.uniform(0.25, 0.75, 2) * size
        peak = r_region.uniform(0.03, 0.15) * params["sky_adu"]
        region = (peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))).astype(np.float32)
        clean = clean + region
        params["region"] = {"x": float(cx), "y": float(cy), "sigma": float(sigma), "peak_adu": float(peak)}
    flat, gradient, fields = artifact_fields(r_fields, (size, size), params["sky_adu"])
    params.update(fields)
    gain = params["gain"]
    observed = clean * flat + r_noise.poisson(gradient * gain) / gain
    return FlatSample(
        observed=observed.astype(np.float32),
        clean=clean.astype(np.float32),
        flat=flat,
        gradient=gradient,
        kind=kind,
        params=params,
        region=region,
    )


def grid_pair(sample, grid=128):
    """The network's input and target for one sample, on the frame-scale grid.

    With ``x = to_grid(observed) / m`` (``m`` its median), ``F = to_grid(flat)`` and
    ``G = to_grid(gradient) / m``, the target holds ``F``, ``G - mean(G)`` and the clean grid
    ``C = (x - G + mean(G)) / F``, so that ``x = C F + (G - mean G)`` exactly: the constant part
    of an additive gradient cannot be told from sky and stays in ``C``.

    Parameters
    ----------
    sample : FlatSample
    grid : int, optional
        Grid side, px (see :func:`astroflow.calibration.flatgrid.to_grid`).

    Returns
    -------
    inputs : numpy.ndarray
        ``(1, grid, grid)`` float32, ``x`` (dimensionless, median 1).
    target : numpy.ndarray
        ``(3, grid, grid)`` float32: flat, zero-mean gradient, clean (in units of ``m``).
    m : float
        The median of the observed grid, ADU.

    Raises
    ------
    ValueError
        If the observed grid's median is not positive.
    """
    observed = to_grid(sample.observed, grid)
    m = float(np.median(observed))
    if not m > 0:
        raise ValueError(f"the observed frame has a median of {m} ADU; flat correction needs a positive sky")
    x = observed / m
    flat = to_grid(sample.flat, grid)
    gradient = to_grid(sample.gradient, grid) / m
    gradient -= gradient.mean()
    clean = (x - gradient) / flat
    return x[None].astype(np.float32), np.stack([flat, gradient, clean]).astype(np.float32), m


def make_shard(path, n_samples, seed, *, size=512, grid=128):
    """Write a shard of grid pairs (:func:`grid_pair`) to a compressed ``.npz`` file.

    Sample ``i`` is ``render_sample(np.random.default_rng([*seed, i]), size)``, so a shard is
    a deterministic function of its arguments.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (written atomically).
    n_samples : int
        Number of samples (>= 1).
    seed : int or sequence of int
        Non-negative seed entropy.
    size : int, optional
        Side of the simulated frames, px.
    grid : int, optional
        Side of the network grid, px (at most ``size``).

    Returns
    -------
    None
        The file holds ``observed`` ``(N, 1, grid, grid)`` and ``fields`` ``(N, 3, grid, grid)``
        float32 (the input and target of :func:`grid_pair`; inputs above 8 clipped to 8, where
        only nebula cores lie), ``median_adu`` ``(N,)`` and ``meta`` (JSON: version, seed,
        size, grid, kinds, per-sample parameters).

    Raises
    ------
    ValueError
        Bad ``n_samples``, seed, size or grid.
    """
    n_samples = check_int("n_samples", n_samples, 1)
    grid = check_int("grid", grid, 8)
    size = check_int("size", size, grid)
    entropy = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]
    if any(s < 0 for s in entropy):
        raise ValueError(f"seed entries must be non-negative, got {seed}")
    inputs = np.empty((n_samples, 1, grid, grid), np.float32)
    targets = np.empty((n_samples, 3, grid, grid), np.float32)
    medians = np.empty(n_samples, np.float64)
    kinds, params = [], []
    for i in range(n_samples):
        sample = render_sample(np.random.default_rng(entropy + [i]), size)
        x, y, m = grid_pair(sample, grid)
        # clipping the input changes the clean channel by the same amount, keeping x = C F + G
        clipped = np.minimum(x, _INPUT_CLIP)
        y[2] -= (x[0] - clipped[0]) / y[0]
        inputs[i], targets[i], medians[i] = clipped, y, m
        kinds.append(sample.kind)
        params.append({k: v for k, v in sample.params.items() if k != "motes"} | {"motes": len(sample.params["motes"])})
    meta = {"version": VERSION, "seed": entropy, "size": size, "grid": grid, "kind": kinds, "params": params}

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, observed=inputs, fields=targets, median_adu=medians, meta=np.array(json.dumps(meta))
            )

    atomic_write(path, write)
