"""Entry script of rule image_ingest: one finished image -> results/{target}/image.{fits,png}."""

import numpy as np

from astroflow.io.export import save_linear_png, save_preview_png
from astroflow.io.fits import data_unit, write_image
from astroflow.io.imagefile import choose_encoding, display_scale, read_finished_header, read_finished_image
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.provenance import sha256_file

log = setup_logging(snakemake.log[0])
path = snakemake.input[0]
image, bits = read_finished_image(path, memory_mb=snakemake.params.memory_mb)
encoding = choose_encoding(image, bits, snakemake.params.encoding)
if encoding == "display":
    image = image / display_scale(bits)
finite = np.isfinite(image)
log.info(
    "%s: %s, %d-bit, %s data, %d NaN pixels",
    path,
    "x".join(map(str, image.shape)),
    bits,
    encoding,
    int((~finite).sum()),
)
# The observation the file records (object, exposure, dates, history of its processing).
header = read_finished_header(path)
header.update(
    {
        "AFENCODE": encoding,
        "AFBITS": bits,
        "BUNIT": data_unit(encoding),
        "SRCFILE": str(path),
        "SRCSHA": sha256_file(path),
    }
)
write_image(snakemake.output.fits, image, header, [f"astroflow image_ingest: {encoding} data from {path}"])
if encoding == "linear":
    save_preview_png(snakemake.output.png, image)
else:
    save_linear_png(snakemake.output.png, image, levels=(0.0, 1.0))
