"""Entry script of rule master_flat.

Flats of several filters (their FILTER, or CAFOS' INSFLNAM) give one master per filter
(astroflow.calibration.calibrate.master_flats): the largest group's is the primary image, the
others image extensions, among which calibrate_light chooses by each light's filter. With
several master darks (rule master_dark), each group of flats gets the one that matches it.
"""

from astroflow.calibration.calibrate import master_flats
from astroflow.deepsky.screening import usable_paths
from astroflow.io.fits import read_headers, read_image, write_images
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
keys = snakemake.input.keys()
bias = read_image(snakemake.input.bias) if "bias" in keys else None
darks = []
if "dark" in keys:
    darks = [read_image(snakemake.input.dark, hdu=i) for i in range(len(read_headers(snakemake.input.dark)))]
frames = usable_paths(snakemake.input.frames, snakemake.input.screening, log)
masters = master_flats(
    frames, bias, darks, exposure_tolerance=p.exposure_tolerance,
    temperature_tolerance=p.temperature_tolerance, method=p.method, sigma_low=p.sigma_low,
    sigma_high=p.sigma_high, memory_mb=p.memory_mb,
)
write_images(snakemake.output[0], masters)
for _, header in masters:
    log.info("master flat %s from %d frames", header.get("FILTER", ""), header["NCOMBINE"])
