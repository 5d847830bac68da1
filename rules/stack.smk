# One stack per target; a target with several filters gets one per filter (stack_filter),
# combined into stack.fits by combine_filters (astroflow.deepsky.palette).


rule stack:
    input:
        frames=registered_lights,
        registration="results/{target}/registration.csv",
    output:
        fits="results/{target}/stack.fits",
        rejection="results/{target}/rejection.fits",
        rejection_low="results/{target}/rejection_low.fits",
        rejection_high="results/{target}/rejection_high.fits",
        tif="results/{target}/stack.tif",
        tif32="results/{target}/stack_f32.tif",
        png=report(
            "results/{target}/stack.png",
            caption="../report/stack.rst",
            category="{target}",
        ),
        rejection_png=report(
            "results/{target}/rejection.png",
            caption="../report/rejection.rst",
            category="{target}",
        ),
        rejection_low_png=report(
            "results/{target}/rejection_low.png",
            caption="../report/rejection_low.rst",
            category="{target}",
        ),
        rejection_high_png=report(
            "results/{target}/rejection_high.png",
            caption="../report/rejection_high.rst",
            category="{target}",
        ),
    log:
        "logs/stack/{target}.log",
    benchmark:
        "benchmarks/stack/{target}.tsv"
    wildcard_constraints:
        target=SINGLE_FILTER_TARGETS,
    conda:
        "../envs/stack.yaml"
    threads: config["stacking"]["threads"]
    resources:
        mem_mb=stack_memory,
        runtime=runtime_estimate(10, 10),
    params:
        code=library_code("stack.py"),
        method=config["stacking"]["method"],
        sigma_low=config["stacking"]["sigma_low"],
        sigma_high=config["stacking"]["sigma_high"],
        max_iters=config["stacking"]["max_iters"],
        percentile_low=config["stacking"]["percentile_low"],
        percentile_high=config["stacking"]["percentile_high"],
        gesd_outliers=config["stacking"]["gesd_outliers"],
        gesd_alpha=config["stacking"]["gesd_alpha"],
        normalize=config["stacking"]["normalize"],
        memory_mb=config["stacking"]["memory_mb"],
        preview=config["preview"],
    script:
        "../scripts/stack.py"


# The same rule per filter: every stacking setting (params) of rule stack applies; its outputs
# are listed again here, so an output added to rule stack must be added here too.
use rule stack as stack_filter with:
    input:
        frames=filter_registered_lights,
        registration="results/{target}/registration.csv",
    output:
        fits="results/{target}/filters/{filter}/stack.fits",
        rejection="results/{target}/filters/{filter}/rejection.fits",
        rejection_low="results/{target}/filters/{filter}/rejection_low.fits",
        rejection_high="results/{target}/filters/{filter}/rejection_high.fits",
        tif="results/{target}/filters/{filter}/stack.tif",
        tif32="results/{target}/filters/{filter}/stack_f32.tif",
        png=report(
            "results/{target}/filters/{filter}/stack.png",
            caption="../report/stack.rst",
            category="{target}",
            subcategory="{filter}",
        ),
        rejection_png=report(
            "results/{target}/filters/{filter}/rejection.png",
            caption="../report/rejection.rst",
            category="{target}",
            subcategory="{filter}",
        ),
        rejection_low_png=report(
            "results/{target}/filters/{filter}/rejection_low.png",
            caption="../report/rejection_low.rst",
            category="{target}",
            subcategory="{filter}",
        ),
        rejection_high_png=report(
            "results/{target}/filters/{filter}/rejection_high.png",
            caption="../report/rejection_high.rst",
            category="{target}",
            subcategory="{filter}",
        ),
    log:
        "logs/stack_filter/{target}/{filter}.log",
    benchmark:
        "benchmarks/stack_filter/{target}/{filter}.tsv"
    wildcard_constraints:
        target=MULTI_FILTER_TARGETS,


rule combine_filters:
    input:
        unpack(filter_stacks),
    output:
        fits="results/{target}/stack.fits",
        tif="results/{target}/stack.tif",
        tif32="results/{target}/stack_f32.tif",
        png=report(
            "results/{target}/stack.png",
            caption="../report/stack.rst",
            category="{target}",
        ),
    log:
        "logs/combine_filters/{target}.log",
    wildcard_constraints:
        target=MULTI_FILTER_TARGETS,
    conda:
        "../envs/stack.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(800, 6),
        runtime=runtime_estimate(5, 10),
    params:
        code=library_code("combine_filters.py"),
        palette=palette,
        preview=config["preview"],
    script:
        "../scripts/combine_filters.py"
