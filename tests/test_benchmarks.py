"""Inference timing with pytest-benchmark: the model's forward pass at batch 1 and batch 32.

Skipped unless asked for::

    pytest tests/test_benchmarks.py --benchmark-enable      # or: pytest -m benchmark, --benchmark-only

On a CUDA device the timed call ends with ``torch.cuda.synchronize()`` so the asynchronous kernels
are inside the timed region; otherwise the CPU is timed. Nothing is asserted about time: the numbers
(and images/s in ``extra_info``) are for people and for ``--benchmark-compare``. The pipeline's
end-to-end efficiency is measured by ``benchmarks/bench_pipeline.py``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

pytestmark = pytest.mark.benchmark(group="inference", warmup=True)


def _asked_for(config: pytest.Config) -> bool:
    markexpr = getattr(config.option, "markexpr", "") or ""
    return bool(
        config.getoption("benchmark_enable", False)
        or config.getoption("benchmark_only", False)
        or "benchmark" in markexpr
    )


@pytest.fixture(autouse=True)
def _skip_unless_asked(request):
    if not _asked_for(request.config):
        pytest.skip("inference benchmark: run with --benchmark-enable, --benchmark-only or -m benchmark")


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def model():
    """EfficientNet-Lite0 when its packages are installed, else the tiny test network."""
    try:
        from robustness import load_model

        return load_model("efficientnet_lite0", device=DEVICE).eval()
    except ImportError:
        from test_evaluation import tiny_model

        return tiny_model().to(DEVICE).eval()


def _synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("batch_size", [1, 32])
def test_forward_pass(benchmark, model, batch_size):
    crop = model.preprocessing.crop_size
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, 3, crop, crop, generator=generator).to(DEVICE)

    def forward():
        with torch.inference_mode():
            logits = model(batch)
        _synchronize()  # CUDA is asynchronous: wait inside the timed region
        return logits

    forward()  # warm-up (cuDNN autotuning, lazy init, allocator)
    _synchronize()
    rounds = 20 if batch_size == 1 else 5
    logits = benchmark.pedantic(forward, rounds=rounds, iterations=1, warmup_rounds=1)
    assert logits.shape == (batch_size, 1000)
    benchmark.extra_info.update(
        {"device": DEVICE, "batch_size": batch_size, "model": model.name, "torch_threads": torch.get_num_threads()}
    )
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_second"] = batch_size / benchmark.stats.stats.mean
