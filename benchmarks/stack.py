"""Benchmark astroflow's stacker, every rejection, against ccdproc.combine and Siril, same frames.

Writes ``--frames`` synthetic ``--size`` x ``--size`` float32 frames (sky, Gaussian stars,
read noise, a satellite trail in one frame, NaN borders in two frames as registration leaves
them) to FITS in a temporary folder, and a copy for Siril (scaled to 0..1 by 1/65535, the
range Siril 1.0 reads float FITS in, NaN as 0, its no-data value). Each case then runs in its
own process, so that its peak resident memory (``ru_maxrss``, Siril's as the child's) is its
own, timed in ``--repeat`` fresh processes (best wall time kept, all recorded):

* ``ours_<method>``: ``combine(method=..., normalize="none", max_iters=10)`` for every method
  (Siril iterates until nothing changes; 10 passes reach that here), and ``ours_sigma_clip_1``
  / ``ours_mad_1`` with one pass, as ccdproc clips;
* ``ccdproc_average``, ``ccdproc_median``, ``ccdproc_sigma_clip`` (``sigma_clip_func=np.ma.median,
  sigma_clip_dev_func=np.ma.std``, 3/3, one pass) and ``ccdproc_mad`` (``mad_std``), with
  ``mem_limit`` the same budget;
* ``siril_<method>``: ``siril-cli`` (Debian's 1.0.6, all cores) running ``link`` and
  ``stack <seq> rej <type> ... -nonorm`` (``median`` for the median); its timing includes the
  link and Siril's start.

Every case gets the same memory budget (``--memory-mb``). Results are compared where every
frame has data: largest |difference| against the counterpart of the same definition, in ADU
and in units of one frame's noise. ``--trace`` adds a tracemalloc peak for our cases.

``--budget-frames N`` instead stacks N frames (``--size``) under ``--memory-mb`` with each
method and reports wall time, peak RSS and the largest frame count the budget would allow
(:func:`frames_under_budget`).

Usage::

    python benchmarks/stack.py --frames 16 --size 1024 --out benchmarks/stack_results.json
    python benchmarks/stack.py --budget-frames 256 --size 1024 --memory-mb 128 \
        --out benchmarks/stack_budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

from astroflow.io.fits import write_image

REPO = Path(__file__).resolve().parents[1]

OUR_METHODS = (
    "none", "median", "percentile", "sigma_clip", "mad", "winsorized", "linear_fit", "gesd",
)  # fmt: skip
# Siril 1.0.6's rejection letters and their two parameters (sigmas, percentiles, GESD's
# outlier fraction and alpha).
SIRIL = {
    "percentile": ("p", 0.2, 0.1),
    "sigma_clip": ("s", 3, 3),
    "mad": ("a", 3, 3),
    "winsorized": ("w", 3, 3),
    "linear_fit": ("l", 3, 3),
    "gesd": ("g", 0.3, 0.05),
}
CCDPROC = ("average", "median", "sigma_clip", "mad")
CASES = (
    tuple(f"ours_{m}" for m in OUR_METHODS)
    + ("ours_sigma_clip_1", "ours_mad_1")
    + tuple(f"ccdproc_{m}" for m in CCDPROC)
    + ("siril_median",)
    + tuple(f"siril_{m}" for m in SIRIL)
)
# Which result each case is compared with: the same definition, or the closest one.
COUNTERPARTS = {
    "ccdproc_average": "ours_none",
    "ccdproc_median": "ours_median",
    "ccdproc_sigma_clip": "ours_sigma_clip_1",
    "ccdproc_mad": "ours_mad_1",
    "siril_median": "ours_median",
    **{f"siril_{m}": f"ours_{m}" for m in SIRIL},
}
SIRIL_SCALE = 65535.0
SKY = 1000.0
READ_NOISE = 10.0
TRAIL_FRAME = 3
TRAIL_ADU = 3000.0


def make_frames(folder, n_frames, size, seed):
    """Write the synthetic frames; return their paths, the noiseless scene and the trail mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-7:8, -7:8]
    scene = np.full((size, size), SKY, dtype=np.float32)
    n_stars = size * size // 10000
    for y0, x0, flux, fwhm in zip(
        rng.uniform(8, size - 8, n_stars),
        rng.uniform(8, size - 8, n_stars),
        rng.pareto(1.5, n_stars) * 2000 + 500,
        rng.uniform(2.0, 3.5, n_stars),
    ):
        iy, ix = int(y0), int(x0)
        sigma = fwhm / 2.3548
        dy, dx = yy - (y0 - iy), xx - (x0 - ix)
        psf = np.exp(-(dy**2 + dx**2) / (2 * sigma**2))
        scene[iy - 7 : iy + 8, ix - 7 : ix + 8] += (flux * psf / psf.sum()).astype(np.float32)
    # A satellite crossing one frame diagonally, 3 px wide.
    rows = np.arange(size)
    cols = (0.6 * rows + size * 0.1).astype(int)
    trail = np.zeros((size, size), dtype=bool)
    for width in (-1, 0, 1):
        ok = (cols + width >= 0) & (cols + width < size)
        trail[rows[ok], cols[ok] + width] = True
    paths = []
    for i in range(n_frames):
        frame = scene + rng.standard_normal((size, size), dtype=np.float32) * np.float32(READ_NOISE)
        if i == TRAIL_FRAME:
            frame[trail] += TRAIL_ADU
        if i in (1, n_frames - 2):
            # Registration leaves no data outside the field of a shifted frame.
            frame[:, : 20 + 10 * i] = np.nan
            frame[-15:, :] = np.nan
        path = Path(folder) / f"light_{i:03d}.fits"
        write_image(path, frame, history=["astroflow benchmark frame"])
        paths.append(str(path))
    return paths, scene, trail


