"""Entry script of rule deconvolution_plot: a deconvolution's history -> deconvolution.png."""

import pandas as pd

from astroflow.io.atomic import atomic_write
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import deconvolution_plot

log = setup_logging(snakemake.log[0])
history = pd.read_csv(snakemake.input[0])
figure = deconvolution_plot(history, title=snakemake.wildcards.target)
atomic_write(snakemake.output[0], lambda tmp: figure.savefig(tmp, dpi=100))
log.info("%d iterations plotted", len(history))
