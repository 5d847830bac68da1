"""Messages for a configuration that fails the schema, in the words of the schema's authors.

The schema (``schemas/config.schema.yaml``) states which keys each target kind takes as
``if``/``then`` branches with a ``description``; a JSON-schema validator would only say
"'flats' is not one of [...]". :func:`kind_errors` turns such failures into one sentence naming
the target, the rule and the key.
"""

from __future__ import annotations

import functools
import os

import yaml
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

__all__ = [
    "SESSION_KEYS",
    "ConfigError",
    "configfile_targets",
    "kind_errors",
    "session_errors",
    "validate_config",
]


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the file or target and the key."""


def kind_errors(config, schema):
    """Sentences for the keys that a target's kind does not take.

    Parameters
    ----------
    config : dict
        The configuration as loaded (before defaults are filled in).
    schema : dict
        The configuration schema; a ``then`` branch with a ``description`` under
        ``targets`` supplies the wording.

    Returns
    -------
    list of str
        ``"target 'p': a planetary target takes lights and optional darks, not flats"``, one
        per offending key, in the validator's order; empty when there is none.
    """
    validator = validator_for(schema)(schema)
    messages = []
    for error in validator.iter_errors(config):
        node, described = schema, None
        for key in error.absolute_schema_path:
            node = node[key]
            if key == "then" and isinstance(node, dict):
                described = node.get("description")
        path = list(error.absolute_path)
        if described and len(path) == 2 and path[0] == "targets":
            messages.append(f"target '{path[1]}': {described}, not {error.instance}")
    return messages


#: keys of one session of a deep-sky target, and the frame folders a one-session target gives
SESSION_KEYS = ("lights", "darks", "flats", "bias", "darkflats", "filter")
_FOLDER_KEYS = ("lights", "darks", "flats", "bias", "darkflats")


def session_errors(config):
    """Sentences for deep-sky targets whose ``sessions`` are malformed, checked before the schema.

    Parameters
    ----------
    config : dict
        The configuration as loaded.

    Returns
    -------
    list of str
        One sentence per problem, naming the target (and session): frame folders given both
        directly and as sessions, ``sessions`` empty or not a mapping, a session that is not a
        mapping, has unknown keys or no ``lights``. Empty when there is none.
    """
    messages = []
    targets = config.get("targets") if isinstance(config, dict) else None
    if not isinstance(targets, dict):  # the schema says what targets must be
        return messages
    for target, settings in targets.items():
        if not isinstance(settings, dict) or settings.get("kind") != "deep-sky":
            continue
        if "sessions" not in settings:
            continue
        sessions = settings["sessions"]
        mixed = [key for key in _FOLDER_KEYS if key in settings]
        if mixed:
            messages.append(
                f"target '{target}': give the frames either as sessions or directly, not both "
                f"(move {', '.join(mixed)} into a session)"
            )
        if not isinstance(sessions, dict) or not sessions:
            messages.append(
                f"target '{target}': sessions must map session names to their folders, "
                f"e.g. sessions: {{night1: {{lights: ...}}}}"
            )
            continue
        for name, session in sessions.items():
            where = f"target '{target}', session '{name}'"
            if not isinstance(session, dict):
                messages.append(f"{where}: a session is a mapping of lights, darks, flats, bias, darkflats, filter")
                continue
            unknown = sorted(set(session) - set(SESSION_KEYS))
            if unknown:
                messages.append(
                    f"{where}: unknown key(s) {', '.join(unknown)} "
                    f"(a session takes {', '.join(SESSION_KEYS)})"
                )
            if "lights" not in session:
                messages.append(f"{where}: no lights given")
    return messages


def configfile_targets(paths):
    """The targets named in configuration files, later files replacing earlier ones' targets.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        YAML configuration files (Snakemake's ``--configfile``).

    Returns
    -------
    dict
        Target name -> its settings, as written (validated later by :func:`validate_config`).

    Raises
    ------
    ConfigError
        Naming the file: when it is not YAML, not a mapping, or its ``targets`` is given but
        is not a mapping.
    OSError
        If a file cannot be read.
    """
    targets = {}
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            try:
                data = yaml.safe_load(handle)
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: not a YAML file: {err}") from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a YAML mapping")
        found = data.get("targets")
        if found is None:
            continue
        if not isinstance(found, dict):
            raise ConfigError(
                f"{path}: targets must map target names to their settings, "
                f"e.g. targets: {{m42: {{kind: deep-sky, lights: ...}}}}"
            )
        targets.update(found)
    return targets


def validate_config(config, schema_path, *, skip_schema=False):
    """Check a configuration against the schema and fill in the schema's defaults.

    The checks of the workflow, in its order: :func:`session_errors` first, then the schema
    (Snakemake's ``snakemake.utils.validate``, a JSON-schema validator that also sets the
    ``default`` of every missing key), its failures put in words by :func:`kind_errors` where
    the schema has a description for them.

    Parameters
    ----------
    config : dict
        The configuration as loaded; defaults are filled in, in place.
    schema_path : str or os.PathLike
        The configuration schema (``schemas/config.schema.yaml``), an absolute path.
    skip_schema : bool, optional
        Check the sessions only: for a host workflow that uses astroflow as a module with
        ``skip_validation: True`` (Snakemake's ``workflow.modifier.skip_validation``, which
        ``validate`` reads from its caller's globals, here not the Snakefile's).

    Raises
    ------
    ConfigError
        ``"invalid configuration: ..."`` with the sentences of :func:`session_errors` or
        :func:`kind_errors`, else the validator's most relevant failure in one line (where and
        what, ``"targets/m42/lights: 3 is not of type 'string'"``, jsonschema's ``best_match``);
        also for a ``config`` that is not a mapping.
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    if not isinstance(config, dict):
        raise ConfigError(f"invalid configuration: a mapping is needed, not {type(config).__name__}")
    messages = session_errors(config)
    if messages:
        raise ConfigError(f"invalid configuration: {'; '.join(messages)}")
    if skip_schema:
        return
    try:
        validate(config, str(schema_path))
    except WorkflowError as err:
        schema = _schema(os.fspath(schema_path), os.stat(schema_path).st_mtime_ns)
        messages = kind_errors(config, schema) or _first_error(config, schema) or [str(err)]
        raise ConfigError(f"invalid configuration: {'; '.join(messages)}") from None


def _first_error(config, schema):
    # The validator's most relevant failure in one line, where it is: Snakemake's own message
    # prints the whole schema under it.
    error = best_match(validator_for(schema)(schema).iter_errors(config))
    if error is None:
        return []
    where = "/".join(str(part) for part in error.absolute_path)
    return [f"{where}: {error.message}" if where else error.message]


@functools.lru_cache(maxsize=4)
def _schema(path, mtime_ns):
    # parsing the 1400-line schema takes 0.1 s: once per file version, not once per check
    with open(path) as handle:
        return yaml.safe_load(handle)
