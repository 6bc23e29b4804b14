"""The package's folders draw its architecture, and the imports keep to it (issue 15).

Layers, bottom to top: a module imports (at its top or inside a function) only from its own
layer or the ones below, so nothing reaches back up; the pipeline's stages import only the
stages before them. Python's API names stay where the README says.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "jaccli"

LAYERS = [
    {"jaccli.errors", "jaccli.trees", "jaccli.__version__"},  # shared: exit codes, result keys
    {"jaccli.io"},  # FUNC loading, input sources, output writers
    {"jaccli.report"},  # timing table, text, pictures, progress
    {"jaccli.autodiff"},  # engines, routes, kernels, the function's first call
    {"jaccli.scale"},  # memory plan, chunks, streaming, torchrun
    {"jaccli.checking"},  # jac check's rows
    {"jaccli.pipeline.stages"},  # request, problem, plan, compute, delivery (ordered below)
    {"jaccli.sparse", "jaccli.linalg"},  # commands that plug their plans into the stages
    {"jaccli.pipeline"},  # run(), run_check(): which pipeline a request takes
    {"jaccli.cli", "jaccli.transforms", "jaccli", "jaccli.__main__"},  # front ends, public names
]
STAGES = ["request", "problem", "plan", "compute", "delivery"]


def _module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, name: str) -> str:
    """``from module import name``: the submodule when ``name`` is one, else ``module``."""
    candidate = ROOT / (f"{module}.{name}".replace(".", "/"))
    if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
        return f"{module}.{name}"
    if (module, name) == ("jaccli", "__version__"):  # a string the package root defines
        return "jaccli.__version__"
    return module


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaccli":
            found.update(_resolve(node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "jaccli")
    return found


def _layer(module: str) -> tuple[int, int]:
    """(layer, stage index) of a module: the longest matching prefix in LAYERS."""
    parts = module.split(".")
    if parts[:2] == ["jaccli", "pipeline"] and len(parts) > 2 and parts[2] in STAGES:
        return _index("jaccli.pipeline.stages"), STAGES.index(parts[2])
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        for i, layer in enumerate(LAYERS):
            if prefix in layer:
                return i, 0
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it")


def _index(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    module = _module_name(path)
    here = _layer(module)
    upward = [m for m in sorted(_imports(path)) if _layer(m)[0] > here[0]]
    assert not upward, f"{module} (layer {here[0]}) reaches up to {upward}"


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_imports_only_the_stages_before_it(stage):
    path = PACKAGE / "pipeline" / f"{stage}.py"
    mine = STAGES.index(stage)
    pipeline = [m for m in _imports(path) if m == "jaccli.pipeline" or m.startswith("jaccli.pipeline.")]
    later = [m for m in pipeline if m.rpartition(".")[2] not in STAGES[:mine]]
    assert not later, f"stage {stage} imports {later}, a later stage or the package"


def test_the_layers_catch_an_upward_import(tmp_path):
    """The check itself can fail: an io module importing the pipeline is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from jaccli.pipeline import run\n")
    assert _layer("jaccli.io.bad")[0] < _layer(next(iter(_imports(bad))))[0]


def test_every_subpackage_has_a_docstring_naming_its_concern():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(ROOT)} has no docstring saying what the package holds"


def test_the_documented_python_api_still_imports():
    code = (
        "from jaccli import Request, run, run_check, Outcome, compute, load_function, read_source\n"
        "import jaccli.transforms\n"
        "assert jaccli.transforms.compute is compute\n"
        "from jaccli.transforms import COMMANDS\n"
        "assert 'jvp' in COMMANDS\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
