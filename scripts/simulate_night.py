"""Entry script of rule simulate_night: render the simulated night with its truth."""

from pathlib import Path

from astroflow.simulation.night import simulate_night
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
# the truth folder sits inside the night folder, so it names the output folder without a setting
outdir = Path(snakemake.output.truth).parent
simulate_night(outdir, **snakemake.params.settings)
log.info("simulated night written to %s", outdir)
