"""Entry script of rule simulate_night: render the simulated night with its truth."""

from astroflow.logs import setup_logging
from astroflow.simulate import simulate_night

log = setup_logging(snakemake.log[0])
simulate_night(snakemake.params.outdir, **snakemake.params.settings)
log.info("simulated night written to %s", snakemake.params.outdir)
