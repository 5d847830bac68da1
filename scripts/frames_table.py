"""Entry script of rule frames_table: results/{target}/frames.csv."""

from pathlib import Path

import pandas as pd

from astroflow.deepsky.frames import frames_table
from astroflow.deepsky.palette import canonical_filter, header_filter
from astroflow.io.atomic import atomic_write
from astroflow.io.fits import read_header
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
registration = pd.read_csv(snakemake.input.registration).drop(columns=["session", "filter"], errors="ignore")
screening = pd.read_csv(snakemake.input.screening, dtype=str, keep_default_na=False)
table = frames_table(snakemake.input.frames, registration, screening, sources=snakemake.params.sources)
# every frame's session, each light's filter (both decided in common.smk), and the filter the
# headers of flats record (they are matched to the lights by it)
filters = dict(snakemake.params.filters)
for path in snakemake.input.frames:
    if Path(path).parent.name in ("flat", "darkflat"):
        recorded = header_filter(read_header(path))
        if recorded:
            filters[Path(path).stem] = canonical_filter(recorded)
table.insert(1, "session", table["frame"].map(snakemake.params.sessions))
table.insert(2, "filter", table["frame"].map(filters))
atomic_write(snakemake.output[0], lambda tmp: table.to_csv(tmp, index=False))
log.info("%d frames, %d rejected", len(table), int((table["status"] == "rejected").sum()))
lights = table[table["type"] == "light"]
log.info("flat of the lights: %s", lights["flat"].fillna("").value_counts().to_dict())
log.info("lights per session and filter: %s", lights.groupby(["session", "filter"]).size().to_dict())
