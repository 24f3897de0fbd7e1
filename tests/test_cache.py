"""The prediction cache: unchanged re-runs do no inference beyond the behaviour probe and the
verification sample, interrupted runs resume, corrupt entries are recomputed (never trusted),
writes are atomic, concurrent processes share work. (Changed models: ``test_cache_trust.py``.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_evaluation import CONDITIONS, make_dataset, table, tiny_model, truncated_jpeg

from robustness import cache as cache_module
from robustness import distortions, evaluate
from robustness.cache import (
    PROBE_IMAGES,
    CacheWarning,
    PredictionCache,
    default_cache_dir,
    resolve_cache,
    verification_sample_size,
)
from robustness.datasets import load_dataset

pytest_plugins = ["pytester"]

ITEMS = 5 * (1 + sum(len(v) for v in CONDITIONS.values()))  # 5 images x 5 conditions
# images the behaviour fingerprint runs through the model per cached evaluate(): twice for a model key
# without entries yet (determinism check), once for a known one
PROBE, HIT = 2 * PROBE_IMAGES, PROBE_IMAGES


def check(served: int) -> int:
    """Images a cached evaluate() re-computes to verify ``served`` pairs read from the cache."""
    return verification_sample_size(served)


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", 5)


@pytest.fixture
def cache(tmp_path):
    return PredictionCache(tmp_path / "cache", flush_interval=0)


def chunks(cache: PredictionCache) -> list[Path]:
    return sorted(cache.root.rglob("*.rpc"))


def test_rerun_recomputes_only_the_verification_sample_and_gives_identical_results(dataset, cache):
    first_model = tiny_model()
    first = evaluate(first_model, dataset, CONDITIONS, batch_size=2, num_workers=0, cache=cache)
    assert first_model.net.seen == PROBE + ITEMS
    assert table(first) == table(evaluate(tiny_model(), dataset, CONDITIONS, num_workers=0))  # same as uncached
    assert len(chunks(cache)) == 5  # one merged chunk per condition
    again = tiny_model()
    second = evaluate(again, dataset, CONDITIONS, batch_size=7, num_workers=2, device="cpu", cache=cache)
    assert again.net.seen == HIT + check(ITEMS)
    assert table(second) == table(first)
    assert not list(cache.root.rglob("*.tmp"))


def test_no_cache_recomputes(dataset, tmp_path):
    for _ in range(2):
        model = tiny_model()
        evaluate(model, dataset, CONDITIONS, num_workers=0, cache=None)
        assert model.net.seen == ITEMS
    assert not (tmp_path / "cache").exists()


def test_interrupted_run_resumes_where_it_stopped(dataset, cache):
    model = tiny_model()
    model.net.fail_after = PROBE + 12  # the probe, then batches of 4: 12 images done, then "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, dataset, CONDITIONS, batch_size=4, num_workers=0, cache=cache)
    resumed = tiny_model()
    results = evaluate(resumed, dataset, CONDITIONS, batch_size=4, num_workers=0, cache=cache)
    assert resumed.net.seen == HIT + ITEMS - 12 + check(12)
    assert table(results) == table(evaluate(tiny_model(), dataset, CONDITIONS, num_workers=0))


def test_periodic_flush_survives_a_hard_kill(dataset, tmp_path):
    """Even without the final flush (process killed), chunks written during the run are reused."""
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    model = tiny_model()
    model.net.fail_after = PROBE + 8
    original = cache.store
    calls = []

    def store(*args, **kwargs):
        calls.append(1)
        # a flush stores one chunk per condition: the first flush (4 chunks) and part of the
        # second land, then the process "dies"; 6 pairs saved, more than the 4 re-checked
        if len(calls) > 6:
            raise SystemExit("killed")
        return original(*args, **kwargs)

    cache.store = store
    with pytest.raises(SystemExit):
        evaluate(model, dataset, CONDITIONS, batch_size=4, num_workers=0, cache=cache)
    resumed = tiny_model()
    evaluate(resumed, dataset, CONDITIONS, batch_size=4, num_workers=0, cache=PredictionCache(cache.root))
    assert HIT < resumed.net.seen < HIT + ITEMS


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_entry_is_detected_and_recomputed(dataset, cache, damage):
    reference = table(evaluate(tiny_model(), dataset, CONDITIONS, num_workers=0, cache=cache))
    victim = chunks(cache)[0]
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        victim.write_bytes(data[:-20] + bytes([data[-20] ^ 0xFF]) + data[-19:])
    elif damage == "garbage":
        victim.write_bytes(os.urandom(len(data)))
    else:
        victim.write_bytes(b"")
    model = tiny_model()
    with pytest.warns(CacheWarning, match="corrupt"):
        results = evaluate(model, dataset, CONDITIONS, num_workers=0, cache=cache)
    assert model.net.seen == HIT + 5 + check(ITEMS - 5)  # exactly the damaged condition's five images
    assert table(results) == reference
    model = tiny_model()
    evaluate(model, dataset, CONDITIONS, num_workers=0, cache=cache)
    assert model.net.seen == HIT + check(ITEMS)


def test_valid_checksum_but_wrong_contents_is_not_trusted(dataset, cache):
    """A well-formed chunk copied into another condition's folder is rejected by its key metadata."""
    evaluate(tiny_model(), dataset, {"contrast": [0.5], "jpeg": [10]}, clean=False, num_workers=0, cache=cache)
    a, b = chunks(cache)
    b.write_bytes(a.read_bytes())
    model = tiny_model()
    with pytest.warns(CacheWarning, match="different model or condition"):
        evaluate(model, dataset, {"contrast": [0.5], "jpeg": [10]}, clean=False, num_workers=0, cache=cache)
    assert model.net.seen == HIT + 5 + check(5)


