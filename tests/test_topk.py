"""Issue 11: top-k accuracy for any k the stored top-5 predictions allow (k = 1..5).

Unit level: :func:`robustness.stats.correct` and :meth:`ConditionResult.topk` against a direct
count on a hand-made ``(n, 5)`` prediction array; thresholds.yaml refuses ``top3`` on 3 classes and
``top10`` (naming the k <= 5 limit); the paired McNemar check on ``top3``. End to end: a 10-class
toy model gated on ``top3`` bars through the plugin (pytester), passing and failing on the right
number (top-3 differs from top-1 and from top-5 on that toy).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

# isort: split
# Imported outside the in-process pytester runs (see tests/test_plugin.py): torch cannot be imported
# twice in one process, and modules first imported inside a run are re-imported by every run.
import _pytest.stepwise  # noqa: F401
import hypothesis  # noqa: F401
import torch  # noqa: F401
from PIL import PngImagePlugin  # noqa: F401

import robustness.cache
import robustness.evaluation
import robustness.gate
import robustness.models
import robustness.pytest_plugin
import robustness.report
import robustness.thresholds  # noqa: F401
from robustness.evaluation import ConditionResult
from robustness.gate import Baseline, judge
from robustness.labels import named_class_list
from robustness.stats import correct, mcnemar
from robustness.thresholds import (
    PairedSettings,
    ThresholdsError,
    check_metrics,
    load_thresholds,
    parse_thresholds_text,
)

pytest_plugins = ["pytester"]

# --------------------------------------------------------------------------------- hand-made arrays

#: 8 images, 12 classes; row i holds image i's top-5 class indices, best first.
PREDICTIONS = np.array(
    [
        [3, 1, 2, 0, 4],  # label 3: rank 1
        [1, 3, 2, 0, 4],  # label 3: rank 2
        [5, 6, 7, 8, 9],  # label 7: rank 3
        [0, 1, 2, 11, 9],  # label 11: rank 4
        [0, 1, 2, 3, 10],  # label 10: rank 5
        [0, 1, 2, 3, 4],  # label 9: not in the top 5
        [9, 8, 7, 6, 5],  # label 9: rank 1
        [4, 0, 1, 2, 3],  # label 1: rank 3
    ]
)
LABELS = np.array([3, 3, 7, 11, 10, 9, 9, 1])


def direct_topk(predictions, labels, k):
    """Top-k accuracy by the definition, one image at a time."""
    return sum(int(label in list(row[:k])) for row, label in zip(predictions, labels)) / len(labels)


def result_of(predictions, labels, num_classes):
    classes = named_class_list([f"c{i:02d}" for i in range(num_classes)], "test")
    return ConditionResult(
        "m",
        "clean",
        0,
        top1=float(correct(predictions, labels, "top1").mean()),
        top5=float(correct(predictions, labels, "top5").mean()),
        n=len(labels),
        image_ids=[f"img{i}" for i in range(len(labels))],
        labels=labels,
        predictions=predictions,
        classes=classes,
    )


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_topk_from_stored_top5_matches_direct_count(k):
    expected = direct_topk(PREDICTIONS, LABELS, k)
    assert correct(PREDICTIONS, LABELS, f"top{k}").mean() == pytest.approx(expected)
    assert result_of(PREDICTIONS, LABELS, 12).topk(k) == pytest.approx(expected)
    assert result_of(PREDICTIONS, LABELS, 12).metric(f"top{k}") == pytest.approx(expected)


def test_topk_values_differ_and_grow_with_k():
    """The array above gives a different value for every k (so a k mix-up cannot pass unseen)."""
    values = [result_of(PREDICTIONS, LABELS, 12).topk(k) for k in range(1, 6)]
    assert values == [2 / 8, 3 / 8, 5 / 8, 6 / 8, 7 / 8]


def test_topk_is_none_when_k_reaches_the_class_count():
    """With k >= classes every class is in the top k: no number (None), never a vacuous 100%."""
    # 4 classes, a model padded with -1 beyond its top-4
    predictions = np.array([[2, 1, 0, 3, -1], [0, 3, 2, 1, -1], [1, 2, 0, 3, -1]])  # ranks 2, 3, 4
    labels = np.array([1, 2, 3])
    result = result_of(predictions, labels, 4)
    assert result.topk(1) == pytest.approx(0.0)
    assert result.topk(2) == pytest.approx(1 / 3)
    assert result.topk(3) == pytest.approx(2 / 3)
    assert result.topk(4) is None and result.topk(5) is None


@pytest.mark.parametrize("k", [0, 6, 10, 2.0, True])
def test_topk_outside_1_to_5_is_refused(k):
    with pytest.raises(ValueError, match="top-5 predictions per image"):
        result_of(PREDICTIONS, LABELS, 12).topk(k)


def test_correct_refuses_k_above_5_naming_the_limit():
    with pytest.raises(ValueError, match=r"keeps the top-5 predictions per image, so k <= 5"):
        correct(PREDICTIONS, LABELS, "top10")
    with pytest.raises(ValueError, match="balanced_accuracy"):
        correct(PREDICTIONS, LABELS, "balanced_accuracy")


# ----------------------------------------------------------------------------- thresholds.yaml


def test_top3_bars_parse_absolute_and_relative():
    thresholds = parse_thresholds_text(
        "defaults: {paired: {metric: top3}}\n"
        "models:\n  m:\n    source: fixture\n    clean: {top3: 0.8}\n    blur: {1: {top3_of_clean: 0.9, top2: 0.5}}\n"
    )
    clean, blur = thresholds.entries
    assert clean.bars() == {"top3": 0.8}
    assert blur.bars() == {"top2": 0.5, "top3_of_clean": 0.9}
    assert thresholds.paired.metric == "top3"
    check_metrics(thresholds, 10)  # 10 classes: fine


def test_top3_on_three_classes_is_an_error_with_file_and_line(tmp_path):
    path = tmp_path / "thresholds.yaml"
    path.write_text(
        "defaults: {paired: {metric: top3}}\n"
        "models:\n  m:\n    source: fixture\n    clean: {top1: 0.5, top2: 0.8}\n    blur: {1: {top3: 0.5}}\n"
    )
    thresholds = load_thresholds(path)
    check_metrics(thresholds, 4)  # 4 classes: top3 means something
    with pytest.raises(ThresholdsError) as caught:
        check_metrics(thresholds, 3, "3 class folders")
    message = str(caught.value)
    assert f"{path}:6: models.m.blur.1.top3: top3 needs more than 3 classes, but the dataset has 3" in message
    assert "defaults.paired.metric: top3 needs more than 3 classes" in message
    assert "top2 needs" not in message and "top1 needs" not in message  # real measurements on 3 classes
    with pytest.raises(ThresholdsError, match=r"top2 needs more than 2 classes"):
        check_metrics(thresholds, 2)


@pytest.mark.parametrize(
    "bars, key",
    [
        ("clean: {top10: 0.9}", "models.m.clean.top10"),
        ("clean: {top1: 0.5}\n    blur: {1: {top6_of_clean: 0.9}}", "models.m.blur.1.top6_of_clean"),
    ],
)
def test_top_k_above_5_is_an_error_naming_the_limit(tmp_path, bars, key):
    path = tmp_path / "thresholds.yaml"
    path.write_text(f"models:\n  m:\n    source: fixture\n    {bars}\n")
    with pytest.raises(ThresholdsError) as caught:
        load_thresholds(path)
    message = str(caught.value)
    assert f"{path}:" in message and key in message
    assert "the engine keeps the top-5 predictions per image" in message and "k <= 5" in message


def test_paired_metric_top10_is_an_error_naming_the_limit(tmp_path):
    path = tmp_path / "thresholds.yaml"
    path.write_text(
        "defaults:\n  paired: {metric: top10}\nmodels:\n  m:\n    source: fixture\n    clean: {top1: 0.5}\n"
    )
    with pytest.raises(ThresholdsError, match=r"thresholds.yaml:2: defaults.paired.metric: .*k <= 5"):
        load_thresholds(path)


# --------------------------------------------------------------------------------- paired check


def test_paired_check_on_top3_counts_top3_images():
    """Candidate and baseline agree on every top-1 but the candidate loses the label from its top 3
    on 10 of 40 images: the top-1 paired check sees nothing, the top-3 one a significant drop, with
    the discordant counts of a direct top-3 comparison."""
    rng = np.random.default_rng(0)
    n, num_classes = 40, 20
    labels = rng.integers(0, num_classes, n)
    others = [[c for c in range(num_classes) if c != label] for label in labels]
    base = np.array([[o[0], o[1], label, o[2], o[3]] for o, label in zip(others, labels)])  # label at rank 3
    cand = base.copy()
    cand[:10, 2], cand[:10, 3] = base[:10, 3], base[:10, 2]  # label to rank 4 on the first 10
    baseline = Baseline("m", "clean", 0, [f"img{i}" for i in range(n)], labels, [0.0], base[None], "")
    result = result_of(cand, labels, num_classes)
    baseline.classes = result.classes.digest
    threshold = parse_thresholds_text("models:\n  m:\n    source: fixture\n    clean: {top3: 0.5}\n").entries[0]

    top1 = judge(threshold, result, baseline=baseline, paired=PairedSettings(metric="top1"))
    assert top1.paired.result.b == 0 and top1.paired.passed

    verdict = judge(threshold, result, baseline=baseline, paired=PairedSettings(metric="top3"))
    lost = sum(label in row[:3] and label not in c[:3] for row, c, label in zip(base, cand, labels))
    assert (verdict.paired.result.b, verdict.paired.result.c) == (lost, 0) == (10, 0)
    assert verdict.paired.result.p_value == pytest.approx(
        mcnemar(correct(base, labels, "top3"), correct(cand, labels, "top3")).p_value
    )
    assert not verdict.paired.passed
    assert verdict.checks[0].measured == pytest.approx(30 / 40)  # the top3 bar judges top-3: 75%
    assert "paired vs baseline: top3 100.0% -> 75.0%" in verdict.message()
    assert "top3 75.0% (95% CI" in verdict.message()  # Wilson interval on a count of images


# ----------------------------------------------------------------------------- plugin, end to end

CONFTEST = '''
import pytest
import torch

from robustness import Classifier, Preprocessing


class Toy(torch.nn.Module):
    """10 classes; scores -|j - v| with v = mean red level / 10: ranks the classes by distance to v."""

    def forward(self, x):
        v = x[:, 0].mean(dim=(1, 2)) / 10
        return -(torch.arange(10, dtype=x.dtype)[None, :] - v[:, None]).abs()


@pytest.fixture(scope="session")
def robustness_model():
    pre = Preprocessing(8, 8, "nearest", mean=(0, 0, 0), std=(1, 1, 1))
    return Classifier(Toy(), pre, "toy")
'''

TEST = """\
def test_accuracy(robustness_verdict):
    robustness_verdict.check()
