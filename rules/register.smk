rule register:
    input:
        lights=calibrated_lights,
        screening="results/{target}/screening.csv",
    output:
        "results/{target}/registration.csv",
    log:
        "logs/register/{target}.log",
    benchmark:
        "benchmarks/register/{target}.tsv"
    conda:
        "../envs/register.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(800, 0.5),
        runtime=runtime_estimate(10, 5),
    params:
        code=library_code("register.py"),
        model=config["registration"]["model"],
        reference=registration_reference,
        threshold_sigma=config["registration"]["threshold_sigma"],
        min_stars=config["registration"]["min_stars"],
        min_star_fraction=config["registration"]["min_star_fraction"],
        max_fwhm_ratio=config["registration"]["max_fwhm_ratio"],
        weighting=config["registration"]["weighting"],
        sessions=frame_sessions,
        filters=frame_filters,
        outlier_sigma=config["registration"]["outlier_sigma"],
        keep_percent=config["registration"]["keep_percent"],
        tps_smoothing=config["registration"]["tps_smoothing"],
        sources=frame_sources,
        owners=master_owners,
        dark_fraction=config["calibration"]["lights_dark_fraction"],
    script:
        "../scripts/register.py"


# One thread: a warp is a second or so of which most is the script's start, so two warps side by
# side on two cores beat one warp on both (benchmarks/load.py: 500 lights).
rule warp:
    input:
        light="results/{target}/calibrated/{frame}.fits",
        registration="results/{target}/registration.csv",
    output:
        intermediate("results/{target}/registered/{frame}.fits"),
    log:
        "logs/warp/{target}/{frame}.log",
    benchmark:
        "benchmarks/warp/{target}/{frame}.tsv"
    conda:
        "../envs/register.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(500, 8),
        runtime=runtime_estimate(5, 5),
    params:
        code=library_code("warp.py"),
        interpolation=config["registration"]["interpolation"],
    script:
        "../scripts/warp.py"
