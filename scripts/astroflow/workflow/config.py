"""Messages for a configuration that fails the schema, in the words of the schema's authors.

The schema (``schemas/config.schema.yaml``) states which keys each target kind takes as
``if``/``then`` branches with a ``description``; a JSON-schema validator would only say
"'flats' is not one of [...]". :func:`kind_errors` turns such failures into one sentence naming
the target, the rule and the key.
"""

from __future__ import annotations

from jsonschema.validators import validator_for

__all__ = ["kind_errors"]


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
