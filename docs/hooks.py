"""Reference tables generated from the code when the site is built, so the docs cannot drift from it.

mkdocs loads this file as a hook (``hooks: [docs/hooks.py]`` in ``mkdocs.yml``; documented at
https://www.mkdocs.org/user-guide/configuration/#hooks). In every page, a line of the form
``<!-- generated: NAME -->`` is replaced by the Markdown that ``GENERATORS[NAME]()`` returns:

* ``distortions``: one row per entry of :data:`robustness.DISTORTIONS` (name, parameter and unit, valid
  range, the paper's levels, level ids, the registry's one-line description);
* ``thresholds-schema``: the keys of ``thresholds.yaml`` and the full JSON Schema from
  :func:`robustness.thresholds.thresholds_schema`;
* ``cli``: the ``--help`` text of ``robustness`` and of each of its subcommands, from
  :func:`robustness.cli.build_parser`;
* ``settings``: one row per setting of :data:`robustness.settings.SETTINGS` (its CLI flag, pytest option,
  environment variable, thresholds.yaml key, ini key, default and deprecated spellings), from
  :func:`robustness.settings.settings_table` (README.md holds a copy; a test keeps them equal).

An unknown ``NAME`` raises ``ValueError`` naming it and the page, so a typo fails ``mkdocs build``.
``tests/test_docs.py`` imports this file by path and checks each generator against the code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)
#: Column width for argparse's help text (it reads ``$COLUMNS``), so the CLI page does not depend on the
#: terminal that builds the site.
HELP_COLUMNS = "100"


def _number(value: float) -> str:
    return f"{value:g}"


def distortion_table() -> str:
    """A Markdown table of every registered distortion, in the registry's (the paper's) order.

    Columns: name (also the pytest marker), parameter (unit), valid range (inclusive; "integer" for
    integer-only levels), the paper's levels (Dodge & Karam 2016), the ids of the first and last paper
    level, whether the output depends on the seed, and ``Distortion.description``.
    """
    from robustness import DISTORTIONS

    rows = [
        "| name | level: parameter (unit) | valid range | paper levels | level ids | seeded | what it does |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec in DISTORTIONS.values():
        valid = f"{_number(spec.minimum)} to {_number(spec.maximum)}" + (", integer" if spec.integer else "")
        levels = ", ".join(_number(v) for v in spec.levels)
        ids = f"`{spec.level_id(spec.levels[0])}` ... `{spec.level_id(spec.levels[-1])}`"
        rows.append(
            f"| `{spec.name}` | {spec.label} | {valid} | {levels} | {ids} | "
            f"{'yes' if spec.stochastic else 'no'} | {spec.description} |"
        )
    return "\n".join(rows) + "\n"


def _schema_rows(schema: dict, path: str, rows: list[str]) -> None:
    """Walk the schema's fixed keys (``properties``) depth first, one table row per key."""
    for key, sub in schema.get("properties", {}).items():
        where = f"{path}.{key}" if path else key
        if "const" in sub:
            kind = f"exactly `{json.dumps(sub['const'])}`"
        elif "enum" in sub:
            kind = "one of " + ", ".join(f"`{v}`" for v in sub["enum"])
        else:
            kind = sub.get("type", "mapping" if "propertyNames" in sub or "allOf" in sub else "")
            limits = [
                f"{name} {sub[key2]}"
                for key2, name in (
                    ("minimum", ">="),
                    ("exclusiveMinimum", ">"),
                    ("maximum", "<="),
                    ("minLength", "length >="),
                )
                if key2 in sub
            ]
            if limits:
                kind += " (" + ", ".join(limits) + ")"
        names = sub.get("propertyNames", {}).get("enum")
        if names and "properties" not in sub:
            kind += "; keys: " + ", ".join(f"`{n}`" for n in names)
        rows.append(f"| `{where}` | {kind} |")
        _schema_rows(sub, where, rows)


