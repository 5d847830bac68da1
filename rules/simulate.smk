rule simulate_night:
    output:
        lights=SIM_OUTPUTS["lights"],
        darks=SIM_OUTPUTS["darks"],
        flats=SIM_OUTPUTS["flats"],
        bias=SIM_OUTPUTS["bias"],
        truth=directory(f"{SIM_DIR}/truth"),
    params:
        outdir=SIM_DIR,
        settings={key: value for key, value in SIM.items() if key != "outdir"},
    log:
        "logs/simulate_night/simulate_night.log",
    benchmark:
        "benchmarks/simulate_night/simulate_night.tsv"
    conda:
        "../envs/simulate.yaml"
    script:
        "../scripts/simulate_night.py"
