"""A user's own distortion (issue 10): register_distortion, its validation, the public invariant
check, its cache key, and its pytest marker and thresholds.yaml entries in a user's gate."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from test_evaluation import make_dataset, tiny_model
from test_plugin import CONFTEST, TEST, make_images
from user_distortions import PIXELATE, SALT, pixelate, salt

import robustness
from robustness import DISTORTIONS, distort, evaluate, names, register_distortion, unregister_distortion
from robustness.cache import ENGINE_VERSION, PROBE_IMAGES, PredictionCache, verification_sample_size
from robustness.conditions import Condition
from robustness.distortions import DISTORTION_CODE_VERSION
from robustness.testing import check_distortion

pytest_plugins = ["pytester"]


@pytest.fixture
def registered():
    """Names registered in the test; unregistered afterwards, so no other test sees them."""
    made: list[str] = []
    yield made
    for name in made:
        if name in DISTORTIONS:
            unregister_distortion(name)


def register(made: list[str], name: str, function, **options):
    spec = register_distortion(name, function, **options)
    made.append(name)
    return spec


def image(height=13, width=11, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- registering


def test_registered_distortion_works_like_a_built_in(registered):
    spec = register(registered, "pixelate", pixelate, **PIXELATE)
    assert robustness.register_distortion is register_distortion  # the lazy public name
    assert DISTORTIONS["pixelate"] is spec and list(DISTORTIONS)[:5] == list(names.DISTORTION_NAMES)
    picture = image()
    out = distort(picture, "pixelate", 4)
    np.testing.assert_array_equal(out, pixelate(picture, 4, 0))
    assert not np.array_equal(out, picture)
    np.testing.assert_array_equal(spec(picture, 1), picture)  # the Distortion is callable
    assert Condition("pixelate", 3).id == "pixelate-3px" and spec.level_from_id("pixelate-3px") == 3
    with pytest.raises(ValueError, match=r"pixelate level 65 is outside the valid range \[1, 64\] of block \(px\)"):
        distort(picture, "pixelate", 65)
    assert names.distortion_names()[-1] == "pixelate"
    assert names.marker_descriptions()["pixelate"] == "robustness gate: pixelate (block (px))"
    assert unregister_distortion("pixelate") is spec
    assert "pixelate" not in DISTORTIONS and "pixelate" not in names.distortion_names()


def test_decorator_form_and_registering_the_same_definition_again(registered):
    @register_distortion("salt", **SALT)
    def salted(image, level, seed):
        return salt(image, level, seed)

    registered.append("salt")
    assert DISTORTIONS["salt"] is salted and salted.stochastic
    picture = image(20, 20)
    assert not np.array_equal(salted(picture, 0.5, seed=1), salted(picture, 0.5, seed=2))
    # a conftest.py imported twice registers the same definition again: allowed
    again = register_distortion("salt", salted.function, **SALT)
    assert DISTORTIONS["salt"] is again
    with pytest.raises(ValueError, match=r"a different distortion named 'salt' is already registered"):
        register_distortion("salt", pixelate, **SALT)
    with pytest.raises(ValueError, match=r"a different distortion named 'salt'"):
        register_distortion("salt", salted.function, **{**SALT, "code_version": "2"})


def identity(image, level, seed):
    return image.copy()


GOOD = dict(parameter="gamma", unit="gamma", minimum=0.1, maximum=10.0, levels=(0.5, 2.0), code_version="1")


@pytest.mark.parametrize(
    "name, function, changes, message",
    [
        ("blur", identity, {}, r"'blur' is a built-in distortion and cannot be replaced"),
        ("my-gamma", identity, {}, r"a distortion name must be letters, digits and '_'"),
        ("clean", identity, {}, r"not one of .*clean"),
        ("not", identity, {}, r"not one of .*not"),
        ("gamma", lambda image, level: image, {}, r"function must accept \(image, level, seed\) positionally"),
        ("gamma", "not callable", {}, r"function must be callable"),
        ("gamma", identity, {"minimum": 10.0, "maximum": 0.1}, r"minimum < maximum, got \[10.0, 0.1\]"),
        ("gamma", identity, {"maximum": float("inf")}, r"maximum must be a finite number, got inf"),
        ("gamma", identity, {"levels": (0.5, 20)}, r"default level 20: gamma level 20 is outside the valid range"),
        ("gamma", identity, {"levels": ()}, r"levels \(the default grid\) must be a non-empty sequence"),
        ("gamma", identity, {"levels": (2.0, 2.0)}, r"default level 2.0 is listed twice"),
        ("gamma", identity, {"identity": 0.0}, r"identity level 0.0: gamma level 0.0 is outside"),
        ("gamma", identity, {"id_format": "g{:g}"}, r"id_format must be '\{\}' with letters or '_' around it"),
        ("gamma", identity, {"code_version": ""}, r"code_version must be a non-empty string"),
        ("gamma", identity, {"integer": True}, r"minimum must be an integer, got 0.1"),
    ],
)
def test_bad_registrations_are_refused_by_name(registered, name, function, changes, message):
    with pytest.raises(ValueError, match=message):
        register(registered, name, function, **{**GOOD, **changes})
    assert name not in DISTORTIONS or name == "blur"
    assert "gamma" not in names.distortion_names()


# ------------------------------------------------------------------ the public invariant check


def uses_global_random(image, level, seed):
    return np.clip(image + np.random.randint(0, 2, image.shape), 0, 255).astype(np.uint8)


def unseeded(image, level, seed):
    return salt(image, 0.5, np.random.default_rng().integers(2**32))


def modifies_its_input(image, level, seed):
    out = image.copy()
    image[0, 0, 0] ^= 1
    return out


def returns_its_input(image, level, seed):
    return image


def returns_floats(image, level, seed):
    return image.astype(np.float32)


def seeded_but_undeclared(image, level, seed):
    return salt(image, 0.5, seed)


@pytest.mark.parametrize(
    "function, options, message",
    [
        (uses_global_random, {"stochastic": True}, "the global numpy or Python random state changed"),
        (unseeded, {"stochastic": True}, "not deterministic for seed"),
        (modifies_its_input, {}, "the input was modified"),
        (returns_its_input, {}, "shares memory with the input"),
        (returns_floats, {}, r"returned float32 array of shape .*it must return a uint8 array"),
        (seeded_but_undeclared, {}, "depends on the seed, but the distortion is not declared stochastic"),
        (pixelate, {"identity": 2}, "the identity level 2 changed the image"),
    ],
)
def test_check_distortion_names_the_broken_invariant(registered, function, options, message):
    spec = register(registered, "broken", function, **{**PIXELATE, **options})
    with pytest.raises(AssertionError, match=message):
        check_distortion(spec)


def test_check_distortion_passes_the_examples(registered):
    check_distortion(register(registered, "pixelate", pixelate, **PIXELATE))
    check_distortion(register(registered, "salt", salt, **SALT), levels=[0.5, 1.0])


# --------------------------------------------------------------------------------- cache key


def test_built_in_condition_keys_are_unchanged():
    """The key of a built-in condition is the one earlier versions computed (their cached predictions stay valid)."""

    def old_key(distortion, level, seed):
        stochastic = distortion == "noise"
        value = {
            "distortion": distortion,
            "level": float(level),
            "seed": int(seed) if stochastic else None,
            "distortion_code": DISTORTION_CODE_VERSION,
            "engine": ENGINE_VERSION,
        }
        return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]

    for distortion, level in [("blur", 3), ("noise", 50), ("jpeg", 10), ("jpeg2000", 30), ("contrast", 0.5)]:
        assert PredictionCache.condition_key(distortion, level, 7) == old_key(distortion, level, 7)
    assert PredictionCache.condition_key("clean", 0, 0) == old_key("clean", 0, 0)


def test_changing_a_registered_distortions_code_version_misses_the_cache(registered, tmp_path):
    dataset = make_dataset(tmp_path / "data", 4)
    cache = PredictionCache(tmp_path / "cache", flush_interval=0)
    register(registered, "pixelate", pixelate, **PIXELATE)
    conditions = {"pixelate": [2, 3]}
    evaluate(tiny_model(), dataset, conditions, clean=False, num_workers=0, cache=cache)
    model = tiny_model()  # same code version: served from the cache (plus the verification sample)
    evaluate(model, dataset, conditions, clean=False, num_workers=0, cache=cache)
    assert model.net.seen == PROBE_IMAGES + verification_sample_size(8)
    unregister_distortion("pixelate")
    register(registered, "pixelate", pixelate, **{**PIXELATE, "code_version": "2"})
    model = tiny_model()  # new code version: every pair recomputed
    evaluate(model, dataset, conditions, clean=False, num_workers=0, cache=cache)
    assert model.net.seen == PROBE_IMAGES + 8


# ------------------------------------------------------------------------- a user's gate


USER_CONFTEST = (
    CONFTEST
    + """
