import os
from functools import partial
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from astroflow.simulation.project import project_layout
from astroflow.workflow.config import kind_errors
from astroflow.workflow.discovery import (
    FRAME_TYPES,
    DiscoveryError,
    find_frames,
    find_image,
    find_sequence,
    target_pattern,
)
from astroflow.workflow.provenance import code_digest

# The folder of this workflow's own files (scripts, schema, models), also when a host workflow
# uses it as a module: workflow.basedir is then the host's folder.
WORKFLOW_DIR = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parent


# Targets named in a --configfile replace the default (simulated) target rather than being
# merged with it: a user pointing astroflow at their own night does not want the simulation too.
def _cli_targets():
    targets = {}
    for path in workflow.overwrite_configfiles:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise WorkflowError(f"{path}: a config file must be a YAML mapping")
        targets.update(data.get("targets") or {})
    return targets


CLI_TARGETS = _cli_targets()
if CLI_TARGETS:
    config["targets"] = CLI_TARGETS


def library_code(script):
    """Digest of the astroflow modules an entry script imports: a params entry, so that a
    change in the library reruns exactly the rules whose scripts use the changed module.
    """
    return code_digest(WORKFLOW_DIR / "scripts" / script)


SCHEMA = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
try:
    validate(config, str(SCHEMA))
except WorkflowError as err:
    with open(SCHEMA) as handle:
        _messages = kind_errors(config, yaml.safe_load(handle))
    raise WorkflowError(
        f"invalid configuration: {'; '.join(_messages) if _messages else err}"
    ) from None


SIM = config["simulate"]
SIM_DIR = os.path.normpath(SIM["outdir"])
SIM_FOLDERS = {"lights": "light", "darks": "dark", "flats": "flat", "bias": "bias"}
SIM_OUTPUTS = {
    folder: [
        f"{SIM_DIR}/{folder}/{ftype}_{i:03d}.dng"
        for i in range(1, SIM[f"n_{folder}"] + 1)
    ]
    for folder, ftype in SIM_FOLDERS.items()
}
SIM_PROJECT = SIM["project"]
SIM_PROJECT_DIR = os.path.normpath(SIM_PROJECT["outdir"])
SIM_PROJECT_LAYOUT = project_layout(
    SIM_PROJECT_DIR,
    **{
        key: SIM_PROJECT[key]
        for key in ("sessions", "filters", "n_lights", "n_darks", "n_flats", "n_bias")
    },
)
SIM_PROJECT_FRAMES = [path for paths in SIM_PROJECT_LAYOUT.values() for path in paths]
# the folders of the simulated night and project, named in targets before they exist
SIM_PLANNED = {
    os.path.join(SIM_DIR, folder): paths for folder, paths in SIM_OUTPUTS.items()
} | SIM_PROJECT_LAYOUT


def _discover(kind, find, keys):
    """{target: {frame type: found}} of the targets of one kind, as WorkflowErrors."""
    found = {}
    for target, settings in config["targets"].items():
        if settings["kind"] != kind:
            continue
        found[target] = {}
        for key in keys:
            if key in settings:
                where = f"target '{target}', {key}: {settings[key]}"
                try:
                    found[target][FRAME_TYPES[key]] = find(settings[key], where)
                except DiscoveryError as err:
                    raise WorkflowError(str(err)) from None
    return found


FRAMES = _discover("deep-sky", partial(find_frames, planned=SIM_PLANNED), FRAME_TYPES)
SEQUENCES = _discover("planetary", find_sequence, ("lights", "darks"))
IMAGES = {
    target: types["light"]
    for target, types in _discover("image", find_image, ("lights",)).items()
}

DEEP_SKY_TARGETS = target_pattern(FRAMES)
PLANETARY_TARGETS = target_pattern(SEQUENCES)
IMAGE_TARGETS = target_pattern(IMAGES)
STACKED_TARGETS = target_pattern(list(FRAMES) + list(SEQUENCES))
SINGLE_IMAGE_TARGETS = target_pattern(list(FRAMES) + list(IMAGES))

