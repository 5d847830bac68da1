"""Entry script of rule screen_frames: results/{target}/screening.csv (see astroflow.deepsky.screening)."""

from pathlib import Path

from astroflow.deepsky.screening import screen_frames
from astroflow.io.atomic import atomic_write
from astroflow.io.fits import read_header
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
records = [
    {
        "frame": Path(path).stem,
        "type": Path(path).parent.name,
        "session": p.sessions[Path(path).stem],
        "source": p.sources[Path(path).parent.name][Path(path).stem],
        "header": read_header(path),
    }
    for path in snakemake.input.frames
]
# the calibration frames only: the lights are screened in register and sky_flat
table = screen_frames(records, p.owners)
atomic_write(snakemake.output[0], lambda tmp: table.to_csv(tmp, index=False))
for row in table[table["status"] == "rejected"].itertuples():
    log.warning("%s %s excluded: %s", row.type, row.frame, row.reason)
log.info("%d frames screened, %d excluded", len(table), int((table["status"] == "rejected").sum()))
