"""``robustness_latency``: pytest-benchmark timing of each thresholds.yaml model, end to end with pytester
and the toy model of ``test_plugin`` (a ``source: fixture`` entry). Nothing here asserts a time."""

import json

import pytest

from robustness.pytest_plugin import parse_batch_sizes

# isort: split
from test_plugin import CONFTEST, REGISTERED, THRESHOLDS, make_images

pytest_plugins = ["pytester"]
pytest.importorskip("pytest_benchmark")

LATENCY_TEST = """\
def test_latency(robustness_latency):
    robustness_latency.run()
"""

FAST = ("--benchmark-min-rounds=1", "--benchmark-max-time=0.001")
# Runs writing --benchmark-json go through runpytest_subprocess: pytest-benchmark 4.0 (the lowest supported)
# opens that file with argparse.FileType and never closes it, and in-process its ResourceWarning would surface
# in a later test of this session (an unraisable-exception warning, an error under -W error).


@pytest.fixture
def latency(pytester, monkeypatch):
    """A user's repo: the toy gate's conftest and thresholds, a 4-image folder, a two-line latency test."""
    monkeypatch.delenv("TOY_BREAK_AT", raising=False)
    make_images(pytester.path / "images", n=4, wrong=0)
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 4"))
    pytester.makepyfile(test_latency=LATENCY_TEST)
    pytester.makeini(
        "[pytest]\nrobustness_data = images\nrobustness_benchmark_batch_sizes = 1 3\n"
        "addopts = -W error -p no:cacheprovider -p no:unraisableexception\n"
    )
    return pytester


