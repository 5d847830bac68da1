import os
import posixpath
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from astroflow.deepsky.palette import PaletteError, light_filter, palette_channels
from astroflow.io.formats import SEQUENCE_CONTAINER, readable
from astroflow.simulation.project import project_layout
from astroflow.workflow.config import ConfigError, configfile_targets, validate_config
from astroflow.workflow.discovery import (
    FRAME_TYPES,
    DiscoveryError,
    find_image,
    find_sequence,
    find_sessions,
    probe_input,
    shared_masters,
    source_header,
    target_pattern,
    target_sessions,
)
from astroflow.workflow.provenance import code_digest

# The folder of this workflow's own files (scripts, schema, models), also when a host workflow
# uses it as a module: workflow.basedir is then the host's folder.
WORKFLOW_DIR = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parent


# Targets named in a --configfile replace the default (simulated) target rather than being
# merged with it: a user pointing astroflow at their own night does not want the simulation too.
try:
    CLI_TARGETS = configfile_targets(workflow.overwrite_configfiles)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
if CLI_TARGETS:
    config["targets"] = CLI_TARGETS


def library_code(script):
    """Digest of the astroflow modules an entry script imports: a params entry, so that a
    change in the library reruns exactly the rules whose scripts use the changed module.
    """
    return code_digest(WORKFLOW_DIR / "scripts" / script)


SCHEMA = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
# Sessions first: their mistakes get sentences of their own, before the schema's.
try:
    validate_config(config, SCHEMA, skip_schema=workflow.modifier.skip_validation)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


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


def _discover_sessions():
    """{target: {session: {frame type: {frame: path}}}} of the deep-sky targets."""
    found = {}
    for target, settings in config["targets"].items():
        if settings["kind"] != "deep-sky":
            continue
        try:
            found[target] = find_sessions(target, settings, planned=SIM_PLANNED)
        except DiscoveryError as err:
            raise WorkflowError(str(err)) from None
    return found


# SESSIONS[target][session][frame type][frame] -> source; FRAMES[target][frame type][frame],
# the union over sessions (frame names are unique across a target's sessions).
SESSIONS = _discover_sessions()
# MASTER_OWNER[target][session][calibration type] -> the session whose master it uses: sessions
# that name the same calibration folders share one master, made (and its frames ingested) once.
MASTER_OWNER = {
    target: shared_masters(target_sessions(config["targets"][target]))
    for target in SESSIONS
}
for _target, _owners in MASTER_OWNER.items():
    for _session, _types in _owners.items():
        for _ftype, _owner in _types.items():
            if _owner != _session:
                del SESSIONS[_target][_session][_ftype]
FRAMES = {
    target: {
        ftype: {
            frame: path
            for frames in sessions.values()
            for frame, path in frames.get(ftype, {}).items()
        }
        for ftype in FRAME_TYPES.values()
        if any(ftype in frames for frames in sessions.values())
    }
    for target, sessions in SESSIONS.items()
}
# SESSION_OF[target][frame] -> its session, frames of every type
SESSION_OF = {
    target: {
        frame: session
        for session, types in sessions.items()
        for frames in types.values()
        for frame in frames
    }
    for target, sessions in SESSIONS.items()
}


def _light_filters(target):
    """{light: filter} of a deep-sky target: its session's filter, else the target's, else the
    FITS header's FILTER/INSFLNAM (read here, at parse time, since it decides the stacks), else
    the default."""
    settings = target_sessions(config["targets"][target])
    filters = {}
    for session, types in SESSIONS[target].items():
        configured = settings[session].get("filter")
        for frame, path in types["light"].items():
            header = None if configured else source_header(path)
            filters[frame] = light_filter(configured, header)
    return filters


FILTER_OF = {target: _light_filters(target) for target in SESSIONS}
# FILTERS[target]: its filters in order of first appearance
FILTERS = {
    target: list(dict.fromkeys(filters.values()))
    for target, filters in FILTER_OF.items()
}
# A palette whose filters the target lacks is an error now, not when combine_filters runs.
for _target, _filters in FILTERS.items():
    _palette = config["targets"][_target].get("palette", "none")
    if _palette != "none":
        try:
            palette_channels(_palette, _filters)
        except PaletteError as err:
            raise WorkflowError(f"target '{_target}': {err}") from None
