"""Entry script of rule register: quality, reference choice and transforms of every light."""

from pathlib import Path

from astroflow.deepsky.register import register_frames
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
table = register_frames(
    list(snakemake.input),
    [Path(path).stem for path in snakemake.input],
    reference=p.reference,
    model=p.model,
    threshold_sigma=p.threshold_sigma,
    min_stars=p.min_stars,
    min_star_fraction=p.min_star_fraction,
    max_fwhm_ratio=p.max_fwhm_ratio,
    weighting=p.weighting,
)
table.to_csv(snakemake.output[0], index=False)
for row in table.itertuples():
    if row.status == "rejected":
        log.warning("%s rejected: %s", row.frame, row.reason)
log.info(
    "reference %s; %d of %d lights used",
    table.loc[table["reference"], "frame"].item(),
    int((table["status"] == "used").sum()),
    len(table),
)
