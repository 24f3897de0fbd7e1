"""thresholds.yaml: schema validation with file/line/key errors, relative bars, calibration writes."""

import difflib
import textwrap

import pytest

from robustness.evaluation import Condition
from robustness.thresholds import (
    ThresholdsError,
    calibrated_bars,
    load_thresholds,
    parse_thresholds,
    thresholds_schema,
    update_thresholds_file,
)

KNOWN = ["efficientnet_lite0"]


def write(tmp_path, text, name="thresholds.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path, text) -> ThresholdsError:
    path = write(tmp_path, text)
    with pytest.raises(ThresholdsError) as info:
        load_thresholds(path, known_models=KNOWN)
    return info.value


def test_current_format_loads(tmp_path):
    path = write(
        tmp_path,
        """\
        defaults: {images: 100, seed: 0}
        models:
          efficientnet_lite0:
            clean: {top1: 0.7}
            blur:
              1: {top1: 0.5}
              3.0: {top1: 0.4, top5: 0.6}
            contrast:
              0.5: {top1: 0.2}
    """,
    )
    t = load_thresholds(path, known_models=KNOWN)
    assert t.images == 100 and t.seed == 0 and t.paired is None
    assert [e.id for e in t.entries] == [
        "efficientnet_lite0-clean",
        "efficientnet_lite0-blur-s1",
        "efficientnet_lite0-blur-s3",
        "efficientnet_lite0-contrast-0.5",
    ]
    assert t.entries[2].top5 == 0.6 and t.entries[2].line == 7
    assert t.entries[1].condition == Condition("blur", 1)


def test_relative_and_shared_settings(tmp_path):
    path = write(
        tmp_path,
        """\
        version: 1
        defaults:
          images: 50
          data: data/val
          paired: {alpha: 0.01, metric: top5}
        models:
          efficientnet_lite0:
            clean: {top1: 0.6}   # a relative bar needs an absolute clean bar for its metric
            jpeg:
              10: {top1_of_clean: 0.8, top1: 0.3}
    """,
    )
    t = load_thresholds(path, known_models=KNOWN)
    _, entry = t.entries
    assert entry.relative and entry.bars() == {"top1": 0.3, "top1_of_clean": 0.8}
    assert t.dataset == str(tmp_path / "data/val")
    assert t.paired.alpha == 0.01 and t.paired.metric == "top5"
    assert t.paired.baseline == tmp_path / "robustness-baseline"


@pytest.mark.parametrize(
    "snippet, line, key, words",
    [
        (
            "blur:\n      1: {tpo1: 0.5}",
            5,
            "models.efficientnet_lite0.blur.1.tpo1",
            ["unknown key 'tpo1'", "did you mean 'top1'"],
        ),
        (
            "blur:\n      101: {top1: 0.5}",
            5,
            "models.efficientnet_lite0.blur.101",
            ["blur level 101 is outside the valid range [0, 100] of sigma (px)"],
        ),
        (
            "jpeg:\n      0: {top1: 0.5}",
            5,
            "models.efficientnet_lite0.jpeg.0",
            ["jpeg level 0 is outside the valid range [1, 100] of quality"],
        ),
        ("jpeg:\n      50.5: {top1: 0.5}", 5, "models.efficientnet_lite0.jpeg.50.5", ["must be an integer, got 50.5"]),
        (
            "blur:\n      sharp: {top1: 0.5}",
            5,
            "models.efficientnet_lite0.blur.sharp",
            ["blur level 'sharp' is not a number (sigma (px), valid range [0, 100])"],
        ),
        (
            "blur:\n      3: {top1: 0.5}\n      '3.0': {top1: 0.4}",
            6,
            "models.efficientnet_lite0.blur.3.0",
            ["the same level as '3' (line 5)"],
        ),
        (
            "jepg:\n      10: {top1: 0.5}",
            4,
            "models.efficientnet_lite0.jepg",
            ["unknown distortion 'jepg'", "did you mean 'jpeg'"],
        ),
        (
            "blur:\n      1: {top1: 72}",
            5,
            "models.efficientnet_lite0.blur.1.top1",
            ["fraction in [0, 1]", "72% is 0.72"],
        ),
        ("blur:\n      1: {top1: -0.1}", 5, "models.efficientnet_lite0.blur.1.top1", ["fraction in [0, 1]"]),
        ("blur:\n      1: {top1: high}", 5, "models.efficientnet_lite0.blur.1.top1", ["not of type 'number'"]),
        ("blur:\n      1: {}", 5, "models.efficientnet_lite0.blur.1", ["must not be empty"]),
        ("clean: {top1_of_clean: 0.5}", 4, "models.efficientnet_lite0.clean.top1_of_clean", ["unknown key"]),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, snippet, line, key, words):
    error = error_for(tmp_path, "defaults: {images: 10}\nmodels:\n  efficientnet_lite0:\n    " + snippet + "\n")
    assert (error.line, error.key) == (line, key)
    text = str(error)
    assert f"thresholds.yaml:{line}: {key}:" in text
    for word in words:
        assert word in text


def test_top_level_typo_and_defaults_typo(tmp_path):
    error = error_for(tmp_path, "defaults: {imgs: 10}\nmodel:\n  efficientnet_lite0: {clean: {top1: 0.5}}\n")
    text = str(error)
    assert "thresholds.yaml:1: defaults.imgs: unknown key 'imgs' (did you mean 'images'?)" in text
    assert "thresholds.yaml:2: model: unknown key 'model' (did you mean 'models'?)" in text
    assert "'models' is a required property" in text
    assert len(error.problems) == 3


def test_unknown_model_needs_source_fixture(tmp_path):
    error = error_for(
        tmp_path, "models:\n  efficientnet_lite0: {clean: {top1: 0.5}}\n  my_net:\n    clean: {top1: 0.5}\n"
    )
    assert (error.line, error.key) == (3, "models.my_net")
    assert "unknown model 'my_net'" in str(error) and "source: fixture" in str(error)
    lax = write(tmp_path, "models:\n  my_net:\n    clean: {top1: 0.5}\n", "lax.yaml")
    assert load_thresholds(lax, known_models=KNOWN, allow_unregistered=True).models() == ["my_net"]
    ok = write(tmp_path, "models:\n  my_net:\n    source: fixture\n    clean: {top1: 0.5}\n", "ok.yaml")
    t = load_thresholds(ok, known_models=KNOWN)
    assert t.sources == {"my_net": "fixture"} and t.entries[0].source == "fixture"


def test_registry_is_the_default_list_of_models(tmp_path):
    path = write(tmp_path, "models:\n  efficientnet_lite0: {clean: {top1: 0.5}}\n")
    assert load_thresholds(path).models() == ["efficientnet_lite0"]


def test_duplicate_keys_and_bad_yaml(tmp_path):
    error = error_for(
        tmp_path, "models:\n  efficientnet_lite0:\n    blur:\n      1: {top1: 0.5}\n      1.0: {top1: 0.6}\n"
    )
    assert error.line == 5 and "duplicate key (first on line 4)" in str(error)
    error = error_for(tmp_path, "models:\n  efficientnet_lite0: {clean: {top1: 0.5}\n")
    assert "invalid YAML" in str(error) and error.line is not None


def test_missing_file(tmp_path):
    with pytest.raises(ThresholdsError, match="does not exist"):
        load_thresholds(tmp_path / "nope.yaml")


def test_parse_thresholds_from_data():
    t = parse_thresholds({"models": {"efficientnet_lite0": {"noise": {10: {"top5": 0.8}}}}}, known_models=KNOWN)
    assert t.entries[0].condition == Condition("noise", 10) and t.entries[0].top5 == 0.8


def test_schema_is_a_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(thresholds_schema(KNOWN))


def test_calibrated_bars_floor_and_relative():
    assert calibrated_bars({"top1": 0.72, "top5": 0.9}, None, ["top1", "top5"], 0.05) == {"top1": 0.67, "top5": 0.85}
    assert calibrated_bars({"top1": 0.5}, {"top1": 0.8}, ["top1_of_clean"], 0.0) == {"top1_of_clean": 0.625}
    assert calibrated_bars({"top1": 0.01}, None, ["top1"], 0.05) == {"top1": 0.0}


def test_update_keeps_other_models_and_comments(tmp_path):
    path = write(
        tmp_path,
        """\
        # Release thresholds: fractions.
        defaults:
          images: 100   # first 100 images
        models:
          efficientnet_lite0:
            clean: {top1: 0.7}   # measured 0.75
            blur:
              3: {top1_of_clean: 0.8}
          other:
            source: fixture
            clean: {top1: 0.5}  # keep me
    """,
    )
    measured = {
        Condition("clean", 0): {"top1": 0.76, "top5": 0.9},
        Condition("blur", 3): {"top1": 0.5, "top5": 0.7},
        Condition("contrast", 0.5): {"top1": 0.4, "top5": 0.6},
    }
    old, new = update_thresholds_file(path, "efficientnet_lite0", measured, margin=0.05)
    assert path.read_text() == new and old != new
    assert "# Release thresholds: fractions." in new and "# first 100 images" in new and "# keep me" in new
    assert "# measured 0.75" in new
    t = load_thresholds(path, known_models=KNOWN)
    bars = {e.id: e.bars() for e in t.entries}
    assert bars["efficientnet_lite0-clean"] == {"top1": 0.71}
    assert bars["efficientnet_lite0-blur-s3"] == {"top1_of_clean": 0.607}  # stays relative
    assert bars["efficientnet_lite0-contrast-0.5"] == {"top1": 0.35}
    assert bars["other-clean"] == {"top1": 0.5}
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True)))
    assert "+    contrast:" in diff and "other" not in diff.replace("other:", "")


