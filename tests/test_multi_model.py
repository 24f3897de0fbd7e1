"""Several models in one evaluate() call, and identical conditions computed once (issue 12).

Each (image, condition) is distorted once and fed to every model that needs it, with the model's own
preprocessing; the results must be exactly those of one call per model, with or without the cache.
Tiny random-weight models (``tests/test_evaluation.py``) count the images they see; two real
shared models check the same on real images when the shared weights and images are here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from test_evaluation import SHARED_DATA, _TinyNet, make_dataset, table, tiny_model, truncated_jpeg

import robustness.evaluation as engine
from robustness import Classifier, Preprocessing, evaluate
from robustness.cache import PROBE_IMAGES, CacheWarning, PredictionCache, verification_sample_size
from robustness.datasets import imagenet_wnids, load_dataset
from robustness.evaluation import Condition, SkippedImagesWarning, identity_condition

MODELS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "models"
CONDITIONS = {"blur": [2], "noise": [30], "contrast": [0.5]}  # + clean: 4 conditions
PAIRS = 5 * 4  # 5 images x 4 conditions
PROBE, HIT = 2 * PROBE_IMAGES, PROBE_IMAGES  # probe images per cached run: a new model key, a known one


class _Counting(Preprocessing):
    """A :class:`Preprocessing` that counts its calls (``calls``, shared by all instances)."""

    calls = 0

    def __call__(self, image):
        type(self).calls += 1
        return super().__call__(image)


def other_model(seed: int = 1, name: str = "tiny-b") -> Classifier:
    """A tiny model with another preprocessing than :func:`tiny_model` (bicubic, a 40-pixel resize)."""
    return Classifier(_TinyNet(seed), Preprocessing(40, 32, "bicubic"), name)


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", 5)


@pytest.fixture
def count_distortions(monkeypatch):
    """The (distortion, level) of each call of the engine's ``distort`` (in-process: num_workers=0)."""
    calls = []

    def counting(image, distortion, level, *, seed=0):
        calls.append((distortion, level))
        return original(image, distortion, level, seed=seed)

    original = engine.distort
    monkeypatch.setattr(engine, "distort", counting)
    return calls


def test_several_models_give_the_results_of_separate_runs_and_distort_once(dataset, count_distortions):
    separate = [
        table(evaluate(make(), dataset, CONDITIONS, batch_size=3, num_workers=0)) for make in (tiny_model, other_model)
    ]
    count_distortions.clear()
    a, b = tiny_model(), other_model()
    together = evaluate([a, b], dataset, CONDITIONS, batch_size=3, num_workers=0)
    assert list(together) == ["tiny", "tiny-b"]  # a dict in the order given
    assert [table(together["tiny"]), table(together["tiny-b"])] == separate
    assert all(r.model == name for name, results in together.items() for r in results)
    assert a.net.seen == b.net.seen == PAIRS
    assert len(count_distortions) == 5 * 3  # each (image, distorted condition) once, not once per model
    # in worker processes, and in the other order, the same numbers
    again = evaluate((b, a), dataset, CONDITIONS, batch_size=2, num_workers=2, device="cpu")
    assert list(again) == ["tiny-b", "tiny"]
    assert [table(again["tiny"]), table(again["tiny-b"])] == separate


def test_models_with_equal_preprocessing_share_the_preprocessed_image(dataset, monkeypatch):
    monkeypatch.setattr(_Counting, "calls", 0)
    models = [
        Classifier(_TinyNet(0), _Counting(36, 32, "bilinear"), "a"),
        Classifier(_TinyNet(1), _Counting(36, 32, "bilinear"), "b"),  # equal to a's (to_dict): shared
        Classifier(_TinyNet(2), _Counting(40, 32, "bicubic"), "c"),
    ]
    results = evaluate(models, dataset, CONDITIONS, num_workers=0)
    assert _Counting.calls == 2 * PAIRS  # two distinct preprocessings, each once per pair
    assert all(m.net.seen == PAIRS for m in models)
    for model in models:
        alone = Classifier(_TinyNet(int("abc".index(model.name))), model.preprocessing, model.name)
        assert table(results[model.name]) == table(evaluate(alone, dataset, CONDITIONS, num_workers=0))


