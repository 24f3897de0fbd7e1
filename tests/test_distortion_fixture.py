"""The ``robustness_distortion`` fixture (issue 11): distortions as pytest cases for any test.

A user's test module is written with pytester and collected or run in-process (cheap) or, where a
fresh interpreter matters (seeds across processes, what collection imports), in a subprocess. The
expected ids are computed from :class:`robustness.conditions.Condition` and the registry, so they
follow the gate's ids wherever those are defined.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# isort: split
# Imported here, outside the in-process pytester runs: modules first imported inside a run are
# dropped afterwards and re-imported by every run (see tests/test_plugin.py).
import scipy.ndimage  # noqa: F401  (blur)
from PIL import JpegImagePlugin  # noqa: F401

import robustness.conditions
import robustness.pytest_plugin
from robustness.conditions import Condition
from robustness.distortions import DISTORTIONS
from robustness.pytest_plugin import DistortionCase, case_seed, distortion_conditions

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
INI = "[pytest]\naddopts = -W error -p no:cacheprovider\n"
ANY = """
def test_any(robustness_distortion):
    pass
"""


def collected(result) -> list[str]:
    """The test ids that ``--collect-only -q`` printed, in collection order."""
    return [line for line in result.outlines if "::" in line and not line.startswith(("ERROR", "FAILED"))]


def ids(*conditions: tuple[str, float]) -> list[str]:
    """The gate's ids of (distortion, level) pairs; off-grid levels too (their form is Condition's to decide)."""
    return [Condition(d, level).id for d, level in conditions]


def paper_ids(*names: str) -> list[str]:
    return [Condition(name, level).id for name in names or DISTORTIONS for level in DISTORTIONS[name].levels]


@pytest.fixture
def project(pytester):
    pytester.makeini(INI)
    return pytester


# ------------------------------------------------------------------------------ ids and markers


def test_default_cases_are_every_distortion_at_the_paper_levels_with_the_gates_ids(project):
    project.makepyfile(test_user=ANY)
    result = project.runpytest("--collect-only", "-q")
    found = collected(result)
    assert found == [f"test_user.py::test_any[{i}]" for i in paper_ids()]
    assert len(found) == sum(len(d.levels) for d in DISTORTIONS.values())
    # the readable forms of the gate (Condition.id), not pytest's own robustness_distortion0, 1, ...
    for example in ("blur-s3", "noise-50", "jpeg-q10", "jpeg2000-30db", "contrast-0.8"):
        assert f"test_user.py::test_any[{example}]" in found
    assert not any("clean" in i for i in found)  # clean is opt-in


def test_one_marker_per_distortion_selects_its_cases(project):
    project.makepyfile(test_user=ANY)
    blur = collected(project.runpytest("--collect-only", "-q", "-m", "blur"))
    assert blur == [f"test_user.py::test_any[{i}]" for i in paper_ids("blur")]
    both = collected(project.runpytest("--collect-only", "-q", "-m", "jpeg or jpeg2000", "--strict-markers"))
    assert both == [f"test_user.py::test_any[{i}]" for i in paper_ids("jpeg", "jpeg2000")]


# -------------------------------------------------------------------------------- choosing cases


def test_levels_marker_chooses_distortions_levels_and_clean_per_test(project):
    project.makepyfile(
        test_user="""
        import pytest

        @pytest.mark.robustness_levels(jpeg=[50, 75], blur=[1, 2], clean=True)
        def test_some(robustness_distortion):
            pass

        @pytest.mark.robustness_levels("noise", contrast=0.5)
        def test_names(robustness_distortion):
            pass

        @pytest.mark.robustness_levels(blur=range(1, 4))
        class TestClass:
            def test_in_class(self, robustness_distortion):
                pass

        def test_plain(robustness_distortion):
            pass
        """
    )
    found = collected(project.runpytest("--collect-only", "-q", "--strict-markers"))
    assert [i for i in found if "test_some" in i] == [
        f"test_user.py::test_some[{i}]" for i in ids(("clean", 0), ("jpeg", 50), ("jpeg", 75), ("blur", 1), ("blur", 2))
    ]
    assert [i.split("[")[1][:-1] for i in found if "test_names" in i] == paper_ids("noise") + ids(("contrast", 0.5))
    assert [i.split("[")[1][:-1] for i in found if "test_in_class" in i] == ids(("blur", 1), ("blur", 2), ("blur", 3))
    assert [i.split("[")[1][:-1] for i in found if "test_plain" in i] == paper_ids()


def test_ini_chooses_cases_per_project_and_the_marker_wins(project):
    project.makeini(INI + "robustness_distortion_levels =\n    clean\n    jpeg: 50, 75\n    blur\n")
    project.makepyfile(
        test_user="""
        import pytest

        def test_ini(robustness_distortion):
            pass

        @pytest.mark.robustness_levels(noise=[5])
        def test_marker(robustness_distortion):
            pass

        @pytest.mark.robustness_levels(clean=False)
        def test_no_clean(robustness_distortion):
            pass
        """
    )
    found = collected(project.runpytest("--collect-only", "-q"))
    blur = paper_ids("blur")
    jpeg = ids(("jpeg", 50), ("jpeg", 75))
    assert [i.split("[")[1][:-1] for i in found if "test_ini" in i] == ["clean", *jpeg, *blur]
    assert [i.split("[")[1][:-1] for i in found if "test_marker" in i] == ids(("noise", 5))
    assert [i.split("[")[1][:-1] for i in found if "test_no_clean" in i] == [*jpeg, *blur]


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("jpeg=[0]", r"jpeg level 0 is outside the valid range \[1, 100\] of quality"),
        ("blur=[1, 200]", r"blur level 200 is outside the valid range \[0, 100\] of sigma \(px\)"),
        ("jpeg=[50.5]", r"jpeg level \(quality\) must be an integer, got 50.5"),
        ("blurr=[1]", r"unknown distortion 'blurr'"),
        ("'blurr'", r"unknown distortion 'blurr'"),
        ("noise=['50']", r"noise level must be a finite number \(std \(0-255\), valid range \[0, 255\]\), got '50'"),
        ("noise='50'", r"noise='50': give numbers \(a list of levels\) or 'paper'"),
        ("blur=[1, 1.0]", r"blur level 1.0 is given twice \(blur-s1\)"),
        ("clean='yes'", r"clean must be True or False, got 'yes'"),
        ("blur=[]", r"blur has no levels"),
    ],
)
def test_a_bad_level_fails_collection_naming_the_test_and_the_value(project, marker, message):
    project.makepyfile(
        test_user=f"""
        import pytest

        @pytest.mark.robustness_levels({marker})
        def test_bad(robustness_distortion):
            pass
        """
    )
    result = project.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    text = result.stdout.str()
    assert re.search(r"robustness: test_user.py::test_bad: @pytest.mark.robustness_levels: " + message, text), text


def test_the_marker_on_a_test_without_the_fixture_is_an_error(project):
    """A typo in the fixture's name would otherwise make the marker silently do nothing; a module's or
    class's marker covers tests that do not use the fixture, and is fine."""
    project.makepyfile(
        test_user="""
        import pytest

        pytestmark = pytest.mark.robustness_levels(jpeg=[50])

        def test_other():
            pass

        @pytest.mark.robustness_levels(jpeg=[50])
        def test_typo(robustness_distortions):
            pass
        """
    )
    result = project.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "robustness: test_user.py::test_typo has @pytest.mark.robustness_levels but does not request the "
            "robustness_distortion fixture, so the marker would choose nothing"
        ]
    )
    project.makepyfile(test_user="import pytest\npytestmark = pytest.mark.robustness_levels(jpeg=[50])\n" + ANY)
    project.makepyfile(
        test_other="import pytest\npytestmark = pytest.mark.robustness_levels(jpeg=[50])\n\ndef test_plain():\n    pass\n"
    )
    assert collected(project.runpytest("--collect-only", "-q")) == [
        "test_other.py::test_plain",
        f"test_user.py::test_any[{Condition('jpeg', 50).id}]",
    ]


