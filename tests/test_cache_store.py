"""The seam between the engine and its prediction store (issue 10): the engine asks a
:class:`robustness.cache.PredictionStore` what it holds, computes the rest and hands results back;
locks, writes and compaction stay inside the store. An in-memory store written here, knowing nothing
of the on-disk cache, is enough for the engine; the on-disk store releases its locks and merges its
chunks by itself."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluation import CONDITIONS, make_dataset, table, tiny_model

from robustness import evaluate
from robustness.cache import (
    PROBE_IMAGES,
    CachedPrediction,
    CacheWarning,
    NullStore,
    PredictionCache,
    PredictionSession,
    PredictionStore,
    resolve_store,
    verification_sample_size,
)

ITEMS = 5 * (1 + sum(len(v) for v in CONDITIONS.values()))  # 5 images x 5 conditions


class MemoryStore:
    """A :class:`PredictionStore` in a dict: (model name, distortion, level, image id) -> (top5, flags).
    It runs no probe and takes no lock; ``calls`` records the conversation."""

    def __init__(self):
        self.entries: dict[tuple, tuple[np.ndarray, int]] = {}
        self.calls: list[tuple] = []

    def open_run(self, model, device, dataset, conditions, seed):
        self.calls.append(("open_run", len(dataset), len(conditions)))
        return MemorySession(self, model.name, [sample.image_id for sample in dataset], list(conditions))


class MemorySession(PredictionSession):
    def __init__(self, store: MemoryStore, name: str, image_ids: list[str], conditions: list):
        self.store, self.name, self.image_ids, self.conditions = store, name, image_ids, conditions

    def _key(self, k: int, i: int) -> tuple:
        return (self.name, self.conditions[k].distortion, self.conditions[k].level, self.image_ids[i])

    def claim(self, condition_indices):
        for k in condition_indices:  # one condition per group: the engine must handle several groups
            self.store.calls.append(("claim", k))
            yield [k]

    def get(self, condition_index):
        found = {}
        for i in range(len(self.image_ids)):
            entry = self.store.entries.get(self._key(condition_index, i))
            if entry is not None:
                found[i] = CachedPrediction(*entry)
        return found

    def put(self, condition_indices, image_indices, top5, flags):
        self.store.calls.append(("put", len(condition_indices)))
        for k, i, row, flag in zip(condition_indices.tolist(), image_indices.tolist(), top5, flags.tolist()):
            self.store.entries[self._key(k, i)] = (np.asarray(row, dtype=np.int16), int(flag))

    def sample_seed(self, condition_indices):
        return 0

    def discard(self):
        self.store.calls.append(("discard",))
        self.store.entries = {key: value for key, value in self.store.entries.items() if key[0] != self.name}

    def close(self, error=None):
        self.store.calls.append(("close", type(error).__name__ if error is not None else None))


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", 5)


def test_engine_works_against_an_in_memory_store(dataset):
    """The engine needs only the interface: it fills from the store, computes the rest, hands it back,
    re-checks a sample of what it read and, when that disagrees, has the store discard and recomputes."""
    store = MemoryStore()
    assert isinstance(store, PredictionStore) and resolve_store(store) is store
    reference = table(evaluate(tiny_model(), dataset, CONDITIONS, num_workers=0))

    model = tiny_model()
    assert table(evaluate(model, dataset, CONDITIONS, batch_size=3, num_workers=0, cache=store)) == reference
    assert model.net.seen == ITEMS  # everything computed once; no probe (this store asks for none)
    assert len(store.entries) == ITEMS  # everything handed back
    assert [c for c in store.calls if c[0] == "claim"] == [("claim", k) for k in range(5)]
    assert store.calls[0] == ("open_run", 5, 5) and store.calls[-1] == ("close", None)

    store.calls.clear()
    again = tiny_model()
    assert table(evaluate(again, dataset, CONDITIONS, batch_size=3, num_workers=0, cache=store)) == reference
    assert again.net.seen == verification_sample_size(ITEMS)  # served; only the sample re-checked
    assert not [c for c in store.calls if c[0] in ("put", "discard")]

    for key, (top5, flags) in store.entries.items():  # every stored answer wrong
        store.entries[key] = ((top5 + 1) % 1000, flags)
    store.calls.clear()
    checked = tiny_model()
    with pytest.warns(CacheWarning, match=r"disagree with the model on 4/4 .*discarding"):
        assert table(evaluate(checked, dataset, CONDITIONS, num_workers=0, cache=store)) == reference
    assert ("discard",) in store.calls
    assert checked.net.seen == verification_sample_size(ITEMS) + ITEMS
    fresh = {(d, lv, i): p for d, lv, _, _, _, ids, preds in reference for i, p in zip(ids, preds)}
    assert {(d, lv, i): top5.tolist() for (_, d, lv, i), (top5, _) in store.entries.items()} == fresh

    # Two conditions stored wrong, three missing: the three are computed, the sample of the two
    # disagrees, the store discards everything, and the engine hands back what it computed before
    # the discard as well as what it recomputed after it.
    wrong = {
        key: ((top5 + 1) % 1000, flags) for key, (top5, flags) in store.entries.items() if key[1] in ("blur", "jpeg")
    }
    store.entries = wrong
    with pytest.warns(CacheWarning, match="disagree"):
        assert table(evaluate(tiny_model(), dataset, CONDITIONS, num_workers=0, cache=store)) == reference
    assert {(d, lv, i): top5.tolist() for (_, d, lv, i), (top5, _) in store.entries.items()} == fresh


def test_an_interrupted_run_closes_its_session_with_the_error(dataset):
    """What was handed back before Ctrl-C stays in the store, and the store is told the run failed."""
    store = MemoryStore()
    model = tiny_model()
    model.net.fail_after = 8
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, dataset, CONDITIONS, batch_size=4, num_workers=0, cache=store)
    assert store.calls[-1] == ("close", "KeyboardInterrupt")
    done = model.net.seen  # one condition per group here: 4 + 1 clean images, then 4 more
    assert 8 <= done < ITEMS and len(store.entries) == done
    resumed = tiny_model()
    evaluate(resumed, dataset, CONDITIONS, batch_size=4, num_workers=0, cache=store)
    assert resumed.net.seen == ITEMS - done + verification_sample_size(done)


def test_resolve_store():
    assert isinstance(resolve_store(None), NullStore) and isinstance(resolve_store(False), NullStore)
    assert isinstance(NullStore(), PredictionStore) and isinstance(PredictionCache("x"), PredictionStore)
    cache = PredictionCache("x")
    assert resolve_store(cache) is cache
    assert isinstance(resolve_store("some/folder"), PredictionCache)


def _locks_free(cache: PredictionCache) -> list[bool]:
    """For each condition folder of the cache: can another open file take its lock right now?"""
    free = []
    for lock in sorted(cache.root.rglob(".lock")):
        with cache.lock(lock.parent.parent.name, lock.parent.name, blocking=False) as acquired:
            free.append(acquired)
    return free


def test_the_disk_session_releases_its_locks_when_the_run_fails(dataset, tmp_path):
    """The engine never touches a lock: an interrupted run's session releases them when it closes
    (even while the exception, and so the claimed group, is still referenced)."""
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    if not cache.use_locks:
        pytest.skip("no fcntl on this platform")
    model = tiny_model()
    model.net.fail_after = 2 * PROBE_IMAGES + 4  # both probe runs, then one batch of 4
    with pytest.raises(KeyboardInterrupt) as failure:
        evaluate(model, dataset, CONDITIONS, batch_size=4, num_workers=0, cache=cache)
    assert failure.value is not None  # the traceback (and the session's frames) are alive here
    assert _locks_free(cache) == [True] * 5


def test_the_disk_session_merges_what_it_wrote_after_a_discard(dataset, tmp_path):
    """After a verification mismatch the recomputed predictions are written and merged by the store
    itself: one chunk per condition, and a re-run is served."""
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    reference = table(evaluate(tiny_model(), dataset, CONDITIONS, batch_size=2, num_workers=0, cache=cache))
    for chunk in sorted(cache.root.rglob("*.rpc")):  # plant wrong answers under the right keys
        folder = chunk.parent
        entries = cache.load(folder.parent.name, folder.name)
        chunk.unlink()
        keys = list(entries)
        cache.store(folder.parent.name, folder.name, keys, np.stack([(entries[k].top5 + 3) % 1000 for k in keys]))
    with pytest.warns(CacheWarning, match="disagree"):
        assert table(evaluate(tiny_model(), dataset, CONDITIONS, batch_size=2, num_workers=0, cache=cache)) == reference
    assert len(sorted(cache.root.rglob("*.rpc"))) == 5  # merged: one chunk per condition
    model = tiny_model()
    assert table(evaluate(model, dataset, CONDITIONS, num_workers=0, cache=cache)) == reference
    assert model.net.seen == PROBE_IMAGES + verification_sample_size(ITEMS)


def test_put_checks_its_arrays(tmp_path):
    cache = PredictionCache(tmp_path / "cache")
    model = tiny_model()
    session = cache.open_run(model.eval(), "cpu", make_dataset(tmp_path / "data", 2), [], 0)
    with session, pytest.raises(ValueError, match=r"top5 \(n, 5\)"):
        session.put(np.array([0]), np.array([0]), np.zeros((1, 4), dtype=np.int64), np.array([0]))