"""


def make_images(folder):
    """One solid image per class c0..c9. Classes 0-5: v = c + 0.2 (top-1 right); 6, 7: v = c - 1.2
    (label 3rd: top-3 right, top-2 wrong); 8, 9: v = c - 2.2 (label 5th: top-5 right, top-4 wrong).
    So top-1 = top-2 = 60%, top-3 = top-4 = 80%, top-5 = 100%."""
    for c in range(10):
        v = c + 0.2 if c < 6 else c - 1.2 if c < 8 else c - 2.2
        (folder / f"c{c}").mkdir(parents=True)
        array = np.zeros((16, 16, 3), np.uint8)
        array[..., 0] = round(10 * v)
        Image.fromarray(array).save(folder / f"c{c}" / "img.png")


@pytest.fixture
def gate(pytester):
    make_images(pytester.path / "images")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TEST)
    pytester.makeini(
        "[pytest]\nrobustness_data = images\nrobustness_no_cache = true\n"
        "addopts = -W error --robustness-workers 0 -p no:cacheprovider -p no:unraisableexception\n"
    )
    return pytester


def test_top3_bars_pass_on_a_ten_class_toy(gate):
    gate.makefile(
        ".yaml",
        thresholds="models:\n  toy:\n    source: fixture\n    clean: {top3: 0.8}\n"
        "    blur: {1: {top3: 0.75, top3_of_clean: 1.0}}\n",
    )
    result = gate.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*toy-clean*PASSED*", "*toy-blur-s1*PASSED*"])


def test_top3_bar_fails_on_top3_not_top5(gate):
    """A top3 bar of 0.85: top-5 (100%) would pass it, top-3 (80%) does not."""
    gate.makefile(".yaml", thresholds="models:\n  toy:\n    source: fixture\n    clean: {top3: 0.85}\n")
    result = gate.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*toy clean: BELOW THRESHOLD*",
            "*measured top1 60.0% (95% CI*top3 80.0% (95% CI*",
            "*FAIL top3 80.0% < required 85.0%*",
        ]
    )


def test_top3_bar_is_an_error_on_three_classes(gate):
    for c in range(3, 10):
        for file in (gate.path / "images" / f"c{c}").iterdir():
            file.unlink()
        (gate.path / "images" / f"c{c}").rmdir()
    gate.makefile(".yaml", thresholds="models:\n  toy:\n    source: fixture\n    clean: {top1: 0.1, top3: 0.5}\n")
    result = gate.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*thresholds.yaml:4: models.toy.clean.top3: top3 needs more than 3 classes, but the dataset has 3*"]
    )


# ------------------------------------------------------------------------------------- HTML report


def test_report_thresholds_section_measures_the_bars_metric(tmp_path):
    """A top3 bar in the report is judged on the run's top-3 (from predictions.npz), not top-1/top-5;
    without predictions.npz the row says why it is not measured."""
    from robustness.html_report import load_run, threshold_verdicts
    from robustness.runs import write_predictions, write_results_json

    run = tmp_path / "run"
    run.mkdir()
    result = result_of(PREDICTIONS, LABELS, 12)
    write_results_json([result], run / "results.json")
    write_predictions([result], run / "predictions.npz")
    bars = tmp_path / "thresholds.yaml"
    bars.write_text("models:\n  m:\n    source: fixture\n    clean: {top3: 0.6, top4: 0.8}\n")
    top3, top4 = threshold_verdicts([load_run(run)], bars)
    assert (top3["metric"], top3["measured"], top3["passed"]) == ("top3", pytest.approx(5 / 8), True)
    assert (top4["metric"], top4["measured"], top4["passed"]) == ("top4", pytest.approx(6 / 8), False)
    assert "top4 75.0% < required 80.0%" in top4["text"]

    (run / "predictions.npz").unlink()
    row = threshold_verdicts([load_run(run)], bars)[0]
    assert row["passed"] is None and "top3 was not computed" in row["text"]
