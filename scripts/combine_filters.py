"""Entry script of rule combine_filters: the filter stacks of a target -> stack.{fits,tif,png}.

Palette LRGB, SHO or HOO: one colour image (astroflow.deepsky.palette.combine_palette). Palette
none: stack.fits is the stack of the filter with the most frames combined (NCOMBINE; the first
in the configuration on a tie), every filter's own stack staying under filters/.
"""

from astroflow.deepsky.palette import combine_palette
from astroflow.io.export import save_preview_png, save_tiff16, save_tiff32
from astroflow.io.fits import derived_header, read_image, write_image
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
paths = {name: snakemake.input[name] for name in snakemake.input.keys()}
stacks = {name: read_image(path) for name, path in paths.items()}
if p.palette == "none":
    best = max(stacks, key=lambda f: (int(stacks[f][1].get("NCOMBINE", 0)), -list(stacks).index(f)))
    image, source = stacks[best]
    history = [f"astroflow combine_filters: palette none, the {best} stack ({', '.join(stacks)} in filters/)"]
    header = derived_header(source, history)
    log.info("palette none: stack.fits is the %s stack (%s frames)", best, source.get("NCOMBINE"))
else:
    planes = {}
    for name, (data, _) in stacks.items():
        if data.ndim != 2:
            raise ValueError(f"{paths[name]}: a palette combines mono filter stacks, not shape {data.shape}")
        planes[name] = data
    image, used = combine_palette(planes, p.palette)
    mapping = ", ".join(f"{channel} {name}" for channel, name in used.items())
    first = stacks[used.get("luminance", used["red"])][1]
    header = derived_header(first, [f"astroflow combine_filters: palette {p.palette}: {mapping}"])
    header["NCOMBINE"] = (
        sum(int(stacks[f][1].get("NCOMBINE", 0)) for f in set(used.values())),
        "frames combined over the filters used",
    )
    header["FILTER"] = ("+".join(dict.fromkeys(used.values())), "filters of the colour image")
    header["PALETTE"] = (p.palette, "filter to channel mapping (astroflow.deepsky.palette)")
    for name in stacks.keys() - set(used.values()):
        log.warning("palette %s: the %s stack is not used (in filters/ only)", p.palette, name)
    log.info("palette %s: %s", p.palette, mapping)
write_image(snakemake.output.fits, image, header)
save_tiff16(snakemake.output.tif, image, description="astroflow stack")
save_tiff32(snakemake.output.tif32, image, description="astroflow stack")
save_preview_png(snakemake.output.png, image, **p.preview)