def test_one_model_cached_and_the_other_not(dataset, tmp_path, count_distortions):
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    reference = {m.name: table(evaluate(m, dataset, CONDITIONS, num_workers=0)) for m in (tiny_model(), other_model())}
    evaluate(tiny_model(), dataset, CONDITIONS, num_workers=0, cache=cache)  # only the first is cached
    count_distortions.clear()
    a, b = tiny_model(), other_model()
    together = evaluate([a, b], dataset, CONDITIONS, batch_size=4, num_workers=0, cache=cache)
    assert {name: table(results) for name, results in together.items()} == reference
    assert a.net.seen == HIT + verification_sample_size(PAIRS)  # served, and a sample re-checked
    assert b.net.seen == PROBE + PAIRS  # computed in full
    # b's pairs distorted once each, plus a's re-check sample (drawn once all of a's pairs are served)
    assert 5 * 3 <= len(count_distortions) <= 5 * 3 + verification_sample_size(PAIRS)
    # now both are cached: only the probes and each model's own re-check sample run
    a, b = tiny_model(), other_model()
    again = evaluate([a, b], dataset, CONDITIONS, num_workers=0, cache=cache)
    assert {name: table(results) for name, results in again.items()} == reference
    assert a.net.seen == b.net.seen == HIT + verification_sample_size(PAIRS)


def test_a_wrong_cache_of_one_model_is_discarded_for_that_model_only(dataset, tmp_path):
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    reference = {m.name: evaluate(m, dataset, CONDITIONS, num_workers=0, cache=cache) for m in [tiny_model()]}
    planted = sorted({p.parent for p in cache.root.rglob("*.rpc")})  # tiny's conditions only
    reference["tiny-b"] = evaluate(other_model(), dataset, CONDITIONS, num_workers=0, cache=cache)
    for folder in planted:  # tiny's entries now name other classes (with valid checksums)
        entries = cache.load(folder.parent.name, folder.name)
        for old in folder.glob("*.rpc"):
            old.unlink()
        keys = list(entries)
        cache.store(folder.parent.name, folder.name, keys, np.stack([(entries[k].top5 + 1) % 1000 for k in keys]))
    a, b = tiny_model(), other_model()
    with pytest.warns(CacheWarning, match="cached predictions of tiny disagree") as record:
        again = evaluate([a, b], dataset, CONDITIONS, num_workers=0, cache=cache)
    assert len([w for w in record if issubclass(w.category, CacheWarning)]) == 1  # not for tiny-b
    assert {n: table(r) for n, r in again.items()} == {n: table(r) for n, r in reference.items()}
    check = verification_sample_size(PAIRS)
    assert a.net.seen == HIT + check + PAIRS  # discarded and recomputed
    assert b.net.seen == HIT + check  # its own entries kept


def test_identity_levels_are_the_clean_image_computed_once(dataset, tmp_path, count_distortions):
    conditions = [
        Condition("clean", 0),
        Condition("contrast", 0),
        Condition("blur", 0),
        Condition("noise", 0),
        Condition("contrast", 0.5),
        Condition("contrast", 0),  # a repeat
    ]
    model = tiny_model()
    results = evaluate(model, dataset, conditions, num_workers=0)
    assert model.net.seen == 2 * len(dataset)  # clean (for all four identities) and contrast 0.5
    assert count_distortions == [("contrast", 0.5)] * len(dataset)
    assert [(r.distortion, r.level) for r in results] == [(c.distortion, c.level) for c in conditions]
    clean = results[0].predictions.tolist()
    assert all(r.predictions.tolist() == clean for r in results[1:4] + results[5:])
    # the identity really is the clean image: computed as a contrast level, it gives the same answer
    direct = engine._WorkItems(dataset, [Condition("contrast", 0)], tiny_model().preprocessing, 0, [[0, 0]])
    image, _, _ = direct.distorted(0, 0)
    np.testing.assert_array_equal(image, dataset.load(0)[0])
    # cached: stored once, as clean; a run asking for clean alone is served from it
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    evaluate(tiny_model(), dataset, [Condition("contrast", 0)], num_workers=0, cache=cache)
    again = tiny_model()
    served = evaluate(again, dataset, [Condition("clean", 0)], num_workers=0, cache=cache)
    assert again.net.seen == HIT + verification_sample_size(len(dataset))
    assert served[0].predictions.tolist() == clean


def test_identity_condition():
    assert identity_condition(Condition("contrast", 0)) == Condition("clean", 0)
    assert identity_condition(Condition("noise", 0.0)) == Condition("clean", 0)
    assert identity_condition(Condition("contrast", 0.1)) == Condition("contrast", 0.1)
    assert identity_condition(Condition("jpeg", 100)) == Condition("jpeg", 100)  # JPEG has no identity level


