"""What an entry script depends on: the astroflow modules it imports and the packages they need.

Snakemake reruns a rule when its script changes, but not when a library module the script
imports changes; :func:`code_digest` closes that gap (the workflow passes it as a parameter), and
:func:`third_party_imports` lets the tests check that each rule's conda env provides them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sys
from pathlib import Path

PACKAGE = "astroflow"


def _imports(path):
    """(module, imported names) of every import statement of a Python file."""
    stat = Path(path).stat()
    return _parsed_imports(str(path), stat.st_mtime_ns, stat.st_size)


# Every rule's params digest the modules its script imports (rules/common.smk: library_code):
# parsed once per file and version, not once per script that reaches it (37 scripts reached
# each module again: 750 parses of 87 files, 1.3 s of CPU of every parse of the workflow).
@functools.cache
def _parsed_imports(path, mtime_ns, size):
    found = []
    for node in ast.walk(ast.parse(Path(path).read_text(), filename=path)):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return tuple(found)


def _library_root(script):
    # The folder that holds the astroflow package the script belongs to: the script's own
    # folder for an entry script, an ancestor for a module of a subpackage. A copy of the
    # workflow is digested from its own files, not from wherever astroflow is installed.
    start = Path(script).resolve().parent
    for folder in (start, *start.parents):
        if (folder / PACKAGE / "__init__.py").exists():
            return folder
    return start


def local_modules(script):
    """The astroflow modules a script imports, directly or through each other.

    Parameters
    ----------
    script : str or os.PathLike
        An entry script in ``scripts/`` (or a module anywhere in ``scripts/astroflow/``).

    Returns
    -------
    list of pathlib.Path
        Module files, sorted; imports inside functions count too.
    """
    root = _library_root(script)
    found, todo = set(), [Path(script).resolve()]
    while todo:
        for module, names in _imports(todo.pop()):
            if module.split(".")[0] != PACKAGE:
                continue
            candidates = [root / (module.replace(".", "/") + ".py")]
            candidates += [root / module.replace(".", "/") / f"{name}.py" for name in names]
            for path in candidates:
                if path.exists() and path not in found:
                    found.add(path)
                    todo.append(path)
    return sorted(found)


def third_party_imports(script):
    """Top-level names of the non-standard-library packages a script needs, through astroflow.

    Parameters
    ----------
    script : str or os.PathLike

    Returns
    -------
    set of str
        Import names (``cv2``, ``skimage``...), not distribution names.
    """
    names = set()
    for path in [Path(script).resolve(), *local_modules(script)]:
        for module, _ in _imports(path):
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top not in (PACKAGE, "__future__"):
                names.add(top)
    return names


def code_digest(script):
    """sha256 (hex, 16 characters) of the astroflow modules a script imports.

    Parameters
    ----------
    script : str or os.PathLike

    Returns
    -------
    str
        Changes whenever one of those modules changes, and only then.
    """
    digest = hashlib.sha256()
    for path in local_modules(script):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def sha256_file(path):
    """SHA-256 of a file's bytes.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        64 lower-case hexadecimal digits.

    Raises
    ------
    OSError
        If the file cannot be opened or read.
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
