"""Entry script of rule star_stamps: real star stamps for the synthetic training data."""

from astroflow.simulation.realstars import build_stamp_library
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
library = build_stamp_library(sbig=p.sbig or None, seestar=p.seestar or None)
library.save(snakemake.output[0])
log.info("star stamps: %s", library.summary())