def test_out_of_range_predictions_are_not_trusted(tmp_path):
    cache = PredictionCache(tmp_path)
    cache.store("m", "c", [b"a" * 64], np.array([[1, 2, 3, 4, 5]]), flags=[1])
    (entry,) = cache.load("m", "c").values()
    assert entry.top5.tolist() == [1, 2, 3, 4, 5] and entry.flags == 1
    with pytest.raises(ValueError, match="flags"):
        cache.store("m", "c", [b"a" * 64], np.array([[1, 2, 3, 4, 5]]), flags=[2])
    cache.store("m", "c2", [b"a" * 64], np.array([[1, 2, 3, 4, -2]]))  # -1 pads fewer than 5 classes
    with pytest.warns(CacheWarning, match="outside -1-32766"):
        assert cache.load("m", "c2") == {}


def test_key_changes_invalidate_exactly_what_they_determine(tmp_path, cache):
    root = tmp_path / "data"
    dataset = make_dataset(root, 4)
    conditions = {"noise": [30], "blur": [2]}
    evaluate(tiny_model(), dataset, conditions, num_workers=0, cache=cache)

    model = tiny_model()  # another base seed: noise recomputed, blur and clean are seed-independent
    evaluate(model, dataset, conditions, seed=1, num_workers=0, cache=cache)
    assert model.net.seen == HIT + 4 + check(8)

    model = tiny_model(seed=1)  # other weights: everything recomputed
    evaluate(model, dataset, conditions, num_workers=0, cache=cache)
    assert model.net.seen == PROBE + 12

    model = tiny_model(name="tiny-renamed")  # another model identity
    evaluate(model, dataset, conditions, num_workers=0, cache=cache)
    assert model.net.seen == PROBE + 12

    first = sorted(root.rglob("*.png"))[0]  # one changed image file: only its three items
    pixels = np.asarray(__import__("PIL.Image").Image.open(first)).copy()
    pixels[0, 0] ^= 0xFF
    __import__("PIL.Image").Image.fromarray(pixels).save(first)
    model = tiny_model()
    evaluate(model, load_dataset(root), conditions, num_workers=0, cache=cache)
    assert model.net.seen == HIT + 3 + check(9)

    model = tiny_model()  # a subset reuses the full run
    evaluate(model, load_dataset(root, limit=2), conditions, num_workers=0, cache=cache)
    assert model.net.seen == HIT + check(6)


def test_distortion_code_version_is_part_of_the_key(dataset, cache, monkeypatch):
    evaluate(tiny_model(), dataset, ["contrast"], clean=False, num_workers=0, cache=cache)
    monkeypatch.setattr(distortions, "DISTORTION_CODE_VERSION", "test-bump")
    model = tiny_model()
    evaluate(model, dataset, ["contrast"], clean=False, num_workers=0, cache=cache)
    assert model.net.seen == HIT + len(dataset) * len(distortions.DISTORTIONS["contrast"].levels)


