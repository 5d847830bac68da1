"""Undersampled, dithered star fields with their truth: the known answer for drizzle.

Stars are drawn with the night simulator's Moffat renderer
(:func:`astroflow.simulation.night.render_stars`) on a grid ``oversample`` times finer than the
detector and summed into detector pixels, so that each pixel integrates the PSF exactly enough
even at a FWHM of one pixel (the renderer's own 3x3 sub-pixel integration is meant for
FWHM >= 2 px). Each frame is the same field shifted by a sub-pixel dither (and optionally
rotated), with sky and Gaussian noise; the truth is the noise-free field on the reference grid
sampled at any finer scale, integrated over its pixels in the same way.
"""

from __future__ import annotations

import numpy as np

from astroflow.checks import check_int
from astroflow.simulation.night import render_stars


def render_binned(shape, x, y, flux, *, fwhm_px, moffat_beta=4.0, oversample=8):
    """Stars integrated over the pixels of a ``shape`` grid, rendered ``oversample`` times finer.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the grid, px.
    x, y : array_like
        ``(N,)`` star centres on that grid, px, pixel centres at integers.
    flux : array_like
        ``(N,)`` total flux, ADU.
    fwhm_px : float
        PSF FWHM in pixels of that grid.
    moffat_beta : float, optional
        Moffat power index (> 1). Default 4.0.
    oversample : int, optional
        Sub-pixels per pixel side (>= 1). Default 8.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)``, ADU per pixel (the fluxes sum to ``flux`` for stars well inside).
    """
    k = check_int("oversample", oversample, 1)
    height, width = int(shape[0]), int(shape[1])
    fine = render_stars(
        (height * k, width * k),
        (np.asarray(x, dtype=np.float64) + 0.5) * k - 0.5,
        (np.asarray(y, dtype=np.float64) + 0.5) * k - 0.5,
        flux,
        fwhm_px=fwhm_px * k,
        moffat_beta=moffat_beta,
        loss_adu=1e-3,
    )
    return fine.reshape(height, k, width, k).sum(axis=(1, 3), dtype=np.float64).astype(np.float32)


def dithered_frames(
    shape=(96, 96),
    *,
    n_frames=16,
    n_stars=25,
    fwhm_px=1.2,
    flux=(2e4, 2e5),
    sky_adu=100.0,
    noise_adu=3.0,
    rotation_deg=0.0,
    margin_px=10,
    seed=0,
):
    """Frames of one star field, each dithered by a random sub-pixel shift (and a rotation).

    Parameters
    ----------
    shape : tuple of int, optional
        ``(H, W)`` of the frames and of the reference grid, px. Default (96, 96).
    n_frames : int, optional
        Frames; the first is the reference (no shift). Default 16.
    n_stars : int, optional
        Stars, placed at least ``margin_px`` from the edges. Default 25.
    fwhm_px : float, optional
        PSF FWHM, detector px. Default 1.2 (undersampled).
    flux : tuple of float, optional
        Range of the (log-uniform) star fluxes, ADU. Default (2e4, 2e5).
    sky_adu, noise_adu : float, optional
        Flat sky level and Gaussian noise sigma per pixel, ADU. Defaults 100 and 3.
    rotation_deg : float, optional
        Largest rotation of a frame about the centre (uniform in +-), degrees. Default 0.
    margin_px : int, optional
        Distance of stars from the edges, px. Default 10.
    seed : int, optional
        Random seed. Default 0.

    Returns
    -------
    dict
        ``frames``: list of float32 ``(H, W)`` frames (ADU); ``matrices``: list of ``(3, 3)``
        frame -> reference transforms; ``stars``: dict of ``x``, ``y`` (reference px) and
        ``flux`` arrays; ``sky_adu``; ``fwhm_px``; and ``truth(scale)``, a function giving the
        noise-free star field (no sky) on the reference grid ``scale`` times finer, float32,
        ADU per *reference* pixel (surface brightness, like the drizzled image).
    """
    rng = np.random.default_rng(seed)
    height, width = int(shape[0]), int(shape[1])
    x = rng.uniform(margin_px, width - 1 - margin_px, n_stars)
    y = rng.uniform(margin_px, height - 1 - margin_px, n_stars)
    f = np.exp(rng.uniform(np.log(flux[0]), np.log(flux[1]), n_stars))
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    frames, matrices = [], []
    for i in range(n_frames):
        shift = np.zeros(2) if i == 0 else rng.uniform(-0.5, 0.5, 2) + rng.integers(-3, 4, 2)
        angle = 0.0 if i == 0 else np.radians(rng.uniform(-rotation_deg, rotation_deg))
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s], [s, c]])
        to_ref = np.eye(3)
        to_ref[:2, :2] = rot
        to_ref[:2, 2] = centre + shift - rot @ centre
        # the stars in the frame: the inverse of frame -> reference
        inverse = np.linalg.inv(to_ref)
        fx, fy = (inverse[:2, :2] @ np.vstack([x, y]) + inverse[:2, 2:3])
        image = render_binned(shape, fx, fy, f, fwhm_px=fwhm_px)
        image += np.float32(sky_adu) + rng.normal(0.0, noise_adu, shape).astype(np.float32)
        frames.append(image.astype(np.float32))
        matrices.append(to_ref)

    def truth(scale):
        grid = (height * scale, width * scale)
        fine = render_binned(grid, (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5, f, fwhm_px=fwhm_px * scale)
        return fine * np.float32(scale**2)

    return {
        "frames": frames,
        "matrices": matrices,
        "stars": {"x": x, "y": y, "flux": f},
        "sky_adu": sky_adu,
        "fwhm_px": fwhm_px,
        "truth": truth,
    }