for _target, _types in FRAMES.items():
    _missing = [t for t in ("bias", "dark", "flat") if t not in _types]
    if _missing:
        logger.warning(
            f"target '{_target}': no {', '.join(_missing)} frames configured; "
            f"that calibration is skipped"
        )


wildcard_constraints:
    target=target_pattern(config["targets"]),
    ftype="|".join(FRAME_TYPES.values()),
    frame=r"[A-Za-z0-9_.-]+",


def ingest_source(wildcards):
    """The source file of one frame (input function of ingest_frame)."""
    return FRAMES[wildcards.target][wildcards.ftype][wildcards.frame]


def ingested(target, ftype):
    return [
        f"results/{target}/ingest/{ftype}/{frame}.fits"
        for frame in FRAMES[target].get(ftype, {})
    ]


def has_type(target, ftype):
    return ftype in FRAMES[target]


def ingested_frames(wildcards):
    """Every ingested frame of a target, all types."""
    return [
        path
        for ftype in FRAMES[wildcards.target]
        for path in ingested(wildcards.target, ftype)
    ]


def bias_frames(wildcards):
    return ingested(wildcards.target, "bias")


def flat_frames(wildcards):
    return ingested(wildcards.target, "flat")


def dark_frames(wildcards):
    """Darks of master_dark; dark flats of master_darkflat (wildcard kind)."""
    return ingested(wildcards.target, wildcards.kind)


def optional_bias(wildcards):
    if has_type(wildcards.target, "bias"):
        return {"bias": f"results/{wildcards.target}/masters/bias.fits"}
    return {}


def flat_masters(wildcards):
    """Master bias and the dark for the flats: dark flats if given, else the scaled master dark."""
    masters = optional_bias(wildcards)
    if has_type(wildcards.target, "darkflat"):
        masters["dark"] = f"results/{wildcards.target}/masters/darkflat.fits"
    elif has_type(wildcards.target, "dark"):
        masters["dark"] = f"results/{wildcards.target}/masters/dark.fits"
    return masters


FLATLESS = config["calibration"]["flatless"]


def uses_sky_flat(target):
    """Whether a target's lights get a sky flat: deep-sky, no flat frames, flatless sky or auto.

    Whether the sky flat is accepted is known only when the sky_flat job runs; a refused one is a
    placeholder that calibrate_light passes over.
    """
    return not has_type(target, "flat") and FLATLESS in ("sky", "auto")


def calibration_masters(wildcards):
    """Master bias, dark and hot pixel map of a target, those that exist (input of sky_flat)."""
    target = wildcards.target
    masters = optional_bias(wildcards)
    if has_type(target, "dark"):
        masters["dark"] = f"results/{target}/masters/dark.fits"
        masters["hot_pixels"] = f"results/{target}/masters/hot_pixels.fits"
    return masters


def light_masters(wildcards):
    """The masters that exist for a target (input function of calibrate_light): the flat is the
    master flat, else the sky flat where the target uses one."""
    target = wildcards.target
    masters = calibration_masters(wildcards)
    if has_type(target, "flat"):
        masters["flat"] = f"results/{target}/masters/flat.fits"
    elif uses_sky_flat(target):
        masters["flat"] = f"results/{target}/masters/sky_flat.fits"
    if uses_flat_network(target):
        masters["flatnet"] = SHIPPED_FLATFIELD
    return masters


def uses_flat_network(target):
    """Whether a target's lights may need the flat-correction network: no flat frames and
    flatless network, or auto (used there only where the sky flat is refused, at run time).
    """
    return not has_type(target, "flat") and FLATLESS in ("network", "auto")


def light_frames(wildcards):
    return ingested(wildcards.target, "light")


def calibrated_lights(wildcards):
    return [
        f"results/{wildcards.target}/calibrated/{frame}.fits"
        for frame in FRAMES[wildcards.target]["light"]
    ]


