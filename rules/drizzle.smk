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
        target=DEEP_SKY_TARGETS,
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