def test_benchmark_only_times_one_case_per_model_and_batch_size(latency):
    out = latency.path / "bench.json"
    result = latency.runpytest_subprocess("-m", "benchmark", "--benchmark-only", f"--benchmark-json={out}", "-v", *FAST)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_latency[[]toy-b1[]] PASSED*", "*test_latency[[]toy-b3[]] PASSED*"])
    benchmarks = {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert sorted(benchmarks) == ["test_latency[toy-b1]", "test_latency[toy-b3]"]
    for size in (1, 3):
        bench = benchmarks[f"test_latency[toy-b{size}]"]
        assert bench["params"] == {"robustness_latency": {"model": "toy", "batch_size": size}}
        assert bench["group"] == "robustness-latency-toy"
        assert bench["extra_info"]["batch_size"] == size
        assert bench["extra_info"]["model"] == "toy"
        assert bench["extra_info"]["input"].startswith(f"{size} image(s) of ")  # real images, not random
        assert bench["stats"]["rounds"] >= 1


def test_default_run_does_not_time(latency):
    out = latency.path / "bench.json"
    result = latency.runpytest("-rs", "--robustness-benchmark-batch-sizes=2")
    result.assert_outcomes(skipped=1)  # --robustness-benchmark-batch-sizes=2: one case
    result.stdout.fnmatch_lines(["*latency is timed only when asked for: pytest -m benchmark*"])
    assert not out.exists()


def test_benchmark_disable_runs_once_untimed(latency):
    result = latency.runpytest("--benchmark-disable", "-v")
    result.assert_outcomes(passed=2)  # each case ran its forward pass and checked the output shape
    result.stdout.no_fnmatch_line("*benchmark 'robustness-latency-toy'*")  # but no timing table: nothing timed


def test_autosave_writes_a_run_to_compare_against(latency):
    storage = latency.path / "store"
    result = latency.runpytest("--benchmark-only", "--benchmark-autosave", f"--benchmark-storage={storage}", *FAST)
    result.assert_outcomes(passed=2)
    saved = list(storage.rglob("*.json"))
    assert len(saved) == 1
    names = {b["name"] for b in json.loads(saved[0].read_text())["benchmarks"]}
    assert names == {"test_latency[toy-b1]", "test_latency[toy-b3]"}
    result = latency.runpytest(
        "--benchmark-only",
        f"--benchmark-storage={storage}",
        "--benchmark-compare",
        "--benchmark-compare-fail=mean:10",
        *FAST,
    )
    result.assert_outcomes(passed=2)


def test_without_pytest_benchmark_the_cases_skip_with_the_reason(latency):
    result = latency.runpytest("-p", "no:benchmark", "-m", "benchmark", "--strict-markers", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*robustness_latency needs pytest-benchmark, which is not installed*"])


def test_bad_batch_sizes_fail_collection_naming_the_option(latency):
    result = latency.runpytest("--robustness-benchmark-batch-sizes=1,x", "--benchmark-only")
    result.stdout.fnmatch_lines(["*--robustness-benchmark-batch-sizes = '1,x': 'x' is not a batch size*"])
    assert result.ret != 0


@pytest.mark.parametrize(("text", "sizes"), [("1 32", [1, 32]), ("8", [8]), ("1,2, 4", [1, 2, 4])])
def test_parse_batch_sizes(text, sizes):
    assert parse_batch_sizes(text, "ini x") == sizes


@pytest.mark.parametrize(
    ("text", "message"), [("", "at least one"), ("0", "'0' is not"), ("2 2", "given twice"), ("1.5", "'1.5' is not")]
)
def test_parse_batch_sizes_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_batch_sizes(text, "ini x")


def test_without_images_a_seeded_random_batch_and_the_threshold_of_the_model(latency):
    """No image folder: random uint8 images through the model's preprocessing; a robustness_model
    fixture that requests robustness_threshold gets the timed model's first entry."""
    latency.makeini("[pytest]\naddopts = -W error -p no:cacheprovider -p no:unraisableexception\n")
    conftest = CONFTEST.replace(
        '@pytest.fixture(scope="session")\ndef robustness_model():',
        "@pytest.fixture\ndef robustness_model(robustness_threshold):\n    assert robustness_threshold.model == 'toy'",
    )
    assert conftest != CONFTEST
    latency.makeconftest(conftest)
    out = latency.path / "bench.json"
    result = latency.runpytest_subprocess(
        "--benchmark-only", f"--benchmark-json={out}", "--robustness-benchmark-batch-sizes=2", *FAST
    )
    result.assert_outcomes(passed=1)
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert bench["name"] == "test_latency[toy-b2]"
    assert bench["extra_info"]["input"] == "random uint8 images (seed 0, 8x8)"


def test_each_thresholds_model_is_timed_registered_ones_as_the_gate_loads_them(latency):
    latency.makeconftest(CONFTEST + REGISTERED)
    latency.makefile(
        ".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 4") + "  teamnet:\n    clean: {top1: 0.0}\n"
    )
    latency.makepyfile(
        test_latency="def test_latency(robustness_latency):\n"
        "    assert robustness_latency.model.name == robustness_latency.name  # its own model, not the fixture's\n"
        "    robustness_latency.run()\n"
    )
    out = latency.path / "bench.json"
    result = latency.runpytest_subprocess(
        "-m", "benchmark", f"--benchmark-json={out}", "--robustness-benchmark-batch-sizes=2", *FAST
    )
    result.assert_outcomes(passed=2)
    benchmarks = {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert sorted(benchmarks) == ["test_latency[teamnet-b2]", "test_latency[toy-b2]"]
    assert benchmarks["test_latency[teamnet-b2]"]["group"] == "robustness-latency-teamnet"
    assert benchmarks["test_latency[teamnet-b2]"]["extra_info"]["model"] == "teamnet"


def test_a_test_cannot_be_a_latency_case_and_a_gate_case(latency):
    latency.makepyfile(test_latency="def test_both(robustness_latency, robustness_verdict):\n    pass\n")
    result = latency.runpytest("-m", "benchmark")
    result.stdout.fnmatch_lines(
        ["*requests robustness_latency and a gate fixture*write the latency test and the gate test as two tests*"]
    )
    assert result.ret != 0
