"""Entry script of rule frames_table: results/{target}/frames.csv."""

import pandas as pd

from astroflow.deepsky.frames import frames_table
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
table = frames_table(snakemake.input.frames, pd.read_csv(snakemake.input.registration))
table.to_csv(snakemake.output[0], index=False)
log.info("%d frames, %d rejected", len(table), int((table["status"] == "rejected").sum()))
lights = table[table["type"] == "light"]
log.info("flat of the lights: %s", lights["flat"].fillna("").value_counts().to_dict())
