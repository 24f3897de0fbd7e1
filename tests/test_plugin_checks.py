"""The gate fails closed, once, in words, resolves settings in one order, and does not load torch into
unrelated pytest runs. Inner runs reuse test_plugin.py's toy gate."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_plugin import CONFTEST, TEST, THRESHOLDS, gate, make_images  # noqa: F401  (gate is a fixture)

import robustness
from robustness import settings
from robustness.settings import SettingError, resolve

pytest_plugins = ["pytester"]

REPO = Path(robustness.__file__).resolve().parents[1]


def one_collection_error(result, *patterns):
    """The run stopped at collection with one error holding every pattern, and no traceback."""
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    result.stdout.fnmatch_lines(list(patterns))
    text = result.stdout.str()
    assert text.count("ERROR collecting") == 1 and "Traceback" not in text, text


# ---------------------------------------------------------------------------------- fail closed


def test_device_typo_or_unavailable_fails_once_at_collection(gate, monkeypatch):
    one_collection_error(
        gate.runpytest("--robustness-device=gpu"),
        "*--robustness-device gpu: not a torch device (did you mean 'cuda'?)*",
    )
    import torch

    if not torch.cuda.is_available():
        one_collection_error(
            gate.runpytest("--robustness-device=cuda"),
            "*--robustness-device cuda: CUDA is not available on this machine (use cpu)*",
        )
        monkeypatch.setenv("ROBUSTNESS_DEVICE", "cuda:3")
        one_collection_error(gate.runpytest(), "*$ROBUSTNESS_DEVICE cuda:3: CUDA is not available*")
    monkeypatch.setenv("ROBUSTNESS_DEVICE", "cpu")
    gate.runpytest().assert_outcomes(passed=5)


def test_missing_or_empty_data_folder_fails_once(gate):
    one_collection_error(
        gate.runpytest("--robustness-data=nowhere"),
        "*dataset folder nowhere does not exist* (image folder from --robustness-data)",
    )
    (gate.path / "empty").mkdir()
    one_collection_error(gate.runpytest("--robustness-data=empty"), "*empty holds no images*")


def test_fewer_images_than_asked_fail_unless_the_file_allows_it(gate):
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 16"))
    one_collection_error(
        gate.runpytest(),
        "*thresholds.yaml defaults.images asks for 16 images, but * holds only 10*allow_fewer_images: true*",
    )
    one_collection_error(
        gate.runpytest("--robustness-images=12"),
        "*--robustness-images asks for 12 images*(image folder from ini robustness_data)*",
    )
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 16\n  allow_fewer_images: true"))
    result = gate.runpytest()
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["toy  clean *n=10  pass*"])


def corrupt_images(folder, count=2):
    """``count`` files with an image suffix that no decoder can read, in class folders 20, 21, ..."""
    from robustness.datasets import imagenet_wnids

    for k in range(count):
        wnid = imagenet_wnids()[20 + k]
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        (folder / wnid / f"broken_{k}.png").write_bytes(b"not an image")


def test_unreadable_images_fail_unless_allowed_and_are_reported(gate):
    corrupt_images(gate.path / "images")
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 12"))
    result = gate.runpytest()
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines(
        ["*only 10 of the 12 images asked for could be read (2 unreadable: *broken_0.png*allow_fewer_images: true*"]
    )
    assert "SkippedImagesWarning" not in result.stdout.str()
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 12\n  allow_fewer_images: true"))
    result = gate.runpytest("--junitxml=out.xml")  # -W error (ini addopts): no warning escapes either
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "toy  clean *n=10  pass*",
            "skipped 2 unreadable image(s), left out of every condition:",
            "  */broken_0.png: *",
            "  */broken_1.png: *",
        ]
    )
    root = ET.parse(gate.path / "out.xml").getroot()
    props = {p.get("name"): p.get("value") for p in next(root.iter("testcase")).iter("property")}
    assert props["robustness_skipped"] == "2" and props["robustness_n"] == "10"
    assert "broken_0.png" in props["robustness_skipped_images"] and "broken_1.png" in props["robustness_skipped_images"]


def test_space_separated_path_option_is_named(gate, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    make_images(elsewhere, n=4, wrong=0)
    # pytest does not know --robustness-data yet when it picks the rootdir: the folder counts as a
    # test path, the rootdir moves there (ini file and all), and thresholds.yaml is not found
    result = gate.runpytest("--robustness-data", str(elsewhere))
    one_collection_error(
        result,
        f"*thresholds file * not found*'--robustness-data {elsewhere}' with a space*"
        f"write --robustness-data={elsewhere}*",
    )
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 4"))
    result = gate.runpytest(f"--robustness-data={elsewhere}")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["toy  clean *n=4  pass*"])


# ---------------------------------------------------------------------------------- settings


def test_resolve_takes_the_first_layer_that_is_set():
    env = {"ROBUSTNESS_IMAGES": "20"}
    assert resolve("images", flag=10, environ=env, file=30, ini="40") == settings.Resolved(
        10, "flag", "--robustness-images"
    )
    assert resolve("images", environ=env, file=30, ini="40") == settings.Resolved(20, "env", "$ROBUSTNESS_IMAGES")
    assert resolve("images", environ={}, file=30, ini="40").value == 30
    assert resolve("images", environ={}, file=30, ini="40").source == "thresholds.yaml defaults.images"
    assert resolve("images", environ={}, ini="40") == settings.Resolved(40, "ini", "ini robustness_images")
    assert resolve("images", environ={}) == settings.Resolved(None, "default", "built-in default")
    # empty values count as unset; a flag named as the caller spells it
    assert resolve("batch_size", flag=None, environ={"ROBUSTNESS_BATCH_SIZE": ""}, ini="").value == 32
    assert resolve("device", flag="cpu", flag_name="--device", environ={}).source == "--device"
    assert resolve("no_cache", environ={"ROBUSTNESS_NO_CACHE": "yes"}).value is True
    assert resolve("no_cache", flag=False, environ={}, ini=True).value is True
    assert resolve("margin", environ={}).value == 0.05


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("images", "abc", "$ROBUSTNESS_IMAGES='abc': must be an integer >= 1"),
        ("margin", "5", "$ROBUSTNESS_MARGIN='5': must be a fraction in [0, 1)"),
        ("no_cache", "maybe", "$ROBUSTNESS_NO_CACHE='maybe'"),
    ],
)
def test_a_malformed_variable_is_named(name, text, words):
    with pytest.raises(SettingError) as info:
        resolve(name, environ={settings.SETTINGS[name].env: text})
    assert words in str(info.value)
    with pytest.raises(SettingError, match=f"ini {settings.SETTINGS[name].ini} = 'abc'"):
        resolve(name, environ={}, ini="abc")


def test_data_folder_precedence_in_the_gate(gate, monkeypatch):
    """flag > $ROBUSTNESS_DATA > defaults.data > ini robustness_data (the ini names "images", 10 images)."""
    make_images(gate.path / "eight", n=8, wrong=0)
    make_images(gate.path / "six", n=6, wrong=0)
    make_images(gate.path / "four", n=4, wrong=0)

    def rows(result):
        return [line for line in result.stdout.lines if line.startswith("toy  clean")]

    assert "n=10" in rows(gate.runpytest("-m", "clean"))[0]  # ini
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 4\n  data: four"))
    assert "n=4 " in rows(gate.runpytest("-m", "clean"))[0]  # thresholds.yaml beats ini
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "data: four"))
    monkeypatch.setenv("ROBUSTNESS_DATA", "six")
    assert "n=6 " in rows(gate.runpytest("-m", "clean"))[0]  # variable beats the file
    assert "n=8 " in rows(gate.runpytest("-m", "clean", "--robustness-data=eight"))[0]  # flag beats all
    monkeypatch.setenv("ROBUSTNESS_IMAGES", "zero")
    monkeypatch.setenv("ROBUSTNESS_BATCH_SIZE", "0")  # (the ini's addopts give --robustness-workers: a flag wins)
    one_collection_error(
        gate.runpytest(),
        "*$ROBUSTNESS_BATCH_SIZE='0': must be an integer >= 1*",
        "*$ROBUSTNESS_IMAGES='zero': must be an integer >= 1*",
    )


def test_cli_uses_the_same_settings(tmp_path, monkeypatch, capsys):
    from robustness.cli import main

    make_images(tmp_path / "images", n=2, wrong=0)
    monkeypatch.setenv("ROBUSTNESS_DEVICE", "gpu")
    assert main(["run", "--data", str(tmp_path / "images"), "--clean-only", "--no-cache"]) == 2
    assert "$ROBUSTNESS_DEVICE gpu: not a torch device (did you mean 'cuda'?)" in capsys.readouterr().err
    assert main(["run", "--data", str(tmp_path / "images"), "--device", "gpu:1"]) == 2
    assert "--device gpu:1: not a torch device (did you mean 'cuda:1'?)" in capsys.readouterr().err
    monkeypatch.setenv("ROBUSTNESS_DEVICE", "cpu")
    monkeypatch.setenv("ROBUSTNESS_DATA", str(tmp_path / "nowhere"))
    assert main(["run", "--clean-only"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_names_agree_with_the_distortion_registry():
    from robustness import names
    from robustness.datasets import DEFAULT_DATA_DIR
    from robustness.distortions import DISTORTIONS
    from robustness.thresholds import METRICS

    assert names.DISTORTION_NAMES == tuple(DISTORTIONS)[: len(names.DISTORTION_NAMES)]
    assert names.DISTORTION_PARAMETERS == {
        n: (DISTORTIONS[n].parameter, DISTORTIONS[n].unit) for n in names.DISTORTION_NAMES
    }
    assert names.METRICS == METRICS
    assert {n: names.level_label(n) for n in names.DISTORTION_NAMES} == {
        n: DISTORTIONS[n].label for n in names.DISTORTION_NAMES
    }
    assert settings.DEFAULT_DATA_DIR == str(DEFAULT_DATA_DIR)


# ---------------------------------------------------------------------------------- lazy imports

HEAVY = ("torch", "torchvision", "scipy", "PIL", "numpy", "matplotlib")


def test_importing_the_plugin_loads_nothing_heavy():
    code = f"import sys, robustness, robustness.pytest_plugin; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_unrelated_pytest_run_does_not_import_torch(pytester, monkeypatch):
    """The plugin is loaded (entry point) but no gate test is collected: torch, scipy, Pillow stay out."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain(pytestconfig):
            assert pytestconfig.pluginmanager.hasplugin("robustness")
            loaded = [m for m in ("torch", "torchvision", "scipy", "PIL") if m in sys.modules]
            assert not loaded, loaded
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)


