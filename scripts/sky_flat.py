"""Entry script of rule sky_flat: a master flat from the lights, or a placeholder saying why not."""

import json
import warnings
from functools import partial
from pathlib import Path

from astroflow.calibration.calibrate import CalibrationWarning, calibrate_light
from astroflow.calibration.skyflat import SKY_FLAT_TYPE, SkyFlatRefused, sky_flat
from astroflow.deepsky.screening import screen_lights
from astroflow.io.atomic import atomic_write
from astroflow.io.fits import is_rejected, read_header, read_image, write_image, write_rejected
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
keys = snakemake.input.keys()
masters = {f"master_{kind}": read_image(snakemake.input[kind]) for kind in ("bias", "dark") if kind in keys}
hot = read_image(snakemake.input.hot_pixels)[0] > 0 if "hot_pixels" in keys else None
# duplicates, lights of another size than most, darks among the lights (as rule register)
excluded = screen_lights(
    [
        {"frame": Path(path).stem, "type": "light", "session": p.sessions[Path(path).stem],
         "source": p.sources["light"][Path(path).stem], "header": read_header(path)}
        for path in snakemake.input.lights
    ],
    snakemake.input.screening, p.owners, dark_fraction=p.dark_fraction, check_masters=True,
)
for frame, reason in excluded.items():
    log.warning("%s excluded: %s", frame, reason)
paths = [
    path for path in snakemake.input.lights
    if Path(path).stem not in excluded and not is_rejected(read_header(path))
]
log.info(
    "%d of %d lights usable (the others were rejected at ingest or excluded by screening)",
    len(paths), len(snakemake.input.lights),
)


def bias_dark_subtracted(path):
    data, header = read_image(path)
    with warnings.catch_warnings():
        # calibrate_light warns that the flat is missing: making it is this rule's job
        warnings.simplefilter("ignore", CalibrationWarning)
        return calibrate_light(data, header, **masters)[0]


pattern = read_header(paths[0]).get("BAYERPAT") if paths else None
try:
    result = sky_flat(
        [partial(bias_dark_subtracted, path) for path in paths],
        pattern,
        names=[Path(path).stem for path in paths],
        min_lights=p.min_lights,
        min_dither_px=p.min_dither_px,
        smooth_px=p.smooth_px,
        mask_sigma=p.mask_sigma,
        mask_grow_px=p.mask_grow_px,
        combine=p.combine,
        iterations=p.iterations,
        gradient_order=p.gradient_order,
        nebula_sigma=p.nebula_sigma,
        bad_pixels=hot,
        memory_mb=p.memory_mb,
    )
except SkyFlatRefused as refused:
    summary = refused.summary
    header = {"IMAGETYP": "MASTER FLAT", "FLATTYPE": SKY_FLAT_TYPE, "NCOMBINE": summary["n_lights"]}
    if summary["dither_px"] is not None:
        header["DITHERPX"] = round(summary["dither_px"], 3)
    write_rejected(snakemake.output.flat, f"sky flat refused: {refused.reason}", header)
    log.warning("sky flat refused: %s; the lights are calibrated without a flat", refused.reason)
else:
    summary = result.summary
    write_image(snakemake.output.flat, result.flat, result.header)
    log.info(
        "sky flat from %d lights, median shift between two lights %.2f px (largest %.2f px), %d pixels filled",
        summary["n_lights"], summary["dither_px"], summary["dither_max_px"], summary["filled_pixels"],
    )
text = json.dumps(summary, indent=2) + "\n"
atomic_write(snakemake.output.summary, lambda tmp: tmp.write_text(text))
