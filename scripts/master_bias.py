"""Entry script of rule master_bias."""

from astroflow.calibration.calibrate import master_bias
from astroflow.deepsky.screening import usable_paths
from astroflow.io.fits import write_image
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
frames = usable_paths(snakemake.input.frames, snakemake.input.screening, log)
data, header = master_bias(
    frames, method=p.method, sigma_low=p.sigma_low, sigma_high=p.sigma_high,
    memory_mb=p.memory_mb,
)
write_image(snakemake.output[0], data, header)
log.info("master bias from %d frames (%d skipped)", header["NCOMBINE"], header["NSKIPPED"])
