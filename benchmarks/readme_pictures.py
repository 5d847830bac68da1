"""The README's pictures of a deep-sky stack and of star removal, from a finished run.

Run the workflow on ``benchmarks/configs/readme.yaml`` (the Seestar S50 night of M 94 and the
Cave Nebula image from ``../shared/data``), then this script::

    snakemake --cores all --configfile benchmarks/configs/readme.yaml
    python benchmarks/readme_pictures.py --results results --out docs/images

It writes ``deep-sky-m94.jpg`` (the stack's preview, cropped on the galaxy) and
``starless-cave.png`` (image | starless | stars, side by side), each at most ``--width`` px wide.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np


def rgb(path):
    """An 8-bit preview PNG as (H, W, 3) uint8."""
    image = iio.imread(path)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


def fit_width(image, width):
    """Scale down (area averaging) so that the image is at most ``width`` px wide."""
    if image.shape[1] <= width:
        return image
    height = round(image.shape[0] * width / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def side_by_side(images, gap=8):
    """Images of one height next to each other, separated by white gaps."""
    height = images[0].shape[0]
    parts = []
    for image in images:
        parts += [image, np.full((height, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--width", type=int, default=1200)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    stack = rgb(args.results / "m94" / "stack.png")
    h, w = stack.shape[:2]
    # the galaxy sits near the centre of the portrait frame: a square crop of the middle
    side = min(h, w)
    crop = stack[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    # JPEG: the sky noise of a short stack makes a lossless picture needlessly large
    iio.imwrite(args.out / "deep-sky-m94.jpg", fit_width(crop, min(args.width, 800)), quality=90)

    cave = [rgb(args.results / "cave" / f"{name}.png") for name in ("image", "starless", "stars")]
    iio.imwrite(args.out / "starless-cave.png", fit_width(side_by_side(cave), args.width))
    print(f"wrote {args.out / 'deep-sky-m94.jpg'} and {args.out / 'starless-cave.png'}")


if __name__ == "__main__":
    main()
