"""Entry script of rule planetary_sharpen: stack.fits -> sharpened.{fits,png} (a trous wavelets)."""

from astroflow.io.export import linear_png_levels, save_linear_png
from astroflow.io.fits import read_image, write_image
from astroflow.workflow.logs import setup_logging
from astroflow.planetary.wavelets import wavelet_sharpen

log = setup_logging(snakemake.log[0])
p = snakemake.params
if len(p.denoise) != len(p.gains):
    raise ValueError(
        f"planetary.sharpen_denoise has {len(p.denoise)} entries but sharpen_gains has "
        f"{len(p.gains)}: give one of each per wavelet layer"
    )
stack, header = read_image(snakemake.input[0])
sharpened = wavelet_sharpen(stack, list(p.gains), denoise=list(p.denoise))
history = [f"astroflow planetary_sharpen: a trous gains {list(p.gains)}, denoise {list(p.denoise)}"]
write_image(snakemake.output.fits, sharpened, header, history)
# The same display levels as stack.png, so that the two previews compare.
save_linear_png(snakemake.output.png, sharpened, levels=linear_png_levels(stack))
log.info("sharpened with gains %s", list(p.gains))
