"""The distortion store (issue 12): codec outputs encoded once, decoded on reuse, bit-identical to
``distort()``; checksummed, atomic, concurrent-safe, bypassed without a cache; keyed by the source
pixels, distortion, level, code version and codec versions."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from robustness import distortions
from robustness.distortion_store import DistortionStore, DistortionStoreWarning, StoreSize, codec_versions
from robustness.distortions import codec_round_trip, decode, distort, distort_with_info, encode
from robustness.images import load_image

#: JPEG quality and JPEG 2000 PSNR levels from the paper's grids (mildest and harshest ends).
CODEC_CONDITIONS = [("jpeg", 20), ("jpeg", 2), ("jpeg2000", 40), ("jpeg2000", 20)]


@pytest.fixture(scope="module")
def real_images(request) -> list[np.ndarray]:
    """Four shared ImageNet images (skips when they are absent)."""
    paths = request.getfixturevalue("shared_image_paths")
    return [load_image(path) for path in paths[:: max(1, len(paths) // 4)][:4]]


def _entry_files(store: DistortionStore) -> list[Path]:
    return sorted(store.root.rglob("*.rds"))


def _no_encoder(*args, **kwargs):
    raise AssertionError("the encoder ran although the store holds the entry")


# ------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize(("distortion", "level"), CODEC_CONDITIONS)
def test_stored_then_decoded_is_distort_on_real_images(real_images, tmp_path, distortion, level):
    """First call (encode + store) and second call (read + decode) both equal ``distort()`` bit for
    bit, and the stored JPEG 2000 info is what ``distort_with_info`` reports."""
    store = DistortionStore(tmp_path)
    for image in real_images:
        expected, expected_info = distort_with_info(image, distortion, level)
        assert np.array_equal(decode(encode(image, distortion, level)[0]), expected)
        encoded, decoded, info = codec_round_trip(image, distortion, level)
        assert np.array_equal(decoded, expected) and np.array_equal(decode(encoded), expected)
        assert info == (expected_info if distortion == "jpeg2000" else None)
        first, first_info = store.distort_with_info(image, distortion, level)
        second, second_info = store.distort_with_info(image, distortion, level)
        assert np.array_equal(first, expected) and np.array_equal(second, expected)
        assert second.dtype == np.uint8 and second.shape == image.shape
        assert first_info == second_info == expected_info
        assert np.array_equal(store.distort(image, distortion, level), expected)
    assert store.size().entries == len(real_images)


def test_other_distortions_pass_through_and_store_nothing(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    store = DistortionStore(tmp_path)
    for name, level in (("blur", 2), ("noise", 30), ("contrast", 0.5)):
        assert np.array_equal(store.distort(image, name, level, seed=3), distort(image, name, level, seed=3))
    assert store.size() == StoreSize(0, 0) and not (tmp_path / "v1").exists()


def test_bad_input_is_named_and_nothing_is_written(tmp_path):
    store = DistortionStore(tmp_path)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="outside the valid range"):
        store.distort(image, "jpeg", 101)
    with pytest.raises(ValueError, match="uint8"):
        store.distort(image.astype(np.float32), "jpeg2000", 30)
    with pytest.raises(ValueError, match="not a codec distortion"):
        encode(image, "blur", 2)
    with pytest.raises(ValueError, match="cannot decode a 4-byte"):
        decode(b"\x89PNG")
    assert _entry_files(store) == []


# ----------------------------------------------------------------------------------- reuse


def test_reuse_skips_the_encoder(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    first = DistortionStore(tmp_path)
    computed = [first.distort_with_info(image, d, level) for image in images for d, level in CODEC_CONDITIONS]
    monkeypatch.setattr(distortions, "codec_round_trip", _no_encoder)
    monkeypatch.setattr(distortions, "jpeg2000_with_psnr", _no_encoder)
    second = DistortionStore(tmp_path)  # another process or release: only the folder is shared
    reused = [second.distort_with_info(image, d, level) for image in images for d, level in CODEC_CONDITIONS]
    for (a, a_info), (b, b_info) in zip(computed, reused):
        assert np.array_equal(a, b) and a_info == b_info
    with pytest.raises(AssertionError, match="encoder ran"):  # the patch bites where nothing is stored
        second.distort(images[0], "jpeg", 50)


def test_the_store_is_beside_the_prediction_cache_and_pickles_as_its_folder(tmp_path):
    import pickle

    store = DistortionStore.beside(tmp_path / "cache")
    assert store.root == tmp_path / "cache" / "distortions"
    assert pickle.loads(pickle.dumps(store)) == store and vars(store) == {"root": store.root}


# ------------------------------------------------------------------------------------- keys


def test_key_changes_with_the_image_level_code_version_and_codecs(tmp_path, monkeypatch):
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    key = DistortionStore.key(image, "jpeg2000", 30)
    changed = image.copy()
    changed[7, 3, 1] ^= 1
    assert DistortionStore.key(image.copy(), "jpeg2000", 30) == key  # the pixels, not the array object
    assert DistortionStore.key(changed, "jpeg2000", 30) != key
    assert DistortionStore.key(image[:, :15], "jpeg2000", 30) != key
    assert DistortionStore.key(image, "jpeg2000", 32) != key
    assert DistortionStore.key(image, "jpeg", 30) != key
    monkeypatch.setattr(distortions, "DISTORTION_CODE_VERSION", "changed")
    assert DistortionStore.key(image, "jpeg2000", 30) != key
    monkeypatch.undo()
    assert DistortionStore.key(image, "jpeg2000", 30) == key
    monkeypatch.setattr("robustness.distortion_store.codec_versions", lambda: {**codec_versions(), "openjpeg": "0.0.0"})
    assert DistortionStore.key(image, "jpeg2000", 30) != key


def test_a_new_code_version_recomputes(tmp_path, monkeypatch):
    image = np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    store = DistortionStore(tmp_path)
    store.distort(image, "jpeg", 10)
    calls = []
    real = distortions.codec_round_trip
    monkeypatch.setattr(distortions, "codec_round_trip", lambda *args: calls.append(args) or real(*args))
    store.distort(image, "jpeg", 10)
    assert calls == []
    monkeypatch.setattr(distortions, "DISTORTION_CODE_VERSION", "next")
    store.distort(image, "jpeg", 10)
    assert len(calls) == 1 and store.size().entries == 2


def test_same_pixels_in_another_file_share_the_entry(tmp_path, monkeypatch):
    """Keyed by the decoded pixels: a PNG re-saved with other metadata (other file bytes, same
    pixels) reuses the entry; one changed pixel does not."""
    from PIL import Image, PngImagePlugin

    pixels = np.random.default_rng(4).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "same pixels, other bytes")
    Image.fromarray(pixels).save(tmp_path / "b.png", pnginfo=info)
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    store = DistortionStore(tmp_path / "store")
    store.distort(load_image(tmp_path / "a.png"), "jpeg2000", 30)
    monkeypatch.setattr(distortions, "codec_round_trip", _no_encoder)
    store.distort(load_image(tmp_path / "b.png"), "jpeg2000", 30)
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(tmp_path / "a.png")
    with pytest.raises(AssertionError, match="encoder ran"):
        store.distort(load_image(tmp_path / "a.png"), "jpeg2000", 30)


# ------------------------------------------------------------------------------- integrity


def _flip(offset_from_end: int):
    def change(data: bytes) -> bytes:
        index = len(data) - offset_from_end
        return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]

    return change


CORRUPTIONS = {
    "codestream byte flipped": _flip(10),
    "truncated": lambda data: data[: len(data) // 2],
    "header byte flipped": lambda data: data.replace(b'"shape":[', b'"shape":[9', 1),
    "bad magic": lambda data: b"X" + data[1:],
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("distortion", ["jpeg", "jpeg2000"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_entry_is_detected_discarded_and_recomputed(tmp_path, monkeypatch, distortion, corruption):
    image = np.random.default_rng(5).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    level = 30 if distortion == "jpeg2000" else 10
    store = DistortionStore(tmp_path)
    expected = store.distort(image, distortion, level)
    (path,) = _entry_files(store)
    good = path.read_bytes()
    path.write_bytes(CORRUPTIONS[corruption](good))
    calls = []
    real = distortions.codec_round_trip
    monkeypatch.setattr(distortions, "codec_round_trip", lambda *args: calls.append(args) or real(*args))
    with pytest.warns(DistortionStoreWarning, match=f"corrupt entry {path}"):
        again = store.distort(image, distortion, level)
    assert np.array_equal(again, expected) and len(calls) == 1  # recomputed, not served
    assert path.read_bytes() == good  # and written again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(store.distort(image, distortion, level), expected)
    assert len(calls) == 1


def test_an_entry_moved_to_another_key_is_not_trusted(tmp_path):
    """A valid entry under the wrong name (a copied file) fails the header check."""
    rng = np.random.default_rng(6)
    a, b = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    store = DistortionStore(tmp_path)
    store.distort(a, "jpeg", 50)
    target = store.path(store.key(b, "jpeg", 50))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(store.path(store.key(a, "jpeg", 50)).read_bytes())
    with pytest.warns(DistortionStoreWarning, match="another image"):
        assert np.array_equal(store.distort(b, "jpeg", 50), distort(b, "jpeg", 50))


def test_an_unwritable_store_warns_and_still_distorts(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = DistortionStore(blocker)
    image = np.random.default_rng(7).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with pytest.warns(DistortionStoreWarning, match="cannot write"):
        out = store.distort(image, "jpeg", 40)
    assert np.array_equal(out, distort(image, "jpeg", 40))


def test_size_counts_entries_and_bytes(tmp_path):
    store = DistortionStore(tmp_path)
    assert store.size() == StoreSize(0, 0) and store.size().describe() == "0 entries, 0 bytes"
    image = np.random.default_rng(8).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for level in (10, 20, 30):
        store.distort(image, "jpeg", level)
    files = _entry_files(store)
    assert store.size() == StoreSize(3, sum(p.stat().st_size for p in files))
    assert (
        StoreSize(1, 999).describe() == "1 entry, 999 bytes" and StoreSize(2, 84_200).describe() == "2 entries, 84.2 KB"
    )
    store.clear()
    assert store.size() == StoreSize(0, 0)


# ------------------------------------------------------------------------------ concurrency


def _concurrent_writer(barrier, queue, root, image, distortion, level, index):
    """Read or compute the entry 400 times (JPEG 2000: 12); every other time first delete it, so the two processes
    keep rewriting it while the other reads it."""
    store = DistortionStore(root)
    path = store.path(store.key(image, distortion, level))
    barrier.wait(timeout=60)
    outs = set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a torn or half-written entry would warn (corrupt entry)
            for i in range(400 if distortion == "jpeg" else 12):
                if i % 2 == index:
                    path.unlink(missing_ok=True)
                outs.add(store.distort(image, distortion, level).tobytes())
    except Exception as error:  # noqa: BLE001 - reported to the parent at once, not after a timeout
        outs.add(repr(error))
    queue.put(outs)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize(("distortion", "level"), [("jpeg", 10), ("jpeg2000", 30)])
def test_two_processes_writing_the_same_entry(tmp_path, distortion, level):
    """Two processes compute, write, delete and read the same entry at once (no torch, no CUDA in
    the children): no error, no torn file read, both always get ``distort()``'s output, and one
    whole entry and no temporary file is left."""
    import multiprocessing

    image = np.random.default_rng(9).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    args = (barrier, queue, tmp_path, image, distortion, level)
    procs = [context.Process(target=_concurrent_writer, args=(*args, index)) for index in range(2)]
    for proc in procs:
        proc.start()
    outputs = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    expected = distort(image, distortion, level).tobytes()
    assert outputs == [{expected}, {expected}]
    store = DistortionStore(tmp_path)
    assert len(_entry_files(store)) == 1 and list(tmp_path.rglob("*.tmp")) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.distort(image, distortion, level).tobytes() == expected


# ---------------------------------------------------------------------------------- engine

ENGINE_CONDITIONS = {"jpeg": [10], "jpeg2000": [30], "blur": [1]}


def _engine_table(results) -> list[tuple]:
    return [(r.distortion, r.level, r.top1, r.predictions.tolist(), r.tolerance_misses) for r in results]


def test_evaluate_fills_the_store_beside_the_cache_and_a_second_model_only_decodes(tmp_path, monkeypatch):
    """A first model's run writes one entry per (image, codec condition) into
    ``<cache>/distortions`` (DataLoader workers included); a second model then gets every codec
    output from the store (the encoder is made to fail) with the no-cache results."""
    from test_evaluation import make_dataset, tiny_model

    from robustness import evaluate

    dataset = make_dataset(tmp_path / "data", 4)
    expected = {
        seed: _engine_table(evaluate(tiny_model(seed), dataset, ENGINE_CONDITIONS, num_workers=0, cache=None))
        for seed in (0, 1)
    }
    cache = tmp_path / "cache"
    first = evaluate(tiny_model(0), dataset, ENGINE_CONDITIONS, batch_size=2, num_workers=2, device="cpu", cache=cache)
    assert _engine_table(first) == expected[0]
    store = DistortionStore.beside(cache)
    assert store.size().entries == 4 * 2  # jpeg and jpeg2000; blur and clean are not stored
    monkeypatch.setattr(distortions, "codec_round_trip", _no_encoder)
    monkeypatch.setattr(distortions, "jpeg2000_with_psnr", _no_encoder)
    second = evaluate(tiny_model(1, "other"), dataset, ENGINE_CONDITIONS, num_workers=0, cache=cache)
    assert _engine_table(second) == expected[1]
    assert store.size().entries == 4 * 2


def test_no_cache_bypasses_the_store(tmp_path, monkeypatch):
    """``cache=None`` (``--no-cache``): the store is neither read nor written, and no folder appears."""
    from test_evaluation import make_dataset, tiny_model

    from robustness import evaluate

    dataset = make_dataset(tmp_path / "data", 3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUSTNESS_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setattr(DistortionStore, "_read", _no_encoder)
    monkeypatch.setattr(DistortionStore, "_write", _no_encoder)
    results = evaluate(tiny_model(), dataset, ENGINE_CONDITIONS, num_workers=0, cache=None)
    assert [r.n for r in results] == [3] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_robustness_run_reports_the_store_and_no_cache_writes_nothing(tmp_path, capsys, monkeypatch):
    """``robustness run`` prints the store's total after the table, walking the store once. It used to
    add ``(+K this run)``, the change in the total: with two runs sharing the folder each claimed the
    other's entries, and the workers' (DataLoader, Ray) writes cannot be counted cheaply, so the claim
    is gone and only the true total is printed."""
    from test_evaluation import make_dataset

    from robustness.cli import main

    make_dataset(tmp_path / "data", 2)

    def run(*extra: str) -> int:
        return main(
            [
                "run",
                "--model",
                "test_evaluation:tiny_model",
                "--data",
                str(tmp_path / "data"),
                "--distortion",
                "jpeg2000=30",
                "--distortion",
                "jpeg=10,20",
                "--device",
                "cpu",
                "--workers",
                "0",
                "--no-report",
                "--cache-dir",
                str(tmp_path / "cache"),
                *extra,
            ]
        )

    assert run("--no-cache", "--output", str(tmp_path / "a")) == 0
    assert not (tmp_path / "cache").exists()
    assert "distortion store" not in capsys.readouterr().out
    walks = []
    size_of = DistortionStore.size
    monkeypatch.setattr(DistortionStore, "size", lambda self: walks.append(self) or size_of(self))
    assert run("--output", str(tmp_path / "b")) == 0
    assert len(walks) == 1, "the store was walked more than once in one run"
    size = size_of(DistortionStore.beside(tmp_path / "cache"))
    assert size.entries == 2 * 3 and size.bytes > 0
    store = tmp_path / "cache" / "distortions"
    lines = capsys.readouterr().out.splitlines()
    assert f"distortion store {store}: {size.describe()}" in lines
    assert run("--output", str(tmp_path / "c")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"distortion store {store}: {size.describe()}" in lines
    assert not any("this run" in line for line in lines)


def test_size_survives_a_folder_removed_while_it_counts(tmp_path, monkeypatch):
    """Another process clearing the store (DistortionStore.clear, a cleanup job) while this one counts
    it: ``robustness run`` prints the size after the evaluation and before writing results.json, so a
    raise here lost the run's results. A vanished folder counts as empty."""
    store = DistortionStore(tmp_path / "store")
    image = np.random.default_rng(3).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    for quality in (10, 20, 30, 40, 50, 60):
        store.distort(image, "jpeg", quality)
    assert store.size().entries == 6
    original = os.scandir

    def racing(path="."):  # the store is cleared after its top folder is listed, before a subfolder is read
        if Path(path) != store.root / "v1":
            return original(path)
        with original(path) as listing:
            subfolders = list(listing)
        monkeypatch.setattr(os, "scandir", original)
        store.clear()
        return iter(subfolders)

    monkeypatch.setattr(os, "scandir", racing)
    assert store.size() == StoreSize(0, 0)
    monkeypatch.undo()
    assert store.size() == StoreSize(0, 0)


def test_evaluate_tidies_temporary_files_of_killed_writers(tmp_path):
    """A writer killed mid-write leaves ``.<entry>.<random>.tmp`` (``_io.atomic_write``'s name) in an
    entry folder; ``tidy`` was never called, so they piled up. Each evaluation with a cache now deletes
    those older than an hour, once, and leaves a younger one (maybe a live writer's) alone."""
    import time

    from test_evaluation import make_dataset, tiny_model

    from robustness import evaluate
    from robustness._io import atomic_write
    from robustness.evaluation import Condition

    store = DistortionStore.beside(tmp_path / "cache")
    entry = store.path("ab" + "0" * 62)
    atomic_write(entry, b"x")  # the entry folder, as a real write makes it
    entry.unlink()
    stale, fresh = entry.parent / f".{entry.name}.k1ll3d.tmp", entry.parent / f".{entry.name}.l1v3.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half an entry")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    dataset = make_dataset(tmp_path / "data", 2)
    evaluate(tiny_model(), dataset, [Condition("clean", 0)], num_workers=0, device="cpu", cache=tmp_path / "cache")
    assert not stale.exists(), "a killed writer's temporary file was left in the store"
    assert fresh.exists(), "a temporary file younger than an hour (a live writer's) was deleted"
