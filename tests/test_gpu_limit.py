"""`--resources gpu=1` runs one GPU job at a time: the mechanism astroflow's GPU rules rely on.

astroflow has no GPU rule yet (training, deconvolution and star removal come later), so a small
workflow of GPU-declaring jobs stands in for them.
"""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SNAKEFILE = """
rule all:
    input:
        expand("done/{i}.txt", i=range(3)),


rule gpu_job:
    output:
        "done/{i}.txt",
    resources:
        gpu=1,
    shell:
        "date +%s.%N > {output}; sleep 1.5; date +%s.%N >> {output}"
"""


def intervals(tmp_path, gpus):
    work = tmp_path / f"gpus{gpus}"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "4", "--resources", f"gpu={gpus}"],
        cwd=work, check=True, capture_output=True,
    )
    spans = []
    for i in range(3):
        start, end = map(float, (work / "done" / f"{i}.txt").read_text().split())
        spans.append((start, end))
    return sorted(spans)


def overlaps(spans):
    return sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_one_gpu_means_one_gpu_job_at_a_time(tmp_path):
    assert overlaps(intervals(tmp_path, 1)) == 0
    # the same jobs overlap when two GPUs are declared: the limit above is real
    assert overlaps(intervals(tmp_path, 2)) >= 1
