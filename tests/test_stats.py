"""Statistics of verdicts: Wilson intervals, McNemar, judge() and stored baselines."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from robustness.evaluation import Condition, ConditionResult
from robustness.gate import ThresholdFailure, check_threshold, judge, load_baseline, save_baseline
from robustness.stats import correct, mcnemar, wilson_interval
from robustness.thresholds import PairedSettings, Threshold


def test_wilson_known_values():
    low, high = wilson_interval(70, 100)
    assert low == pytest.approx(0.6041, abs=1e-4) and high == pytest.approx(0.7811, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


@pytest.mark.parametrize("n", [1, 2, 7, 50, 100, 1000])
def test_wilson_agrees_with_scipy(n):
    """An independent implementation: scipy's ``BinomTestResult.proportion_ci(method="wilson")``."""
    from scipy.stats import binomtest

    for k in range(0, n + 1, max(1, n // 25)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-14)


@given(st.integers(1, 2000), st.data())
def test_wilson_contains_estimate(n, data):
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n + 1e-12 and k / n - 1e-12 <= high <= 1.0


def test_mcnemar_exact_one_sided():
    base = np.array([True] * 10 + [False] * 5)
    cand = np.array([False] * 10 + [False] * 5)
    r = mcnemar(base, cand)
    assert (r.b, r.c, r.n) == (10, 0, 15)
    assert r.p_value == pytest.approx(0.5**10)
    assert r.significant_drop(0.05)
    # an improvement is never a significant drop
    assert not mcnemar(cand, base).significant_drop(0.05)
    # identical predictions: no evidence
    assert mcnemar(base, base).p_value == 1.0
    # 6 lost vs 4 gained: p = P(X >= 6 | Bin(10, .5)) = 386/1024
    base = np.array([1] * 6 + [0] * 4, bool)
    r = mcnemar(base, ~base)
    assert r.p_value == pytest.approx(386 / 1024) and not r.significant_drop(0.05)
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_correct_top1_top5():
    preds = np.array([[1, 2, 3, 4, 5], [9, 8, 7, 6, 1]])
    labels = np.array([1, 1])
    assert correct(preds, labels, "top1").tolist() == [True, False]
    assert correct(preds, labels, "top5").tolist() == [True, True]


def result(top1_correct, distortion="blur", level=3, model="m"):
    """A ConditionResult whose per-image predictions give the requested top-1 correctness."""
    top1_correct = np.asarray(top1_correct, bool)
    n = len(top1_correct)
    labels = np.arange(n, dtype=np.int64)
    preds = np.stack([labels + 1000 * (~top1_correct)] + [labels + 2000 + k for k in range(4)], axis=1) % 1000
    preds[:, 0] = np.where(top1_correct, labels, (labels + 1) % 1000)
    return ConditionResult(
        model,
        distortion,
        level,
        float(top1_correct.mean()),
        float(top1_correct.mean()),
        n,
        [f"img{i}" for i in range(n)],
        labels,
        preds,
    )


def test_judge_absolute_relative_and_message():
    clean = result([True] * 80 + [False] * 20, "clean", 0)
    r = result([True] * 50 + [False] * 50)
    t = Threshold("m", Condition("blur", 3), top1=0.4, top1_of_clean=0.7)
    v = judge(t, r, clean=clean, source="thresholds.yaml:7")
    assert not v.passed
    assert [c.passed for c in v.checks] == [True, False]
    assert v.checks[1].required == pytest.approx(0.56)
    msg = v.message()
    assert "BELOW THRESHOLD" in msg and "n=100 images" in msg and "95% CI 40.4%-59.6%" in msg
    assert "FAIL top1 50.0% < required 56.0% (0.7 x clean 80.0%, top1_of_clean)" in msg
    assert "thresholds.yaml:7" in msg
    with pytest.raises(ThresholdFailure) as info:
        v.check()
    assert info.value.verdict is v
    props = dict(v.properties())
    assert props["robustness_top1"] == 0.5 and props["robustness_n"] == 100
    assert props["robustness_top1_of_clean_required"] == pytest.approx(0.56) and props["robustness_passed"] is False


def test_equal_to_bar_passes_and_relative_needs_clean():
    r = result([True] * 3 + [False] * 7)
    check_threshold(Threshold("m", Condition("blur", 3), top1=0.3), r)
    with pytest.raises(ThresholdFailure, match="top1 30.0% < required 31.0%"):
        check_threshold(Threshold("m", Condition("blur", 3), top1=0.31), r)
    with pytest.raises(ValueError, match="needs the model's clean result"):
        check_threshold(Threshold("m", Condition("blur", 3), top1_of_clean=0.5), r)


def test_baseline_roundtrip_and_paired_check(tmp_path):
    base = result([True] * 60 + [False] * 40)
    save_baseline([base, result([True] * 10 + [False] * 90, level=5)], tmp_path, seed=0)
    stored = load_baseline(tmp_path, "m", "blur")
    assert stored.levels == [3.0, 5.0] and stored.image_ids[:2] == ["img0", "img1"]
    t = Threshold("m", Condition("blur", 3), top1=0.1)
    paired = PairedSettings(alpha=0.05)
    # 15 images lost, none gained: significant
    worse = result([True] * 45 + [False] * 55)
    v = judge(t, worse, baseline=stored, paired=paired)
    assert v.paired.result.b == 15 and not v.passed and "significant drop" in v.message()
    # 2 lost: not significant, passes
    v = judge(t, result([True] * 58 + [False] * 42), baseline=stored, paired=paired)
    assert v.paired.result.b == 2 and v.passed
    # no baseline for that level: a note, no paired check
    v = judge(
        Threshold("m", Condition("blur", 7), top1=0.0), result([True] * 100, level=7), baseline=stored, paired=paired
    )
    assert v.paired is None and "no blur level 7" in v.notes[0]
    # adding a level keeps the stored ones
    save_baseline([result([True] * 100, level=7)], tmp_path, seed=0)
    assert load_baseline(tmp_path, "m", "blur").levels == [3.0, 5.0, 7.0]
    assert load_baseline(tmp_path, "m", "noise") is None


def test_close_levels_keep_their_own_baselines_and_properties(tmp_path):
    """Levels that agree to 6 significant digits are still different conditions: a baseline stored at
    one never pairs with a result at the other, and each case's ``robustness_level`` (the summary
    table's and the calibration's key) reads back as its own level."""
    save_baseline([result([True] * 60 + [False] * 40, level=1.2345671)], tmp_path, seed=0)
    save_baseline([result([True] * 100, level=1.2345674)], tmp_path, seed=0)
    stored = load_baseline(tmp_path, "m", "blur")
    assert stored.levels == [1.2345671, 1.2345674]
    paired = PairedSettings(alpha=0.05)
    # the result at 1.2345671 pairs with its own baseline (40 wrong there too), not the all-right one
    v = judge(
        Threshold("m", Condition("blur", 1.2345671), top1=0.1),
        result([True] * 60 + [False] * 40, level=1.2345671),
        baseline=stored,
        paired=paired,
    )
    assert v.paired.result.b == 0 and v.passed
    # a level with no baseline of its own gets the note, not a neighbour's predictions
    v = judge(
        Threshold("m", Condition("blur", 1.2345672), top1=0.1),
        result([True] * 60 + [False] * 40, level=1.2345672),
        baseline=stored,
        paired=paired,
    )
    assert v.paired is None and "no blur level 1.2345672" in v.notes[0]
    props = dict(v.properties())
    assert float(props["robustness_level"]) == 1.2345672


# ------------------------------------------------------------------ inputs are refused, not coerced


@pytest.mark.parametrize(
    "successes, n, error",
    [
        (1.5, 3, TypeError),
        (2.0, 3, TypeError),
        (True, 3, TypeError),
        ("2", 3, TypeError),
        (1, 3.0, TypeError),
        (float("nan"), 3, TypeError),
        (-1, 3, ValueError),
        (4, 3, ValueError),
        (0, -1, ValueError),
    ],
)
def test_wilson_refuses_non_integer_and_out_of_range_counts(successes, n, error):
    with pytest.raises(error, match="successes|n"):
        wilson_interval(successes, n)


def test_wilson_accepts_numpy_integers_and_refuses_bad_z():
    assert wilson_interval(np.int64(70), np.int32(100)) == wilson_interval(70, 100)
    for z in (float("nan"), 0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="z must be"):
            wilson_interval(7, 10, z)


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.array([1, 0, 2]), ValueError),  # 2 is not right-or-wrong (np.asarray(.., bool) made it True)
        (np.array([1.0, np.nan, 0.0]), TypeError),  # NaN was True too
        (np.array([0.0, 1.0, 1.0]), TypeError),  # floats are refused outright
        (np.array(["1", "0", "1"]), TypeError),
    ],
)
def test_mcnemar_refuses_non_boolean_arrays(bad, error):
    good = np.array([True, False, True])
    with pytest.raises(error, match="candidate_correct"):
        mcnemar(good, bad)
    with pytest.raises(error, match="baseline_correct"):
        mcnemar(bad, good)


