# Synthetic training data and network training (GPU jobs where a GPU is given).


# Real star stamps cut from real frames: the data folders are settings, not inputs, so that a
# machine without them still trains (on synthetic PSFs only, as the log says).
rule star_stamps:
    output:
        "resources/datasets/starless/stamps.npz",
    log:
        "logs/star_stamps/star_stamps.log",
    conda:
        "../envs/stamps.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    params:
        code=library_code("star_stamps.py"),
        sbig=config["training"]["starless"]["stamps"]["sbig"],
        seestar=config["training"]["starless"]["stamps"]["seestar"],
    script:
        "../scripts/star_stamps.py"


rule starless_shard:
    input:
        stamps="resources/datasets/starless/stamps.npz",
    output:
        "resources/datasets/starless/{split}/shard_{shard}.npz",
    log:
        "logs/starless_shard/{split}-{shard}.log",
    wildcard_constraints:
        split="train|val",
        shard=r"\d+",
    conda:
        "../envs/starless.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        code=library_code("starless_shard.py"),
        seed=config["training"]["starless"]["seed"],
        size=config["training"]["starless"]["sample_size"],
        samples=config["training"]["starless"]["samples_per_shard"],
        mono_fraction=config["training"]["starless"]["mono_fraction"],
    script:
        "../scripts/starless_shard.py"


rule train_starless:
    input:
        unpack(starless_init),
        train=starless_shards("train"),
        val=starless_shards("val"),
    output:
        weights="results/models/starless.pt",
        metrics="results/models/starless.json",
        history="results/models/starless_history.csv",
        curves=report(
            "results/models/starless_curves.png",
            caption="../report/training.rst",
            category="models",
        ),
    log:
        "logs/train_starless/train_starless.log",
    benchmark:
        "benchmarks/train_starless/train_starless.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    params:
        code=library_code("train_starless.py"),
        profile=config["training"]["starless"]["profile"],
        settings=STARLESS_PROFILE,
        seed=config["training"]["starless"]["seed"],
    script:
        "../scripts/train_starless.py"


rule flatfield_shard:
    output:
        "resources/datasets/flatfield/{split}/shard_{shard}.npz",
    log:
        "logs/flatfield_shard/{split}-{shard}.log",
    wildcard_constraints:
        split="train|val",
        shard=r"\d+",
    conda:
        "../envs/starless.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        code=library_code("flatfield_shard.py"),
        seed=FLATFIELD_TRAINING["seed"],
        size=FLATFIELD_TRAINING["sample_size"],
        grid=FLATFIELD_TRAINING["grid"],
        samples=FLATFIELD_TRAINING["samples_per_shard"],
    script:
        "../scripts/flatfield_shard.py"


rule train_flatfield:
    input:
        train=flatfield_shards("train"),
        val=flatfield_shards("val"),
    output:
        weights="results/models/flatfield.pt",
        metrics="results/models/flatfield.json",
        history="results/models/flatfield_history.csv",
        curves=report(
            "results/models/flatfield_curves.png",
            caption="../report/training.rst",
            category="models",
        ),
    log:
        "logs/train_flatfield/train_flatfield.log",
    benchmark:
        "benchmarks/train_flatfield/train_flatfield.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    params:
        code=library_code("train_flatfield.py"),
        profile=FLATFIELD_TRAINING["profile"],
        settings=FLATFIELD_PROFILE,
        seed=FLATFIELD_TRAINING["seed"],
        size=FLATFIELD_TRAINING["sample_size"],
        grid=FLATFIELD_TRAINING["grid"],
        sbig=FLATFIELD_TRAINING["sbig"],
    script:
        "../scripts/train_flatfield.py"
