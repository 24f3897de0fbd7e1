"""The CI: lint, then the test suite with the oldest and the newest supported versions.

    pip install nox && nox -s lint lowest latest docs   # what .ci/run runs
    nox -s lowest latest                                # the test matrix
    nox -s lowest -- tests/test_stats.py -x             # arguments after -- go to pytest
    nox -s lint                                         # ruff check + ruff format --check (pyproject.toml [tool.ruff])
    nox -s docs                                         # the documentation site, mkdocs build --strict

Each session builds a fresh virtualenv (``nox.options.reuse_venv = "no"``), so a green run never
depends on what the machine had preinstalled:

* ``lowest``: ``pip install -c .ci/constraints-lowest.txt -e '.[dev]'``, i.e. exactly the minimum
  versions of pytest, pytest-xdist, hypothesis, pytest-benchmark, selenium, torch and torchvision that
  pyproject.toml declares, checked after the install by
  ``.ci/check_versions.py``;
* ``latest``: ``pip install --upgrade --upgrade-strategy eager -e '.[dev]'``, the newest versions pip
  can install;
* ``lint``: ``ruff check`` and ``ruff format --check`` of the whole tree with the settings of ``[tool.ruff]`` (the ruff version is
  :data:`RUFF`, the one ``.pre-commit-config.yaml`` names; a test checks that they agree).

The two test sessions print ``pytest --version`` and the test tools' versions and run
``python -m pytest -W error ...``: every warning is an error (the plugin's own, pytest's, hypothesis'
and the libraries'), except those the project's ``filterwarnings`` ini option lists (torch's own
DeprecationWarnings), which pytest applies on top of the interpreter's ``-W error``.

``docs`` installs the ``docs`` extra and runs ``mkdocs build --strict`` (a broken link, a missing page or a
failing reference-table generator in ``docs/hooks.py`` fails it). ``.ci/run`` runs all four.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "lowest", "latest", "docs"]
nox.options.reuse_venv = "no"
nox.options.error_on_external_run = True

LOWEST_CONSTRAINTS = ".ci/constraints-lowest.txt"
#: The ruff release the lint session and the pre-commit hook run (rules can change between releases).
RUFF = "ruff==0.16.9"
#: Distributions whose versions head each session's log.
TEST_TOOLS = (
    "pytest",
    "pytest-xdist",
    "execnet",
    "hypothesis",
    "pytest-benchmark",
    "pluggy",
    "selenium",
    "torch",
    "torchvision",
    "numpy",
    "pillow",
)
#: Quiet installs; a failed install still prints pip's error.
PIP_QUIET = ("--quiet", "--disable-pip-version-check", "--progress-bar", "off")


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _run_tests(session: nox.Session) -> None:
    """Print the versions under test, then run pytest with warnings as errors."""
    session.run("python", "-m", "pytest", "--version")
    freeze = (
        session.run("python", "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check", silent=True) or ""
    )
    wanted = {_canonical(name) for name in TEST_TOOLS}
    lines = [line for line in freeze.splitlines() if _canonical(line.split("==")[0]) in wanted]
    session.log("test tools: " + ", ".join(lines))
    # Interpreter-level -W error (PYTHONWARNINGS reaches xdist workers too): pytest applies its ini
    # filterwarnings on top of it, so the project's own ignores still hold while everything else fails.
    session.run(
        "python",
        "-W",
        "error",
        "-m",
        "pytest",
        "-W",
        "error::pytest.PytestWarning",
        "-p",
        "no:cacheprovider",
        "--durations=15",  # the slowest tests, so a slow addition shows in every CI log
        *session.posargs,
        env={"PYTHONWARNINGS": "error", "HF_HUB_OFFLINE": "1"},
    )


@nox.session
def lowest(session: nox.Session) -> None:
    """The oldest supported versions (``.ci/constraints-lowest.txt``), verified after the install."""
    session.install(*PIP_QUIET, "-c", LOWEST_CONSTRAINTS, "-e", ".[dev]")
    session.run("python", ".ci/check_versions.py", LOWEST_CONSTRAINTS)
    _run_tests(session)


@nox.session
def latest(session: nox.Session) -> None:
    """The newest versions pip can install here."""
    session.install(*PIP_QUIET, "--upgrade", "--upgrade-strategy", "eager", "-e", ".[dev]")
    _run_tests(session)


@nox.session
def lint(session: nox.Session) -> None:
    """``ruff check`` and ``ruff format --check`` of the whole tree (``[tool.ruff]`` in pyproject.toml); no install."""
    session.install(*PIP_QUIET, RUFF)
    session.run("ruff", "--version")
    session.run("ruff", "check", "--no-cache", ".")
    session.run("ruff", "format", "--check", "--no-cache", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site: ``mkdocs build --strict`` into ``site/`` (offline; see ``mkdocs.yml``)."""
    session.install(*PIP_QUIET, "-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"HF_HUB_OFFLINE": "1"})
