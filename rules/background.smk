# Gradient removal and colour calibration after stacking, for every target kind: the input of
# deconvolution and star removal. See scripts/astroflow/restoration/background.py and colour.py.


rule background:
    input:
        unpack(background_flatnet),
        image=background_input,
    output:
        background="results/{target}/background.fits",
        fits="results/{target}/corrected.fits",
        tif="results/{target}/corrected.tif",
        tif32="results/{target}/corrected_f32.tif",
        png=report(
            "results/{target}/corrected.png",
            caption="../report/corrected.rst",
            category="{target}",
        ),
    log:
        "logs/background/{target}.log",
    benchmark:
        "benchmarks/background/{target}.tsv"
    conda:
        "../envs/starless.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(800, 30),
        runtime=runtime_estimate(5, 30),
    params:
        code=library_code("background.py"),
        background=background_settings,
        colour=colour_settings,
        preview=config["preview"],
    script:
        "../scripts/background.py"
