"""Entry script of rule planetary_sharpen: stack.fits -> sharpened.{fits,tif,png}, sharpened_f32.tif.

A trous wavelet sharpening.
"""

from astroflow.io.export import linear_png_levels, save_linear_png, save_tiff16, save_tiff32
from astroflow.io.fits import derived_header, read_image, write_image
from astroflow.planetary.wavelets import wavelet_sharpen
from astroflow.workflow.logs import setup_logging

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
write_image(snakemake.output.fits, sharpened, derived_header(header, history))
save_tiff16(snakemake.output.tif, sharpened, description="astroflow sharpened lucky-imaging stack")
save_tiff32(snakemake.output.tif32, sharpened, description="astroflow sharpened lucky-imaging stack")
# The same display levels as stack.png, so that the two previews compare.
save_linear_png(snakemake.output.png, sharpened, levels=linear_png_levels(stack))
log.info("sharpened with gains %s", list(p.gains))
