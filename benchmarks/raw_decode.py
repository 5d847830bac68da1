"""What decoding a RAW file in a child process costs (astroflow.io.limits.call_in_process).

LibRaw decodes each RAW file in a forked child so that a decoder that loops or crashes costs
one frame (issue 15). This times :func:`astroflow.io.ingest.read_frame` on a simulated
uncompressed DNG of ``--size`` px (default 6000x4000, a 24 Mpx DSLR) against the same decoding
in the calling process (LibRaw, then the float32 copy), best and median of ``--repeat`` runs.

    python benchmarks/raw_decode.py [--size 6000x4000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from astroflow.io import ingest
from astroflow.simulation.night import write_dng


def timed(func, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="6000x4000", help="mosaic WxH, px")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "light.dng"
        rng = np.random.default_rng(0)
        write_dng(path, rng.integers(256, 16000, (height, width), dtype=np.uint16), exposure_s=30.0,
                  timestamp=dt.datetime(2024, 3, 1, 22, 0, 0), black_level_adu=256)
        ingest.read_frame(path)  # warm the page cache
        child = timed(lambda: ingest.read_frame(path), args.repeat)
        here = timed(lambda: ingest._decode_raw(str(path), ingest.MEMORY_MB)[0].astype(np.float32), args.repeat)
    print(f"{width}x{height} DNG, {args.repeat} runs, best / median s")
    print(f"read_frame (LibRaw in a child): {child[0]:.3f} / {child[1]:.3f}")
    print(f"LibRaw in this process:         {here[0]:.3f} / {here[1]:.3f}")
    print(f"child process cost:             {child[0] - here[0]:+.3f} s best, {child[1] - here[1]:+.3f} s median")


if __name__ == "__main__":
    main()