def registered_lights(wildcards):
    return [
        f"results/{wildcards.target}/registered/{frame}.fits"
        for frame in FRAMES[wildcards.target]["light"]
    ]


# Benchmark files are products of their rules: Snakemake runs rule runtimes after every
# benchmarked job, and again when one of them reruns.
def benchmark_files(wildcards):
    """Benchmark files of every benchmarked job of this run (input function of rule runtimes).

    Rules that get a benchmark directive are added here too; tests/test_report.py checks that
    each of them is in results/runtimes.tsv.
    """
    simulated = {path for paths in SIM_OUTPUTS.values() for path in paths}
    sources = {
        path
        for types in FRAMES.values()
        for frames in types.values()
        for path in frames.values()
    }
    files = [rules.simulate_night.benchmark] if simulated & sources else []
    masters = {
        "bias": rules.master_bias,
        "dark": rules.master_dark,
        "darkflat": rules.master_dark,
        "flat": rules.master_flat,
    }
    for target, types in FRAMES.items():
        for ftype, frames in types.items():
            files += expand(
                rules.ingest_frame.benchmark,
                target=target,
                ftype=ftype,
                frame=list(frames),
            )
        for kind, producer in masters.items():
            if kind in types:
                files += expand(producer.benchmark, target=target, kind=kind)
        if uses_sky_flat(target):
            files += expand(rules.sky_flat.benchmark, target=target)
        lights = list(types["light"])
        files += expand(rules.calibrate_light.benchmark, target=target, frame=lights)
        files += expand(rules.register.benchmark, target=target)
        files += expand(rules.warp.benchmark, target=target, frame=lights)
        files += expand(rules.stack.benchmark, target=target)
        if DRIZZLE["enabled"]:
            files += expand(rules.drizzle.benchmark, target=target)
    for target, types in SEQUENCES.items():
        producers = [
            rules.planetary_analyse,
            rules.planetary_align,
            rules.planetary_stack,
        ]
        if "dark" in types:
            producers.append(rules.planetary_master_dark)
        files += [expand(rule.benchmark, target=target)[0] for rule in producers]
    if DECONVOLUTION["enabled"]:
        single = [t for t in config["targets"] if t not in SEQUENCES]
        files += expand(rules.deconvolve.benchmark, target=single)
        files += expand(rules.planetary_deconvolve.benchmark, target=list(SEQUENCES))
    files += expand(rules.background.benchmark, target=list(config["targets"]))
    if STARLESS["enabled"]:
        files += expand(rules.starless.benchmark, target=list(config["targets"]))
        if TRAIN_STARLESS:
            files.append(rules.train_starless.benchmark)
    return files


def planetary_lights(wildcards):
    """The video, SER file or frames of a planetary target."""
    return SEQUENCES[wildcards.target]["light"]


def planetary_dark(wildcards):
    """The master dark of a planetary target, if it has darks."""
    if "dark" in SEQUENCES[wildcards.target]:
        return {"dark": f"results/{wildcards.target}/masters/dark.fits"}
    return {}


def planetary_darks(wildcards):
    return SEQUENCES[wildcards.target]["dark"]


STARLESS = config["starless"]
STARLESS_TRAINING = config["training"]["starless"]
STARLESS_PROFILE = STARLESS_TRAINING[STARLESS_TRAINING["profile"]]
SHIPPED_STARLESS = str(WORKFLOW_DIR / "models" / "starless.pt")


def starless_init(wildcards):
    """The weights a training run starts from (profile key init): shipped (models/starless.pt), a
    file (relative to the workflow's folder) to fine-tune on new data, or none (random).
    """
    init = STARLESS_PROFILE.get("init")
    if not init:
        return {}
    return {"init": SHIPPED_STARLESS if init == "shipped" else str(WORKFLOW_DIR / init)}


def starless_shards(split):
    """The synthetic data shards of the star-removal training profile in use."""
    n = STARLESS_PROFILE[f"{split}_shards"]
    return [f"resources/datasets/starless/{split}/shard_{i:03d}.npz" for i in range(n)]


