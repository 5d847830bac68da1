# Planetary lucky imaging (kind: planetary): three streaming passes over the video or frames
# (analyse, align, stack), then wavelet sharpening. See scripts/astroflow/planetary/lucky.py.


rule planetary_master_dark:
    input:
        planetary_darks,
    output:
        "results/{target}/masters/dark.fits",
    log:
        "logs/planetary_master_dark/{target}.log",
    benchmark:
        "benchmarks/planetary_master_dark/{target}.tsv"
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/planetary.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_estimate(5, 5),
    params:
        code=library_code("planetary_master_dark.py"),
        memory_mb=config["ingest"]["memory_mb"],
        decode_timeout_s=config["ingest"]["decode_timeout_s"],
    script:
        "../scripts/planetary_master_dark.py"


rule planetary_analyse:
    input:
        unpack(planetary_dark),
        frames=planetary_lights,
    output:
        "results/{target}/planetary/analysis.csv",
    log:
        "logs/planetary_analyse/{target}.log",
    benchmark:
        "benchmarks/planetary_analyse/{target}.tsv"
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/planetary.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_estimate(5, 10),
    params:
        code=library_code("planetary_analyse.py"),
        memory_mb=config["ingest"]["memory_mb"],
        decode_timeout_s=config["ingest"]["decode_timeout_s"],
        min_snr=config["planetary"]["min_snr"],
        threshold=config["planetary"]["threshold"],
        edge_margin=config["planetary"]["edge_margin"],
    script:
        "../scripts/planetary_analyse.py"


rule planetary_align:
    input:
        unpack(planetary_dark),
        frames=planetary_lights,
        analysis="results/{target}/planetary/analysis.csv",
    output:
        table="results/{target}/planetary/alignment.csv",
        reference="results/{target}/planetary/reference.fits",
        points="results/{target}/planetary/alignment_points.csv",
        ap_quality="results/{target}/planetary/ap_quality.npy",
    log:
        "logs/planetary_align/{target}.log",
    benchmark:
        "benchmarks/planetary_align/{target}.tsv"
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/planetary.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=runtime_estimate(5, 20),
    params:
        code=library_code("planetary_align.py"),
        memory_mb=config["ingest"]["memory_mb"],
        decode_timeout_s=config["ingest"]["decode_timeout_s"],
        object=config["planetary"]["object"],
        padding=config["planetary"]["padding"],
        reference_percent=config["planetary"]["reference_percent"],
        ap_size=config["planetary"]["ap_size"],
        ap_min_brightness=config["planetary"]["ap_min_brightness"],
        ap_min_structure=config["planetary"]["ap_min_structure"],
    script:
        "../scripts/planetary_align.py"


rule planetary_stack:
    input:
        unpack(planetary_dark),
        frames=planetary_lights,
        table="results/{target}/planetary/alignment.csv",
        reference="results/{target}/planetary/reference.fits",
        points="results/{target}/planetary/alignment_points.csv",
        ap_quality="results/{target}/planetary/ap_quality.npy",
    output:
        fits="results/{target}/stack.fits",
        tif="results/{target}/stack.tif",
        tif32="results/{target}/stack_f32.tif",
        png=report(
            "results/{target}/stack.png",
            caption="../report/planetary_stack.rst",
            category="{target}",
        ),
        usage="results/{target}/planetary/usage.csv",
        points_png=report(
            "results/{target}/alignment_points.png",
            caption="../report/alignment_points.rst",
            category="{target}",
        ),
    log:
        "logs/planetary_stack/{target}.log",
    benchmark:
        "benchmarks/planetary_stack/{target}.tsv"
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/planetary.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=runtime_estimate(10, 30),
        tmpdir=lambda wildcards: f"results/{wildcards.target}/planetary",
    params:
        code=library_code("planetary_stack.py"),
        memory_mb=config["ingest"]["memory_mb"],
        decode_timeout_s=config["ingest"]["decode_timeout_s"],
        ap_size=config["planetary"]["ap_size"],
        ap_search=config["planetary"]["ap_search"],
        keep_percent=config["planetary"]["keep_percent"],
        keep_count=config["planetary"]["keep_count"],
        sigma_low=config["planetary"]["sigma_low"],
        sigma_high=config["planetary"]["sigma_high"],
        max_iters=config["planetary"]["max_iters"],
        drizzle=config["planetary"]["drizzle"],
        pixfrac=config["planetary"]["pixfrac"],
        preview=config["preview"],
    script:
        "../scripts/planetary_stack.py"


rule planetary_sharpen:
    input:
        "results/{target}/stack.fits",
    output:
        fits="results/{target}/sharpened.fits",
        tif="results/{target}/sharpened.tif",
        tif32="results/{target}/sharpened_f32.tif",
        png=report(
            "results/{target}/sharpened.png",
            caption="../report/sharpened.rst",
            category="{target}",
        ),
    log:
        "logs/planetary_sharpen/{target}.log",
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/planetary.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=library_code("planetary_sharpen.py"),
        gains=config["planetary"]["sharpen_gains"],
        denoise=config["planetary"]["sharpen_denoise"],
        preview=config["preview"],
    script:
        "../scripts/planetary_sharpen.py"


rule planetary_frames_table:
    input:
        table="results/{target}/planetary/alignment.csv",
        usage="results/{target}/planetary/usage.csv",
    output:
        "results/{target}/frames.csv",
    log:
        "logs/planetary_frames_table/{target}.log",
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/planetary.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=library_code("planetary_frames_table.py"),
    script:
        "../scripts/planetary_frames_table.py"


rule planetary_quality_plot:
    input:
        "results/{target}/frames.csv",
    output:
        report(
            "results/{target}/quality.png",
            caption="../report/planetary_quality.rst",
            category="{target}",
        ),
    log:
        "logs/planetary_quality_plot/{target}.log",
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=library_code("planetary_quality_plot.py"),
    script:
        "../scripts/planetary_quality_plot.py"
