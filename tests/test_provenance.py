from astroflow.workflow.provenance import code_digest, local_modules, third_party_imports


def make_package(tmp_path):
    pkg = tmp_path / "astroflow"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import numpy\nfrom astroflow.b import f\n")
    (pkg / "b.py").write_text("import os\n\ndef f():\n    import cv2\n")
    (pkg / "c.py").write_text("import pandas\n")
    script = tmp_path / "run.py"
    script.write_text("from astroflow import a\nimport yaml\n")
    return pkg, script


def test_local_modules_and_imports_follow_the_import_graph(tmp_path):
    pkg, script = make_package(tmp_path)
    assert local_modules(script) == [pkg / "a.py", pkg / "b.py"]
    assert third_party_imports(script) == {"numpy", "cv2", "yaml"}


def test_code_digest_changes_with_used_modules_only(tmp_path):
    pkg, script = make_package(tmp_path)
    before = code_digest(script)
    (pkg / "c.py").write_text("import pandas  # unused by run.py\n")
    assert code_digest(script) == before
    (pkg / "b.py").write_text("import os\n\ndef f():\n    return 2\n")
    assert code_digest(script) != before