def test_mcnemar_accepts_zero_one_integers_like_booleans():
    ints = np.array([1, 1, 1, 0, 0])
    assert mcnemar(ints, np.zeros(5, np.int8)) == mcnemar(ints.astype(bool), np.zeros(5, bool))


def test_significant_drop_refuses_nan_alpha():
    r = mcnemar(np.ones(10, bool), np.zeros(10, bool))
    for alpha in (float("nan"), 0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            r.significant_drop(alpha)


def test_a_failure_caused_only_by_the_paired_check_is_headed_by_it(tmp_path):
    save_baseline([result([True] * 60 + [False] * 40)], tmp_path, seed=0)
    stored = load_baseline(tmp_path, "m", "blur")
    paired = PairedSettings(alpha=0.05)
    worse = result([True] * 45 + [False] * 55)  # 15 lost: significant; the bar 0.1 holds
    message = judge(Threshold("m", Condition("blur", 3), top1=0.1), worse, baseline=stored, paired=paired).message()
    head, *lines = message.splitlines()
    assert head == "m blur level 3 (sigma (px)): SIGNIFICANT DROP VS BASELINE"
    assert "BELOW THRESHOLD" not in message and lines[1].startswith("  ok   top1 45.0%")
    both = judge(Threshold("m", Condition("blur", 3), top1=0.5), worse, baseline=stored, paired=paired).message()
    assert both.splitlines()[0].endswith(": BELOW THRESHOLD AND SIGNIFICANT DROP VS BASELINE")
    only_bar = judge(Threshold("m", Condition("blur", 3), top1=0.5), worse).message()
    assert only_bar.splitlines()[0].endswith(": BELOW THRESHOLD")


def test_a_baseline_of_the_other_pipeline_is_not_paired_under_noise(tmp_path):
    """The device pipeline draws its noise from a torch generator, the reference path from numpy: the
    same image gets other noise, so a paired (McNemar) check of a device-pipeline gate run (the
    default on CUDA) against a baseline stored from the reference path (the CPU) would pair unrelated
    draws, adding discordant pairs that hide a real drop or invent one. Each result carries its
    pipeline, the baseline stores it, and such a pair is refused with a note naming both."""
    from test_evaluation import make_dataset, tiny_model

    from robustness import evaluate

    dataset = make_dataset(tmp_path / "data", 4)
    conditions = [Condition("noise", 30), Condition("blur", 2)]
    reference = evaluate(tiny_model(), dataset, conditions, num_workers=0, device="cpu", pipeline="reference")
    device = evaluate(tiny_model(), dataset, conditions, num_workers=0, device="cpu", pipeline="device")
    assert [r.pipeline for r in reference] == ["reference"] * 2 and [r.pipeline for r in device] == ["device"] * 2
    save_baseline(reference, tmp_path / "baseline", seed=0)
    noise = load_baseline(tmp_path / "baseline", "tiny", "noise")
    assert noise.pipeline == "reference"
    assert not isinstance(noise.pair(reference[0]), str)  # same pipeline: paired
    reason = noise.pair(device[0])
    assert isinstance(reason, str) and "reference pipeline" in reason and "device pipeline" in reason
    v = judge(Threshold("tiny", Condition("noise", 30), top1=0.0), device[0], baseline=noise, paired=PairedSettings())
    assert v.paired is None and "device pipeline" in v.notes[0]
    # blur is the same computation within 1 grey level on both paths: still paired
    blur = load_baseline(tmp_path / "baseline", "tiny", "blur")
    assert not isinstance(blur.pair(device[1]), str)
    # a baseline stored from the device pipeline says so
    save_baseline(device, tmp_path / "device-baseline", seed=0)
    assert load_baseline(tmp_path / "device-baseline", "tiny", "noise").pipeline == "device"