def test_check_device_without_a_gpu_here(monkeypatch):
    """The device validator's CUDA branches, with torch's answers replaced (this machine may have no GPU)."""
    import torch

    from robustness.settings import check_device

    assert check_device(None) is None and check_device("") is None and check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"--device gpu:1: not a torch device \(did you mean 'cuda:1'\?\)"):
        check_device("gpu:1")
    with pytest.raises(ValueError, match=r"--device cudaa: not a torch device \(did you mean 'cuda'\?\)"):
        check_device("cudaa")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^--device cuda: CUDA is not available on this machine \(use cpu\)$"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda") == "cuda" and check_device("cuda:0") == "cuda:0"
    with pytest.raises(
        ValueError, match=r"\$ROBUSTNESS_DEVICE cuda:1: this machine has 1 CUDA device \(cuda:0..cuda:0\)"
    ):
        check_device("cuda:1", "$ROBUSTNESS_DEVICE")


# ---------------------------------------------------------------------------------- review fixes


def test_unreadable_image_error_is_printed_once_per_case(gate):
    """The GateError is not chained to pytest's failure ("During handling of the above exception")."""
    corrupt_images(gate.path / "images")
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 12"))
    result = gate.runpytest("-rN", "-m", "clean or contrast")  # -rN: pytest 8.0 repeats errors in the short summary
    result.assert_outcomes(errors=2, deselected=3)
    text = result.stdout.str()
    assert "During handling of the above exception" not in text, text
    assert text.count("images asked for could be read") == 2, text


