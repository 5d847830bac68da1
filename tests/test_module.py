"""astroflow as a Snakemake module of a host workflow (``module`` + ``use rule *``)."""

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
from conftest import ROOT, snakemake

from astroflow.io.fits import read_header, read_image

pytestmark = pytest.mark.integration

HOST = """\
configfile: "host.yaml"


module astroflow:
    snakefile:
        "{snakefile}"
    config:
        config["astroflow"]


use rule * from astroflow as astroflow_*


rule all:
    default_target: True
    input:
        rules.astroflow_all.input,
"""


def star_field(path, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:200, :240]
    image = np.full(yy.shape, 0.1)
    for _ in range(40):
        y, x, peak = rng.uniform(5, 195), rng.uniform(5, 235), rng.uniform(0.1, 0.8)
        image += peak * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    image += rng.normal(0, 0.01, image.shape)
    iio.imwrite(path, np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16))


def test_host_workflow_imports_astroflow_as_a_module_and_runs_a_target(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    # the host lives elsewhere: its workflow.basedir is not astroflow's folder
    (host / "Snakefile").write_text(HOST.format(snakefile=ROOT / "Snakefile"))
    star_field(host / "field.png")
    config = {"astroflow": {"targets": {"field": {"kind": "image", "lights": "field.png"}}}}
    (host / "host.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(host, "--cores", "2", snakefile=host / "Snakefile")
    assert "astroflow_starless" in proc.stdout and "astroflow_deconvolve" in proc.stdout
    results = host / "results" / "field"
    image, _ = read_image(results / "image.fits")
    starless, _ = read_image(results / "starless.fits")
    assert starless.shape == image.shape == (200, 240)
    # the shipped weights were found in astroflow's folder, not the host's
    assert not (host / "models").exists()
    assert read_header(results / "deconvolved.fits")["NAXIS1"] == 240
    assert "Nothing to be done" in snakemake(host, "-n", snakefile=host / "Snakefile").stdout
