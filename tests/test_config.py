"""config.yaml and its schema agree: every setting documented, defaulted, and equal."""

from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def settings(schema, prefix=""):
    for key, prop in schema.get("properties", {}).items():
        if key == "targets":
            continue
        if prop.get("type") == "object" and "properties" in prop:
            yield from settings(prop, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", prop


def lookup(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("name,prop", list(settings(SCHEMA)), ids=lambda v: v if isinstance(v, str) else "")
def test_every_setting_is_documented_defaulted_and_in_config_yaml(name, prop):
    assert prop.get("description"), f"{name} has no description"
    assert "default" in prop, f"{name} has no default"
    assert lookup(CONFIG, name) == prop["default"], f"config.yaml and schema disagree on {name}"


def test_config_yaml_is_valid():
    jsonschema.validate(CONFIG, SCHEMA)


def test_unknown_key_is_invalid():
    bad = dict(CONFIG, stacking=dict(CONFIG["stacking"], kappa=3))
    with pytest.raises(jsonschema.ValidationError, match="kappa"):
        jsonschema.validate(bad, SCHEMA)
