"""Entry script of rule deconvolution_plot: a deconvolution's history -> deconvolution.png."""

import pandas as pd

from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import deconvolution_plot

log = setup_logging(snakemake.log[0])
history = pd.read_csv(snakemake.input[0])
deconvolution_plot(history, title=snakemake.wildcards.target).savefig(snakemake.output[0], dpi=100)
log.info("%d iterations plotted", len(history))
