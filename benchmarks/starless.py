"""Star removal: the network against a classical baseline and the untouched input, on a held-out
synthetic test set; inference time for a 4096x4096 RGB image; star counts on the real images.

    python benchmarks/starless.py [--weights models/starless.pt] [--samples 64] [--threads 2]

The test set is drawn with a seed no training shard uses (training shards take
[seed, crc32(split), shard]). Metrics (astroflow.starless.starless_metrics, display domain):
PSNR and SSIM against the true starless image, the fraction of the added star flux left inside
the true star footprints, and the change outside them; the network as shipped (the no-holes
clamp of astroflow.restoration.starnet.clamp_holes, the stars' profiles subtracted, the residual
stars inpainted), without the profile subtraction, and without the clamp (the raw network). Real
images, without a truth: benchmarks/starless_real.py. Not run by the tests.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from astroflow.io.imagefile import display_scale, read_finished_image
from astroflow.restoration.starless import (
    classical_star_removal,
    remove_stars,
    starless_metrics,
)
from astroflow.restoration.starmetrics import count_sources
from astroflow.restoration.starnet import load_starless, predictor
from astroflow.simulation.synthstars import render_sample

ROOT = Path(__file__).resolve().parents[1]

TEST_SEED = 99_000_001


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ROOT / "models" / "starless.pt"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-4k", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_starless(args.weights, device="cpu")
    predict = predictor(model, tile=256, overlap=32, batch=4)
    raw = predictor(model, tile=256, overlap=32, batch=4, no_holes=False)
    no_profiles = predictor(model, tile=256, overlap=32, batch=4, profiles=False)
    no_spikes = predictor(model, tile=256, overlap=32, batch=4, spikes=False)
    print(f"weights {args.weights}: {meta.get('profile')} profile, settings {meta.get('settings')}")

    rows = []
    for i in range(args.samples):
        sample = render_sample(np.random.default_rng([TEST_SEED, i]), 256)
        truth, starry, fp = sample.starless, sample.starry, sample.footprint
        outputs = {
            "untouched input": starry,
            "classical (sep mask + Telea inpaint)": classical_star_removal(starry)[0],
            "astroflow network (no clamp)": remove_stars(starry, raw, encoding="display").starless,
            "astroflow network (no profiles subtracted)": remove_stars(
                starry, no_profiles, encoding="display"
            ).starless,
            "astroflow network (no spikes subtracted)": remove_stars(starry, no_spikes, encoding="display").starless,
            "astroflow network": remove_stars(starry, predict, encoding="display").starless,
        }
        for method, out in outputs.items():
            rows.append({"method": method, "sample": i, **starless_metrics(out, truth, starry, fp)})
    table = pd.DataFrame(rows)
    summary = table.groupby("method", sort=False)[
        ["psnr", "ssim", "residual_star_flux", "outside_change", "outside_rmse"]
    ].median()
    print(f"\nheld-out synthetic test set: {args.samples} samples of 256x256 RGB (medians)\n")
    print(summary.to_markdown(floatfmt=".4g"))

    data = ROOT.parent / "shared" / "data"
    cave = data / "cave-nebula" / "cave_nebula_starry_color.png"
    if not args.skip_4k:
        # A real star density where the Cave Nebula is at hand (its 712x1048 px mirrored into a
        # 4096x4096 mosaic, at its star density), else noise: the steps after the network take
        # a time that grows with the stars.
        if cave.exists():
            image, bits = read_finished_image(cave)
            tile = (image / display_scale(bits)).astype(np.float32)
            big = np.pad(tile, ((0, 4096 - tile.shape[0]), (0, 4096 - tile.shape[1]), (0, 0)), mode="symmetric")
            what = "Cave Nebula mosaic"
        else:
            big = np.random.default_rng(0).random((4096, 4096, 3), dtype=np.float32) * 0.3
            what = "noise"
        for name, chain in (("network alone", raw), ("as shipped", predict)):
            start = time.time()
            remove_stars(big, chain, encoding="display")
            print(f"\n4096x4096 RGB ({what}), {name}, on {args.threads} CPU threads: {time.time() - start:.1f} s")

    if cave.exists():
        image, bits = read_finished_image(cave)
        image = image / display_scale(bits)
        start = time.time()
        result = remove_stars(image, predict, encoding="display")
        print(
            f"\nCave Nebula {image.shape}: {time.time() - start:.1f} s; SEP stars "
            f"{count_sources(image)} before, {count_sources(result.starless)} after"
        )


if __name__ == "__main__":
    main()