def test_unreadable_image_is_skipped_for_every_model(tmp_path):
    root = tmp_path / "data"
    good = make_dataset(root, 4)
    truncated_jpeg(root / imagenet_wnids()[3] / "img999.jpg")
    dataset = load_dataset(root)
    with pytest.warns(SkippedImagesWarning) as record:
        together = evaluate([tiny_model(), other_model()], dataset, CONDITIONS, batch_size=3, num_workers=0)
    messages = sorted(str(w.message).split(":")[0] for w in record if issubclass(w.category, SkippedImagesWarning))
    assert messages == ["tiny", "tiny-b"]
    for make in (tiny_model, other_model):
        results = together[make().name]
        assert table(results) == table(evaluate(make(), good, CONDITIONS, num_workers=0))
        assert list(results[0].skipped) == [f"{imagenet_wnids()[3]}/img999.jpg"]


def test_bad_model_lists_are_refused(dataset):
    with pytest.raises(ValueError, match="model names must be unique, got 'tiny' more than once"):
        evaluate([tiny_model(), tiny_model(seed=3)], dataset, CONDITIONS, num_workers=0)
    with pytest.raises(ValueError, match="list of models is empty"):
        evaluate([], dataset, CONDITIONS, num_workers=0)
    # a one-element list is the several-models form: a dict
    results = evaluate([tiny_model()], dataset, CONDITIONS, num_workers=0)
    assert list(results) == ["tiny"] and table(results["tiny"]) == table(
        evaluate(tiny_model(), dataset, CONDITIONS, num_workers=0)
    )


@pytest.mark.skipif(not SHARED_DATA.is_dir() or not MODELS_DIR.is_dir(), reason="shared images or weights not here")
def test_two_real_models_match_separate_runs_with_and_without_the_cache(tmp_path):
    from robustness import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch.jit / quantization notices while loading
        try:
            models = [load_model("mobilenet_v2_quantized"), load_model("squeezenet1_0_caffe")]
        except (FileNotFoundError, ImportError) as error:
            pytest.skip(f"shared weights not loadable: {error}")
    dataset = load_dataset(SHARED_DATA, limit=4)
    conditions = {"blur": [2], "noise": [40], "contrast": [0, 0.6]}
    separate = {m.name: evaluate(m, dataset, conditions, batch_size=4, num_workers=0, device="cpu") for m in models}
    together = evaluate(models, dataset, conditions, batch_size=4, num_workers=0, device="cpu")
    assert list(together) == ["mobilenet_v2_quantized", "squeezenet1_0_caffe"]
    for name, results in together.items():
        for r, s in zip(results, separate[name]):
            assert (r.distortion, r.level, r.n) == (s.distortion, s.level, s.n)
            np.testing.assert_array_equal(r.predictions, s.predictions)
            assert (r.top1, r.top5) == (s.top1, s.top5)
    assert together["squeezenet1_0_caffe"][0].top1 > 0  # a real model: some images right
    # the cache holds the first model only; the second is computed, both equal the separate runs
    cache = PredictionCache(tmp_path / "cache")
    evaluate(models[0], dataset, conditions, cache=cache, batch_size=4, num_workers=0, device="cpu")
    cached = evaluate(models, dataset, conditions, cache=cache, batch_size=4, num_workers=0, device="cpu")
    for name, results in cached.items():
        for r, s in zip(results, separate[name]):
            np.testing.assert_array_equal(r.predictions, s.predictions)


# ------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def two_registered(monkeypatch):
    """``tiny-a`` and ``tiny-b``: two registered tiny models with different preprocessings."""
    from robustness import models

    monkeypatch.setitem(
        models.MODELS, "tiny-a", models.ModelSpec("tiny-a", lambda: _TinyNet(0), tiny_model().preprocessing)
    )
    monkeypatch.setitem(
        models.MODELS, "tiny-b", models.ModelSpec("tiny-b", lambda: _TinyNet(1), other_model().preprocessing)
    )


def _run_args(root: Path, *extra: str) -> list[str]:
    distortions = ["--distortion", "contrast=0,0.5", "--distortion", "noise=30"]
    return ["run", "--data", str(root), *distortions, "--workers", "0", "--no-cache", "--no-progress", *extra]


