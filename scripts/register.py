"""Entry script of rule register: quality, reference choice and transforms of every light."""

from pathlib import Path

from astroflow.deepsky.register import register_frames
from astroflow.deepsky.screening import screen_lights
from astroflow.io.atomic import atomic_write
from astroflow.io.fits import is_rejected, read_header
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
lights = list(snakemake.input.lights)
# duplicates, lights of another size than most, darks among the lights (astroflow.deepsky.screening)
excluded = screen_lights(
    [
        {"frame": Path(path).stem, "type": "light", "session": p.sessions[Path(path).stem],
         "source": p.sources["light"][Path(path).stem], "header": read_header(path)}
        for path in lights
    ],
    snakemake.input.screening, p.owners, dark_fraction=p.dark_fraction,
)
table = register_frames(
    lights,
    [Path(path).stem for path in lights],
    excluded=excluded,
    reference=p.reference,
    model=p.model,
    threshold_sigma=p.threshold_sigma,
    min_stars=p.min_stars,
    min_star_fraction=p.min_star_fraction,
    max_fwhm_ratio=p.max_fwhm_ratio,
    weighting=p.weighting,
    outlier_sigma=p.outlier_sigma,
    keep_percent=p.keep_percent,
    tps_smoothing=p.tps_smoothing,
)
# How each light was flat-fielded (calibrate_light's FLATUSED) and its cosmic-ray pixels
# (NCOSMIC, where looked for), for frames.csv: the calibrated lights are temporary, and
# frames_table must not need them again.
flats, cosmic = {}, {}
for path in lights:
    header = read_header(path)
    flats[Path(path).stem] = "" if is_rejected(header) else header.get("FLATUSED", "")
    cosmic[Path(path).stem] = header.get("NCOSMIC")
table["flat"] = [flats.get(frame, "") for frame in table["frame"]]
# the session and filter of each light (common.smk: from the configuration, else the header)
table["session"] = table["frame"].map(p.sessions)
table["filter"] = table["frame"].map(p.filters)
table["cosmic_rays"] = [cosmic.get(frame) for frame in table["frame"]]
atomic_write(snakemake.output[0], lambda tmp: table.to_csv(tmp, index=False))
for row in table.itertuples():
    if row.status == "rejected":
        log.warning("%s rejected: %s", row.frame, row.reason)
log.info(
    "reference %s; %d of %d lights used",
    table.loc[table["reference"], "frame"].item(),
    int((table["status"] == "used").sum()),
    len(table),
)