SHIPPED_FLATFIELD = str(WORKFLOW_DIR / "models" / "flatfield.pt")
FLATFIELD_TRAINING = config["training"]["flatfield"]
FLATFIELD_PROFILE = FLATFIELD_TRAINING[FLATFIELD_TRAINING["profile"]]


def flatfield_shards(split):
    """The synthetic data shards of the flat-correction training profile in use."""
    n = FLATFIELD_PROFILE[f"{split}_shards"]
    return [f"resources/datasets/flatfield/{split}/shard_{i:03d}.npz" for i in range(n)]


# The network's weights come into play only with method network.
TRAIN_STARLESS = STARLESS["method"] == "network" and STARLESS["weights"] == "trained"


def starless_weights(wildcards):
    """Weights used for star removal: shipped under models/, trained by this run, or none
    (method classical)."""
    if STARLESS["method"] == "classical":
        return []
    if TRAIN_STARLESS:
        return "results/models/starless.pt"
    return SHIPPED_STARLESS


def background_input(wildcards):
    """The image gradient removal and colour calibration work on: a target's stack (its drizzle
    for a deep-sky target with drizzle.enabled), or its one image."""
    if wildcards.target in IMAGES:
        return f"results/{wildcards.target}/image.fits"
    if wildcards.target in FRAMES and DRIZZLE["enabled"]:
        return f"results/{wildcards.target}/drizzle.fits"
    return f"results/{wildcards.target}/stack.fits"


def background_flatnet(wildcards):
    """The flat-correction network for an image target (calibration.flatless network or auto:
    a finished image has no lights for a sky flat); the script skips display-encoded images.
    """
    if wildcards.target in IMAGES and FLATLESS in ("network", "auto"):
        return {"flatnet": SHIPPED_FLATFIELD}
    return {}


def starless_input(wildcards):
    """The image star removal and deconvolution work on: the corrected stack or image (rule background)."""
    return f"results/{wildcards.target}/corrected.fits"


def target_kind(target):
    return config["targets"][target]["kind"]


def background_settings(wildcards):
    """The background settings of a target, enabled only for the kinds listed in background.kinds."""
    settings = dict(config["background"])
    settings["enabled"] = (
        settings["enabled"] and target_kind(wildcards.target) in settings["kinds"]
    )
    return settings


def colour_settings(wildcards):
    """The colour settings of a target, enabled only for the kinds listed in colour.kinds."""
    settings = dict(config["colour"])
    settings["enabled"] = (
        settings["enabled"] and target_kind(wildcards.target) in settings["kinds"]
    )
    return settings


def image_source(wildcards):
    return IMAGES[wildcards.target]


DECONVOLUTION = config["deconvolution"]


def deconvolution_history(wildcards):
    """The per-iteration log of a target's deconvolution (single-image or multi-frame)."""
    if wildcards.target in SEQUENCES:
        return f"results/{wildcards.target}/planetary/mfbd_history.csv"
    return f"results/{wildcards.target}/deconvolution/history.csv"


# Result paths are the outputs of the rules that make them, named here only by rule.
def _outputs(rule, **wildcards):
    return expand(list(rule.output), **wildcards)


