"""Entry script of rule simulate_project: render the simulated multi-night, multi-filter project."""

from pathlib import Path

from astroflow.simulation.project import simulate_project
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
# the truth folder sits inside the project folder, so it names the output folder without a setting
outdir = Path(snakemake.output.truth).parent
meta = simulate_project(outdir, **snakemake.params.settings)
log.info(
    "simulated project written to %s: nights %s, filters %s",
    outdir,
    ", ".join(meta["sessions"]),
    ", ".join(meta["filters"]),
)
