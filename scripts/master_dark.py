"""Entry script of rule master_dark (master dark, or master dark flat)."""

from astroflow.calibration.calibrate import master_dark
from astroflow.io.fits import read_image, write_image
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
bias = read_image(snakemake.input.bias) if "bias" in snakemake.input.keys() else None
data, header = master_dark(
    snakemake.input.frames, bias, method=p.method, sigma_low=p.sigma_low,
    sigma_high=p.sigma_high, memory_mb=p.memory_mb,
)
write_image(snakemake.output.master, data, header)
log.info("master %s: %d frames, %.1f s", snakemake.wildcards.kind, header["NCOMBINE"], header["EXPTIME"])