MULTI_FILTER_TARGETS = target_pattern(t for t, f in FILTERS.items() if len(f) > 1)
SINGLE_FILTER_TARGETS = target_pattern(t for t, f in FILTERS.items() if len(f) == 1)
# where a target's masters are: results/{target}/masters{tag}/, the tag empty for one session
SESSION_TAGS = {
    target: {
        session: (posixpath.sep + session if len(sessions) > 1 else "")
        for session in sessions
    }
    for target, sessions in SESSIONS.items()
}
SEQUENCES = _discover("planetary", find_sequence, ("lights", "darks"))
IMAGES = {
    target: types["light"]
    for target, types in _discover("image", find_image, ("lights",)).items()
}
# The one input file of an image or planetary target is checked from its header now: a bad
# one is one clear error before any job runs, not a failed job after the others ran.
_ONE_FILE_INPUTS = [
    (target, key, paths[0])
    for target, types in SEQUENCES.items()
    for key, paths in types.items()
    if len(paths) == 1 and readable(paths[0], SEQUENCE_CONTAINER)
] + [(target, "light", path) for target, path in IMAGES.items()]
for _target, _key, _path in _ONE_FILE_INPUTS:
    if os.path.exists(_path):  # simulated inputs are made by the workflow itself
        try:
            probe_input(
                _path, f"target '{_target}', {_key}s", config["ingest"]["memory_mb"]
            )
        except DiscoveryError as err:
            raise WorkflowError(str(err)) from None
SESSION_PATTERN = "(?:{})".format(
    "|".join(
        [""]
        + sorted(
            {re.escape(t) for tags in SESSION_TAGS.values() for t in tags.values() if t}
        )
    )
)

DEEP_SKY_TARGETS = target_pattern(FRAMES)
PLANETARY_TARGETS = target_pattern(SEQUENCES)
IMAGE_TARGETS = target_pattern(IMAGES)
STACKED_TARGETS = target_pattern(list(FRAMES) + list(SEQUENCES))
SINGLE_IMAGE_TARGETS = target_pattern(list(FRAMES) + list(IMAGES))

for _target, _sessions in SESSIONS.items():
    for _session in _sessions:
        _owners = MASTER_OWNER[_target][_session]
        _missing = [
            t
            for t in ("bias", "dark", "flat")
            if t not in _sessions[_owners.get(t, _session)]
        ]
        if _missing:
            _which = f", session '{_session}'" if len(_sessions) > 1 else ""
            logger.warning(
                f"target '{_target}'{_which}: no {', '.join(_missing)} frames configured; "
                f"that calibration is skipped"
            )


wildcard_constraints:
    target=target_pattern(config["targets"]),
    ftype="|".join(FRAME_TYPES.values()),
    frame=r"[A-Za-z0-9_.-]+",
    # empty for a target of one session (results/{target}/masters/), else a slash and the session
    session=SESSION_PATTERN,
    filter=target_pattern(sorted({f for filters in FILTERS.values() for f in filters})),


def ingest_source(wildcards):
    """The source file of one frame (input function of ingest_frame)."""
    return FRAMES[wildcards.target][wildcards.ftype][wildcards.frame]


def owner(target, ftype, session):
    """The session whose frames (and master) of this type a session uses: itself, or the first
    session that names the same calibration folders."""
    return MASTER_OWNER[target][session].get(ftype, session)


def owns(target, ftype, session):
    """Whether a session makes the master of this type itself (it has the frames, unshared)."""
    return ftype in SESSIONS[target][session]


def ingested(target, ftype, session=None):
    """Ingested frames of one type of a target: of one session (shared calibration frames: of
    the session that owns them), or of all when session is None."""
    if session is None:
        frames = FRAMES[target].get(ftype, {})
    else:
        frames = SESSIONS[target][owner(target, ftype, session)].get(ftype, {})
    return [f"results/{target}/ingest/{ftype}/{frame}.fits" for frame in frames]


def has_type(target, ftype, session=None):
    """Whether a target (any session, or the one given, itself or shared) has frames of this type."""
    if session is None:
        return ftype in FRAMES[target]
    return ftype in SESSIONS[target][owner(target, ftype, session)]


def session_of(wildcards):
    """The session a job is for: from its session wildcard (the master rules), else its frame."""
    target = wildcards.target
    if "session" in wildcards.keys():
        tag = wildcards.session
        return next(s for s, t in SESSION_TAGS[target].items() if t == tag)
    return SESSION_OF[target][wildcards.frame]


def masters_dir(target, session, ftype=None):
    """Folder of a session's masters: results/{target}/masters, or .../masters/{session}; with
    ftype, of the session that owns that master."""
    if ftype is not None:
        session = owner(target, ftype, session)
    return f"results/{target}/masters{SESSION_TAGS[target][session]}"


def ingested_frames(wildcards):
    """Every ingested frame of a target, all types."""
    return [
        path
        for ftype in FRAMES[wildcards.target]
        for path in ingested(wildcards.target, ftype)
    ]


def calibration_frames(wildcards):
    """Every ingested calibration frame of a target, all sessions (input of screen_frames: the
    lights are screened in register and sky_flat, so that a new light reruns no master).
    """
    return [
        path
        for ftype in FRAMES[wildcards.target]
        if ftype != "light"
        for path in ingested(wildcards.target, ftype)
    ]


