"""Entry script of rule quality_plot: frames.csv -> results/{target}/quality.png."""

import pandas as pd

from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import quality_plot

log = setup_logging(snakemake.log[0])
frames = pd.read_csv(snakemake.input[0])
quality_plot(frames, title=snakemake.wildcards.target).savefig(snakemake.output[0], dpi=100)
lights = frames[frames["type"] == "light"]
log.info("%d lights, %d rejected", len(lights), int((lights["status"] == "rejected").sum()))
