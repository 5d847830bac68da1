import glob
import os
import re
from pathlib import Path

import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate


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

from astroflow.workflow.provenance import code_digest


def library_code(script):
    """Digest of the astroflow modules an entry script imports: a params entry, so that a
    change in the library reruns exactly the rules whose scripts use the changed module.
    """
    return code_digest(os.path.join(workflow.basedir, "scripts", script))


try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None


# Frame types, keyed by the config entry that names their folder. The type of a frame is the
# folder it was found in, never its header (real flats often say IMAGETYP = 'Light Frame').
FRAME_TYPES = {
    "lights": "light",
    "darks": "dark",
    "flats": "flat",
    "bias": "bias",
    "darkflats": "darkflat",
}
FRAME_EXTENSIONS = {
    # camera RAW (LibRaw)
    ".cr2",
    ".cr3",
    ".crw",
    ".nef",
    ".nrw",
    ".arw",
    ".srf",
    ".sr2",
    ".raf",
    ".orf",
    ".rw2",
    ".dng",
    ".pef",
    ".srw",
    ".3fr",
    ".erf",
    ".kdc",
    ".mos",
    ".mrw",
    ".x3f",
    ".iiq",
    # FITS and TIFF
    ".fits",
    ".fit",
    ".fts",
    ".fits.fz",
    ".fit.fz",
    ".tif",
    ".tiff",
}
SIM = config["simulate"]
SIM_DIR = os.path.normpath(SIM["outdir"])
SIM_FOLDERS = {"lights": "light", "darks": "dark", "flats": "flat", "bias": "bias"}
SIM_COUNTS = {
    "lights": SIM["n_lights"],
    "darks": SIM["n_darks"],
    "flats": SIM["n_flats"],
    "bias": SIM["n_bias"],
}


def _simulated_files(folder):
    return [
        f"{SIM_DIR}/{folder}/{SIM_FOLDERS[folder]}_{i:03d}.dng"
        for i in range(1, SIM_COUNTS[folder] + 1)
    ]


SIM_OUTPUTS = {folder: _simulated_files(folder) for folder in SIM_FOLDERS}


def _has_frame_extension(path):
    name = path.lower()
    return any(name.endswith(ext) for ext in FRAME_EXTENSIONS)


