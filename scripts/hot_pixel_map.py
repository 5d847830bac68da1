"""Entry script of rule hot_pixel_map: hot pixels of the master dark, for cosmetic correction."""

from astroflow.calibration.calibrate import hot_pixel_mask
from astroflow.io.fits import read_image, write_image
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
dark, header = read_image(snakemake.input[0])
mask = hot_pixel_mask(dark, header.get("BAYERPAT"), sigma=snakemake.params.sigma)
write_image(
    snakemake.output[0], mask, {"IMAGETYP": "HOT PIXEL MAP", "NHOT": int(mask.sum())},
    [f"astroflow hot_pixel_mask: master dark, {snakemake.params.sigma} sigma"],
)
log.info("%d hot pixels (%.3f%%)", mask.sum(), 100 * mask.mean())