def test_a_bad_ini_line_is_named(project):
    project.makeini(INI + "robustness_distortion_levels =\n    jpeg: 50 high\n")
    project.makepyfile(test_user=ANY)
    result = project.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "robustness: test_user.py::test_any: ini robustness_distortion_levels: "
            "jpeg level must be a finite number (quality, valid range [1, 100] (integers)), got 'high'"
        ]
    )


def test_distortion_conditions_order_and_precedence():
    """The pure resolver behind the hook: marker > ini > default; clean first."""
    default = distortion_conditions()
    assert [c.id for c in default] == paper_ids()
    ini = ["noise: 5", "clean"]
    assert [c.id for c in distortion_conditions(ini_lines=ini)] == ids(("clean", 0), ("noise", 5))
    assert [c.id for c in distortion_conditions((), {"clean": False}, ini)] == ids(("noise", 5))
    assert [c.id for c in distortion_conditions(("jpeg",), {}, ini)] == paper_ids("jpeg")
    assert [c.id for c in distortion_conditions((), {"clean": True})] == ["clean", *paper_ids()]
    with pytest.raises(ValueError, match="selects no case"):
        distortion_conditions((), {"clean": False}, ["clean"])


# ------------------------------------------------------------------------------------ the value


def test_the_value_distorts_arrays_and_pil_images_like_distort(project):
    project.makepyfile(
        test_user="""
        import numpy as np
        import pytest
        from PIL import Image

        from robustness import distort

        @pytest.mark.robustness_levels(noise=[30], jpeg=[10], blur=[2], contrast=[0.5], clean=True)
        def test_value(robustness_distortion):
            case = robustness_distortion
            image = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
            kept = image.copy()
            out = case(image)
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == image.shape
            np.testing.assert_array_equal(image, kept)  # the input is not modified
            if case.distortion == "clean":
                assert case.level == 0 and out is not image
                np.testing.assert_array_equal(out, image)
            else:
                np.testing.assert_array_equal(out, distort(image, case.distortion, case.level, seed=case.seed))
                assert not np.array_equal(out, image)
            pil = case(Image.fromarray(image))
            assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (10, 12)
            np.testing.assert_array_equal(np.asarray(pil), out)
            if case.distortion == "noise":
                other = case(image, seed=case.seed + 1)
                assert not np.array_equal(other, out)
        """
    )
    project.runpytest("-v").assert_outcomes(passed=5)