def _frame_name(path):
    name = Path(path).name
    for ext in sorted(FRAME_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "frame"


def _list_frames(target, key):
    spec = os.path.normpath(config["targets"][target][key])
    where = f"target '{target}', {key}: {config['targets'][target][key]}"
    if os.path.dirname(spec) == SIM_DIR and os.path.basename(spec) in SIM_FOLDERS:
        paths = SIM_OUTPUTS[os.path.basename(spec)]
    elif glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
    elif os.path.isdir(spec):
        paths = sorted(
            str(p)
            for p in Path(spec).iterdir()
            if p.is_file() and _has_frame_extension(p.name)
        )
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        raise WorkflowError(f"{where}: no such folder or file")
    if not paths:
        raise WorkflowError(
            f"{where}: no frames found (looked for {', '.join(sorted(FRAME_EXTENSIONS))})"
        )
    frames = {}
    for path in paths:
        name = _frame_name(path)
        unique, n = name, 1
        while unique in frames:
            n += 1
            unique = f"{name}-{n}"
        frames[unique] = path
    return frames


FRAMES = {
    target: {
        FRAME_TYPES[key]: _list_frames(target, key)
        for key in FRAME_TYPES
        if key in settings
    }
    for target, settings in config["targets"].items()
    if settings["kind"] == "deep-sky"
}

# Planetary targets: a video or SER file, or a folder or glob of frames (names may hold spaces).
VIDEO_EXTENSIONS = {".avi", ".mov", ".mp4", ".mkv", ".m4v", ".webm", ".ser"}
SEQUENCE_FRAME_EXTENSIONS = {
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".fits",
    ".fit",
    ".fts",
}


def _natural_key(path):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", str(path))]


def _list_sequence(target, key):
    spec = config["targets"][target][key]
    where = f"target '{target}', {key}: {spec}"
    known = VIDEO_EXTENSIONS | SEQUENCE_FRAME_EXTENSIONS
    if glob.has_magic(spec):
        paths = [p for p in glob.glob(spec) if os.path.isfile(p)]
    elif os.path.isdir(spec):
        paths = [
            str(p)
            for p in Path(spec).iterdir()
            if p.is_file() and p.suffix.lower() in SEQUENCE_FRAME_EXTENSIONS
        ]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        raise WorkflowError(f"{where}: no such folder or file")
    paths = [p for p in paths if Path(p).suffix.lower() in known]
    if not paths:
        raise WorkflowError(
            f"{where}: no video or frames found (looked for {', '.join(sorted(known))})"
        )
    videos = [p for p in paths if Path(p).suffix.lower() in VIDEO_EXTENSIONS]
    if videos and len(paths) > 1:
        raise WorkflowError(
            f"{where}: give one video or SER file, or a folder of frames, not {len(paths)} files"
        )
    return sorted(paths, key=_natural_key)


_ALLOWED_KEYS = {
    "planetary": ({"kind", "lights", "darks"}, "lights and optional darks"),
    "image": (
        {"kind", "lights", "encoding"},
        "lights (one image) and an optional encoding",
    ),
    "deep-sky": (set(FRAME_TYPES) | {"kind"}, "lights and calibration folders"),
}
for _target, _settings in config["targets"].items():
    _allowed, _what = _ALLOWED_KEYS[_settings["kind"]]
    _extra = sorted(set(_settings) - _allowed)
    if _extra:
        raise WorkflowError(
            f"target '{_target}': a {_settings['kind']} target takes {_what}, "
            f"not {', '.join(_extra)}"
        )


SEQUENCES = {
    target: {
        FRAME_TYPES[key]: _list_sequence(target, key)
        for key in ("lights", "darks")
        if key in settings
    }
    for target, settings in config["targets"].items()
    if settings["kind"] == "planetary"
}


IMAGE_EXTENSIONS = {".png", ".tif", ".tiff", ".fits", ".fit", ".fts"}


def _image_file(target):
    spec = config["targets"][target]["lights"]
    where = f"target '{target}', lights: {spec}"
    if not os.path.isfile(spec):
        raise WorkflowError(f"{where}: an image target needs one image file")
    if Path(spec).suffix.lower() not in IMAGE_EXTENSIONS:
        raise WorkflowError(
            f"{where}: not an image file (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return spec


IMAGES = {
    target: _image_file(target)
    for target, settings in config["targets"].items()
    if settings["kind"] == "image"
}


def _target_pattern(names):
    return "|".join(re.escape(t) for t in names) if names else "(?!)"


DEEP_SKY_TARGETS = _target_pattern(FRAMES)
PLANETARY_TARGETS = _target_pattern(SEQUENCES)
IMAGE_TARGETS = _target_pattern(IMAGES)
STACKED_TARGETS = _target_pattern(list(FRAMES) + list(SEQUENCES))
SINGLE_IMAGE_TARGETS = _target_pattern(list(FRAMES) + list(IMAGES))

for _target, _types in FRAMES.items():
    _missing = [t for t in ("bias", "dark", "flat") if t not in _types]
    if _missing:
        logger.warning(
            f"target '{_target}': no {', '.join(_missing)} frames configured; "
            f"that calibration is skipped"
        )


wildcard_constraints:
    target=_target_pattern(config["targets"]),
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


def light_masters(wildcards):
    """The masters that exist for a target (input function of calibrate_light)."""
    target = wildcards.target
    masters = optional_bias(wildcards)
    if has_type(target, "dark"):
        masters["dark"] = f"results/{target}/masters/dark.fits"
        masters["hot_pixels"] = f"results/{target}/masters/hot_pixels.fits"
    if has_type(target, "flat"):
        masters["flat"] = f"results/{target}/masters/flat.fits"
    return masters


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
        lights = list(types["light"])
        files += expand(rules.calibrate_light.benchmark, target=target, frame=lights)
        files += expand(rules.register.benchmark, target=target)
        files += expand(rules.warp.benchmark, target=target, frame=lights)
        files += expand(rules.stack.benchmark, target=target)
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
    if STARLESS["enabled"]:
        files += expand(rules.starless.benchmark, target=list(config["targets"]))
        if STARLESS["weights"] == "trained":
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


def planetary_outputs(target):
    outputs = [
        f"results/{target}/{name}"
        for name in (
            "frames.csv",
            "stack.fits",
            "stack.tif",
            "stack.png",
            "sharpened.fits",
            "sharpened.png",
            "quality.png",
            "alignment_points.png",
        )
    ]
    if "dark" in SEQUENCES[target]:
        outputs.append(f"results/{target}/masters/dark.fits")
    return outputs


STARLESS = config["starless"]
STARLESS_TRAINING = config["training"]["starless"]
STARLESS_PROFILE = STARLESS_TRAINING[STARLESS_TRAINING["profile"]]
SHIPPED_STARLESS = os.path.join(workflow.basedir, "models", "starless.pt")


def starless_shards(split):
    """The synthetic data shards of the star-removal training profile in use."""
    n = STARLESS_PROFILE[f"{split}_shards"]
    return [f"resources/datasets/starless/{split}/shard_{i:03d}.npz" for i in range(n)]


def starless_weights(wildcards):
    """Weights used for star removal: shipped under models/, or trained by this run."""
    if STARLESS["weights"] == "trained":
        return "results/models/starless.pt"
    return SHIPPED_STARLESS


def starless_input(wildcards):
    """The image star removal works on: a target's stack, or its one image."""
    if wildcards.target in IMAGES:
        return f"results/{wildcards.target}/image.fits"
    return f"results/{wildcards.target}/stack.fits"


def image_source(wildcards):
    return IMAGES[wildcards.target]


DECONVOLUTION = config["deconvolution"]


def deconvolution_outputs(target):
    if not DECONVOLUTION["enabled"]:
        return []
    return [
        f"results/{target}/deconvolved.fits",
        f"results/{target}/deconvolved.png",
        f"results/{target}/deconvolution.png",
    ]


def deconvolution_history(wildcards):
    """The per-iteration log of a target's deconvolution (single-image or multi-frame)."""
    if wildcards.target in SEQUENCES:
        return f"results/{wildcards.target}/planetary/mfbd_history.csv"
    return f"results/{wildcards.target}/deconvolution/history.csv"


def starless_outputs(target):
    if not STARLESS["enabled"]:
        return []
    return [
        f"results/{target}/{name}.{ext}"
        for name in ("starless", "stars")
        for ext in ("fits", "png")
    ]


def target_outputs(target):
    if target in IMAGES:
        return (
            [f"results/{target}/image.png"]
            + deconvolution_outputs(target)
            + starless_outputs(target)
        )
    if target in SEQUENCES:
        return (
            planetary_outputs(target)
            + deconvolution_outputs(target)
            + starless_outputs(target)
        )
    outputs = (
        deconvolution_outputs(target)
        + starless_outputs(target)
        + [
            f"results/{target}/frames.csv",
            f"results/{target}/stack.fits",
            f"results/{target}/stack.tif",
            f"results/{target}/stack.png",
            f"results/{target}/rejection.fits",
            f"results/{target}/quality.png",
        ]
    )
    outputs += [
        f"results/{target}/masters/{ftype}.fits"
        for ftype in ("bias", "dark", "flat")
        if has_type(target, ftype)
    ]
    return outputs


def all_outputs():
    outputs = [path for target in config["targets"] for path in target_outputs(target)]
    if STARLESS["enabled"] and STARLESS["weights"] == "trained":
        outputs += ["results/models/starless.pt", "results/models/starless_curves.png"]
    return outputs + [
        "results/runtimes.tsv",
        "results/runtimes.png",
        "results/config.yaml",
        "results/config.html",
    ]


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
