"""Any level everywhere (issue 11): level texts and ids, thresholds.yaml, the CLI's --distortion
NAME=LEVELS, the figures over uneven grids; the paper's grid keeps its ids."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from robustness import DISTORTIONS
from robustness.cli import CommandError, distortion_levels
from robustness.conditions import Condition
from robustness.names import format_level
from robustness.thresholds import load_thresholds, update_thresholds_file

KNOWN = ["m"]
#: How ids were written before any level was allowed (``{:g}``): the paper grid's ids must not change.
OLD_ID_FORMATS = {"blur": "s{:g}", "noise": "{:g}", "jpeg": "q{:g}", "jpeg2000": "{:g}db", "contrast": "{:g}"}


# ----------------------------------------------------------------------------- texts and ids


def test_paper_grid_ids_are_unchanged():
    for name, old in OLD_ID_FORMATS.items():
        spec = DISTORTIONS[name]
        assert [spec.level_id(v) for v in spec.levels] == [f"{name}-{old.format(v)}" for v in spec.levels]
        assert [spec.level_from_id(spec.level_id(v)) for v in spec.levels] == list(spec.levels)


def test_ids_of_levels_off_the_grid_are_readable():
    assert Condition("jpeg", 75).id == "jpeg-q75"
    assert Condition("blur", 0.5).id == "blur-s0.5"
    assert Condition("contrast", 0.25).id == "contrast-0.25"
    assert Condition("noise", 12.5).id == "noise-12.5"
    assert Condition("jpeg2000", 30.5).id == "jpeg2000-30.5db"
    assert Condition("blur", 1e-5).id == "blur-s0.00001"  # never an exponent: no '-' inside the level
    assert Condition("blur", 0.1 + 0.2).id == "blur-s0.30000000000000004"  # not the same id as 0.3
    assert Condition("blur", 3.0).id == Condition("blur", 3).id == "blur-s3"  # one level, one id
    assert format_level(-0.0) == "0" and format_level(-2.5) == "-2.5" and format_level(100) == "100"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_level_reads_back_as_the_same_float(value):
    text = format_level(value)
    assert float(text) == value
    assert "e" not in text and "E" not in text


@pytest.mark.parametrize("name", list(OLD_ID_FORMATS))
@given(data=st.data())
def test_level_ids_round_trip_for_any_valid_level(name, data):
    spec = DISTORTIONS[name]
    if spec.integer:
        strategy = st.integers(int(spec.minimum), int(spec.maximum))
    else:
        strategy = st.floats(spec.minimum, spec.maximum, allow_nan=False)
    first, second = data.draw(strategy), data.draw(strategy)
    assert spec.level_from_id(spec.level_id(first)) == first
    assert (spec.level_id(first) == spec.level_id(second)) == (first == second)


def test_level_from_id_refuses_other_ids():
    with pytest.raises(ValueError, match=r"'blur-3' is not a level id of blur \(like 'blur-s1'\)"):
        DISTORTIONS["blur"].level_from_id("blur-3")
    with pytest.raises(ValueError, match=r"jpeg level 101 is outside the valid range \[1, 100\] of quality"):
        DISTORTIONS["jpeg"].level_from_id("jpeg-q101")


def test_parse_level_keeps_the_grid_value_on_the_grid():
    blur, contrast, jpeg = DISTORTIONS["blur"], DISTORTIONS["contrast"], DISTORTIONS["jpeg"]
    assert blur.parse_level("3") == 3 and isinstance(blur.parse_level("3.0"), int)
    assert contrast.parse_level("0.1") is contrast.levels[1]  # the grid's own float: same ids and keys
    assert blur.parse_level("0.5") == 0.5 and jpeg.parse_level("75") == 75
    with pytest.raises(ValueError, match=r"jpeg level \(quality\) must be an integer, got 50.5"):
        jpeg.parse_level("50.5")
    with pytest.raises(ValueError, match=r"blur level 'x' is not a number \(sigma \(px\), valid range \[0, 100\]\)"):
        blur.parse_level("x")


# ----------------------------------------------------------------------------- thresholds.yaml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thresholds.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_thresholds_accept_any_level_in_range(tmp_path):
    path = write(
        tmp_path,
        """\
        models:
          m:
            jpeg: {50: {top1: 0.5}, 75: {top1: 0.6}, 90: {top1: 0.7}}
            blur: {0.5: {top1: 0.7}, 3: {top1: 0.4}}
            contrast: {0.25: {top1: 0.6}, 0.1: {top1: 0.7}}
            noise: {12.5: {top5: 0.8}}
            jpeg2000: {45: {top1: 0.7}}
        """,
    )
    t = load_thresholds(path, known_models=KNOWN)
    assert [e.id for e in t.entries] == [
        "m-jpeg-q50",
        "m-jpeg-q75",
        "m-jpeg-q90",
        "m-blur-s0.5",
        "m-blur-s3",
        "m-contrast-0.25",
        "m-contrast-0.1",
        "m-noise-12.5",
        "m-jpeg2000-45db",
    ]
    assert t.get("m", Condition("jpeg", 75)).top1 == 0.6
    assert [e.line for e in t.entries[:4]] == [3, 3, 3, 4]


def test_calibration_writes_levels_off_the_grid_that_read_back(tmp_path):
    path = tmp_path / "thresholds.yaml"
    measured = {
        Condition("clean", 0): {"top1": 0.8, "top5": 0.9},
        Condition("jpeg", 75): {"top1": 0.7, "top5": 0.9},
        Condition("jpeg", 50): {"top1": 0.6, "top5": 0.8},
        Condition("blur", 0.5): {"top1": 0.75, "top5": 0.9},
    }
    _, text = update_thresholds_file(path, "m", measured, margin=0.05)
    assert "jpeg:\n      50: {top1: 0.55}\n      75: {top1: 0.65}" in text and "0.5: {top1: 0.7}" in text
    t = load_thresholds(path, known_models=KNOWN)
    assert {e.id: e.top1 for e in t.entries} == {
        "m-clean": 0.75,
        "m-blur-s0.5": 0.7,
        "m-jpeg-q50": 0.55,
        "m-jpeg-q75": 0.65,
    }
    measured[Condition("jpeg", 75)] = {"top1": 0.9, "top5": 0.9}  # recalibrating finds the same key
    _, text = update_thresholds_file(path, "m", measured, margin=0.05)
    assert text.count("75:") == 1 and "75: {top1: 0.85}" in text


# ------------------------------------------------------------------------------------- the CLI


def test_distortion_option_takes_levels_per_distortion():
    assert distortion_levels(["jpeg=50,75,90", "blur=0.5, 1.5", "contrast"]) == {
        "jpeg": (50, 75, 90),
        "blur": (0.5, 1.5),
        "contrast": None,  # the paper's grid
    }
    assert distortion_levels(["jpeg=50", "jpeg=75,50"]) == {"jpeg": (50, 75)}  # repeated: the union
    assert distortion_levels(["blur=1,2,3,4,5,6,7,8,9"]) == {"blur": None}  # exactly the grid
    assert distortion_levels(["jpeg=20", "jpeg"])["jpeg"] == (20, 2, 4, 6, 8, 10, 12, 14, 16, 18)
    assert distortion_levels(None) == {} and distortion_levels([]) == {}


@pytest.mark.parametrize(
    "value, message",
    [
        ("jpeg=101", "--distortion jpeg=101: jpeg level 101 is outside the valid range [1, 100] of quality"),
        ("blur=-1", "--distortion blur=-1: blur level -1 is outside the valid range [0, 100] of sigma (px)"),
        ("jpeg=50.5", "--distortion jpeg=50.5: jpeg level (quality) must be an integer, got 50.5"),
        ("jpeg=", "--distortion jpeg=: an empty level; write jpeg=LEVEL,LEVEL,... (quality, valid range [1, 100]"),
        ("jpeg=50,,75", "--distortion jpeg=50,,75: an empty level"),
        ("blur=fast", "--distortion blur=fast: blur level 'fast' is not a number (sigma (px), valid range [0, 100])"),
        ("fog=1", "--distortion fog=1: unknown distortion 'fog'; known: blur, noise, jpeg, jpeg2000, contrast"),
    ],
)
def test_distortion_option_errors_name_the_distortion_value_and_range(value, message):
    with pytest.raises(CommandError) as info:
        distortion_levels([value])
    assert message in str(info.value)


def test_run_refuses_a_level_out_of_range_before_any_work(tmp_path, capsys):
    from robustness.cli import main

    assert main(["run", "--distortion", "contrast=1.5", "--data", str(tmp_path / "none")]) == 2
    assert (
        "robustness run: --distortion contrast=1.5: contrast level 1.5 is outside the valid range [0, 1]"
        in capsys.readouterr().err
    )


# --------------------------------------------------------------------------- figures and report


def records(model: str, levels: list[float], top1: list[float]) -> list[dict]:
    clean = {"model": model, "distortion": "clean", "level": 0.0, "top1": 0.8, "top5": 0.9, "n": 10}
    return [clean] + [
        {"model": model, "distortion": "jpeg", "level": float(v), "top1": a, "top5": min(1.0, a + 0.1), "n": 10}
        for v, a in zip(levels, top1)
    ]


def test_figure_plots_an_uneven_grid_at_its_levels(tmp_path):
    from robustness.report import accuracy_vs_level_figure, plot_accuracy_vs_level

    rows = records("m", [90, 50, 75], [0.7, 0.4, 0.6])
    figure = accuracy_vs_level_figure(rows)
    assert [ax.get_title() for ax in figure.axes] == list(OLD_ID_FORMATS)  # the paper's five panels
    jpeg = figure.axes[2]
    (line,) = jpeg.get_lines()[:1]
    assert list(line.get_xdata()) == [50, 75, 90]  # sorted, at the levels themselves
    assert list(line.get_ydata()) == pytest.approx([40, 60, 70])
    plot_accuracy_vs_level(rows, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_curves_plot_uneven_grids_and_summaries_use_the_shared_levels(tmp_path):
    from robustness.html_report import RunData, curves_figure, curves_matplotlib_figure, summary_table

    a = RunData(tmp_path / "a", "a", "a", records("a", [50, 75, 90], [0.4, 0.6, 0.7]))
    b = RunData(tmp_path / "b", "b", "b", records("b", [50, 90], [0.5, 0.75]))
    figure = curves_matplotlib_figure([a, b])
    top1, top5 = figure.axes  # one distortion measured: one column, two rows
    assert top1.get_title() == "jpeg"
    assert [list(line.get_xdata()) for line in top1.get_lines() if line.get_label() in ("a", "b")] == [
        [50, 75, 90],
        [50, 90],
    ]
    assert [list(line.get_xdata()) for line in top5.get_lines() if line.get_label() == "a"] == [[50, 75, 90]]
    assert curves_figure([a, b]).startswith("data:image/png;base64,")
    rows = {row["label"]: row for row in summary_table([a, b])}
    assert rows["a"]["levels"] == rows["b"]["levels"] == [50, 90]
    # rAUC over 50..90 for a: trapezoid of (0.4, 0.7) / 0.8 over the range = mean 0.6875
    assert math.isclose(rows["a"]["rauc_top1"], (0.4 + 0.7) / 2 / 0.8)
