"""Entry script of rule master_dark (master dark, or master dark flat).

Darks of several exposures, temperatures or binnings (calibration.dark_exposure_tolerance,
dark_temperature_tolerance) give one master per group (astroflow.calibration.calibrate.
master_darks): the largest group's is the primary image of the file (what the hot pixel map
uses), the others image extensions, among which calibrate_light and master_flat choose
(match_dark).
"""

from astroflow.calibration.calibrate import master_darks
from astroflow.deepsky.screening import usable_paths
from astroflow.io.fits import read_image, write_images
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
bias = read_image(snakemake.input.bias) if "bias" in snakemake.input.keys() else None
masters = master_darks(
    usable_paths(snakemake.input.frames, snakemake.input.screening, log), bias, exposure_tolerance=p.exposure_tolerance,
    temperature_tolerance=p.temperature_tolerance, method=p.method, sigma_low=p.sigma_low,
    sigma_high=p.sigma_high, memory_mb=p.memory_mb,
)
write_images(snakemake.output.master, masters)
for n, (_, header) in enumerate(masters):
    log.info(
        "master %s %d of %d: %d frames, %s s, %s C, binning %s",
        snakemake.wildcards.kind, n + 1, len(masters), header["NCOMBINE"], header.get("EXPTIME"),
        header.get("CCD-TEMP", header.get("SET-TEMP")), header.get("XBINNING", 1),
    )