def test_raw_module_from_the_model_fixture_is_named(gate):
    gate.makeconftest(
        CONFTEST.replace(
            'return Classifier(Toy(int(os.environ.get("TOY_BREAK_AT", "1000"))), pre, "toy")', "return Toy(1000)"
        )
    )
    result = gate.runpytest("-m", "clean")
    result.assert_outcomes(errors=1, deselected=4)
    result.stdout.fnmatch_lines(
        [
            "*robustness_model fixture returned a Toy, not a robustness.Classifier*"
            "robustness.load_model(net, preprocessing=...)*"
        ]
    )
    assert "preprocessing'" not in result.stdout.str() and "Traceback" not in result.stdout.str()


def test_paired_check_without_its_baseline_is_never_silent(gate):
    """Review §2: a missing baseline folder fails collection; a missing baseline shows under the table."""
    gate.makefile(
        ".yaml",
        thresholds=THRESHOLDS.replace(
            "  images: 10\n", "  images: 10\n  paired: {alpha: 0.05, baseline: nonexistent-dir}\n"
        ),
    )
    one_collection_error(
        gate.runpytest("-m", "clean"), "*sets defaults.paired, but its baseline folder *nonexistent-dir does not exist*"
    )
    (gate.path / "nonexistent-dir").mkdir()  # the folder, but no baseline for toy in it
    result = gate.runpytest("-m", "clean or blur")
    result.assert_outcomes(passed=3, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*= robustness gate =*",
            "toy  clean *pass*",
            "note (3 case(s): toy clean, toy blur-s1, toy blur-s2): paired check skipped: "
            "no stored baseline for this model and condition*",
        ]
    )