def target_outputs(target):
    """Every finished product of one target: the inputs of rule all."""
    if target in IMAGES:
        outputs = _outputs(rules.image_ingest, target=target)
    elif target in SEQUENCES:
        outputs = [
            path
            for rule in (
                rules.planetary_frames_table,
                rules.planetary_stack,
                rules.planetary_sharpen,
                rules.planetary_quality_plot,
            )
            for path in _outputs(rule, target=target)
        ]
        if "dark" in SEQUENCES[target]:
            outputs += _outputs(rules.planetary_master_dark, target=target)
    else:
        outputs = [
            path
            for rule in (rules.frames_table, rules.stack, rules.quality_plot)
            for path in _outputs(rule, target=target)
        ]
        if DRIZZLE["enabled"]:
            outputs += _outputs(rules.drizzle, target=target)
        if has_type(target, "bias"):
            outputs += _outputs(rules.master_bias, target=target)
        if has_type(target, "dark"):
            outputs += _outputs(rules.master_dark, target=target, kind="dark")
        if has_type(target, "flat"):
            outputs += _outputs(rules.master_flat, target=target)
        elif uses_sky_flat(target):
            outputs += _outputs(rules.sky_flat, target=target)
    outputs += _outputs(rules.background, target=target)
    if DECONVOLUTION["enabled"]:
        producer = (
            rules.planetary_deconvolve if target in SEQUENCES else rules.deconvolve
        )
        outputs += _outputs(producer, target=target)
        outputs += _outputs(rules.deconvolution_plot, target=target)
    if STARLESS["enabled"]:
        outputs += _outputs(rules.starless, target=target)
    return outputs


def all_outputs():
    outputs = [path for target in config["targets"] for path in target_outputs(target)]
    if STARLESS["enabled"] and TRAIN_STARLESS:
        outputs += _outputs(rules.train_starless)
    return outputs + _outputs(rules.runtimes) + _outputs(rules.effective_config)


def intermediate(path):
    """A per-frame intermediate output: temp() unless keep_intermediates is set."""
    return path if config["keep_intermediates"] else temp(path)


DRIZZLE = config["drizzle"]
BAYER_DRIZZLE = DRIZZLE["enabled"] and DRIZZLE["bayer"]
# Bayer drizzle reads the calibrated mosaics, which calibrate_light then writes besides the
# debayered lights (for a mono light: a placeholder saying so, refused by rule drizzle).
CALIBRATED_CFA = (
    {"cfa": intermediate("results/{target}/calibrated_cfa/{frame}.fits")}
    if BAYER_DRIZZLE
    else {}
)


def drizzle_lights(wildcards):
    """The lights a drizzle job drops (input function): calibrated, debayered or (Bayer drizzle) CFA mosaics."""
    folder = "calibrated_cfa" if BAYER_DRIZZLE else "calibrated"
    return [
        f"results/{wildcards.target}/{folder}/{frame}.fits"
        for frame in FRAMES[wildcards.target]["light"]
    ]


def drizzle_memory(wildcards, input, attempt):
    """Memory (MB) of a drizzle job: the output grid (image and weight, 3 channels) plus about ten
    copies of the largest frame (frame, pixmap, blotted stack, masks), and the Python process.
    """
    frames = [f for f in input.lights if os.path.exists(f)]
    frame_mb = max((os.path.getsize(f) for f in frames), default=0) / 1e6
    stack_mb = input_mb([input.stack])
    return int((600 + 10 * frame_mb + 2.5 * DRIZZLE["scale"] ** 2 * stack_mb) * attempt)


def image_encoding(wildcards):
    """The encoding setting of an image target (auto when not given)."""
    return config["targets"][wildcards.target].get("encoding", "auto")


# Resources: memory and run time grow with the size of a job's input files, and with the attempt
# number so that a job killed for memory is retried with more (profiles set retries).
def input_mb(input):
    """Size (MB) of a job's existing input files; files still to be made count as empty."""
    return sum(os.path.getsize(f) for f in input if os.path.exists(f)) / 1e6


def memory_estimate(base_mb, per_input_mb):
    """A mem_mb function: base_mb plus per_input_mb for every MB of input."""

    def mem_mb(wildcards, input, attempt):
        return int((base_mb + per_input_mb * input_mb(input)) * attempt)

    return mem_mb


def runtime_estimate(base_min, per_input_gb):
    """A runtime function (minutes): base_min plus per_input_gb for every GB of input."""

    def runtime(wildcards, input, attempt):
        return int((base_min + per_input_gb * input_mb(input) / 1024) * attempt)

    return runtime


def stack_memory(wildcards, attempt):
    """The stacking budget plus the Python process and its libraries."""
    return (config["stacking"]["memory_mb"] + 512) * attempt
