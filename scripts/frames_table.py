"""Entry script of rule frames_table: results/{target}/frames.csv."""

import pandas as pd

from astroflow.deepsky.frames import frames_table
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
registration = pd.read_csv(snakemake.input.registration).drop(columns=["session", "filter"], errors="ignore")
table = frames_table(snakemake.input.frames, registration)
# every frame's session, and each light's filter (common.smk decides both)
table.insert(1, "session", table["frame"].map(snakemake.params.sessions))
table.insert(2, "filter", table["frame"].map(snakemake.params.filters))
table.to_csv(snakemake.output[0], index=False)
log.info("%d frames, %d rejected", len(table), int((table["status"] == "rejected").sum()))
lights = table[table["type"] == "light"]
log.info("flat of the lights: %s", lights["flat"].fillna("").value_counts().to_dict())
