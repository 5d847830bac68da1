# Drizzle integration of deep-sky targets (drizzle.enabled): the calibrated lights dropped through
# their registration onto a finer grid, outliers masked against the rejection stack. See
# scripts/astroflow/deepsky/drizzle_stack.py.


rule drizzle:
    input:
        lights=drizzle_lights,
        registration="results/{target}/registration.csv",
        stack="results/{target}/stack.fits",
    output:
        fits="results/{target}/drizzle.fits",
        weight="results/{target}/drizzle_weight.fits",
        tif="results/{target}/drizzle.tif",
        tif32="results/{target}/drizzle_f32.tif",
        png=report(
            "results/{target}/drizzle.png",
            caption="../report/drizzle.rst",
            category="{target}",
        ),
    log:
        "logs/drizzle/{target}.log",
    benchmark:
        "benchmarks/drizzle/{target}.tsv"
    wildcard_constraints:
        target=SINGLE_FILTER_TARGETS,
    conda:
        "../envs/drizzle.yaml"
    threads: 1
    resources:
        mem_mb=drizzle_memory,
        runtime=runtime_estimate(10, 20),
    params:
        code=library_code("drizzle_integration.py"),
        scale=DRIZZLE["scale"],
        pixfrac=DRIZZLE["pixfrac"],
        kernel=DRIZZLE["kernel"],
        bayer=DRIZZLE["bayer"],
        outliers=DRIZZLE["outliers"],
        preview=config["preview"],
    script:
        "../scripts/drizzle_integration.py"


# A target with several filters: each filter's lights drizzled against that filter's stack, and
# the filter drizzles combined like the filter stacks (palette) into drizzle.fits.
use rule drizzle as drizzle_filter with:
    input:
        lights=filter_drizzle_lights,
        registration="results/{target}/registration.csv",
        stack="results/{target}/filters/{filter}/stack.fits",
    output:
        fits="results/{target}/filters/{filter}/drizzle.fits",
        weight="results/{target}/filters/{filter}/drizzle_weight.fits",
        tif="results/{target}/filters/{filter}/drizzle.tif",
        tif32="results/{target}/filters/{filter}/drizzle_f32.tif",
        png=report(
            "results/{target}/filters/{filter}/drizzle.png",
            caption="../report/drizzle.rst",
            category="{target}",
            subcategory="{filter}",
        ),
    log:
        "logs/drizzle/{target}/{filter}.log",
    benchmark:
        "benchmarks/drizzle/{target}/{filter}.tsv"
    wildcard_constraints:
        target=MULTI_FILTER_TARGETS,


use rule combine_filters as combine_drizzles with:
    input:
        unpack(filter_drizzles),
    output:
        fits="results/{target}/drizzle.fits",
        tif="results/{target}/drizzle.tif",
        tif32="results/{target}/drizzle_f32.tif",
        png=report(
            "results/{target}/drizzle.png",
            caption="../report/drizzle.rst",
            category="{target}",
        ),
    log:
        "logs/combine_drizzles/{target}.log",