def bias_frames(wildcards):
    return ingested(wildcards.target, "bias", session_of(wildcards))


def flat_frames(wildcards):
    return ingested(wildcards.target, "flat", session_of(wildcards))


def dark_frames(wildcards):
    """Darks of master_dark; dark flats of master_darkflat (wildcard kind)."""
    return ingested(wildcards.target, wildcards.kind, session_of(wildcards))


def _bias(target, session):
    if has_type(target, "bias", session):
        return {"bias": f"{masters_dir(target, session, 'bias')}/bias.fits"}
    return {}


def optional_bias(wildcards):
    return _bias(wildcards.target, session_of(wildcards))


def flat_masters(wildcards):
    """Master bias and the dark for the flats: dark flats if given, else the scaled master dark."""
    target, session = wildcards.target, session_of(wildcards)
    masters = _bias(target, session)
    if has_type(target, "darkflat", session):
        masters["dark"] = f"{masters_dir(target, session, 'darkflat')}/darkflat.fits"
    elif has_type(target, "dark", session):
        masters["dark"] = f"{masters_dir(target, session, 'dark')}/dark.fits"
    return masters


FLATLESS = config["calibration"]["flatless"]


def uses_sky_flat(target, session=None):
    """Whether a target's (session's) lights get a sky flat: deep-sky, no flat frames, flatless
    sky or auto; session None: whether any session does.

    Whether the sky flat is accepted is known only when the sky_flat job runs; a refused one is a
    placeholder that calibrate_light passes over.
    """
    if session is None:
        return any(uses_sky_flat(target, s) for s in SESSIONS[target])
    return not has_type(target, "flat", session) and FLATLESS in ("sky", "auto")


def _calibration_masters(target, session):
    masters = _bias(target, session)
    if has_type(target, "dark", session):
        masters["dark"] = f"{masters_dir(target, session, 'dark')}/dark.fits"
        masters["hot_pixels"] = (
            f"{masters_dir(target, session, 'dark')}/hot_pixels.fits"
        )
    return masters


def calibration_masters(wildcards):
    """Master bias, dark and hot pixel map of a session, those that exist (input of sky_flat)."""
    return _calibration_masters(wildcards.target, session_of(wildcards))


def light_masters(wildcards):
    """The masters that exist for a light's session (input function of calibrate_light): the
    flat is the master flat, else the sky flat where the session uses one."""
    target, session = wildcards.target, session_of(wildcards)
    masters = _calibration_masters(target, session)
    if has_type(target, "flat", session):
        masters["flat"] = f"{masters_dir(target, session, 'flat')}/flat.fits"
    elif uses_sky_flat(target, session):
        masters["flat"] = f"{masters_dir(target, session)}/sky_flat.fits"
    if uses_flat_network(target, session):
        masters["flatnet"] = SHIPPED_FLATFIELD
    return masters


def uses_flat_network(target, session=None):
    """Whether a target's (session's) lights may need the flat-correction network: no flat
    frames and flatless network, or auto (used there only where the sky flat is refused, at run
    time).
    """
    if session is None:
        return any(uses_flat_network(target, s) for s in SESSIONS[target])
    return not has_type(target, "flat", session) and FLATLESS in ("network", "auto")


def light_frames(wildcards):
    """The lights of a session (input of sky_flat)."""
    return ingested(wildcards.target, "light", session_of(wildcards))


def light_filter_of(wildcards):
    """The filter of one light (calibrate_light: picks the master flat of that filter)."""
    return FILTER_OF[wildcards.target][wildcards.frame]


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


def filter_registered_lights(wildcards):
    """The registered lights of one filter of a target (input of stack_filter)."""
    filters = FILTER_OF[wildcards.target]
    return [
        f"results/{wildcards.target}/registered/{frame}.fits"
        for frame in FRAMES[wildcards.target]["light"]
        if filters[frame] == wildcards.filter
    ]


def filter_stacks(wildcards):
    """Every filter stack of a target with several filters (input of combine_filters)."""
    return {
        f: f"results/{wildcards.target}/filters/{f}/stack.fits"
        for f in FILTERS[wildcards.target]
    }


def frame_sessions(wildcards):
    """{frame: session} of a target, every frame type (params of register, frames_table)."""
    return SESSION_OF[wildcards.target]


def frame_sources(wildcards):
    """{frame type: {frame: source file}} of a target (params of screen_frames, frames_table:
    the path as the file system spells it; the FITS header's SRCFILE is ASCII-escaped).
    """
    return FRAMES[wildcards.target]


def calibration_sources(wildcards):
    """{frame type: {frame: source file}} of a target's calibration frames (params of
    screen_frames: without the lights, so that a new light does not rerun it)."""
    return {t: f for t, f in FRAMES[wildcards.target].items() if t != "light"}


