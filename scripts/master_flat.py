"""Entry script of rule master_flat.

Flats of several filters (their FILTER, or CAFOS' INSFLNAM) give one master per filter: the
largest group's is the primary image, the others image extensions, among which calibrate_light
chooses by each light's filter. With several master darks (rule master_dark), each group of
flats gets the one that matches its exposure.
"""

from astroflow.calibration.calibrate import flat_groups, master_flat, match_dark
from astroflow.io.fits import is_rejected, read_header, read_headers, read_image, write_image, write_images
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
keys = snakemake.input.keys()
bias = read_image(snakemake.input.bias) if "bias" in keys else None
dark_headers = read_headers(snakemake.input.dark) if "dark" in keys else []
paths = list(snakemake.input.frames)
usable = [path for path in paths if not is_rejected(read_header(path))]
headers = [read_header(path) for path in usable]
groups = flat_groups(headers)


def dark_for(first):
    if not dark_headers:
        return None
    index = 0
    if len(dark_headers) > 1:
        index, note = match_dark(
            first, dark_headers, exposure_tolerance=p.exposure_tolerance,
            temperature_tolerance=p.temperature_tolerance,
        )
        log.info("flats: %s", note)
    return read_image(snakemake.input.dark, hdu=index)


def combined(group_paths, first):
    return master_flat(
        group_paths, bias, dark_for(first), method=p.method, sigma_low=p.sigma_low,
        sigma_high=p.sigma_high, memory_mb=p.memory_mb,
    )


if len(groups) <= 1:
    data, header = combined(paths, headers[0] if headers else {})
    write_image(snakemake.output[0], data, header)
    log.info("master flat from %d frames", header["NCOMBINE"])
else:
    masters = []
    for name, group in groups.items():
        data, header = combined([usable[i] for i in group], headers[group[0]])
        header["FILTER"] = (name, "filter of the flats")
        masters.append((data, header))
        log.info("master flat %s from %d frames", name, header["NCOMBINE"])
    write_images(snakemake.output[0], masters)