def test_calibration_run_says_no_case_could_fail_and_which_were_below(gate, monkeypatch):
    """Review §5: --robustness-update-thresholds exits 0, and says so loudly, listing the cases below their bars."""
    monkeypatch.setenv("TOY_BREAK_AT", "7")  # top-1 60%: clean (bar 70%) and blur s1 (70%) below, s2 (0.9 x 60%) not
    result = gate.runpytest("-m", "clean or blur", "--robustness-update-thresholds")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "CALIBRATION RUN (--robustness-update-thresholds): no gate case could fail; "
            "2 case(s) were below their old bars: toy clean, toy blur-s1"
        ]
    )
    monkeypatch.delenv("TOY_BREAK_AT")
    result = gate.runpytest("-m", "clean", "--robustness-update-thresholds")
    result.stdout.fnmatch_lines(["CALIBRATION RUN *: no gate case could fail; every case met its old bars"])


def test_calibration_from_fewer_images_than_the_file_asks_is_refused(gate):
    """Review §6: bars measured on n=4 are not written into a file with images: 10 (nor a baseline stored)."""
    before = (gate.path / "thresholds.yaml").read_text()
    result = gate.runpytest("-m", "clean", "--robustness-images=4", "--robustness-update-thresholds")
    result.stdout.fnmatch_lines(
        [
            "*thresholds.yaml NOT updated: measured on n=4 images per condition "
            "(--robustness-images asks for 4), fewer than its defaults.images: 10*"
        ]
    )
    assert (gate.path / "thresholds.yaml").read_text() == before
    assert not (gate.path / "robustness-baseline").exists()
    gate.makefile(".yaml", thresholds=THRESHOLDS.replace("images: 10", "images: 10\n  allow_fewer_images: true"))
    result = gate.runpytest("-m", "clean", "--robustness-images=4", "--robustness-update-thresholds")
    result.stdout.fnmatch_lines(["*robustness thresholds updated*", "+    clean: {top1: 0.95}"])
    assert "NOT updated" not in result.stdout.str()


