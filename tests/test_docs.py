"""The documentation site: generated reference tables match the code; README and pages hang together.

``docs/hooks.py`` is imported by path (it is an mkdocs hook, not part of the package). These tests need
neither mkdocs nor a network; ``nox -s docs`` runs the full ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("robustness_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """Rows of a Markdown table keyed by their first cell (backticks stripped)."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and not set(cells[0]) <= {"-", " "}:
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_distortion_table_has_every_distortion_with_its_levels_and_range(hooks):
    from robustness import DISTORTIONS

    rows = _table_rows(hooks.distortion_table())
    assert set(DISTORTIONS) <= set(rows), f"missing: {set(DISTORTIONS) - set(rows)}"
    for name, spec in DISTORTIONS.items():
        label, valid, levels, ids, seeded, description = rows[name]
        assert label == spec.label
        assert [float(v) for v in levels.split(", ")] == [float(v) for v in spec.levels]
        assert valid.startswith(f"{spec.minimum:g} to {spec.maximum:g}")
        assert spec.level_id(spec.levels[0]) in ids and spec.level_id(spec.levels[-1]) in ids
        assert seeded == ("yes" if spec.stochastic else "no")
        assert description == spec.description and description


def test_cli_reference_has_every_subcommand_and_option(hooks):
    from robustness.cli import build_parser

    text = hooks.cli_reference()
    subcommands = hooks.cli_subcommands()
    assert {"run", "calibrate", "report", "activations", "list"} <= set(subcommands)
    for name in subcommands:
        assert f"## `robustness {name}`" in text
        assert f"usage: robustness {name}" in text
    # every option string of `robustness run`, from its own help, reached the page
    run_help = build_parser().format_help()
    assert "run" in run_help
    run_page = text.split("## `robustness run`", 1)[1].split("## `robustness", 1)[0]
    for option in ("--model", "--data", "--distortion", "--images", "--output", "--seed", "--no-cache"):
        assert option in run_page
    assert "--limit N             deprecated spelling of --images" in run_page


def test_cli_subcommands_come_from_the_parser(hooks):
    """A subcommand added to the parser appears without touching the docs."""
    import argparse

    parser = argparse.ArgumentParser(prog="robustness")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "brand-new"):
        commands.add_parser(name)
    assert hooks.cli_subcommands(parser) == ["run", "brand-new"]


def test_thresholds_reference_is_the_schema(hooks):
    from robustness import DISTORTIONS
    from robustness.thresholds import thresholds_schema

    text = hooks.thresholds_schema_reference()
    schema = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    assert schema == thresholds_schema(allow_unregistered=True)
    rows = _table_rows(text)
    for key in (
        "version",
        "defaults",
        "defaults.images",
        "defaults.seed",
        "defaults.dataset",
        "defaults.paired",
        "defaults.paired.alpha",
        "defaults.allow_fewer_images",
        "models",
    ):
        assert key in rows, key
    for name, spec in DISTORTIONS.items():
        row = rows[f"models.<name>.{name}.<level>"][0]
        for level in spec.levels:
            assert f"`{level:g}`" in row, (name, level)


def test_render_fills_markers_and_rejects_unknown_ones(hooks):
    page = "# Title\n\n<!-- generated: distortions -->\n\ntext\n"
    out = hooks.render(page)
    assert "<!-- generated" not in out and "| `blur` |" in out and out.endswith("\ntext\n")
    with pytest.raises(ValueError, match=r"x\.md: unknown generated block 'distortion'"):
        hooks.render("<!-- generated: distortion -->\n", "x.md")


def test_every_marker_in_the_pages_is_known_and_used(hooks):
    used = set()
    for page in DOCS.glob("*.md"):
        used |= set(hooks.MARKER.findall(page.read_text()))
    assert used == set(hooks.GENERATORS)


def test_nav_lists_every_page_and_every_listed_page_exists():
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r"^  - [^:]+: (\S+\.md)$", config, re.M))
    assert listed == {p.name for p in DOCS.glob("*.md")}
    assert re.search(r"^  font: false$", config, re.M), "the site must not fetch web fonts"


def test_readme_front_page():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 150
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("pip install -e . && robustness run --model efficientnet_lite0 --images 200")
    assert block[1].startswith("pip install nox && nox -s lowest latest")
    assert "](docs/accuracy_vs_level_lite0_200.png)" in readme
    assert "def test_accuracy(robustness_verdict):\n    robustness_verdict.check()" in readme
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert {Path(link).name for link in links if link.endswith(".md")} >= {
        p.name for p in DOCS.glob("*.md") if p.name != "index.md"
    }
    for link in links:
        assert (ROOT / link).is_file(), link


def test_readme_settings_table_is_the_generated_one(hooks):
    """The settings table is generated from robustness.settings.SETTINGS into docs/gating.md; the front
    page holds a copy of its rows, which must not drift from the code."""
    from robustness.settings import SETTINGS

    generated = [line for line in hooks.settings_table().splitlines() if line.startswith("|")]
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting | CLI flag"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert lines[start:end] == generated
    assert len(generated) == len(SETTINGS) + 2
    assert "<!-- generated: settings -->" in (DOCS / "gating.md").read_text(encoding="utf-8")


def test_settings_table_names_every_layer_of_every_setting(hooks):
    from robustness.settings import SETTINGS

    text = hooks.settings_table()
    rows = list(_table_rows(text).values())[1:]  # after the header row
    assert len(rows) == len(SETTINGS)
    for setting, (cli, option, env, yaml, ini, default, deprecated) in zip(SETTINGS.values(), rows):
        for cell, name in ((cli, setting.cli), (option, setting.pytest), (env, setting.env), (ini, setting.ini)):
            assert cell.startswith(f"`{name}") if name else cell == "—", (setting.name, cell)
        assert yaml == (f"`defaults.{setting.yaml}`" if setting.yaml else "—")
        assert default.replace("`", "") == setting.default_text
        assert all(f"`{alias}`" in deprecated for alias in setting.aliases)
    assert "`--limit` → `--images`" in text and "`--images` → `--average-over` (activations)" in text