def test_preprocessing_is_part_of_the_key(dataset, cache):
    from dataclasses import replace

    evaluate(tiny_model(), dataset, {"contrast": [0.5]}, num_workers=0, cache=cache)
    model = tiny_model()
    model.preprocessing = replace(model.preprocessing, interpolation="bicubic")
    evaluate(model, dataset, {"contrast": [0.5]}, num_workers=0, cache=cache)
    assert model.net.seen == PROBE + 10


def test_failed_write_leaves_no_entry(dataset, cache, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        evaluate(tiny_model(), dataset, {"contrast": [0.5]}, clean=False, num_workers=0, cache=cache)
    monkeypatch.undo()
    assert chunks(cache) == []
    assert not [p for p in cache.root.rglob("*") if p.is_file() and p.name != ".lock"]


def test_stale_temporary_files_are_removed(dataset, cache):
    evaluate(tiny_model(), dataset, {"contrast": [0.5]}, clean=False, num_workers=0, cache=cache)
    folder = chunks(cache)[0].parent
    stale, fresh = folder / ".x.rpc.old.tmp", folder / ".x.rpc.new.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    cache.compact(*folder.relative_to(cache.root / "v3").parts)
    assert not stale.exists() and fresh.exists()
    model = tiny_model()
    evaluate(model, dataset, {"contrast": [0.5]}, clean=False, num_workers=0, cache=cache)
    assert model.net.seen == HIT + check(5)


def test_skipped_image_with_cache(tmp_path, cache):
    root = tmp_path / "data"
    make_dataset(root, 3)
    truncated_jpeg(root / "n01440764" / "zz.jpg")
    dataset = load_dataset(root)
    with pytest.warns(UserWarning, match="zz.jpg"):
        first = evaluate(tiny_model(), dataset, {"contrast": [0.5]}, num_workers=0, cache=cache)
    model = tiny_model()
    with pytest.warns(UserWarning, match="zz.jpg"):
        second = evaluate(model, dataset, {"contrast": [0.5]}, num_workers=0, cache=cache)
    assert model.net.seen == HIT + check(6)
    assert table(first) == table(second) and first[0].n == 3 and list(second[1].skipped) == ["n01440764/zz.jpg"]


def test_resolve_cache_and_default_dir(tmp_path, monkeypatch):
    assert resolve_cache(None) is None and resolve_cache(False) is None
    monkeypatch.setenv("ROBUSTNESS_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert resolve_cache(True).root == tmp_path / "env"
    assert resolve_cache(tmp_path / "x").root == tmp_path / "x"
    monkeypatch.delenv("ROBUSTNESS_CACHE_DIR")
    assert default_cache_dir() == Path(".robustness-cache")


def _worker(barrier, queue, data, cache_root):
    import torch

    torch.set_num_threads(1)
    model = tiny_model()
    dataset = load_dataset(data)
    barrier.wait(timeout=60)  # both processes start evaluating together
    results = evaluate(
        model,
        dataset,
        {"noise": [30, 60], "blur": [2]},
        batch_size=2,
        num_workers=0,
        cache=PredictionCache(cache_root, flush_interval=0),
    )
    queue.put(
        {
            "seen": model.net.seen,
            "top1": [r.top1 for r in results],
            "predictions": [r.predictions.tolist() for r in results],
        }
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX advisory locks")
def test_concurrent_processes_share_the_work(tmp_path):
    """Two processes evaluating the same conditions at once: each (image, condition) is computed once."""
    import multiprocessing

    make_dataset(tmp_path / "data", 6)
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    procs = [
        context.Process(target=_worker, args=(barrier, queue, tmp_path / "data", tmp_path / "cache")) for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    outputs = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    # each (image, condition) computed once, plus each process's probe and verification sample
    # (at most 4 re-checked pairs each; computing everything twice would be 48)
    assert 6 * 4 + 2 * HIT <= sum(o["seen"] for o in outputs) <= 6 * 4 + 2 * PROBE + 2 * 4
    assert outputs[0]["predictions"] == outputs[1]["predictions"]
    assert outputs[0]["top1"] == outputs[1]["top1"]


_CONFTEST = """
import os
import pytest
import torch
from robustness.cache import probe_batch
from robustness.datasets import load_dataset
from test_evaluation import tiny_model


class _Logged(torch.nn.Module):
    def __init__(self, net, probe):
        super().__init__()
        self.net = net
        self.probe = probe

    def forward(self, x):
        probing = x.shape == self.probe.shape and torch.equal(x.cpu(), self.probe)
        with open(os.environ["TINY_LOG"], "a") as log:
            log.write("probe\\n" if probing else f"{x.shape[0]}\\n")
        return self.net(x)


@pytest.fixture(scope="session")
def robustness_dataset():
    return load_dataset(os.environ["TINY_DATA"])


@pytest.fixture(scope="session")
def _tiny():
    model = tiny_model()
    model.net = _Logged(model.net, probe_batch(model))
    return model


@pytest.fixture
def robustness_model(_tiny):
    return _tiny
"""

_THRESHOLDS = """
defaults: {images: 6, seed: 0}
models:
  tiny:
    source: fixture   # the conftest's robustness_model (registered names run as themselves)
    clean: {top1: 0.0}
    noise:
      30: {top1: 0.0}
      60: {top5: 1.0}
    blur:
      2: {top1: 1.0}
      4: {top1: 0.0}
"""


def test_gate_under_xdist_same_verdicts_and_shared_cache(pytester, tmp_path, monkeypatch):
    """pytest -n 2 gives the serial verdicts, computes each (image, condition) once, and an
    unchanged re-run does no inference beyond the probe and 4 verification pairs per evaluation."""
    pytest.importorskip("xdist")
    make_dataset(tmp_path / "data", 6)
    log = tmp_path / "inferred.log"
    tests_dir = Path(__file__).resolve().parent
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tests_dir.parent), str(tests_dir), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("TINY_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TINY_LOG", str(log))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makeconftest(_CONFTEST)
    pytester.makefile(".yaml", thresholds=_THRESHOLDS)
    pytester.makepyfile(
        test_gate="""
        from robustness.gate import check_threshold

        def test_accuracy(robustness_threshold, robustness_result):
            check_threshold(robustness_threshold, robustness_result)
    """
    )

    def inferred() -> tuple[int, int]:
        """(images classified outside the behaviour probe, probe runs: 1 or 2 per evaluate() with a cache)."""
        lines = log.read_text().split() if log.exists() else []
        log.unlink(missing_ok=True)
        return sum(int(line) for line in lines if line != "probe"), lines.count("probe")

    common = [
        "-p",
        "no:cacheprovider",
        "-p",
        "no:benchmark",
        "--robustness-workers=0",
        f"--robustness-cache-dir={tmp_path / 'cache'}",
    ]
    serial = pytester.runpytest("-p", "no:xdist", "--robustness-no-cache", *common[:5])
    serial.assert_outcomes(passed=3, failed=2)
    assert inferred() == (6 * 5, 0) and not (tmp_path / "cache").exists()
    parallel = pytester.runpytest_subprocess("-n", "2", *common)
    parallel.assert_outcomes(passed=3, failed=2)
    images, probes = inferred()  # clean + 2 noise + 2 blur levels, each image once across both workers,
    assert probes >= 2 and 6 * 5 <= images <= 6 * 5 + 4 * probes  # plus what a worker re-checked of the other's
    rerun = pytester.runpytest("-p", "no:xdist", *common)
    rerun.assert_outcomes(passed=3, failed=2)
    images, probes = inferred()  # known key: one probe run per evaluate(), then 4 re-checked pairs
    assert probes >= 1 and images == 4 * probes


def test_cli_run_uses_the_cache_and_no_cache_disables_it(tmp_path, monkeypatch, capsys):
    from test_evaluation import _TinyNet

    from robustness import cli, models

    seen = []

    class Counting(_TinyNet):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    spec = models.ModelSpec("tiny-cli", lambda: Counting(), tiny_model().preprocessing)
    monkeypatch.setitem(models.MODELS, "tiny-cli", spec)
    root = tmp_path / "data"
    make_dataset(root, 3)
    truncated_jpeg(root / "n01440764" / "broken.jpg")
    args = [
        "run",
        "--model",
        "tiny-cli",
        "--data",
        str(root),
        "--distortion",
        "contrast",
        "--no-progress",
        "--workers",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--output",
        str(tmp_path / "out"),
    ]
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert cli.main(args) == 0
    pairs = 3 * 11  # 3 readable images x (clean + 11 contrast levels), contrast 0 being the clean image
    probe = sum(seen) - pairs - PROBE  # load_model may run one probe image through the model
    assert probe in (0, 1)
    assert "skipped unreadable image n01440764/broken.jpg" in capsys.readouterr().err
    seen.clear()
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert cli.main(args) == 0
    assert sum(seen) == probe + HIT + check(pairs)  # no inference beyond probe and verification
    seen.clear()
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert cli.main(args + ["--no-cache"]) == 0
    assert sum(seen) == probe + pairs