def test_a_smaller_sample_than_the_file_asks_is_noted_with_its_source(gate, monkeypatch):
    """Review §7: $ROBUSTNESS_IMAGES=3 under images: 10 is named under the table, not only as n=3."""
    monkeypatch.setenv("ROBUSTNESS_IMAGES", "3")
    result = gate.runpytest("-m", "clean")
    result.assert_outcomes(passed=1, deselected=4)
    result.stdout.fnmatch_lines(
        [
            "toy  clean *n=3 *",
            "note: measured on n=3 images per condition, fewer than "
            "defaults.images: 10 in *thresholds.yaml ($ROBUSTNESS_IMAGES asks for 3)",
        ]
    )
    monkeypatch.delenv("ROBUSTNESS_IMAGES")
    result = gate.runpytest("-m", "clean", "--robustness-images=5")
    result.stdout.fnmatch_lines(["note: measured on n=5 * (--robustness-images asks for 5)"])
    assert "note: measured" not in gate.runpytest("-m", "clean").stdout.str()


def test_the_baseline_folder_is_a_setting_like_the_others(gate, monkeypatch):
    """$ROBUSTNESS_BASELINE_DIR and --robustness-baseline-dir beat defaults.paired.baseline: calibration
    stores the baseline there, the paired check reads it from there, and a missing one is named with its source."""
    gate.makefile(
        ".yaml",
        thresholds=THRESHOLDS.replace("  images: 10\n", "  images: 10\n  paired: {alpha: 0.1, baseline: in-file}\n")
        .replace("clean: {top1: 0.7}", "clean: {top1: 0.0}")
        .replace("1: {top1: 0.7}", "1: {top1: 0.0}"),
    )
    monkeypatch.setenv("ROBUSTNESS_BASELINE_DIR", str(gate.path / "from-env"))
    result = gate.runpytest("-m", "clean or blur", "--robustness-update-thresholds", "--robustness-margin=0.5")
    result.assert_outcomes(skipped=3, deselected=2)
    assert (gate.path / "from-env" / "toy" / "blur.npz").is_file()
    assert not (gate.path / "in-file").exists()
    one_collection_error(
        gate.runpytest("--robustness-baseline-dir=nowhere"),
        "*baseline folder *nowhere does not exist (folder from --robustness-baseline-dir)*",
    )
    monkeypatch.setenv("TOY_BREAK_AT", "5")  # 4 of the 8 right images now wrong: p = 1/16 < 0.1
    gate.runpytest("-m", "clean").stdout.fnmatch_lines(["*FAIL paired vs baseline: top1 80.0% -> 40.0%*"])


def test_the_ini_baseline_folder_applies_when_the_file_names_none(gate):
    """defaults.paired without a baseline leaves the file's layer unset: the ini's robustness_baseline_dir
    (below the file in the precedence) then chooses the folder; one written in the file would beat it."""
    thresholds = THRESHOLDS.replace("  images: 10\n", "  images: 10\n  paired: {alpha: 0.1}\n")
    gate.makefile(".yaml", thresholds=thresholds)
    ini = (gate.path / "tox.ini").read_text()
    gate.makeini(ini.rstrip("\n") + "\nrobustness_baseline_dir = from-ini\n")
    result = gate.runpytest("-m", "clean or blur", "--robustness-update-thresholds")
    result.assert_outcomes(skipped=3, deselected=2)
    assert (gate.path / "from-ini" / "toy" / "blur.npz").is_file()
    assert not (gate.path / "robustness-baseline").exists()
    gate.makefile(
        ".yaml", thresholds=thresholds.replace("paired: {alpha: 0.1}", "paired: {alpha: 0.1, baseline: in-file}")
    )
    gate.runpytest("-m", "clean or blur", "--robustness-update-thresholds").assert_outcomes(skipped=3, deselected=2)
    assert (gate.path / "in-file" / "toy" / "blur.npz").is_file()


def test_cache_dir_that_is_a_file_fails_once(gate):
    """``--robustness-cache-dir`` pointing at a file gave ``[Errno 20] Not a directory`` at the first
    write; now one collection error naming the option and the path."""
    (gate.path / "cache.txt").write_text("not a folder")
    one_collection_error(
        gate.runpytest("--robustness-cache-dir=cache.txt"),
        "*--robustness-cache-dir cache.txt is a file, not a folder*",
    )
