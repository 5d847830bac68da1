rule register:
    input:
        calibrated_lights,
    output:
        "results/{target}/registration.csv",
    log:
        "logs/register/{target}.log",
    benchmark:
        "benchmarks/register/{target}.tsv"
    conda:
        "../envs/register.yaml"
    params:
        model=config["registration"]["model"],
        reference=config["registration"]["reference"],
        threshold_sigma=config["registration"]["threshold_sigma"],
        min_stars=config["registration"]["min_stars"],
        min_star_fraction=config["registration"]["min_star_fraction"],
        max_fwhm_ratio=config["registration"]["max_fwhm_ratio"],
        weighting=config["registration"]["weighting"],
    script:
        "../scripts/register.py"


rule warp:
    input:
        light="results/{target}/calibrated/{frame}.fits",
        registration="results/{target}/registration.csv",
    output:
        "results/{target}/registered/{frame}.fits",
    log:
        "logs/warp/{target}/{frame}.log",
    conda:
        "../envs/register.yaml"
    params:
        interpolation=config["registration"]["interpolation"],
    script:
        "../scripts/warp.py"
