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


# Bookkeeping of a few seconds that reads small tables (the run's settings, the frames table and
# its plot, the runtime table): on a cluster each would wait for a node, and for the executor's
# next status check, far longer than it runs, so it runs where Snakemake runs (the login node).
localrules:
    effective_config,
    frames_table,
    quality_plot,
    planetary_frames_table,
    planetary_quality_plot,
    runtimes,


rule all:
    default_target: True
    input:
        all_outputs(),
