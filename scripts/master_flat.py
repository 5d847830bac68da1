"""Entry script of rule master_flat."""

from astroflow.calibration.calibrate import master_flat
from astroflow.io.fits import read_image, write_image
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
keys = snakemake.input.keys()
bias = read_image(snakemake.input.bias) if "bias" in keys else None
dark = read_image(snakemake.input.dark) if "dark" in keys else None
data, header = master_flat(
    snakemake.input.frames, bias, dark, method=p.method, sigma_low=p.sigma_low,
    sigma_high=p.sigma_high, memory_mb=p.memory_mb,
)
write_image(snakemake.output[0], data, header)
log.info("master flat from %d frames", header["NCOMBINE"])
