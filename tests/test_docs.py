"""The documentation runs and stays inside the repository: docstring examples
(doctests) pass, the README's Python example works, its Layout names every
module, and no link leaves the repository."""

import doctest
import importlib
import os
import re

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
