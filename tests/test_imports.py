"""What importing costs and where modules come from: `import kdkeras`, the
analysis and the results page's Markdown and plots load no TensorFlow (checked
in a fresh interpreter, where the test process's own imports cannot hide one);
every public name still resolves to what it names; nothing edits `sys.path`."""

import ast
import os
import subprocess
import sys

import pytest

import kdkeras
from tests.helpers import ROOT

#: a fresh interpreter imports the TF-free parts and renders the archived experiments' section
TF_FREE = """
import importlib.util, os, sys, tempfile
import kdkeras, kdkeras.analysis, kdkeras.vis
from kdkeras.analysis import experiments, stats
from kdkeras.vis import accuracy_bars, markdown_table
spec = importlib.util.spec_from_file_location("results_doc", os.path.join("benchmarks", "results_doc.py"))
results_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_doc)
runs, _ = results_doc.load_runs([os.path.join("docs", "results_runs", "resnet20_resnet8")])
assert runs, "no archived runs"
found = experiments.load_experiments([os.path.join("docs", "results_runs", "experiments")])
with tempfile.TemporaryDirectory() as page_dir:
    lines = results_doc.experiment_markdown(found, page_dir)
    plots = os.listdir(os.path.join(page_dir, "results_plots"))
assert len(plots) == len(found) > 0 and any(line.startswith("| ") for line in lines), (plots, lines[:5])
# the whole page, by its own command, into a temporary folder
command = open(os.path.join("docs", "results.md")).read().split("\\n")[2].split("`")[1].split()[2:]
argv = [a for a in command if not a.startswith(("--output=", "--readme_output=", "--archive="))]
with tempfile.TemporaryDirectory() as page_dir:
    results_doc.main([*argv, f"--output={page_dir}/results.md", f"--readme_output={page_dir}/readme.md"])
    assert "| kd |" in open(f"{page_dir}/results.md").read()
heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras_vis") if m in sys.modules)
print("loaded:", heavy)
"""


def _env(**extra):
    """This environment with this checkout first on the import path."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def test_analysis_and_the_results_page_load_no_tensorflow():
    proc = subprocess.run([sys.executable, "-c", TF_FREE], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=_env(MPLBACKEND="Agg"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "loaded: []" in proc.stdout, proc.stdout


def test_the_issue_one_liner_passes():
    code = "import kdkeras.analysis, sys; assert 'tensorflow' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("package", ["kdkeras", "kdkeras.vis"])
def test_every_public_name_resolves_and_is_listed(package):
    import importlib

    module = importlib.import_module(package)
    assert module.__all__ and set(module.__all__) <= set(dir(module))
    for name in module.__all__:
        value = getattr(module, name)
        origin, attribute = module._EXPORTS[name]
        target = importlib.import_module(origin)
        assert value is (target if attribute is None else getattr(target, attribute)), name
    with pytest.raises(AttributeError, match="no attribute 'Distillerr'"):
        module.Distillerr  # noqa: B018


def test_the_public_names_are_the_classes_and_modules_they_name():
    from kdkeras import Distiller, Stage, run_stages
    from kdkeras.distiller import Distiller as distiller_class
    from kdkeras.stages import Stage as stage_class
    from kdkeras.stages import run_stages as run_stages_function

    assert Distiller is distiller_class and Stage is stage_class and run_stages is run_stages_function
    assert kdkeras.methods.KD.__module__ == "kdkeras.methods.logits"
    assert kdkeras.vis.markdown_table.__module__ == "kdkeras.vis.report"


def _edits_sys_path(tree: ast.AST) -> list[int]:
    """Lines that change `sys.path` (a call on it, an assignment to it) or call `site.addsitedir`."""
    def is_sys_path(node):
        return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                and node.value.id == "sys")
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if is_sys_path(node.func.value) or (node.func.attr == "addsitedir"):
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_sys_path(t) or (isinstance(t, ast.Subscript) and is_sys_path(t.value)) for t in targets):
                lines.append(node.lineno)
    return sorted(lines)


def test_nothing_edits_sys_path():
    edits = []
    for folder in ("kdkeras", "recipes", "benchmarks", "tests", "scripts"):
        for parent, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(parent, name)
                    edits += [f"{os.path.relpath(path, ROOT)}:{line}"
                              for line in _edits_sys_path(ast.parse(open(path).read()))]
    assert not edits, f"sys.path edited at {edits}: run scripts with the package installed (pip install -e .)"


def test_the_sys_path_check_finds_an_edit():
    tree = ast.parse("import sys, site\nsys.path.insert(0, 'x')\nsys.path[:0] = ['y']\nsite.addsitedir('z')\n"
                     "sys.path = []\nprint(sys.path[0])\n")
    assert _edits_sys_path(tree) == [2, 3, 4, 5]
