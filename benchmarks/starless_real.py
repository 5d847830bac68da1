"""Star removal on real images: the shipped network (with and without its no-holes clamp) against
the classical baseline, measured without a starless truth.

    python benchmarks/starless_real.py [--out /tmp/starless_real] [--threads 2] [--stack 13]

Images (from ../shared/data; nothing is copied into the repository):

* ``cave``: the Cave Nebula PNG, a stretched 8-bit colour image with many stars (display data);
* ``hubble``: the Hubble Deep Field as shipped inside scikit-image (``skimage.data``), a real
  8-bit colour field of galaxies and a few stars (display data);
* ``sbig-light``: one SBIG STL-1001E light (the night's first), linear mono, minus the median of
  the ten 20 s darks (same exposure, so bias included; no flat);
* ``sbig-stack``: a quick stack of the first ``--stack`` such lights (all 13 by default):
  registered on the first one (astroflow's star detection, astroalign matching and Lanczos
  warp), median-combined and cropped to where all frames overlap;
* ``m94-light``: one Seestar S50 M 94 light (night 2's first), linear colour, debayered (Malvar
  2004, the file's Bayer pattern), no calibration frames (the data set has none);
* ``m94-stack``: a quick stack of night 2's first ``--stack`` lights (all 11), as for the SBIG.

Each image goes through :func:`astroflow.restoration.starless.remove_stars` (the entry script's
way: linear data stretched with the invertible network stretch, display data as they are)
with these answers: the network without the clamp (``predictor(no_holes=False)``), with
:func:`astroflow.restoration.starnet.clamp_holes`, the clamp and
:func:`astroflow.restoration.starnet.inpaint_residuals` (the chain shipped until the stars'
profiles were subtracted), the clamp, :func:`astroflow.restoration.starnet.subtract_profiles`
and inpainted residuals (the chain shipped until the spikes were subtracted), the chain the
workflow runs (:func:`astroflow.restoration.starnet.clean_answer`: the same with
:func:`astroflow.restoration.starnet.subtract_spikes` after the profiles) and the classical
baseline (:func:`astroflow.restoration.starless.classical_star_removal`, the workflow's default
settings). The measures are :func:`astroflow.restoration.starmetrics.star_removal_measures`,
in the display domain (linear data with the input's network stretch). Time: the network's
inference (tiles 256, overlap 32, batch 4, CPU), plus what follows it for each variant; the
classical baseline's detection and inpainting.

Writes to ``--out``: ``starless_real.csv`` and ``starless_real.md`` (the table) and, per image,
crops ``<image>_<bright|bright2|crowded|nebula>.png`` (the two brightest detections, the most
stars, the most large-scale structure) side by side: input | each answer above, in that
order; linear images shown with one extra autostretch of the input crop for all panels, so
that holes show as black. Not run by the tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see scripts/starless.py

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from astroflow.calibration.debayer import debayer
from astroflow.deepsky.quality import detect_stars
from astroflow.deepsky.register import RegistrationError, find_transform, warp
from astroflow.io.imagefile import display_scale, read_finished_image
from astroflow.io.ingest import read_frame
from astroflow.restoration.starless import classical_star_removal, remove_stars
from astroflow.restoration.starmetrics import crop_windows, measurement_pair, star_removal_measures
from astroflow.restoration.starnet import (
    clamp_holes,
    clean_answer,
    inpaint_residuals,
    load_starless,
    predictor,
)
from astroflow.workflow.plots import comparison_crops

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLASSICAL = {"threshold_sigma": 3.0, "grow": 2.0, "radius": 5}  # config.yaml starless.classical
# The workflow's chain (astroflow.restoration.starnet.predictor's defaults) and the one before it.
PROFILES = "network (no holes, profiles subtracted, residuals inpainted)"
SHIPPED = "network (no holes, profiles and spikes subtracted, residuals inpainted)"
COLUMNS = [
    "image", "method", "seconds", "sources_before", "sources_after", "removed_fraction",
    "hole_median", "hole_worst", "hole_grey_median", "hole_stars", "ring_excess", "ring_channel_max",
    "ring_abs", "ring_stars", "saturated_stars", "saturated_ring", "saturated_ring_channel_max", "outside_rms",
    "outside_max", "outside_bias", "outside_fraction", "spike_lines", "spike_arms", "spike_before", "spike_excess",
    "noise",
]


def largest_valid_rectangle(valid):
    """Rows and columns slices of an axis-aligned rectangle where ``valid`` is all true (greedy
    trimming of the side with the most invalid pixels)."""
    r0, r1, c0, c1 = 0, valid.shape[0], 0, valid.shape[1]
    while r1 > r0 and c1 > c0 and not valid[r0:r1, c0:c1].all():
        box = ~valid[r0:r1, c0:c1]
        sides = [box[0].sum(), box[-1].sum(), box[:, 0].sum(), box[:, -1].sum()]
        k = int(np.argmax(sides))
        r0, r1, c0, c1 = r0 + (k == 0), r1 - (k == 1), c0 + (k == 2), c1 - (k == 3)
    return slice(r0, r1), slice(c0, c1)


def quick_stack(frames):
    """Register frames on the first (similarity transform) and take the median; crop to overlap."""
    if len(frames) == 1:
        return frames[0]
    reference = detect_stars(frames[0])
    reference = reference[reference["flag"] == 0]
    shape = frames[0].shape[:2]
    warped = [frames[0]]
    for i, frame in enumerate(frames[1:], 1):
        stars = detect_stars(frame)
        try:
            matrix, n, rms = find_transform(stars[stars["flag"] == 0], reference)
        except RegistrationError as exc:
            print(f"  frame {i} not registered ({exc}); left out")
            continue
        print(f"  frame {i}: {n} stars matched, rms {rms:.2f} px")
        warped.append(warp(frame, matrix, shape))
    cube = np.stack(warped)
    stack = np.nanmedian(cube, axis=0)
    valid = np.isfinite(cube).all(axis=0)
    if valid.ndim == 3:
        valid = valid.all(axis=2)
    rows, cols = largest_valid_rectangle(valid)
    print(f"  median of {len(warped)} frames, cropped to {rows.stop - rows.start}x{cols.stop - cols.start}")
    return np.ascontiguousarray(stack[rows, cols], dtype=np.float32)


def load_cave():
    image, bits = read_finished_image(DATA / "cave-nebula" / "cave_nebula_starry_color.png")
    return image / display_scale(bits), "display", "Cave Nebula PNG, 8-bit RGB, display"


def load_hubble():
    import skimage.data

    image = skimage.data.hubble_deep_field().astype(np.float32) / 255.0
    return image, "display", "Hubble Deep Field (scikit-image's copy), 8-bit RGB, display"


def load_sbig(n):
    folder = DATA / "sbig-stl1001"
    dark = np.median([read_frame(p)[0] for p in sorted((folder / "dark").glob("*.FIT"))], axis=0)
    lights = sorted((folder / "light").glob("*.FIT"))[:n]
    frames = [read_frame(p)[0] - dark for p in lights]
    what = "1 light" if len(frames) == 1 else f"median of {len(frames)} registered lights"
    return quick_stack(frames), "linear", f"SBIG STL-1001E, {what} minus median dark, mono, linear"


def load_m94(n):
    lights = sorted((DATA / "seestar-s50-m94" / "night2").glob("*.fit"))[:n]
    frames = []
    for path in lights:
        cfa, meta = read_frame(path)
        frames.append(debayer(cfa, meta["BAYERPAT"]))
    what = "1 light" if len(frames) == 1 else f"median of {len(frames)} registered lights"
    return quick_stack(frames), "linear", f"Seestar S50 M 94 night 2, {what}, debayered, RGB, linear"


def run_methods(image, encoding, raw_predict):
    """Starless images (input encoding) and seconds of each method."""
    cache = {}

    def network(display):
        start = time.perf_counter()
        cache["out"] = raw_predict(display)
        cache["network"] = time.perf_counter() - start
        return cache["out"]

    def clamped(**options):
        def predict(display):
            start = time.perf_counter()
            out = clamp_holes(display, cache["out"], **options)
            cache["clamp"] = time.perf_counter() - start
            return out

        return predict

    def cleaned(display):
        start = time.perf_counter()
        out, cache["inpainted"] = inpaint_residuals(display, clamp_holes(display, cache["out"]))
        cache["cleanup"] = time.perf_counter() - start
        return out

    def chain(name, **steps):
        def predict(display):
            start = time.perf_counter()
            out = clean_answer(display, cache["out"], **steps)
            cache[name] = time.perf_counter() - start
            return out

        return predict

    def classical(display):
        start = time.perf_counter()
        out = classical_star_removal(display, **CLASSICAL)[0]
        cache["classical"] = time.perf_counter() - start
        return out

    results, seconds = {}, {}
    for method, predict in (
        ("network (no clamp)", network),
        ("network (no holes)", clamped()),
        ("network (no holes, residuals inpainted)", cleaned),
        (PROFILES, chain(PROFILES, spikes=False)),
        (SHIPPED, chain(SHIPPED)),
        ("classical", classical),
    ):
        results[method] = remove_stars(image, predict, encoding=encoding).starless
        if method == "classical":
            seconds[method] = cache["classical"]
        elif method == "network (no holes, residuals inpainted)":
            seconds[method] = cache["network"] + cache["cleanup"]
        elif method in (PROFILES, SHIPPED):
            seconds[method] = cache["network"] + cache[method]
        else:
            seconds[method] = cache["network"] + (cache["clamp"] if method != "network (no clamp)" else 0.0)
    return results, seconds


def save_crops(out, name, encoding, before, starless, size=128, zoom=2):
    panels = {"input": before, **starless}
    for kind, centre in crop_windows(before, size).items():
        row = comparison_crops(panels, centre, size, zoom=zoom, restretch=encoding == "linear")
        path = out / f"{name}_{kind}.png"
        Image.fromarray(row).save(path)
        print(f"  {path} (centre x={centre[1]}, y={centre[0]})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/starless_real", help="folder for the table and crops")
    parser.add_argument("--weights", default=str(ROOT / "models" / "starless.pt"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stack", type=int, default=13, help="lights per SBIG / Seestar quick stack")
    parser.add_argument("--images", default="cave,hubble,sbig-light,sbig-stack,m94-light,m94-stack",
                        help="comma-separated subset")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not DATA.exists():
        raise SystemExit(f"real data not available: {DATA} is absent")
    torch.set_num_threads(args.threads)
    model, meta = load_starless(args.weights, device="cpu")
    raw = predictor(model, tile=256, overlap=32, batch=4, no_holes=False)
    print(f"weights {args.weights}: {meta.get('profile')} profile; {args.threads} CPU threads")
    loaders = {
        "cave": load_cave,
        "hubble": load_hubble,
        "sbig-light": lambda: load_sbig(1),
        "sbig-stack": lambda: load_sbig(args.stack),
        "m94-light": lambda: load_m94(1),
        "m94-stack": lambda: load_m94(args.stack),
    }
    rows = []
    for name in args.images.split(","):
        print(f"\n{name}: loading")
        image, encoding, what = loaders[name]()
        print(f"{name}: {what}, {'x'.join(map(str, image.shape))}")
        results, seconds = run_methods(image, encoding, raw)
        for method, starless in results.items():
            measures = star_removal_measures(image, starless, encoding=encoding)
            rows.append({"image": name, "method": method, "seconds": seconds[method], **measures})
        before, _ = measurement_pair(image, image, encoding=encoding)
        shown = {m: measurement_pair(image, s, encoding=encoding)[1] for m, s in results.items()}
        save_crops(out, name, encoding, before, shown)
    table = pd.DataFrame(rows)[COLUMNS]
    table.to_csv(out / "starless_real.csv", index=False)
    markdown = table.to_markdown(index=False, floatfmt=".3g")
    (out / "starless_real.md").write_text(markdown + "\n")
    print("\nhole depth, ring excess and outside change in noise sigmas of the input (display domain)\n")
    print(markdown)
    print(f"\nwritten: {out / 'starless_real.csv'}, {out / 'starless_real.md'}")


if __name__ == "__main__":
    main()
