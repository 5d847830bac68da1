from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/ingest.smk"
include: "rules/calibrate.smk"
include: "rules/register.smk"
include: "rules/stack.smk"
include: "rules/drizzle.smk"
include: "rules/planetary.smk"
include: "rules/background.smk"
include: "rules/deconvolve.smk"
include: "rules/starless.smk"
include: "rules/training.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
