report: "../report/workflow.rst"


rule quality_plot:
    input:
        "results/{target}/frames.csv",
    output:
        report(
            "results/{target}/quality.png",
            caption="../report/quality.rst",
            category="{target}",
        ),
    log:
        "logs/quality_plot/{target}.log",
    wildcard_constraints:
        target=DEEP_SKY_TARGETS,
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=library_code("quality_plot.py"),
    script:
        "../scripts/quality_plot.py"


rule runtimes:
    input:
        benchmark_files,
    output:
        table=report(
            "results/runtimes.tsv",
            caption="../report/runtimes.rst",
            category="run",
        ),
        plot=report(
            "results/runtimes.png",
            caption="../report/runtimes.rst",
            category="run",
        ),
    log:
        "logs/runtimes/runtimes.log",
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=library_code("runtime_table.py"),
    script:
        "../scripts/runtime_table.py"


rule effective_config:
    output:
        yaml="results/config.yaml",
        html=report(
            "results/config.html",
            caption="../report/config.rst",
            category="run",
        ),
    log:
        "logs/effective_config/effective_config.log",
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=library_code("effective_config.py"),
        config=config,
    script:
        "../scripts/effective_config.py"
