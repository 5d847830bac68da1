"""Entry script of rule planetary_frames_table: results/{target}/frames.csv of a planetary target."""

import pandas as pd

from astroflow.io.atomic import atomic_write
from astroflow.planetary.passes import frames_table
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
table = frames_table(
    pd.read_csv(snakemake.input.table, keep_default_na=False, na_values=[""]),
    pd.read_csv(snakemake.input.usage),
)
atomic_write(snakemake.output[0], lambda tmp: table.to_csv(tmp, index=False))
counts = table["status"].value_counts().to_dict()
log.info("%d frames: %s", len(table), counts)
