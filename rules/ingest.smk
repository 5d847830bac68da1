rule ingest_frame:
    input:
        ingest_source,
    output:
        "results/{target}/ingest/{ftype}/{frame}.fits",
    log:
        "logs/ingest_frame/{target}/{ftype}/{frame}.log",
    conda:
        "../envs/ingest.yaml"
    params:
        frame_type="{ftype}",
    script:
        "../scripts/ingest_frame.py"


rule frames_table:
    input:
        frames=ingested_frames,
        registration="results/{target}/registration.csv",
    output:
        report(
            "results/{target}/frames.csv",
            caption="../report/frames.rst",
            category="{target}",
        ),
    log:
        "logs/frames_table/{target}.log",
    conda:
        "../envs/stack.yaml"
    script:
        "../scripts/frames_table.py"