def calibration_sessions(wildcards):
    """{frame: session} of a target's calibration frames (params of screen_frames)."""
    sources = calibration_sources(wildcards)
    return {
        frame: session
        for frame, session in SESSION_OF[wildcards.target].items()
        if any(frame in frames for frames in sources.values())
    }


def master_owners(wildcards):
    """{session: {calibration type: session whose master it uses}} of a target (params of
    screen_frames)."""
    return MASTER_OWNER[wildcards.target]


def frame_filters(wildcards):
    """{light: filter} of a target (params of register, frames_table)."""
    return FILTER_OF[wildcards.target]


def registration_reference(wildcards):
    """The reference light for the register rule: registration.reference as configured (auto or
    a frame name); a light's name without its {session}_ prefix also names it, when one light of
    the target's sessions has it."""
    reference = config["registration"]["reference"]
    lights = FRAMES[wildcards.target]["light"]
    if reference == "auto" or reference in lights:
        return reference
    prefixed = [
        frame
        for frame in lights
        if frame == f"{SESSION_OF[wildcards.target][frame]}_{reference}"
    ]
    return prefixed[0] if len(prefixed) == 1 else reference


def palette(wildcards):
    return config["targets"][wildcards.target].get("palette", "none")


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
        for session, tag in SESSION_TAGS[target].items():
            for kind, producer in masters.items():
                if owns(target, kind, session):
                    files += expand(
                        producer.benchmark, target=target, kind=kind, session=tag
                    )
            if uses_sky_flat(target, session):
                files += expand(rules.sky_flat.benchmark, target=target, session=tag)
        lights = list(types["light"])
        files += expand(rules.calibrate_light.benchmark, target=target, frame=lights)
        files += expand(rules.register.benchmark, target=target)
        files += expand(rules.warp.benchmark, target=target, frame=lights)
        if len(FILTERS[target]) > 1:
            files += expand(
                rules.stack_filter.benchmark, target=target, filter=FILTERS[target]
            )
        else:
            files += expand(rules.stack.benchmark, target=target)
        if drizzles(target) and len(FILTERS[target]) > 1:
            files += expand(
                rules.drizzle_filter.benchmark, target=target, filter=FILTERS[target]
            )
        elif drizzles(target):
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
    if wildcards.target in FRAMES and drizzles(wildcards.target):
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
        several = len(FILTERS[target]) > 1
        outputs = [
            path
            for rule in (
                rules.frames_table,
                rules.combine_filters if several else rules.stack,
                rules.quality_plot,
            )
            for path in _outputs(rule, target=target)
        ]
        if drizzles(target) and several:
            outputs += _outputs(rules.combine_drizzles, target=target)
            outputs += _outputs(
                rules.drizzle_filter, target=target, filter=FILTERS[target]
            )
        elif drizzles(target):
            outputs += _outputs(rules.drizzle, target=target)
        if several:
            outputs += _outputs(
                rules.stack_filter, target=target, filter=FILTERS[target]
            )
        for session, tag in SESSION_TAGS[target].items():
            if owns(target, "bias", session):
                outputs += _outputs(rules.master_bias, target=target, session=tag)
            if owns(target, "dark", session):
                outputs += _outputs(
                    rules.master_dark, target=target, kind="dark", session=tag
                )
            if owns(target, "flat", session):
                outputs += _outputs(rules.master_flat, target=target, session=tag)
            elif uses_sky_flat(target, session):
                outputs += _outputs(rules.sky_flat, target=target, session=tag)
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


def drizzles(target):
    """Whether a deep-sky target is drizzled (drizzle.enabled): with several filters, each filter
    (drizzle_filter), combined into drizzle.fits like the filter stacks (combine_drizzles).
    """
    return DRIZZLE["enabled"]


def drizzle_lights(wildcards):
    """The lights a drizzle job drops (input function): calibrated, debayered or (Bayer drizzle) CFA mosaics."""
    folder = "calibrated_cfa" if BAYER_DRIZZLE else "calibrated"
    return [
        f"results/{wildcards.target}/{folder}/{frame}.fits"
        for frame in FRAMES[wildcards.target]["light"]
    ]


def filter_drizzle_lights(wildcards):
    """The lights of one filter that a drizzle_filter job drops (input function)."""
    folder = "calibrated_cfa" if BAYER_DRIZZLE else "calibrated"
    filters = FILTER_OF[wildcards.target]
    return [
        f"results/{wildcards.target}/{folder}/{frame}.fits"
        for frame in FRAMES[wildcards.target]["light"]
        if filters[frame] == wildcards.filter
    ]


def filter_drizzles(wildcards):
    """Every filter drizzle of a target with several filters (input of combine_drizzles)."""
    return {
        f: f"results/{wildcards.target}/filters/{f}/drizzle.fits"
        for f in FILTERS[wildcards.target]
    }


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
