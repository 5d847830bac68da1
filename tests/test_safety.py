"""Data safety (issue 15, item 4): writes that cannot leave half a file, weight files that cannot
run code, and no shell command built from file names or settings.

The workflow runs on read-only inputs, and the fault runs (a killed run, two runs at once) are
in tests/test_faults.py.
"""

import ast
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT

from astroflow.io.atomic import atomic_write
from astroflow.io.fits import read_image
from astroflow.nets.training import _resume
from astroflow.nets.unet import WeightsError, load_weights
from astroflow.restoration.starnet import load_starless


def _python(code, **kwargs):
    """A Python child process running ``code`` with this repository's library on its path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs,
    )


def test_a_write_killed_half_way_leaves_the_old_file(tmp_path):
    """SIGKILL between the first bytes and the rename: the final path keeps its old content."""
    path = tmp_path / "frames.csv"
    path.write_text("old,complete\n")
    child = _python(f"""
        import sys, time
        from pathlib import Path
        from astroflow.io.atomic import atomic_write
        def write(tmp):
            tmp.write_text("new,half")
            print("written", flush=True)
            time.sleep(60)
            tmp.write_text("new,half,and,the,rest")
        atomic_write(Path({str(path)!r}), write)
    """)
    assert child.stdout.readline().strip() == "written"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert path.read_text() == "old,complete\n"
    # what the kill leaves is the hidden temporary file, never a file at a final path
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["frames.csv"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the rerun's write of the same file removes the killed writer's temporary file
    atomic_write(path, lambda tmp: tmp.write_text("new,complete\n"))
    assert [p.name for p in tmp_path.iterdir()] == ["frames.csv"]
    assert path.read_text() == "new,complete\n"


def test_fits_written_in_a_loop_and_killed_are_all_complete_or_absent(tmp_path):
    """A job killed at an arbitrary moment while writing FITS with astroflow.io.fits.write_image:
    every file at a final path reads back whole, with its exact data."""
    child = _python(f"""
        import numpy as np
        from astroflow.io.fits import write_image
        for i in range(1000):
            print("begin", i, flush=True)
            write_image({str(tmp_path)!r} + f"/out_{{i:03d}}.fits", np.full((1024, 2048), i, np.float32))
    """)
    for _ in range(3):  # a few files done, then killed at once: likely inside a write
        child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    finals = sorted(tmp_path.glob("out_*.fits"))
    assert 1 <= len(finals) <= 3
    for path in finals:
        data, _ = read_image(path)
        index = int(path.stem.split("_")[1])
        assert data.shape == (1024, 2048) and np.all(data == index), path


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a file that could run anything."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile(tmp_path):
    """A torch file whose pickle creates a marker file, and that marker's path."""
    marker = tmp_path / "pwned"
    path = tmp_path / "starless.pt"
    torch.save({"arch": {"name": "ResUNet"}, "state_dict": {}, "meta": _RunsCode(marker)}, path)
    # The payload is live: an unsafe load runs it.
    probe = tmp_path / "probe"
    torch.save(_RunsCode(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False).close()
    assert probe.exists()
    return path, marker


def test_hostile_weight_file_is_refused_without_running_its_code(hostile):
    path, marker = hostile
    for load in (load_weights, load_starless):
        with pytest.raises(WeightsError, match=rf"{re.escape(str(path))} is not a torch weight file.*Unpickling"):
            load(path)
        assert not marker.exists()


def test_hostile_training_checkpoint_is_refused_without_running_its_code(hostile):
    path, marker = hostile
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(path))} cannot be read.*Unpickling"):
        _resume(path, {}, None, None, None, None, "cpu")
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    """A new torch.load without weights_only=True would unpickle whatever a file holds."""
    calls = []
    for path in (ROOT / "scripts").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(
                    kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                    for kw in node.keywords
                )
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls, "no torch.load found: the check looks in the wrong place"
    assert [where for where, safe in calls if not safe] == []


SMK = sorted((ROOT / "rules").glob("*.smk")) + [ROOT / "Snakefile"]
# Directives that run a command line or arbitrary code in the workflow process: only script:
# (a Python file that gets its inputs as a Python object, never through a shell) is allowed.
COMMAND_DIRECTIVES = re.compile(r"^\s+(shell|run|wrapper|notebook|cwl|template_engine):", re.MULTILINE)


