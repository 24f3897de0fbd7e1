"""The CPU-bound ceiling of ``benchmarks/bench_pipeline.py`` (issue 12's pipeline table); no timing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_pipeline_under_test", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COSTS = {"decode": 0.009, "blur": 0.015, "jpeg2000": 0.150, "jpeg2000 reused": 0.020, "preprocess": 0.004,
         "model": 0.080}  # fmt: skip


def test_ceiling_is_the_models_share_of_the_cpu_work(bench):
    # 80 / (80 + 9 / 9 + 15 + 4): decode is shared by the image's levels
    assert bench.ceiling(COSTS, "blur", 9) == pytest.approx(0.8)
    # the model CPU measured beside a run replaces the single-thread cost
    assert bench.ceiling(COSTS, "blur", 9, model=0.100) == pytest.approx(100 / 120)


def test_ceiling_with_the_store_uses_the_read_back_cost(bench):
    assert bench.ceiling(COSTS, "jpeg2000", 9) == pytest.approx(80 / 235)
    assert bench.ceiling(COSTS, "jpeg2000", 9, reused=True) == pytest.approx(80 / 105)
    # blur is not stored: "reused" is the same work
    assert bench.ceiling(COSTS, "blur", 9, reused=True) == bench.ceiling(COSTS, "blur", 9)
    assert "jpeg2000" in bench.STORED and "blur" not in bench.STORED


def test_every_goal_names_a_known_distortion(bench):
    from robustness import DISTORTIONS

    for goals in bench.GOALS.values():
        assert set(goals) <= set(DISTORTIONS) and all(0 < g <= 1 for g in goals.values())
