"""Real star stamps for the synthetic star-removal training data.

Stars in real frames do not look like clean Moffat profiles: they have asymmetric cores, optical
aberrations, tracking errors, undersampling and the colour structure of the optics. This module
cuts such stars out of real calibrated frames and pastes them into synthetic starless skies
(:mod:`astroflow.simulation.synthstars`), in the linear domain before the display stretch:

* :func:`extract_stamps` finds stars in one linear frame with SEP (Barbary 2016, JOSS 1, 58;
  the Source Extractor algorithms of Bertin & Arnouts 1996), keeps the isolated, well-measured
  ones (unsaturated, and also saturated ones, flagged), cuts a square stamp around each, removes
  its local background (the median of an annulus), repairs isolated hot pixels of the wings,
  tapers it to a disc and normalises it to unit flux per channel;
* :mod:`astroflow.simulation.realstars` reads the real frames and builds a :class:`StampLibrary`,
  which the caller caches as one ``.npz`` file (:meth:`StampLibrary.save`,
  :meth:`StampLibrary.load`); with no library the generator uses its synthetic PSFs only;
* :func:`paste_stamp` adds a stamp to an image at a sub-pixel position with a flux per channel,
  a scale (resampled), a rotation and a flip.

No real data is stored in the repository: the library is built at run time from the folders
given.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "StampLibrary",
    "extract_stamps",
    "paste_stamp",
    "warp_stamp",
]

_MAD_TO_SIGMA = 1.4826
_FORMAT = 1


@dataclass
class StampLibrary:
    """Star stamps cut from real frames, centred, background-free and of unit flux.

    Attributes
    ----------
    stamps : numpy.ndarray
        ``(N, k, k, 3)`` float32: each channel sums to 1, the median of the background annulus
        is 0 (before the taper), the outer ``3`` px ring is tapered smoothly to 0. Mono sources
        give three equal channels.
    offset : numpy.ndarray
        ``(N, 2)`` float64, ``(dx, dy)``: the star's centroid minus the stamp's central pixel, px.
    fwhm : numpy.ndarray
        ``(N,)`` float64, px: twice the half-light radius (exact for a Gaussian).
    noise : numpy.ndarray
        ``(N,)`` float64: the per-pixel noise sigma of the stamp in units of its flux (the
        largest of the channels), so that a star pasted at flux ``F`` and scale ``s`` brings a
        noise of about ``F * noise / s**2`` per pixel.
    saturated : numpy.ndarray
        ``(N,)`` bool: the core held saturated pixels (flat top; the flux is that of the
        clipped star).
    source : numpy.ndarray
        ``(N,)`` int16, index into ``sources``.
    sources : tuple of str
        Names of the data sets the stamps came from.
    """

    stamps: np.ndarray
    offset: np.ndarray
    fwhm: np.ndarray
    noise: np.ndarray
    saturated: np.ndarray
    source: np.ndarray
    sources: tuple = ()

    def __len__(self):
        return int(self.stamps.shape[0])

    @property
    def size(self):
        """Side of the stamps, px."""
        return int(self.stamps.shape[1])

    @property
    def peak(self):
        """``(N,)`` central value of each unit-flux stamp (largest channel), 1/px^2."""
        return self.stamps.max(axis=(1, 2, 3)).astype(np.float64)

    @classmethod
    def empty(cls, size=31):
        """A library without stamps."""
        return cls(
            stamps=np.zeros((0, size, size, 3), dtype=np.float32),
            offset=np.zeros((0, 2)),
            fwhm=np.zeros(0),
            noise=np.zeros(0),
            saturated=np.zeros(0, dtype=bool),
            source=np.zeros(0, dtype=np.int16),
            sources=(),
        )

    @classmethod
    def concatenate(cls, libraries, size=31):
        """One library holding the stamps of ``libraries`` (all of one stamp size)."""
        libraries = [lib for lib in libraries if len(lib)]
        if not libraries:
            return cls.empty(size)
        sizes = {lib.size for lib in libraries}
        if len(sizes) != 1:
            raise ValueError(f"stamps of different sizes cannot be combined: {sorted(sizes)}")
        sources, codes = [], []
        for lib in libraries:
            remap = []
            for name in lib.sources:
                if name not in sources:
                    sources.append(name)
                remap.append(sources.index(name))
            codes.append(np.asarray(remap, dtype=np.int16)[lib.source])
        return cls(
            stamps=np.concatenate([lib.stamps for lib in libraries]),
            offset=np.concatenate([lib.offset for lib in libraries]),
            fwhm=np.concatenate([lib.fwhm for lib in libraries]),
            noise=np.concatenate([lib.noise for lib in libraries]),
            saturated=np.concatenate([lib.saturated for lib in libraries]),
            source=np.concatenate(codes),
            sources=tuple(sources),
        )

    def digest(self):
        """sha256 (hex, 16 characters) of the stamps and their measurements."""
        h = hashlib.sha256()
        for arr in (self.stamps, self.offset, self.fwhm, self.noise, self.saturated, self.source):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\n".join(self.sources).encode())
        return h.hexdigest()[:16]

    def summary(self):
        """JSON-serialisable description: count, size, sources, digest, FWHM range."""
        return {
            "n": len(self),
            "size": self.size,
            "sources": {
                name: int((self.source == i).sum()) for i, name in enumerate(self.sources)
            },
            "saturated": int(self.saturated.sum()),
            "fwhm": [float(self.fwhm.min()), float(self.fwhm.max())] if len(self) else [],
            "digest": self.digest(),
        }

    def save(self, path):
        """Write the library to a compressed ``.npz`` file (atomically)."""
        from astroflow.io.atomic import atomic_write

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    format=np.array(_FORMAT),
                    stamps=self.stamps,
                    offset=self.offset,
                    fwhm=self.fwhm,
                    noise=self.noise,
                    saturated=self.saturated,
                    source=self.source,
                    sources=np.array(list(self.sources), dtype=str),
                )

        atomic_write(path, write)

    @classmethod
    def load(cls, path):
        """Read a library written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is not a stamp library of this format.
        """
        with np.load(path, allow_pickle=False) as z:
            if "stamps" not in z.files or int(z.get("format", -1)) != _FORMAT:
                raise ValueError(f"{path}: not a star stamp library (format {_FORMAT})")
            return cls(
                stamps=z["stamps"].astype(np.float32),
                offset=z["offset"].astype(np.float64),
                fwhm=z["fwhm"].astype(np.float64),
                noise=z["noise"].astype(np.float64),
                saturated=z["saturated"].astype(bool),
                source=z["source"].astype(np.int16),
                sources=tuple(str(s) for s in z["sources"]),
            )


# --------------------------------------------------------------------------------------------
# extraction


def _radius_grid(size):
    c = (size - 1) / 2.0
    g = np.arange(size) - c
    return np.hypot(g[None, :], g[:, None])


def _taper(size, width=3.0):
    """Disc window: 1 inside ``size / 2 - width``, smoothly 0 at ``size / 2``."""
    r = _radius_grid(size)
    t = np.clip((size / 2.0 - 0.5 - r) / width, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def extract_stamps(
    image,
    *,
    size=31,
    saturated=None,
    detect_sigma=5.0,
    min_snr=20.0,
    min_fwhm=1.2,
    max_ellipticity=0.5,
    max_stamps=None,
    source="image",
):
    """Cut isolated stars out of one linear frame as unit-flux, background-free stamps.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` linear, calibrated data (ADU; the sky need not be removed).
    size : int, optional
        Side of the stamps, px (odd, >= 9).
    saturated : numpy.ndarray or None, optional
        ``(H, W)`` bool, pixels that were saturated (in any channel) in the raw frame.
    detect_sigma : float, optional
        SEP detection threshold, sigmas of the global background RMS (every detection counts
        as a neighbour when judging isolation).
    min_snr : float, optional
        Smallest peak signal-to-noise ratio of a kept star.
    min_fwhm : float, optional
        Smallest FWHM, px: sharper detections are hot pixels or cosmic rays.
    max_ellipticity : float, optional
        Largest ``1 - b / a`` of a kept star (excludes satellite trails and blends).
    max_stamps : int or None, optional
        Keep at most this many (the highest signal-to-noise ones).
    source : str, optional
        Name recorded in the library.

    Returns
    -------
    StampLibrary
        The stamps (possibly none).

    Notes
    -----
    A star is kept when it lies at least ``size / 2 + 1`` px from the edges, no other detection
    falls within its stamp (plus 3 px), SEP flags no blending or truncation, its FWHM lies in
    ``[min_fwhm, 2.5 x median FWHM]`` (galaxies and nebula knots are broader) and its
    ellipticity is at most ``max_ellipticity``. The local background is the median of the
    annulus between ``size / 2 - 4`` and ``size / 2`` px, per channel; the noise sigma is the
    normalised MAD of that annulus. Outside 2 FWHM, pixels more than 6 sigma from their 3 x 3
    median (hot pixels, cosmic rays) are replaced by that median. The stamp is then cut to the
    star: kept out to the radius where its azimuthal median falls below the noise sigma (at
    least 2 FWHM), smoothly zero 3 px further and at the stamp's edge, so that a pasted stamp
    brings no field of pure noise. FWHM: the diameter of the disc of the area above half the
    peak (on a 4x bicubic resampling). Centroids: SEP's windowed positions
    (``XWIN``/``YWIN``).
    """
    import sep

    size = int(size)
    if size < 9 or size % 2 == 0:
        raise ValueError(f"size must be odd and >= 9, got {size}")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {np.shape(image)}")
    h, w, nc = img.shape
    half = size // 2
    if h < size + 4 or w < size + 4:
        return StampLibrary.empty(size)

    det = np.ascontiguousarray(img.sum(axis=2), dtype=np.float32)
    finite = np.isfinite(det)
    det = np.where(finite, det, 0.0).astype(np.float32)
    bkg = sep.Background(det, mask=~finite, bw=64, bh=64)
    sub = det - bkg.back()
    rms = float(bkg.globalrms)
    if not rms > 0:
        return StampLibrary.empty(size)
    sep.set_extract_pixstack(max(300_000, h * w // 4))
    objects = sep.extract(sub, detect_sigma, err=rms, minarea=5, deblend_cont=0.005)
    if len(objects) == 0:
        return StampLibrary.empty(size)
    ox, oy = objects["x"], objects["y"]
    sig0 = np.clip(np.sqrt(0.5 * (objects["a"] ** 2 + objects["b"] ** 2)), 0.6, 10.0)
    wx, wy, wflag = sep.winpos(sub, ox, oy, sig0)
    x = np.where(wflag == 0, wx, ox)
    y = np.where(wflag == 0, wy, oy)

    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    keep = (ix >= half + 1) & (ix < w - half - 1) & (iy >= half + 1) & (iy < h - half - 1)
    keep &= (objects["flag"] & (sep.OBJ_MERGED | sep.OBJ_TRUNC)) == 0
    keep &= objects["b"] / np.maximum(objects["a"], 1e-6) >= 1.0 - max_ellipticity
    keep &= objects["peak"] >= min_snr * rms
    # isolation: no other detection inside the stamp (plus a margin)
    dx = np.abs(x[:, None] - x[None, :])
    dy = np.abs(y[:, None] - y[None, :])
    near = (dx < half + 3) & (dy < half + 3)
    np.fill_diagonal(near, False)
    keep &= ~near.any(axis=1)

    r = _radius_grid(size)
    annulus = (r >= half - 4) & (r <= half)
    taper = _taper(size)
    order = np.argsort(-objects["peak"] / rms)
    cand = []
    for i in order:
        if not keep[i]:
            continue
        box = img[iy[i] - half : iy[i] + half + 1, ix[i] - half : ix[i] + half + 1].astype(np.float64)
        if not np.isfinite(box).all():
            continue
        back = np.median(box[annulus], axis=0)
        box = box - back
        noise = _MAD_TO_SIGMA * np.median(np.abs(box[annulus]), axis=0)
        tot = box.sum(axis=2)
        flux = tot[r <= half - 2].sum()
        if not flux > 0:
            continue
        fwhm = _fwhm(tot)
        cand.append((i, box, noise, fwhm))
    if not cand:
        return StampLibrary.empty(size)
    fwhms = np.asarray([c[3] for c in cand])
    med_fwhm = float(np.median(fwhms))
    stamps, offsets, fw, noises, sat = [], [], [], [], []
    for (i, box, noise, fwhm) in cand:
        if not (min_fwhm <= fwhm <= 2.5 * med_fwhm):
            continue
        box = _repair_hot_pixels(box, noise, r > 2.0 * fwhm)
        box = box * (taper * _signal_window(box.sum(axis=2), r, fwhm, half))[..., None]
        flux_c = box.sum(axis=(0, 1))
        if not np.all(flux_c > 0):
            continue
        box = box / flux_c
        if nc == 1:
            box = np.repeat(box, 3, axis=2)
            flux_c = np.repeat(flux_c, 3)
            noise = np.repeat(noise, 3)
        is_sat = False
        if saturated is not None:
            core = r <= max(2.0 * fwhm, 2.0)
            win = saturated[iy[i] - half : iy[i] + half + 1, ix[i] - half : ix[i] + half + 1]
            is_sat = bool(win[core].any())
        stamps.append(box.astype(np.float32))
        offsets.append((x[i] - ix[i], y[i] - iy[i]))
        fw.append(fwhm)
        noises.append(float(np.max(noise / flux_c)))
        sat.append(is_sat)
        if max_stamps is not None and len(stamps) >= max_stamps:
            break
    if not stamps:
        return StampLibrary.empty(size)
    return StampLibrary(
        stamps=np.stack(stamps),
        offset=np.asarray(offsets, dtype=np.float64),
        fwhm=np.asarray(fw, dtype=np.float64),
        noise=np.asarray(noises, dtype=np.float64),
        saturated=np.asarray(sat, dtype=bool),
        source=np.zeros(len(stamps), dtype=np.int16),
        sources=(str(source),),
    )


def _fwhm(image, upsample=4):
    """FWHM (px) of a centred star: the diameter of the disc whose area is that of the region
    above half the peak, measured on a ``upsample``-times bicubic resampling of the core."""
    k = image.shape[0]
    c = k // 2
    m = min(c, 12)
    core = np.ascontiguousarray(image[c - m : c + m + 1, c - m : c + m + 1], dtype=np.float32)
    fine = cv2.resize(core, None, fx=upsample, fy=upsample, interpolation=cv2.INTER_CUBIC)
    peak = float(fine.max())
    if not peak > 0:
        return 0.0
    above = fine >= 0.5 * peak
    n_lab, labels = cv2.connectedComponents(above.astype(np.uint8))
    if n_lab > 2:  # only the region holding the peak
        py, px = np.unravel_index(int(np.argmax(fine)), fine.shape)
        above = labels == labels[py, px]
    area = float(above.sum()) / upsample**2
    return 2.0 * math.sqrt(area / math.pi)


def _signal_window(image, r, fwhm, half):
    """1 out to the radius where the star's azimuthal median falls below the noise sigma (at
    least 2 FWHM), then smoothly 0 over 3 px: the stamp keeps no pure-noise wings."""
    noise = _MAD_TO_SIGMA * np.median(np.abs(image[r >= half - 4]))
    edge = float(half - 3)
    for radius in np.arange(max(2.0 * fwhm, 2.0), half - 3, 1.0):
        ring = (r >= radius - 0.5) & (r < radius + 0.5)
        if np.median(image[ring]) < noise:
            edge = float(radius)
            break
    t = np.clip((edge + 3.0 - r) / 3.0, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _repair_hot_pixels(box, noise, where):
    """Pixels of ``where`` more than 6 noise sigmas from their 3 x 3 median get that median."""
    out = box.copy()
    for c in range(box.shape[2]):
        plane = box[..., c].astype(np.float32)
        med = cv2.medianBlur(plane, 3)
        bad = where & (np.abs(plane - med) > 6.0 * max(float(noise[c]), 1e-12))
        out[..., c][bad] = med[bad]
    return out


# --------------------------------------------------------------------------------------------
# real data sets


def warp_stamp(stamp, frac_x, frac_y, *, scale=1.0, angle=0.0, flip=False, offset=(0.0, 0.0)):
    """A stamp resampled at a sub-pixel phase, scale, rotation and flip, of unit flux.

    Parameters
    ----------
    stamp : numpy.ndarray
        ``(k, k, C)`` unit-flux stamp.
    frac_x, frac_y : float
        Position of the star relative to the central pixel of the output, px (in
        ``[-0.5, 0.5]``).
    scale : float, optional
        Linear magnification (> 0): the FWHM grows by this factor.
    angle : float, optional
        Rotation, radians, from +x towards +y (x = column, y = row).
    flip : bool, optional
        Mirror the stamp (x -> -x) before rotating.
    offset : (float, float), optional
        The star's centroid in the stamp relative to its central pixel
        (:attr:`StampLibrary.offset`).

    Returns
    -------
    numpy.ndarray
        ``(n, n, C)`` float32, ``n = 2 * ceil(k * scale / 2) + 3``, each channel summing to 1
        (bilinear resampling; a channel without light stays 0).
    """
    k = stamp.shape[0]
    half_out = int(math.ceil(0.5 * k * scale)) + 1
    n_out = 2 * half_out + 1
    c_k = (k - 1) / 2.0
    ca, sa = math.cos(angle), math.sin(angle)
    # output offsets d (from the star) map to stamp offsets R(-angle) d / scale (then mirrored)
    a = np.array([[ca, sa], [-sa, ca]]) / float(scale)
    if flip:
        a = np.diag([-1.0, 1.0]) @ a
    centre_out = np.array([half_out + frac_x, half_out + frac_y])
    t = np.array([c_k + offset[0], c_k + offset[1]]) - a @ centre_out
    m = np.hstack([a, t[:, None]])
    src = np.ascontiguousarray(stamp, dtype=np.float32)
    out = cv2.warpAffine(
        src,
        m,
        (n_out, n_out),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    if out.ndim == 2:
        out = out[..., None]
    sums = out.sum(axis=(0, 1), dtype=np.float64)
    good = sums > 0
    out[..., good] /= sums[good].astype(np.float32)
    out[..., ~good] = 0.0
    return out


def paste_stamp(image, stamp, x, y, flux, *, scale=1.0, angle=0.0, flip=False, offset=(0.0, 0.0)):
    """Add a star stamp to ``image`` in place, centred at ``(x, y)`` with ``flux`` per channel.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` float array (linear ADU), changed in place. Parts of the stamp outside it
        are dropped.
    stamp : numpy.ndarray
        ``(k, k, C)`` (or ``(k, k, 3)`` for ``C = 1``: the channels are averaged) unit-flux stamp.
    x, y : float
        Position of the star, px (pixel centres at integers, x = column).
    flux : float or array_like
        Total flux per channel (ADU).
    scale, angle, flip, offset
        See :func:`warp_stamp`.

    Returns
    -------
    float
        The flux added inside ``image`` (sum over pixels and channels).
    """
    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    patch = warp_stamp(stamp, x - ix, y - iy, scale=scale, angle=angle, flip=flip, offset=offset)
    channels = image.shape[2]
    if channels == 1 and patch.shape[2] != 1:
        patch = patch.mean(axis=2, keepdims=True)
    patch = patch * np.broadcast_to(np.asarray(flux, dtype=np.float64), (channels,))
    half = patch.shape[0] // 2
    h, w = image.shape[:2]
    y0, x0 = iy - half, ix - half
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + patch.shape[0], h), min(x0 + patch.shape[1], w)
    if ys >= ye or xs >= xe:
        return 0.0
    part = patch[ys - y0 : ye - y0, xs - x0 : xe - x0]
    image[ys:ye, xs:xe] += part
    return float(part.sum())