def test_rules_run_scripts_and_never_a_shell_command():
    """No rule has a shell: (or run:, wrapper:...) directive, every rule but the aggregating
    ones runs a script:, and no rule file calls shell() or subprocess: file names and config
    values reach the scripts only as snakemake.input/params, never in a command line."""
    rules = {}
    for smk in SMK:
        text = smk.read_text()
        assert not COMMAND_DIRECTIVES.findall(text), smk
        assert not re.search(r"\bshell\(|subprocess|os\.system|os\.popen", text), smk
        for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, re.MULTILINE):
            rules[match.group(1)] = match.group(2)
    assert len(rules) > 30
    without_script = sorted(name for name, body in rules.items() if "    script:" not in body)
    assert without_script == ["all"]


def _command_calls(tree):
    """(line, call) of every os.system/os.popen/subprocess call or shell=True in a module."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        shell = any(kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and not kw.value.value)
                    for kw in node.keywords)
        if shell or name in ("os.system", "os.popen") or name.startswith(("subprocess.", "os.exec", "os.spawn")):
            found.append((node.lineno, name))
    return found


def test_the_command_check_finds_a_shell_command():
    tree = ast.parse("import subprocess, os\nsubprocess.run(f'ls {name}', shell=True)\nos.system('x')\n")
    assert _command_calls(tree) == [(2, "subprocess.run"), (3, "os.system")]


def test_scripts_start_no_process():
    """The entry scripts and the library start no program: none can be handed a file name."""
    found = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for path in sorted((ROOT / "scripts").rglob("*.py"))
        for line, name in _command_calls(ast.parse(path.read_text()))
    ]
    assert found == []


WRITERS = re.compile(
    r"\.(writeto|to_csv|savefig|write_text|write_bytes)\(|\b(imwrite|torch\.save|np\.save[z]?|np\.savez_compressed|"
    r"json\.dump|yaml\.safe_dump)\(|open\([^)]*['\"][wax]b?['\"]"
)


def test_scripts_write_outputs_only_through_atomic_write():
    """Every write of an entry script goes through astroflow.io.atomic.atomic_write (or a
    library writer that does): a job killed mid-write leaves no half file at an output path."""
    direct = []
    for path in sorted(ROOT.glob("scripts/*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if WRITERS.search(line) and "atomic_write(" not in line and "lambda tmp" not in line:
                direct.append(f"{path.name}:{number}: {line.strip()}")
    assert direct == []


def test_atomic_write_check_sees_a_direct_write(tmp_path):
    assert WRITERS.search('table.to_csv(snakemake.output[0], index=False)')
    assert WRITERS.search('with open(snakemake.output.metrics, "w") as handle:')
    atomic_write(tmp_path / "x.txt", lambda tmp: tmp.write_text("x"))
    assert (tmp_path / "x.txt").read_text() == "x"


SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")
HOSTILE = ["$(touch pwned) `id`; rm -rf ~ & x|y", "-rf", "näme 'quoted' \"double\"", "a\nb", "*?[x]"]


def test_wildcard_values_hold_no_shell_metacharacter():
    """Wildcard values end up in job command lines (the SLURM plugin's sbatch --wrap goes through
    a shell): frame names (from file names) and filter names (from headers) are sanitised, and
    the schema refuses target, session and filter names outside the same safe set."""
    from astroflow.deepsky.palette import canonical_filter
    from astroflow.workflow.discovery import frame_name

    for text in HOSTILE:
        assert SAFE.match(frame_name(f"/data/{text}.fits")), text
        assert SAFE.match(canonical_filter(text)), text
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    target = schema["properties"]["targets"]
    session = target["additionalProperties"]["properties"]["sessions"]
    patterns = [
        target["propertyNames"]["pattern"],
        session["propertyNames"]["pattern"],
        session["additionalProperties"]["properties"]["filter"]["pattern"],
        target["additionalProperties"]["properties"]["filter"]["pattern"],
    ]
    for pattern in patterns:
        assert all(not re.search(pattern, text) for text in HOSTILE), pattern
        assert re.search(pattern, "m31_night-1.v2")
    common = (ROOT / "rules" / "common.smk").read_text()
    assert 'frame=r"[A-Za-z0-9_.-]+"' in common