from user_distortions import PIXELATE, pixelate

from robustness import register_distortion

register_distortion("pixelate", pixelate, **PIXELATE)
"""
)

USER_THRESHOLDS = """\
defaults:
  images: 10
models:
  toy:
    source: fixture
    clean: {top1: 0.7}
    pixelate:
      2: {top1: 0.7}
      3: {top1_of_clean: 1.0}
    jpeg:
      75: {top1: 0.0}
"""


@pytest.fixture
def user_gate(pytester, monkeypatch):
    from pathlib import Path

    monkeypatch.delenv("TOY_BREAK_AT", raising=False)
    make_images(pytester.path / "images")
    pytester.makeconftest(USER_CONFTEST)
    pytester.makefile(".yaml", thresholds=USER_THRESHOLDS)
    pytester.makepyfile(test_gate=TEST)
    pytester.makeini(
        "[pytest]\nrobustness_data = images\naddopts = -W error --robustness-workers 0 -p no:cacheprovider "
        "-p no:unraisableexception\n"
    )
    pytester.syspathinsert(Path(__file__).parent)  # the conftest imports user_distortions
    yield pytester
    if "pixelate" in DISTORTIONS:  # in-process runs registered it in this process
        unregister_distortion("pixelate")


def test_a_distortion_registered_in_conftest_gets_its_marker_ids_and_thresholds(user_gate):
    result = user_gate.runpytest("-m", "pixelate", "--strict-markers", "-v", "-p", "no:xdist")
    result.assert_outcomes(passed=2, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*test_accuracy[[]toy-pixelate-2px[]] PASSED*",
            "*test_accuracy[[]toy-pixelate-3px[]] PASSED*",
            "toy  pixelate *pass *2px 80.0/70.0  3px 80.0/80.0",
        ]
    )
    result = user_gate.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.pixelate: robustness gate: pixelate (block (px))"])
    result = user_gate.runpytest("-m", "jpeg", "--strict-markers", "-v", "-p", "no:xdist")
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines(["*test_accuracy[[]toy-jpeg-q75[]] PASSED*"])


def test_an_unregistered_distortion_in_thresholds_names_the_known_ones(user_gate):
    user_gate.makefile(".yaml", thresholds=USER_THRESHOLDS.replace("pixelate:", "pixelte:"))
    result = user_gate.runpytest("-p", "no:xdist")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*models.toy.pixelte: unknown distortion 'pixelte' (did you mean 'pixelate'?)*"])


def test_the_docs_example_is_the_tests_example(registered):
    """docs/distortions.md shows the pixelate distortion of user_distortions.py, as code that runs and
    registers what the tests register."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "distortions.md").read_text(encoding="utf-8")
    section = page[page.index("## Your own distortion") :]
    source = Path(__file__).with_name("user_distortions.py").read_text(encoding="utf-8")
    body = source[source.index("def pixelate") : source.index("def salt")].strip()
    assert body in section
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    registered.append("pixelate")
    exec(compile(code, "docs/distortions.md", "exec"), {})
    spec = DISTORTIONS["pixelate"]
    for key, value in PIXELATE.items():
        assert getattr(spec, key) == (tuple(value) if key == "levels" else value), key