def test_update_creates_a_file(tmp_path):
    path = tmp_path / "new.yaml"
    update_thresholds_file(
        path,
        "mine",
        {Condition("blur", 1): {"top1": 0.6, "top5": 0.8}},
        margin=0.1,
        metrics=["top1", "top5"],
        source="fixture",
    )
    t = load_thresholds(path, known_models=[])
    assert t.entries[0].bars() == {"top1": 0.5, "top5": 0.7} and t.sources == {"mine": "fixture"}


# ------------------------------------------------------------------------- robustness calibrate (CLI)

TOY = "_toy_calibrate"


def _register_toy():
    import torch

    from robustness import Preprocessing, list_models, register_model

    class Toy(torch.nn.Module):
        """Predicts the class whose index is the image's mean red level."""

        def forward(self, x):
            v = x[:, 0].mean(dim=(1, 2)).round()
            return -(torch.arange(1000, dtype=x.dtype)[None, :] - v[:, None]).abs()

    if TOY not in list_models():
        register_model(TOY, Preprocessing(8, 8, "nearest", mean=(0, 0, 0), std=(1, 1, 1)))(Toy)


def _images(folder, n=10, wrong=2):
    import numpy as np
    from PIL import Image

    from robustness.datasets import imagenet_wnids

    for i in range(n):
        label = i + 1
        (folder / imagenet_wnids()[label]).mkdir(parents=True, exist_ok=True)
        array = np.zeros((16, 16, 3), np.uint8)
        array[..., 0] = label + 50 if i >= n - wrong else label
        Image.fromarray(array).save(folder / imagenet_wnids()[label] / f"img_{i:03d}.png")
    return folder


