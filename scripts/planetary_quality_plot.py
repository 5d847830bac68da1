"""Entry script of rule planetary_quality_plot: frames.csv -> results/{target}/quality.png."""

import pandas as pd

from astroflow.io.atomic import atomic_write
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import planetary_quality_plot

log = setup_logging(snakemake.log[0])
frames = pd.read_csv(snakemake.input[0], keep_default_na=False, na_values=[""])
figure = planetary_quality_plot(frames, title=snakemake.wildcards.target)
atomic_write(snakemake.output[0], lambda tmp: figure.savefig(tmp, dpi=100))
log.info("%d frames plotted", len(frames))
