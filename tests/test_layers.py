"""The package's layers read top-down (docs/architecture.md): every import of one package module by
another, at module level or inside a function, points to a lower layer, so there is no import cycle and
a module never reaches up to the shells (the CLI, the pytest plugin). A new module must be given a layer
here and a paragraph on the architecture page."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "robustness"

#: Lowest first. A module may import modules of lower layers only (``models`` is one package: its
#: own internal order is checked by tests/test_models.py).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_checks", "_io", "names", "settings", "weights", "images", "_restrict"),
    ("distortions", "models"),
    ("conditions", "testing", "labels", "device_pipeline"),
    ("datasets", "cache", "distortion_store", "stats", "ray_engine"),
    ("evaluation", "thresholds"),
    ("report", "runs", "gate"),
    ("html_report", "activations"),
    ("cli", "pytest_plugin"),
    ("__main__", "__init__"),
)
LAYER = {module: index for index, modules in enumerate(LAYERS) for module in modules}


def _module(path: Path) -> str:
    """``models`` for anything in robustness/models/, else the file's stem (``__init__`` for the package)."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else path.stem


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports anywhere in its code (relative or absolute imports)."""
    found = set()
    inside_models = len(path.relative_to(PACKAGE).parts) > 1
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            if inside_models and node.level == 1:
                continue  # robustness.models.x importing its siblings
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found.update(name.split(".")[0] for name in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robustness."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("robustness."))
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {_module(path) for path in FILES} == set(LAYER)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    module = _module(path)
    upward = {
        name: LAYER.get(name)
        for name in _imports(path)
        if name not in ("__version__",) and name != module and LAYER.get(name, 99) >= LAYER[module]
    }
    assert not upward, f"robustness/{path.relative_to(PACKAGE)} (layer {LAYER[module]}) imports {upward}"


#: Modules that must import without torch (the layer table's "torch at import" column).
TORCH_FREE = (
    "names",
    "settings",
    "weights",
    "images",
    "distortions",
    "conditions",
    "testing",
    "labels",
    "datasets",
    "cache",
    "distortion_store",
    "stats",
    "ray_engine",
    "runs",
    "thresholds",
    "gate",
    "cli",
    "pytest_plugin",
)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_core(module):
    """Imported in a fresh interpreter, the module loads no torch (nor torchvision)."""
    import os
    import subprocess
    import sys

    code = f"import sys, robustness.{module}; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))  # this checkout's code, wherever robustness is installed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]", f"import robustness.{module} loaded {out.strip()}"
