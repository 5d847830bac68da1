"""Entry script of rule quality_plot: frames.csv -> results/{target}/quality.png."""

import pandas as pd

from astroflow.io.atomic import atomic_write
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import quality_plot

log = setup_logging(snakemake.log[0])
frames = pd.read_csv(snakemake.input[0])
figure = quality_plot(frames, title=snakemake.wildcards.target)
atomic_write(snakemake.output[0], lambda tmp: figure.savefig(tmp, dpi=100))
lights = frames[frames["type"] == "light"]
log.info("%d lights, %d rejected", len(lights), int((lights["status"] == "rejected").sum()))
