"""Flat correction without flats by the shipped network: the SBIG night and held-out synthetic frames.

* SBIG STL-1001E night (``../shared/data/sbig-stl1001``): each of the 13 lights calibrated with
  bias and dark only, corrected by the network, and compared with the same light calibrated with
  the real master flat: background RMS of ``result / flat-fielded - 1``, star-masked, in 32 px
  blocks (:func:`astroflow.calibration.flatnet.ratio_rms`), against no correction;
* held-out synthetic frames (:func:`astroflow.calibration.flatnet.heldout_metrics`): residual
  RMS against the truth and the flux kept of a faint extended region;
* seconds of :func:`~astroflow.calibration.flatnet.correct` on 1024 x 1024 and 4096 x 4096
  frames on this CPU.

Writes ``flatnet.json`` and ``sbig_flats.png`` (real flat | predicted flat of the first light,
same stretch) to ``--out``::

    .venv/bin/python benchmarks/flatnet.py --out /tmp/flatnet
"""

import argparse
import json
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from astroflow.calibration.flatnet import correct, heldout_metrics, load_flatnet, sbig_metrics

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def flats_picture(model, folder, path):
    from astroflow.simulation.realstars import sbig_frames

    raw, _ = next(sbig_frames(folder, max_lights=1, use_flat=False))
    reference, _ = next(sbig_frames(folder, max_lights=1, use_flat=True))
    _, flat, _ = correct(raw, model)
    real = raw / np.where(reference != 0, reference, np.nan)
    real = np.nan_to_num(real / np.nanmedian(real), nan=1.0)
    lo, hi = np.percentile(real, [1, 99])
    panels = [np.clip((f - lo) / (hi - lo), 0, 1)[::2, ::2] for f in (real, flat / np.median(flat))]
    Image.fromarray((np.hstack(panels) * 255).astype(np.uint8)).save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for flatnet.json and the picture")
    parser.add_argument("--weights", default=str(ROOT / "models" / "flatfield.pt"))
    parser.add_argument("--frames", type=int, default=16, help="held-out synthetic frames")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_flatnet(args.weights)
    result = {"weights": args.weights, "trained": {k: meta.get(k) for k in ("profile", "settings", "steps", "wall_s")}}
    folder = DATA / "sbig-stl1001"
    if folder.is_dir():
        result["sbig"] = sbig_metrics(folder, model)
        print("SBIG:", {k: v for k, v in result["sbig"].items() if k != "per_light"})
        flats_picture(model, folder, out / "sbig_flats.png")
    else:
        print(f"{folder} absent: SBIG not measured")
    seeds = [[int(meta.get("seed", 7)), zlib.crc32(b"benchmark"), i] for i in range(args.frames)]
    result["heldout"] = heldout_metrics(model, seeds, size=512)
    print("held-out synthetic:", result["heldout"])
    rng = np.random.default_rng(0)
    for side in (1024, 4096):
        image = rng.normal(1000.0, 10.0, (side, side)).astype(np.float32)
        start = time.perf_counter()
        correct(image, model)
        result[f"seconds_{side}"] = round(time.perf_counter() - start, 2)
        print(f"correct() on {side}x{side}: {result[f'seconds_{side}']} s")
    (out / "flatnet.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'flatnet.json'}")


if __name__ == "__main__":
    main()
