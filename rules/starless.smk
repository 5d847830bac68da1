# Star removal (every target kind) and the image target kind: one finished image in.


rule image_ingest:
    input:
        image_source,
    output:
        fits="results/{target}/image.fits",
        png=report(
            "results/{target}/image.png",
            caption="../report/image.rst",
            category="{target}",
        ),
    log:
        "logs/image_ingest/{target}.log",
    wildcard_constraints:
        target=IMAGE_TARGETS,
    conda:
        "../envs/starless.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(500, 20),
        runtime=5,
    params:
        code=library_code("image_ingest.py"),
        encoding=image_encoding,
        memory_mb=config["ingest"]["memory_mb"],
    script:
        "../scripts/image_ingest.py"


rule starless:
    input:
        image=starless_input,
        weights=starless_weights,
    output:
        fits="results/{target}/starless.fits",
        tif="results/{target}/starless.tif",
        tif32="results/{target}/starless_f32.tif",
        png=report(
            "results/{target}/starless.png",
            caption="../report/starless.rst",
            category="{target}",
        ),
        stars_fits="results/{target}/stars.fits",
        stars_tif="results/{target}/stars.tif",
        stars_tif32="results/{target}/stars_f32.tif",
        stars_png=report(
            "results/{target}/stars.png",
            caption="../report/stars.rst",
            category="{target}",
        ),
        crops=report(
            "results/{target}/starless_crops.png",
            caption="../report/starless_crops.rst",
            category="{target}",
        ),
    log:
        "logs/starless/{target}.log",
    benchmark:
        "benchmarks/starless/{target}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_estimate(1500, 40),
        runtime=runtime_estimate(10, 60),
    params:
        code=library_code("starless.py"),
        method=config["starless"]["method"],
        classical=config["starless"]["classical"],
        subtract_profiles=config["starless"]["subtract_profiles"],
        subtract_spikes=config["starless"]["subtract_spikes"],
        inpaint_residuals=config["starless"]["inpaint_residuals"],
        tile=config["starless"]["tile"],
        overlap=config["starless"]["overlap"],
        batch=config["starless"]["batch"],
        target_background=config["starless"]["target_background"],
        preview=config["preview"],
    script:
        "../scripts/starless.py"
