"""The CI's own pieces: every script and benchmark imports, the shell scripts parse, the `lowest` nox
session's pins equal the lower bounds pyproject.toml declares, and .ci/check_versions.py catches a
wrong version."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
SHELL = sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "benchmarks").glob("*.sh")) + [ROOT / ".ci" / "run"]
LOWEST = ROOT / ".ci" / "constraints-lowest.txt"


def _load(path: Path):
    """Import a file as a module without running its ``if __name__ == "__main__"`` block."""
    spec = importlib.util.spec_from_file_location(f"_ci_import_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_script_and_benchmark_imports(path: Path, capsys):
    """A moved function (e.g. wilson_interval, now in robustness.stats) breaks the import here, in CI,
    not in the hands of the next person who runs the script; importing runs nothing."""
    module = _load(path)
    assert callable(getattr(module, "main", None)), f"{path.name}: no main() to run under __main__"
    assert capsys.readouterr().out == "", f"{path.name} printed on import: its work must sit in main()"


def test_scripts_and_benchmarks_are_found():
    names = {p.name for p in SCRIPTS}
    assert {"clean_table.py", "bench_distortions.py", "bench_pipeline.py"} <= names


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("path", SHELL, ids=lambda p: p.name)
def test_shell_scripts_parse(path: Path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{path}: {result.stderr}"


def _pins() -> dict[str, Version]:
    return _load(ROOT / ".ci" / "check_versions.py").pinned(LOWEST)


def _declared_lower_bounds() -> dict[str, Version]:
    """``{name: version}`` of every ``>=`` or ``==`` bound in the dependencies and the dev extra."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    bounds = {}
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(text)
        for specifier in requirement.specifier:
            if specifier.operator in (">=", "=="):
                bounds[requirement.name] = Version(specifier.version)
    return bounds


def test_lowest_pins_equal_the_declared_lower_bounds():
    """`lowest` tests the minimum pyproject.toml promises: each pin is that package's declared lower bound
    (compared as public versions: a local label such as ``+cpu`` names a build of the same release)."""
    pins, bounds = _pins(), _declared_lower_bounds()
    for name in (
        "pytest",
        "pytest-xdist",
        "hypothesis",
        "pytest-benchmark",
        "selenium",
        "torch",
        "torchvision",
        "timm",
        "ray",
    ):
        assert name in pins, f"{LOWEST.name} does not pin {name}"
        assert name in bounds, f"pyproject.toml declares no lower bound for {name}"
        assert Version(pins[name].public) == bounds[name], f"{name}: pinned {pins[name]}, declared >= {bounds[name]}"


def test_check_versions_accepts_the_installed_and_names_a_wrong_pin(tmp_path, capsys):
    check = _load(ROOT / ".ci" / "check_versions.py")
    installed = metadata.version("pytest")
    good = tmp_path / "good.txt"
    good.write_text(f"# comment\npytest=={installed}\n\n")
    assert check.main([str(good)]) == 0
    bad = tmp_path / "bad.txt"
    bad.write_text(f"pytest=={installed}.1\nno-such-distribution-here==1.0\n")
    assert check.main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"pytest: installed {installed}, pinned {installed}.1" in err
    assert "no-such-distribution-here: not installed" in err
    loose = tmp_path / "loose.txt"
    loose.write_text("pytest>=8\n")
    with pytest.raises(ValueError, match=r"loose.txt:1: 'pytest>=8' is not an exact"):
        check.pinned(loose)


def test_torch_and_torchvision_are_ranges_not_pins():
    """pyproject.toml gives torch and torchvision a range (lower bound = the `lowest` pin, checked above)
    with an upper bound, not an exact pin, so a project that uses robustness can pick its torch."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in map(Requirement, project["dependencies"]):
        if requirement.name in ("torch", "torchvision"):
            operators = sorted(spec.operator for spec in requirement.specifier)
            assert operators == ["<", ">="], f"{requirement}: want a range >=LOWEST,<NEXT_MAJOR"


def _nox_sessions() -> list[str]:
    """``nox.options.sessions`` as noxfile.py sets it (read from its text: nox need not be installed)."""
    import ast

    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "nox.options.sessions":
            return ast.literal_eval(node.value)
    raise AssertionError("noxfile.py sets no nox.options.sessions")


def test_ci_runs_every_default_nox_session():
    """.ci/run's `nox -s` list names every session `nox` runs by default (lint, lowest, latest, ...)."""
    ci = (ROOT / ".ci" / "run").read_text()
    line = next(line for line in ci.splitlines() if "-m nox" in line and " -s " in line)
    listed = line.split(" -s ", 1)[1].split(" --", 1)[0].split()
    sessions = _nox_sessions()
    assert {"lint", "lowest", "latest"} <= set(sessions)
    assert set(sessions) <= set(listed), f".ci/run runs {listed}, noxfile.py's defaults are {sessions}"


def test_ci_runs_both_nox_sessions_and_the_readme_says_so():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "nox" in ci  # the sessions it runs: test_ci_runs_every_default_nox_session
    readme_head = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    assert "nox -s lowest latest" in readme_head


def test_pre_commit_runs_the_ruff_that_ci_runs():
    """.pre-commit-config.yaml's ruff hook and the `lint` nox session use one ruff release (rules change
    between releases, so a commit hook and CI that disagree would pass and fail the same tree)."""
    from ruamel.yaml import YAML

    config = YAML(typ="safe").load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    repo = next(r for r in config["repos"] if r["repo"].endswith("/ruff-pre-commit"))
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    pinned = noxfile.split('RUFF = "ruff==', 1)[1].split('"', 1)[0]
    assert repo["rev"] == f"v{pinned}"
    assert "ruff-check" in {hook["id"] for hook in repo["hooks"]}