def test_cli_run_with_several_models_writes_one_run_folder_each(tmp_path, two_registered, capsys):
    from robustness import cli
    from robustness.runs import read_predictions, read_results_json

    root = tmp_path / "data"
    make_dataset(root, 4)
    out = tmp_path / "out"
    assert cli.main(_run_args(root, "--model", "tiny-a", "--model", "tiny-b", "--output", str(out))) == 0
    printed = capsys.readouterr().out
    assert "models tiny-a, tiny-b" in printed
    assert f"tiny-a: wrote {out / 'tiny-a' / 'results.json'}" in printed
    assert f"tiny-b: wrote {out / 'tiny-b' / 'results.json'}" in printed
    assert (out / "report.html").is_file() and (out / "tiny-a" / "report.html").is_file()
    for name in ("tiny-a", "tiny-b"):  # each folder holds what a one-model run writes
        alone = tmp_path / f"alone-{name}"
        assert cli.main(_run_args(root, "--model", name, "--output", str(alone), "--no-report")) == 0
        assert read_results_json(out / name / "results.json") == read_results_json(alone / "results.json")
        together, single = read_predictions(out / name / "predictions.npz"), read_predictions(alone / "predictions.npz")
        for key in ("predictions", "labels"):
            np.testing.assert_array_equal(together[key], single[key])
    records = read_results_json(out / "tiny-b" / "results.json")
    assert [(r["model"], r["distortion"], r["level"]) for r in records] == [
        ("tiny-b", "clean", 0),
        ("tiny-b", "contrast", 0),
        ("tiny-b", "contrast", 0.5),
        ("tiny-b", "noise", 30),
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weights", "random"], "--weights describes one model, but 2 --model were given (tiny-a, tiny-b)"),
        (["--name", "x", "--preprocessing", "caffe"], "--preprocessing, --name describe one model"),
        (["--arch", "resnet18"], "--arch describes one model"),
    ],
)
def test_cli_per_model_options_are_refused_with_several_models(tmp_path, two_registered, capsys, extra, message):
    from robustness import cli

    args = _run_args(tmp_path / "nowhere", "--model", "tiny-a", "--model", "tiny-b", *extra)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustness run: ") and message in err


def test_cli_the_same_model_twice_is_refused(tmp_path, two_registered, capsys):
    from robustness import cli

    root = tmp_path / "data"
    make_dataset(root, 2)
    assert cli.main(_run_args(root, "--model", "tiny-a", "--model", "tiny-a", "--output", str(tmp_path / "o"))) == 2
    assert "two models have the same name ('tiny-a', 'tiny-a')" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any folder is made


def test_a_registered_distortion_with_a_wrong_identity_is_not_served_as_clean(dataset):
    """A user's distortion that declares an identity level at which it still changes the image must
    not be reported with the clean image's predictions (a gate would pass on numbers that were never
    measured): the declared identity is checked before it is used, and a wrong one is an error."""
    from robustness import register_distortion, unregister_distortion

    def brighten(image, level, seed):  # + 40 grey levels at every level: level 0 is no identity
        return np.clip(image.astype(np.int16) + 40 + int(level), 0, 255).astype(np.uint8)

    register_distortion(
        "brighten",
        brighten,
        parameter="offset",
        unit="grey",
        minimum=0,
        maximum=100,
        levels=(10, 20),
        integer=True,
        identity=0,
        code_version="1",
    )
    try:
        with pytest.raises(ValueError, match=r"brighten.*identity level 0.*changed"):
            evaluate(tiny_model(), dataset, [Condition("brighten", 0)], num_workers=0)
        with pytest.raises(ValueError, match=r"brighten.*identity level 0"):
            identity_condition(Condition("brighten", 0))
    finally:
        unregister_distortion("brighten")
    # a true identity (the documentation's pixelate at block 1) is still computed as clean
    from user_distortions import PIXELATE, pixelate

    register_distortion("pixelate", pixelate, **PIXELATE)
    try:
        assert identity_condition(Condition("pixelate", 1)) == Condition("clean", 0)
    finally:
        unregister_distortion("pixelate")


class _Gamma(Preprocessing):
    """A team's preprocessing subclass with a setting that is not a dataclass field (``gamma``): two
    instances differ although their ``to_dict()`` is equal."""

    def __init__(self, gamma: float, *args):
        super().__init__(*args)
        object.__setattr__(self, "gamma", gamma)

    def __call__(self, image):
        return super().__call__(np.clip(np.rint(255 * (image / 255) ** self.gamma), 0, 255).astype(np.uint8))


def test_preprocessings_that_differ_outside_their_fields_are_not_shared(dataset):
    """Models share a preprocessed tensor only when their preprocessings are the same computation:
    equal ``to_dict()`` is not enough when a subclass keeps other settings (the second model would be
    fed the first one's tensors, a silently wrong number)."""
    make = [
        lambda: Classifier(_TinyNet(0), _Gamma(0.4, 36, 32, "bilinear"), "dark"),
        lambda: Classifier(_TinyNet(0), _Gamma(2.5, 36, 32, "bilinear"), "light"),
    ]
    separate = [table(evaluate(m(), dataset, CONDITIONS, num_workers=0)) for m in make]
    assert separate[0] != separate[1]  # the two settings give other answers: the test can tell
    together = evaluate([m() for m in make], dataset, CONDITIONS, num_workers=0)
    assert [table(together["dark"]), table(together["light"])] == separate
