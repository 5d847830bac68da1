"""Every rule runs in a small pinned conda env that provides everything its script imports."""

import re
from pathlib import Path

import pytest
import yaml

from astroflow.workflow.provenance import third_party_imports

ROOT = Path(__file__).resolve().parents[1]

# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "cv2": "opencv-python-headless",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "colour_demosaicing": "colour-demosaicing",
}
# conda-forge names that differ from PyPI's
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib", "pytorch": "torch"}


def parse_rules():
    """rule name -> {'conda': path, 'script': path} from the .smk files (snakefmt layout)."""
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        current = None
        lines = smk.read_text().splitlines()
        for i, line in enumerate(lines):
            if m := re.match(r"^rule (\w+):", line):
                current = rules.setdefault(m.group(1), {"file": smk.name})
            elif current is not None and (m := re.match(r"^    (conda|script):\s*$", line)):
                value = lines[i + 1].strip().strip(",").strip('"')
                current[m.group(1)] = (smk.parent / value).resolve()
    return rules


def imported_distributions(script):
    """Distributions a script needs, through the astroflow modules it imports."""
    return {DISTRIBUTIONS.get(name, name).lower() for name in third_party_imports(script)}


def env_packages(env_file):
    """distribution -> (version spec, channel) of a conda env file."""
    spec = yaml.safe_load(env_file.read_text())
    packages = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for pip_dep in dep.get("pip", []):
                name, _, version = pip_dep.partition("==")
                packages[name.lower()] = (version, "pip")
        else:
            name, _, version = dep.partition("=")
            packages[CONDA_TO_PYPI.get(name, name).lower()] = (version, "conda")
    return spec, packages


def requirement_pins():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


RULES = parse_rules()
SCRIPTED = {name: rule for name, rule in RULES.items() if "script" in rule}


def test_rules_are_found():
    assert {"ingest_frame", "calibrate_light", "register", "stack"} <= set(SCRIPTED)


@pytest.mark.parametrize("rule", sorted(SCRIPTED))
def test_rule_env_provides_every_import(rule):
    info = SCRIPTED[rule]
    assert "conda" in info, f"rule {rule} ({info['file']}) has no conda: env"
    assert info["conda"].exists(), f"rule {rule}: env file {info['conda']} is missing"
    _, packages = env_packages(info["conda"])
    needed = imported_distributions(info["script"])
    missing = sorted(needed - set(packages))
    assert not missing, f"rule {rule}: {info['conda'].name} lacks {missing} (imported by its script)"


@pytest.mark.parametrize("env_file", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_is_small_pinned_and_matches_requirements(env_file):
    spec, packages = env_packages(env_file)
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    pins = requirement_pins()
    for name, (version, _channel) in packages.items():
        assert re.fullmatch(r"\d+(\.\d+)+", version), f"{env_file.name}: {name} is not pinned exactly"
        if name in pins:
            assert version == pins[name], f"{env_file.name}: {name}={version}, requirements {pins[name]}"
    # 20: calibrate.yaml now carries the sky flat's star matching and the flat network (torch),
    # torch.yaml the flat network's real-frame measures; narrower import chains would shrink them.
    assert len(packages) <= 20, f"{env_file.name} is not small"


def test_every_env_is_used():
    used = {info["conda"] for info in RULES.values() if "conda" in info}
    assert used == {p.resolve() for p in (ROOT / "envs").glob("*.yaml")}


def env_check_summary():
    """Counts for the closing note: rules, envs and imports verified."""
    imports = sum(len(imported_distributions(r["script"])) for r in SCRIPTED.values())
    envs = {r["conda"] for r in SCRIPTED.values()}
    return len(SCRIPTED), len(envs), imports


def test_summary_counts():
    rules, envs, imports = env_check_summary()
    print(f"env check: {rules} rules, {envs} envs, {imports} rule-import pairs verified")
    assert rules >= 10 and envs == len(list((ROOT / "envs").glob("*.yaml"))) and imports > rules