def thresholds_schema_reference() -> str:
    """The keys of ``thresholds.yaml`` as a table, then the whole JSON Schema (draft 2020-12).

    The schema is ``thresholds_schema(allow_unregistered=True)`` (any model name); the gate passes the
    registered names instead, which changes nothing else.
    """
    from robustness import DISTORTIONS
    from robustness.thresholds import thresholds_schema

    schema = thresholds_schema(allow_unregistered=True)
    rows = ["| key | value |", "| --- | --- |"]
    _schema_rows(schema, "", rows)
    model = schema["properties"]["models"]["additionalProperties"]
    rows.append(
        "| `models.<name>` | mapping; keys: " + ", ".join(f"`{k}`" for k in model["propertyNames"]["enum"]) + " |"
    )
    bars = model["properties"]["blur"]["additionalProperties"]
    value = bars["additionalProperties"]
    bar_range = f"{value['type']}s in [{value['minimum']}, {value['maximum']}]"
    for name, sub in model["properties"].items():
        if name == "source":
            rows.append("| `models.<name>.source` | one of " + ", ".join(f"`{v}`" for v in sub["enum"]) + " |")
        elif name == "clean":
            rows.append(
                "| `models.<name>.clean` | bars: "
                + ", ".join(f"`{k}`" for k in sub["propertyNames"]["enum"])
                + f" ({bar_range}) |"
            )
        else:
            spec = DISTORTIONS[name]
            levels = ", ".join(f"`{_number(v)}`" for v in spec.levels)
            rows.append(
                f"| `models.<name>.{name}.<level>` | any level in {spec.range_text} (paper levels {levels}); bars: "
                + ", ".join(f"`{k}`" for k in bars["propertyNames"]["enum"])
                + f" ({bar_range}) |"
            )
    return (
        "\n".join(rows)
        + "\n\n<details><summary>The JSON Schema</summary>\n\n```json\n"
        + json.dumps(schema, indent=2)
        + "\n```\n\n</details>\n"
    )


def _help(parser, argv: list[str]) -> str:
    """What ``robustness ARGV --help`` prints (argparse's documented ``-h/--help``: print, then exit 0)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            parser.parse_args([*argv, "--help"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise RuntimeError(f"robustness {' '.join(argv)} --help exited with {stop.code}") from None
    return out.getvalue()


def cli_subcommands(parser=None) -> list[str]:
    """The subcommands of ``robustness``, read from the usage line (``{run,report,...}``) of ``--help``."""
    from robustness.cli import build_parser

    parser = parser or build_parser()
    usage = parser.format_usage()
    found = re.search(r"\{([^{}]+)\}", usage)
    if not found:
        raise ValueError(f"no subcommands in the usage line {usage!r}")
    return found.group(1).split(",")


def cli_reference() -> str:
    """``robustness --help`` and, for each subcommand, ``robustness NAME --help``, as Markdown sections."""
    from robustness.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parser = build_parser()
        parts = ["## `robustness`\n", "```text", _help(parser, []).rstrip(), "```\n"]
        for name in cli_subcommands(parser):
            parts += [f"## `robustness {name}`\n", "```text", _help(build_parser(), [name]).rstrip(), "```\n"]
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def settings_table() -> str:
    """The settings table: :func:`robustness.settings.settings_table` (one row per concept)."""
    from robustness.settings import settings_table as table

    return table()


GENERATORS: dict[str, Callable[[], str]] = {
    "distortions": distortion_table,
    "thresholds-schema": thresholds_schema_reference,
    "cli": cli_reference,
    "settings": settings_table,
}


def render(markdown: str, where: str = "<page>") -> str:
    """Replace every ``<!-- generated: NAME -->`` line of ``markdown``; ``ValueError`` for an unknown NAME."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{where}: unknown generated block {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]().rstrip("\n")

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, *, page, config, files) -> str:
    """mkdocs event: fill the generated blocks of each page before it is rendered."""
    return render(markdown, page.file.src_uri)