def write_siril_copy(paths, folder):
    """Frames as Siril 1.0 reads float FITS: 0..1 (ADU / 65535), no data as 0, rows as ours."""
    from astropy.io import fits

    Path(folder).mkdir()
    for i, path in enumerate(paths):
        with fits.open(path) as hdul:
            data = np.nan_to_num(hdul[0].data / np.float32(SIRIL_SCALE), nan=0.0)
            fits.PrimaryHDU(data.astype(np.float32), header=hdul[0].header).writeto(
                Path(folder) / f"frame_{i:05d}.fits"
            )


def run_siril(case, workdir):
    """Link the Siril copy as a sequence, stack it; return the image (H, W) in ADU."""
    from astroflow.io.fits import read_image

    folder = Path(workdir, "siril")
    for stale in set(folder.glob("seq_*")) | set(folder.glob("*.seq")):
        stale.unlink()
    out = Path(workdir, f"{case}.fits")
    out.unlink(missing_ok=True)
    method = case.removeprefix("siril_")
    if method == "median":
        stack = "median -nonorm"
    else:
        letter, low, high = SIRIL[method]
        stack = f"rej {letter} {low} {high} -nonorm"
    script = folder / "stack.ssf"
    script.write_text(f"requires 1.0.0\nsetext fits\nlink seq_\nstack seq_ {stack} -out={out}\n")
    done = subprocess.run(
        ["siril-cli", "-d", str(folder), "-s", str(script)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"siril-cli failed for {case}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    image, _ = read_image(out)
    return image * np.float32(SIRIL_SCALE)


def run_case(case, paths, memory_mb, workdir):
    """Stack ``paths`` the way ``case`` says; return the image (H, W) float."""
    if case.startswith("ours"):
        from astroflow.deepsky.stack import combine

        method = case.removeprefix("ours_")
        iters = 10
        if method.endswith("_1"):
            method, iters = method[:-2], 1
        result = combine(
            paths, method=method, normalize="none", max_iters=iters, memory_mb=memory_mb
        )
        return result.image
    if case.startswith("siril"):
        return run_siril(case, workdir)
    import ccdproc
    from astropy.stats import mad_std

    method = case.removeprefix("ccdproc_")
    clip = {}
    if method in ("sigma_clip", "mad"):
        clip = {
            "sigma_clip": True,
            "sigma_clip_low_thresh": 3,
            "sigma_clip_high_thresh": 3,
            "sigma_clip_func": np.ma.median,
            "sigma_clip_dev_func": np.ma.std if method == "sigma_clip" else mad_std,
        }
    from astropy.io import fits

    from astroflow.io.fits import top_down_rows

    combined = ccdproc.combine(
        paths,
        method="median" if method == "median" else "average",
        mem_limit=memory_mb * 2**20,
        unit="adu",
        **clip,
    )
    # ccdproc keeps the rows as stored (bottom-up, ROWORDER); ours are top-down.
    return np.ascontiguousarray(top_down_rows(np.asarray(combined.data), fits.getheader(paths[0])))


def child(args):
    """Run one case in this process and print its measurements as one JSON line."""
    warnings.simplefilter("ignore")
    if args.case.startswith("ccdproc"):
        import ccdproc  # noqa: F401  (imported before the baseline, like astroflow.deepsky.stack)
    else:
        import astroflow.deepsky.stack  # noqa: F401
    paths = json.loads(Path(args.workdir, "paths.json").read_text())
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.trace:
        tracemalloc.start()
    start = time.perf_counter()
    image = run_case(args.case, paths, args.memory_mb, args.workdir)
    wall = time.perf_counter() - start
    out = {"case": args.case, "wall_s": wall}
    if args.trace:
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    else:
        if args.case.startswith("siril"):
            out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            out["baseline_rss_mb"] = 0.0
        else:
            out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            out["baseline_rss_mb"] = baseline_kb / 1024
        np.save(Path(args.workdir, f"{args.case}.npy"), image)
    print(json.dumps(out))


def spawn(case, workdir, memory_mb, trace):
    command = [
        sys.executable,
        __file__,
        "--child",
        case,
        "--workdir",
        str(workdir),
        "--memory-mb",
        str(memory_mb),
    ]
    if trace:
        command.append("--trace")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def robust_std(values):
    values = values[np.isfinite(values)]
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def print_table(report):
    config = report["config"]
    print()
    print(
        f"{config['frames']} frames of {config['size']}x{config['size']} "
        f"({config['frames'] * config['size'] ** 2 / 1e6:.0f} Mpx-frames), "
        f"budget {config['memory_mb']:g} MiB, {report['machine']['cpus']} CPUs"
    )
    columns = [
        ("wall s", "wall_s", "7.2f"),
        ("Mpx-fr/s", "mpx_frames_per_s", "8.1f"),
        ("RSS MiB", "maxrss_mb", "7.0f"),
        ("noise ADU", "residual_noise_adu", "9.3f"),
        ("trail max", "max_abs_residual_on_trail_adu", "9.2f"),
        ("vs", None, ""),
        ("max|d| ADU", "max_abs_diff_adu", "10.4f"),
        ("/noise", "max_abs_diff_in_frame_noise", "7.4f"),
        ("x speed", "our_speedup", "7.1f"),
    ]
    header = f"{'case':<20}" + "".join(
        f" {name:>{int(fmt.split('.')[0]) if fmt else 18}}" for name, _, fmt in columns
    )
    print(header)
    print("-" * len(header))
    for case, res in report["results"].items():
        cells = ""
        for _, key, fmt in columns:
            if key is None:
                cells += f" {res.get('compared_with', ''):>18}"
            else:
                cells += f" {res.get(key, float('nan')):{fmt}}"
        print(f"{case:<20}{cells}")
    print()
    print(
        "noise ADU: robust std of (stack - noiseless scene); trail max: largest |stack - scene| "
        "along the satellite trail; max|d|: largest |this - counterpart| where every frame has "
        "data, /noise: in units of one frame's noise; x speed: counterpart's speed over this "
        "case's (ours / theirs: > 1 means ours is faster)"
    )


def frames_under_budget(memory_mb, height, width, channels=1):
    """Largest frame count :func:`combine` accepts under ``memory_mb``, and the format's limit.

    The budget must hold the outputs and a one-row chunk (the compiled kernel's per-thread
    buffers are a few hundred bytes); the counts are int16, so 32767 frames at most whatever
    the budget.
    """
    from astroflow.deepsky import stack

    budget = memory_mb * 2**20
    fixed = height * width * channels * 12 + stack._OVERHEAD_BYTES
    per_frame = width * channels * 4
    by_memory = int((budget - fixed) // per_frame)
    return {"by_memory": by_memory, "format_limit": int(np.iinfo(np.int16).max),
            "frames": min(by_memory, int(np.iinfo(np.int16).max))}  # fmt: skip


def budget_run(args):
    """Stack ``--budget-frames`` frames under ``--memory-mb`` with every method."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="astroflow-stack-budget-") as workdir:
        t0 = time.perf_counter()
        paths, _, _ = make_frames(workdir, args.budget_frames, args.size, args.seed)
        Path(workdir, "paths.json").write_text(json.dumps(paths))
        print(f"wrote {len(paths)} frames in {time.perf_counter() - t0:.1f} s", flush=True)
        for method in args.methods.split(","):
            case = f"ours_{method}"
            run = spawn(case, workdir, args.memory_mb, trace=False)
            run["mpx_frames_per_s"] = len(paths) * args.size**2 / 1e6 / run["wall_s"]
            results[case] = run
            print(json.dumps(run), flush=True)
    report = {
        "config": {"frames": args.budget_frames, "size": args.size, "memory_mb": args.memory_mb},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results,
        "frames_under_2gb": {
            f"{side}x{side}": frames_under_budget(2048, side, side) for side in (1024, 2048, 4096)
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["frames_under_2gb"], indent=2))
    print(f"results written to {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="number of frames (default 16)")
    parser.add_argument(
        "--size", type=int, default=1024, help="frame side in pixels (default 1024)"
    )
    parser.add_argument(
        "--memory-mb", type=float, default=512, help="memory budget, MiB (default 512)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "stack_results.json",
        help="JSON results file (default benchmarks/stack_results.json)",
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="timed runs per case, best kept (default 2)"
    )
    parser.add_argument("--trace", action="store_true", help="add tracemalloc runs of ours")
    parser.add_argument("--cases", help="comma-separated subset of the cases")
    parser.add_argument(
        "--budget-frames", type=int, help="stack this many frames under --memory-mb instead"
    )
    parser.add_argument(
        "--methods",
        default=",".join(OUR_METHODS),
        help="methods of the --budget-frames run (default all)",
    )
    parser.add_argument("--child", choices=CASES, dest="case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        child(args)
        return
    if args.budget_frames:
        budget_run(args)
        return

    import ccdproc

    cases = args.cases.split(",") if args.cases else list(CASES)
    siril_version = subprocess.run(
        ["siril-cli", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="astroflow-stack-bench-") as workdir:
        t0 = time.perf_counter()
        paths, scene, trail = make_frames(workdir, args.frames, args.size, args.seed)
        Path(workdir, "paths.json").write_text(json.dumps(paths))
        write_siril_copy(paths, Path(workdir, "siril"))
        took = time.perf_counter() - t0
        print(f"wrote {args.frames} frames of {args.size}x{args.size} in {took:.1f} s", flush=True)
        results, images = {}, {}
        for case in cases:
            print(f"running {case} ...", flush=True)
            # The cores may be shared: report the best of --repeat fresh processes.
            runs = [spawn(case, workdir, args.memory_mb, trace=False) for _ in range(args.repeat)]
            walls = [run["wall_s"] for run in runs]
            results[case] = {
                "wall_s": min(walls),
                "wall_s_runs": walls,
                "maxrss_mb": max(run["maxrss_mb"] for run in runs),
                "baseline_rss_mb": max(run["baseline_rss_mb"] for run in runs),
            }
            if args.trace and case.startswith("ours"):
                results[case]["tracemalloc_peak_mb"] = spawn(
                    case, workdir, args.memory_mb, trace=True
                )["tracemalloc_peak_mb"]
            images[case] = np.load(Path(workdir, f"{case}.npy"))

    # Frames 1 and N-2 have no data left of column 20 + 10 i and in the last 15 rows. There
    # ccdproc (np.ma.median/np.ma.std on NaN-holding data) returns NaN and Siril sees zeros,
    # so results are compared, and the trail judged, where every frame has data.
    covered = np.ones(scene.shape, dtype=bool)
    covered[:, : 20 + 10 * (args.frames - 2)] = False
    covered[-15:, :] = False
    mpx_frames = args.frames * args.size * args.size / 1e6
    for case, res in results.items():
        res["mpx_frames_per_s"] = mpx_frames / res["wall_s"]
        residual = images[case] - scene
        res["residual_noise_adu"] = robust_std(residual[covered])
        res["max_abs_residual_on_trail_adu"] = float(np.max(np.abs(residual[trail & covered])))
        other = COUNTERPARTS.get(case)
        if other in images:
            diff = np.abs(images[case].astype(np.float64) - images[other])[covered]
            res["compared_with"] = other
            res["max_abs_diff_adu"] = float(np.nanmax(diff))
            res["max_abs_diff_in_frame_noise"] = float(np.nanmax(diff)) / READ_NOISE
            res["pixels_differing_over_0.01_adu"] = int((diff > 0.01).sum())
            res["our_speedup"] = res["wall_s"] / results[other]["wall_s"]
    report = {
        "config": {
            "frames": args.frames,
            "size": args.size,
            "memory_mb": args.memory_mb,
            "seed": args.seed,
            "sky_adu": SKY,
            "read_noise_adu": READ_NOISE,
            "trail_adu": TRAIL_ADU,
            "pixels_compared": int(covered.sum()),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "ccdproc": ccdproc.__version__,
            "siril": siril_version,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print_table(report)
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
