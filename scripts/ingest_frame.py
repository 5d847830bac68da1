"""Entry script of rule ingest_frame: one source frame to a float32 FITS with provenance."""

from astroflow.io.fits import REASON_KEY, is_rejected
from astroflow.io.ingest import ingest_frame
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
header = ingest_frame(
    snakemake.input[0],
    snakemake.params.frame_type,
    snakemake.output[0],
    memory_mb=snakemake.params.memory_mb,
    decode_timeout_s=snakemake.params.decode_timeout_s,
)
if is_rejected(header):
    log.warning("%s excluded: %s", snakemake.input[0], header[REASON_KEY])
else:
    log.info("%s ingested as %s", snakemake.input[0], snakemake.params.frame_type)
