rule ingest_frame:
    input:
        ingest_source,
    output:
        intermediate("results/{target}/ingest/{ftype}/{frame}.fits"),
    log:
        "logs/ingest_frame/{target}/{ftype}/{frame}.log",
    benchmark:
        "benchmarks/ingest_frame/{target}/{ftype}/{frame}.tsv"
    conda:
        "../envs/ingest.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(400, 12),
        runtime=runtime_estimate(5, 2),
    params:
        code=library_code("ingest_frame.py"),
        frame_type="{ftype}",
        memory_mb=config["ingest"]["memory_mb"],
        decode_timeout_s=config["ingest"]["decode_timeout_s"],
    script:
        "../scripts/ingest_frame.py"


rule screen_frames:
    input:
        frames=calibration_frames,
    output:
        "results/{target}/screening.csv",
    log:
        "logs/screen_frames/{target}.log",
    wildcard_constraints:
        target=DEEP_SKY_TARGETS,
    conda:
        "../envs/ingest.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=library_code("screen_frames.py"),
        sessions=calibration_sessions,
        sources=calibration_sources,
        owners=master_owners,
    script:
        "../scripts/screen_frames.py"


rule frames_table:
    input:
        frames=ingested_frames,
        screening="results/{target}/screening.csv",
        registration="results/{target}/registration.csv",
    output:
        report(
            "results/{target}/frames.csv",
            caption="../report/frames.rst",
            category="{target}",
        ),
    log:
        "logs/frames_table/{target}.log",
    wildcard_constraints:
        target=DEEP_SKY_TARGETS,
    conda:
        "../envs/stack.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=library_code("frames_table.py"),
        sessions=frame_sessions,
        sources=frame_sources,
        filters=frame_filters,
    script:
        "../scripts/frames_table.py"
