"""Apply an image-to-image network to an image of any size, in overlapping blended tiles.

A network trained on small crops is applied to a full image tile by tile: tiles of ``tile``
pixels every ``tile - overlap`` pixels, each result weighted by :func:`blend_weights` and the
weighted results divided by the sum of the weights.  The weights are zero on a rim of
``overlap // 4`` pixels at each tile edge, where a network's receptive field is cut off by the
tile's border, and rise from 0 to 1 as ``sin**2`` over the middle half of the overlap; over
the overlap of two neighbouring tiles the ``sin**2`` ramp of one and the ``cos**2`` ramp of the
other add up to exactly 1, so no seams appear, and a pixel's result comes from the tile in
which it is farthest from the edge.  The image is first padded by mirroring by ``overlap``
pixels (and up to a whole number of tiles), so its own borders are treated like the inside.
"""

from __future__ import annotations

import numpy as np
import torch

from astroflow.blend import blend_ramp
from astroflow.checks import check_image, check_int

__all__ = ["blend_weights", "predict_tiled", "tile_grid"]


def _check_tiling(tile, overlap):
    tile, overlap = check_int("tile", tile, 1), check_int("overlap", overlap, 0)
    if tile <= 2 * overlap:
        raise ValueError(
            f"tile ({tile} px) must be larger than twice the overlap ({overlap} px), so that "
            "each tile has a part that no neighbouring tile's overlap covers"
        )
    return tile, overlap


def blend_weights(tile, overlap):
    """Blending weight of a tile: separable ``sin**2`` ramps over the overlap, 1 inside.

    Parameters
    ----------
    tile : int
        Tile size (pixels).
    overlap : int
        Overlap of neighbouring tiles (pixels), ``0 <= 2 * overlap < tile``.

    Returns
    -------
    numpy.ndarray
        ``(tile, tile)`` float32, the outer product of a 1-D profile that is 0 on the first
        ``overlap // 4`` pixels, rises as ``sin**2`` to 1 over the next ``overlap - 2 * (overlap
        // 4)`` pixels, is 1 up to the mirror image of this ramp at the other end.  Tiles placed
        every ``tile - overlap`` pixels have weights summing to exactly 1 wherever they overlap
        (``sin**2 + cos**2 = 1``); with ``overlap = 0`` the weight is 1 everywhere.

    Raises
    ------
    ValueError
        ``tile <= 2 * overlap``, a negative overlap or non-integer sizes.
    """
    tile, overlap = _check_tiling(tile, overlap)
    profile = np.ones(tile)
    if overlap:
        ramp = blend_ramp(overlap)
        profile[:overlap] = ramp
        profile[tile - overlap :] = ramp[::-1]
    return np.outer(profile, profile).astype(np.float32)


def tile_grid(length, tile, overlap):
    """Tile origins along one axis of a padded image, and the padded length they cover.

    Parameters
    ----------
    length : int
        Length of the axis after padding by ``overlap`` on both sides.
    tile, overlap : int
        As in :func:`predict_tiled`.

    Returns
    -------
    starts : list of int
        Origins ``0, stride, 2 * stride, ...`` with ``stride = tile - overlap``.
    covered : int
        ``starts[-1] + tile >= length``: the axis is padded further to this length.
    """
    stride = tile - overlap
    n = max(1, -(-(length - overlap) // stride))
    return [i * stride for i in range(n)], (n - 1) * stride + tile


def predict_tiled(fn, image, *, tile=256, overlap=32, batch=4, device="cpu"):
    """Apply an image-to-image function to an image of any size in overlapping, blended tiles.

    Parameters
    ----------
    fn : callable
        Maps a float32 tensor ``(N, C, tile, tile)`` (on ``device``) to a tensor of the same
        shape, e.g. a network in eval mode.  Called under :func:`torch.inference_mode` with
        ``N <= batch``.
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, any real dtype (computed in float32), all finite.
    tile : int, optional
        Tile size in pixels; use the size the network was trained on or larger.
    overlap : int, optional
        Overlap of neighbouring tiles; ``2 * overlap < tile``.  An outer rim of
        ``overlap // 4`` pixels of every tile gets zero weight (see :func:`blend_weights`), so a
        network's edge effects up to that depth never show; larger overlaps cost more tiles.
    batch : int, optional
        Tiles per call of ``fn``.
    device : str or torch.device, optional
        Where the tiles are sent before ``fn``; its result is brought back to the CPU.

    Returns
    -------
    numpy.ndarray
        float32, the shape of ``image``.

    Raises
    ------
    ValueError
        ``image`` is not 2-D or 3-D, is empty or holds NaN or infinite values; ``tile <= 2 *
        overlap``; ``batch < 1``; ``fn`` returns a tensor of another shape, or NaN/infinite
        values.

    Notes
    -----
    The image is padded by mirroring (``numpy.pad(mode="reflect")``, no repeated edge pixel)
    by ``overlap`` on every side, then at the bottom and right up to a whole number of tiles;
    images smaller than a tile are mirrored up to one tile.  Memory: two float32 copies of the
    padded image and one float32 plane of weights, plus ``batch`` tiles.
    """
    tile, overlap = _check_tiling(tile, overlap)
    batch = check_int("batch", batch, 1)
    image = check_image(
        "image", image, channels=True, remedy="replace them before applying the network"
    )
    mono = image.ndim == 2
    x = image.astype(np.float32, copy=False)
    if mono:
        x = x[:, :, None]
    h, w, c = x.shape

    ys, hp = tile_grid(h + 2 * overlap, tile, overlap)
    xs, wp = tile_grid(w + 2 * overlap, tile, overlap)
    # numpy mirrors repeatedly for pads larger than the image, and repeats a 1-pixel axis
    pads = ((overlap, hp - h - overlap), (overlap, wp - w - overlap), (0, 0))
    padded = np.pad(x, pads, mode="reflect")
    weight = blend_weights(tile, overlap)
    out = np.zeros((hp, wp, c), np.float32)
    wsum = np.zeros((hp, wp), np.float32)
    origins = [(y, x0) for y in ys for x0 in xs]
    wt = torch.from_numpy(weight)
    with torch.inference_mode():
        for i in range(0, len(origins), batch):
            chunk = origins[i : i + batch]
            tiles = np.stack([padded[y : y + tile, x0 : x0 + tile] for y, x0 in chunk])
            inp = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))).to(device)
            res = fn(inp)
            if not isinstance(res, torch.Tensor) or tuple(res.shape) != tuple(inp.shape):
                shape = tuple(res.shape) if isinstance(res, torch.Tensor) else type(res).__name__
                raise ValueError(
                    f"fn must return a tensor of the shape of its input {tuple(inp.shape)}, "
                    f"got {shape}"
                )
            res = res.detach().to("cpu", torch.float32)
            if not torch.isfinite(res).all():
                raise ValueError(
                    f"fn returned NaN or infinite values for the tile(s) at (y, x) = {chunk} "
                    "of the padded image"
                )
            res = (res * wt).permute(0, 2, 3, 1).numpy()
            for (y, x0), r in zip(chunk, res):
                out[y : y + tile, x0 : x0 + tile] += r
                wsum[y : y + tile, x0 : x0 + tile] += weight
    out = out[overlap : overlap + h, overlap : overlap + w]
    out /= wsum[overlap : overlap + h, overlap : overlap + w, None]
    return out[:, :, 0] if mono else out