def test_wrong_images_get_a_clear_error():
    case = DistortionCase("jpeg", 10, 0, "jpeg-q10")
    with pytest.raises(ValueError, match=r"robustness_distortion jpeg-q10: the image must have dtype uint8 .* float32"):
        case(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"must have shape \(H, W, 3\) .* got shape \(4, 4\)"):
        case(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"a PIL image must be in mode RGB, got mode 'L'"):
        case(Image.new("L", (4, 4)))
    with pytest.raises(ValueError, match=r"mode 'RGBA'"):
        case(Image.new("RGBA", (4, 4)))
    with pytest.raises(TypeError, match=r"expected a numpy uint8 \(H, W, 3\) RGB array or an RGB PIL image, got list"):
        case([[[0, 0, 0]]])
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        DistortionCase("clean", 0, 0, "clean")(np.zeros((2, 2, 3), np.uint8), seed=-1)


def test_seed_is_stable_across_processes_and_differs_per_test_and_case(pytester, monkeypatch, tmp_path):
    """Two fresh interpreters with different hash seeds give the same seeds and the same noise; the
    modules loaded by then are recorded too (collection and a noise case: never torch or scipy)."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_user="""
        import hashlib
        import json
        import os
        import sys

        import numpy as np
        import pytest

        @pytest.mark.robustness_levels(noise=[20, 40])
        def test_one(robustness_distortion):
            record(robustness_distortion, "one")

        @pytest.mark.robustness_levels(noise=[20])
        def test_two(robustness_distortion):
            record(robustness_distortion, "two")

        def record(case, test):
            noisy = case(np.full((6, 6, 3), 128, np.uint8))
            line = {"test": test, "id": case.id, "seed": case.seed, "digest": hashlib.sha256(noisy.tobytes()).hexdigest(),
                    "loaded": sorted(m for m in ("torch", "torchvision", "scipy", "matplotlib") if m in sys.modules)}
            with open(os.environ["SEEDS_FILE"], "a") as f:
                f.write(json.dumps(line) + "\\n")
        """
    )
    runs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"seeds{hash_seed}.jsonl"
        monkeypatch.setenv("SEEDS_FILE", str(out))
        monkeypatch.setenv("PYTHONHASHSEED", hash_seed)
        monkeypatch.setenv("PYTHONPATH", str(REPO))
        pytester.runpytest_subprocess().assert_outcomes(passed=3)
        runs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert runs[0] == runs[1]
    seeds = {(r["test"], r["id"]): r["seed"] for r in runs[0]}
    assert len(set(seeds.values())) == 3  # per test and per case
    assert len({r["digest"] for r in runs[0]}) == 3
    # the documented formula: SHA-256 of "<node id>|<distortion>|<level>", first 8 bytes, top bit cleared
    text = "test_user.py::test_one[noise-20]|noise|20.0"
    expected = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
    assert seeds[("one", "noise-20")] == expected == case_seed("test_user.py::test_one[noise-20]", "noise", 20)
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert all(r["loaded"] == [] for r in runs[0])


def test_a_pytest_run_without_the_fixture_still_loads_nothing_heavy(pytester, monkeypatch):
    """Only tests that request robustness_distortion make the plugin load the distortions."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain():
            loaded = [m for m in ("torch", "scipy", "PIL", "numpy") if m in sys.modules]
            assert not loaded, loaded
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_registered_everywhere_it_must_be(pytestconfig):
    """The marker is registered (so --strict-markers accepts it) and the ini key exists."""
    markers = "\n".join(pytestconfig.getini("markers"))
    assert "robustness_levels(*distortions, clean=False, **levels)" in markers
    assert pytestconfig.getini("robustness_distortion_levels") == []
    assert sys.modules["robustness.pytest_plugin"] is robustness.pytest_plugin


def test_the_documented_example_runs_as_written(project):
    """docs/fixtures.md's example (a perceptual hash, not a classifier) passes, case by case."""
    page = (REPO / "docs" / "fixtures.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    project.makepyfile(test_hash=example)
    result = project.runpytest("-v")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*test_hash_survives_everyday_distortions[[]clean[]] PASSED*"])
