"""Entry script of rule master_dark (master dark, or master dark flat).

Darks of several exposures, temperatures or binnings (calibration.dark_exposure_tolerance,
dark_temperature_tolerance) give one master per group: the largest group's is the primary image
of the file (what the hot pixel map and the flats use), the others image extensions, among which
calibrate_light chooses per light (astroflow.calibration.calibrate.match_dark).
"""

from astroflow.calibration.calibrate import dark_groups, master_dark
from astroflow.io.fits import is_rejected, read_header, read_image, write_image, write_images
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
bias = read_image(snakemake.input.bias) if "bias" in snakemake.input.keys() else None
paths = list(snakemake.input.frames)
usable = [path for path in paths if not is_rejected(read_header(path))]
groups = dark_groups(
    [read_header(path) for path in usable],
    exposure_tolerance=p.exposure_tolerance,
    temperature_tolerance=p.temperature_tolerance,
)


def combined(group_paths):
    return master_dark(
        group_paths, bias, method=p.method, sigma_low=p.sigma_low,
        sigma_high=p.sigma_high, memory_mb=p.memory_mb,
    )


if len(groups) <= 1:
    data, header = combined(paths)
    write_image(snakemake.output.master, data, header)
    log.info("master %s: %d frames, %s s", snakemake.wildcards.kind, header["NCOMBINE"], header.get("EXPTIME"))
else:
    masters = []
    for n, group in enumerate(groups):
        data, header = combined([usable[i] for i in group])
        header["DARKGRP"] = (n, "exposure/temperature/binning group of the darks")
        masters.append((data, header))
        log.info(
            "master %s group %d: %d frames, %s s, %s C, binning %s",
            snakemake.wildcards.kind, n, header["NCOMBINE"], header.get("EXPTIME"),
            header.get("CCD-TEMP", header.get("SET-TEMP")), header.get("XBINNING", 1),
        )
    write_images(snakemake.output.master, masters)
