rule simulate_night:
    output:
        lights=SIM_OUTPUTS["lights"],
        darks=SIM_OUTPUTS["darks"],
        flats=SIM_OUTPUTS["flats"],
        bias=SIM_OUTPUTS["bias"],
        truth=directory(f"{SIM_DIR}/truth"),
    log:
        "logs/simulate_night/simulate_night.log",
    benchmark:
        "benchmarks/simulate_night/simulate_night.tsv"
    conda:
        "../envs/simulate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        code=library_code("simulate_night.py"),
        settings={
            key: value
            for key, value in SIM.items()
            if key not in ("outdir", "project")
        },
    script:
        "../scripts/simulate_night.py"


rule simulate_project:
    output:
        frames=SIM_PROJECT_FRAMES,
        truth=directory(f"{SIM_PROJECT_DIR}/truth"),
    log:
        "logs/simulate_project/simulate_project.log",
    conda:
        "../envs/simulate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        code=library_code("simulate_project.py"),
        settings={key: value for key, value in SIM_PROJECT.items() if key != "outdir"},
    script:
        "../scripts/simulate_project.py"