def test_calibrate_cli_writes_thresholds_diff_and_baseline(tmp_path, capsys):
    from robustness.cli import main
    from robustness.gate import load_baseline

    _register_toy()
    data = _images(tmp_path / "images")
    path = write(
        tmp_path,
        """\
        # gate thresholds
        defaults: {images: 10, seed: 0}
        models:
          efficientnet_lite0:
            clean: {top1: 0.7}   # untouched
          _toy_calibrate:
            clean: {top1: 0.1}   # the relative bar below needs an absolute clean bar
            blur:
              1: {top1: 0.1}
              2: {top1_of_clean: 0.5}
    """,
    )
    args = [
        "calibrate",
        "--model",
        TOY,
        "--thresholds",
        str(path),
        "--data",
        str(data),
        "--margin",
        "0.1",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-      1: {top1: 0.1}" in out and "+      1: {top1: 0.7}" in out and "dry run" in out
    assert "0.1}" in path.read_text()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "+    clean: {top1: 0.7}" in out and "+      2: {top1_of_clean: 0.9}" in out
    text = path.read_text()
    assert "# gate thresholds" in text and "clean: {top1: 0.7}   # untouched" in text
    t = load_thresholds(path)
    assert {e.id: e.bars() for e in t.for_model(TOY)} == {
        f"{TOY}-blur-s1": {"top1": 0.7},
        f"{TOY}-blur-s2": {"top1_of_clean": 0.9},
        f"{TOY}-clean": {"top1": 0.7},
    }
    baseline = load_baseline(tmp_path / "robustness-baseline", TOY, "blur")
    assert baseline.levels == [1.0, 2.0] and len(baseline.image_ids) == 10
    # unchanged model, same margin: no change
    assert main(args) == 0
    assert "no change" in capsys.readouterr().out


def test_calibrate_cli_takes_levels_off_the_grid(tmp_path, capsys):
    """``--distortion NAME=LEVELS`` calibrates exactly those levels (any in range); a name alone, the paper's."""
    from robustness.cli import main

    _register_toy()
    data = _images(tmp_path / "images")
    path = tmp_path / "thresholds.yaml"
    args = ["calibrate", "--model", TOY, "--thresholds", str(path), "--data", str(data), "--margin", "0.1"]
    args += ["--workers", "0", "--no-progress", "--no-cache", "--no-baseline"]
    assert main(args + ["--distortion", "contrast=0.25,0.05", "--distortion", "blur=0.5"]) == 0
    assert "clean + 3 distortion levels" in capsys.readouterr().out
    t = load_thresholds(path)
    assert [e.id for e in t.for_model(TOY)] == [
        f"{TOY}-clean",
        f"{TOY}-blur-s0.5",
        f"{TOY}-contrast-0.05",
        f"{TOY}-contrast-0.25",
    ]
    # the toy reads the mean red level (1..10): contrast 0.25 moves it toward 128, every image wrong
    assert t.get(TOY, Condition("contrast", 0.25)).top1 == 0.0
    assert t.get(TOY, Condition("blur", 0.5)).top1 == 0.7  # a solid image stays solid: 80% - 10 points
    # without --distortion, the levels the file lists (off the grid included) are recalibrated
    assert main(args) == 0
    assert "clean + 3 distortion levels" in capsys.readouterr().out
    assert main(args + ["--distortion", "jpeg=101"]) == 2
    assert "--distortion jpeg=101: jpeg level 101 is outside the valid range [1, 100]" in capsys.readouterr().err


def test_calibrate_cli_refuses_a_broken_file(tmp_path, capsys):
    from robustness.cli import main

    path = write(tmp_path, "models:\n  efficientnet_lite0:\n    blur: {1: {tpo1: 0.5}}\n")
    assert main(["calibrate", "--model", "efficientnet_lite0", "--thresholds", str(path)]) == 2
    assert "thresholds.yaml:3: models.efficientnet_lite0.blur.1.tpo1" in capsys.readouterr().err


def test_readme_examples_are_valid(tmp_path):
    """The gate page's thresholds.yaml examples pass the schema (the docs cannot drift from the code)."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "gating.md").read_text()
    section = page[: page.index("## CI recipes")]  # below it: CI configuration files, not thresholds
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) >= 2
    for k, block in enumerate(blocks):
        t = load_thresholds(write(tmp_path, block, f"readme{k}.yaml"), known_models=KNOWN)
        assert t.entries


# ------------------------------------------------------------ YAML 1.2: the file means what it says


def test_yaml_1_2_numbers_exponent_and_leading_zeros(tmp_path):
    """``5e-1`` is 0.5 (YAML 1.1 read it as a string); ``010`` is decimal 10 (JPEG quality 10, not octal 8)."""
    path = write(
        tmp_path,
        """\
        models:
          efficientnet_lite0:
            clean: {top1: 5e-1}
            jpeg:
              010: {top1: 0.25}
              020: {top1: 1E-1}
    """,
    )
    t = load_thresholds(path, known_models=KNOWN)
    assert t.entries[0].top1 == 0.5
    assert [(e.condition, e.top1, e.line) for e in t.entries[1:]] == [
        (Condition("jpeg", 10), 0.25, 5),
        (Condition("jpeg", 20), 0.1, 6),
    ]


@pytest.mark.parametrize(
    "snippet, line, key",
    [
        ("clean: {top1: .nan}", 4, "models.efficientnet_lite0.clean.top1"),
        ("clean: {top5: .inf}", 4, "models.efficientnet_lite0.clean.top5"),
        ("blur:\n      1: {top1: -.inf}", 5, "models.efficientnet_lite0.blur.1.top1"),
        ("blur:\n      1: {top1_of_clean: .NaN}", 5, "models.efficientnet_lite0.blur.1.top1_of_clean"),
    ],
)
def test_nan_and_infinity_are_refused_for_every_bar(tmp_path, snippet, line, key):
    error = error_for(tmp_path, "defaults: {images: 10}\nmodels:\n  efficientnet_lite0:\n    " + snippet + "\n")
    assert (error.line, error.key) == (line, key) and len(error.problems) == 1
    assert "not a finite number" in str(error) and "required nan" not in str(error)


@pytest.mark.parametrize("alpha", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused_for_paired_alpha(tmp_path, alpha):
    error = error_for(
        tmp_path, f"defaults:\n  paired:\n    alpha: {alpha}\nmodels:\n  efficientnet_lite0: {{clean: {{top1: 0.5}}}}\n"
    )
    assert (error.line, error.key) == (3, "defaults.paired.alpha") and len(error.problems) == 1
    assert "not a finite number" in str(error)


def test_relative_bar_above_one_is_not_called_a_percentage(tmp_path):
    error = error_for(tmp_path, "models:\n  efficientnet_lite0:\n    blur:\n      1: {top1_of_clean: 1.5}\n")
    text = str(error)
    assert error.line == 4 and "fraction of the clean accuracy in [0, 1]" in text and "got 1.5" in text
    assert "%" not in text.replace("80%", "")  # no "1.5% is 0.015"
    absolute = str(error_for(tmp_path, "models:\n  efficientnet_lite0:\n    blur:\n      1: {top1: 1.5}\n"))
    assert "1.5% is 0.015" in absolute  # an absolute top-1 of 1.5 may well mean 1.5%


def test_exact_duplicate_key_and_syntax_error_lines(tmp_path):
    error = error_for(
        tmp_path, "models:\n  efficientnet_lite0:\n    blur:\n      3: {top1: 0.5}\n\n      3: {top1: 0.6}\n"
    )
    assert (error.line, error.key) == (6, "models.efficientnet_lite0.blur.3")
    assert "duplicate key (first on line 4)" in str(error)
    error = error_for(
        tmp_path,
        "defaults: {images: 10}\nmodels:\n  efficientnet_lite0:\n    clean: {top1: 0.5}\n    blur: [1\n    noise: {}\n",
    )
    assert error.line == 6 and "invalid YAML" in str(error)


def test_parse_thresholds_from_data_refuses_nan():
    with pytest.raises(ThresholdsError, match="not a finite number"):
        parse_thresholds({"models": {"efficientnet_lite0": {"clean": {"top1": float("nan")}}}}, known_models=KNOWN)


def test_anchors_and_merge_keys_keep_lines(tmp_path):
    path = write(
        tmp_path,
        """\
        models:
          efficientnet_lite0:
            blur:
              1: &bar {top1: 0.5}
              2: *bar
              3:
                <<: *bar
                top5: .nan
    """,
    )
    with pytest.raises(ThresholdsError) as info:
        load_thresholds(path, known_models=KNOWN)
    assert [(p.line, p.key) for p in info.value.problems] == [(8, "models.efficientnet_lite0.blur.3.top5")]
    path.write_text(path.read_text().replace(".nan", "0.7"))
    t = load_thresholds(path, known_models=KNOWN)
    assert [(e.id, e.bars(), e.line) for e in t.entries] == [
        ("efficientnet_lite0-blur-s1", {"top1": 0.5}, 4),
        ("efficientnet_lite0-blur-s2", {"top1": 0.5}, 5),
        ("efficientnet_lite0-blur-s3", {"top1": 0.5, "top5": 0.7}, 6),
    ]


def test_repository_gate_has_no_case_that_cannot_fail_and_a_committed_baseline():
    """Every case of the repository's own gate can fail: no bar of 0, no level that leaves the image as it
    is (that repeats `clean`); the paired check is on and its baseline covers every case."""
    from pathlib import Path

    import numpy as np

    from robustness.distortions import distort
    from robustness.gate import load_baseline

    root = Path(__file__).resolve().parents[1]
    t = load_thresholds(root / "thresholds.yaml", known_models=KNOWN)
    image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    for entry in t.entries:
        assert all(bar > 0 for bar in entry.bars().values()), f"{entry.id}: a bar of 0 cannot fail"
        if entry.condition.distortion != "clean":
            changed = distort(image, entry.condition.distortion, entry.condition.level, seed=1)
            assert not np.array_equal(changed, image), f"{entry.id}: the identity repeats the clean case"
    assert t.paired is not None and t.paired.baseline == root / "robustness-baseline"
    for entry in t.entries:
        baseline = load_baseline(t.paired.baseline, entry.model, entry.condition.distortion)
        assert baseline is not None, f"{entry.id}: no committed baseline"
        assert float(entry.condition.level) in baseline.levels and baseline.seed == t.seed
        assert len(baseline.image_ids) == t.images


def test_relative_bar_needs_an_absolute_clean_bar_for_its_metric(tmp_path):
    """Review §3: ``blur: {2: {top1_of_clean: 0.9}}`` alone passes a model with clean 0% (0.9 x 0 = 0)."""
    error = error_for(tmp_path, "models:\n  efficientnet_lite0:\n    blur:\n      2: {top1_of_clean: 0.9}\n")
    assert (error.line, error.key) == (4, "models.efficientnet_lite0.blur.2.top1_of_clean") and len(error.problems) == 1
    assert "needs an absolute clean bar for top1" in str(error) and "'clean: {top1: ...}'" in str(error)
    # a clean bar for the other metric is not enough; one for the same metric is
    error = error_for(
        tmp_path,
        "models:\n  efficientnet_lite0:\n    clean: {top5: 0.8}\n"
        "    blur:\n      2: {top1_of_clean: 0.9, top5_of_clean: 0.9}\n",
    )
    assert [p.key for p in error.problems] == ["models.efficientnet_lite0.blur.2.top1_of_clean"]
    path = write(
        tmp_path, "models:\n  efficientnet_lite0:\n    clean: {top1: 0.5}\n    blur:\n      2: {top1_of_clean: 0.9}\n"
    )
    assert load_thresholds(path, known_models=KNOWN).entries[1].top1_of_clean == 0.9


# ------------------------------------------------------------ defaults.data (was defaults.dataset)


def test_defaults_data_is_relative_to_the_file(tmp_path):
    t = load_thresholds(write(tmp_path, "defaults: {data: val}\nmodels:\n  m: {source: fixture, clean: {top1: 0.5}}\n"))
    assert t.dataset == str(tmp_path / "val")


def test_defaults_dataset_is_a_deprecated_spelling_of_data(tmp_path):
    path = write(
        tmp_path, "defaults:\n  images: 4\n  dataset: val\nmodels:\n  m: {source: fixture, clean: {top1: 0.5}}\n"
    )
    with pytest.warns(FutureWarning, match=r"thresholds.yaml:3: defaults.dataset is deprecated.*write defaults.data"):
        t = load_thresholds(path)
    assert t.dataset == str(tmp_path / "val")


def test_defaults_data_and_dataset_together_is_an_error(tmp_path):
    path = write(tmp_path, "defaults: {data: a, dataset: b}\nmodels:\n  m: {source: fixture, clean: {top1: 0.5}}\n")
    with pytest.raises(ThresholdsError, match=r"both defaults.data and its deprecated spelling defaults.dataset"):
        load_thresholds(path)


def test_paired_baseline_given_only_when_written(tmp_path):
    text = "defaults: {paired: {alpha: 0.1}}\nmodels:\n  m: {source: fixture, clean: {top1: 0.5}}\n"
    unset = load_thresholds(write(tmp_path, text)).paired
    assert not unset.baseline_given and unset.baseline == tmp_path / "robustness-baseline"
    given = load_thresholds(write(tmp_path, text.replace("alpha: 0.1", "alpha: 0.1, baseline: b"))).paired
    assert given.baseline_given and given.baseline == tmp_path / "b"
