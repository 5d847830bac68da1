"""Entry script of rule ingest_frame: one source frame to a float32 FITS with provenance."""

from astroflow.io.fits import REASON_KEY, is_rejected
from astroflow.io.ingest import ingest_frame
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
header = ingest_frame(snakemake.input[0], snakemake.params.frame_type, snakemake.output[0])
if is_rejected(header):
    log.warning("%s excluded: %s", snakemake.input[0], header[REASON_KEY])
else:
    log.info("%s ingested as %s", snakemake.input[0], snakemake.params.frame_type)
