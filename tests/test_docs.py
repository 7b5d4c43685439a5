"""The documentation runs and stays inside the repository: docstring examples
(doctests) pass, the README's doctest blocks and Python example work, its
Layout names every module, and no link leaves the repository."""

import doctest
import importlib
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, needs_fashion_mnist

PACKAGE = os.path.join(ROOT, "kdkeras")
MARKDOWN = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "saved_models", "README.md")] + [
    os.path.join(ROOT, "docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")
]


def _modules():
    """(dotted name, path relative to kdkeras/) of every module of the package."""
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), PACKAGE)
                dotted = "kdkeras." + rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
                yield dotted, rel


def _with_examples():
    return [m for m, rel in _modules() if ">>>" in open(os.path.join(PACKAGE, rel)).read()]


@pytest.mark.parametrize("module", _with_examples())
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0, result


def _readme_doctest_blocks():
    """The README's ```pycon blocks: Python console sessions that run as doctests."""
    return re.findall(r"```pycon\n(.*?)```", open(os.path.join(ROOT, "README.md")).read(), re.S)


def test_readme_doctest_blocks_run(tmp_path):
    """The README's console sessions (its 'Writing a method' example: a new method
    trained a step, checked against NumPy, saved and loaded) run as one doctest, in
    a fresh interpreter (the example registers a method name) inside `tmp_path`
    (it writes a .keras file)."""
    blocks = _readme_doctest_blocks()
    assert blocks and "register_method" in blocks[0]
    (tmp_path / "readme.txt").write_text("\n".join(blocks))
    code = ("import doctest, sys\n"
            "result = doctest.testfile('readme.txt', module_relative=False, optionflags=doctest.ELLIPSIS)\n"
            "print(result)\n"
            "sys.exit(1 if result.failed or not result.attempted else 0)\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout and (tmp_path / "logit_l2.keras").is_file()


def test_readme_layout_names_every_module():
    text = open(os.path.join(ROOT, "README.md")).read()
    layout = text[text.index("## Layout"):]
    missing = [rel for _, rel in _modules()
               if not rel.endswith("__init__.py") and rel.replace(os.sep, "/") not in layout]
    assert not missing, f"README Layout does not name {missing}"


@pytest.mark.parametrize("path", MARKDOWN, ids=os.path.basename)
def test_links_stay_inside_the_repository(path):
    text = open(path).read()
    assert "shared/docs" not in text and "http://" not in text and "https://" not in text
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
        assert resolved.startswith(ROOT + os.sep) and os.path.exists(resolved), target


def test_sources_point_to_no_document_outside_the_repository():
    for _, rel in _modules():
        assert "shared/docs" not in open(os.path.join(PACKAGE, rel)).read(), rel


@pytest.mark.e2e
@needs_fashion_mnist
def test_readme_python_example_runs(monkeypatch, tmp_path):
    """The README's 'Use it from Python' block, on 256 training images and one epoch."""
    import kdkeras

    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Use it from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    load = kdkeras.data.load
    monkeypatch.setattr(kdkeras.data, "load", lambda *a, **k: load(*a, **{"limit": 256, **k}))
    monkeypatch.chdir(ROOT)
    code = code.replace("epochs=5", "epochs=1").replace('"student.keras"', repr(str(tmp_path / "s.keras")))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "s.keras").exists()
    assert namespace["distiller"].student is namespace["student"]
