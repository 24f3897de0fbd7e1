"""The CUDA path, exercised without a GPU (issue 12): simulated devices (monkeypatched
``torch.cuda.*``), a ``meta``-device anchor, recording fakes and a bfloat16 toy on the CPU, so the
first GPU run is not the first time this code runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from test_evaluation import CONDITIONS, make_dataset, table, tiny_model

from robustness import Classifier, Preprocessing, evaluate, load_model
from robustness.cache import PredictionCache, device_identity, model_key
from robustness.evaluation import default_num_workers, inference_device, inference_settings
from robustness.models import ModelError

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def one_gpu(monkeypatch):
    """Pretend this machine has one CUDA device (cuda:0), an H200, without touching a driver."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", 4)


def cpu_only_model() -> Classifier:
    return Classifier(tiny_model().net, tiny_model().preprocessing, "tiny-int8", devices=("cpu",))


# ------------------------------------------------------------------ a model declares its devices


def test_a_cpu_only_model_runs_on_the_cpu_when_cuda_is_available_and_says_so_once(
    one_gpu, dataset, capsys, monkeypatch
):
    monkeypatch.setattr("robustness.evaluation._DEVICE_NOTES", set())  # "once" is per process: start afresh
    model = cpu_only_model()
    assert inference_device(tiny_model()) == "cuda"  # the default choice with a GPU here
    assert inference_device(model) == "cpu"
    assert inference_device(model) == "cpu"
    err = capsys.readouterr().err
    assert err.count("model tiny-int8 runs on cpu: it supports cpu only (cuda is available)") == 1
    # evaluate takes the same choice: no CUDA call on the way (a real one would fail here, there is no driver)
    results = evaluate(model, dataset, CONDITIONS, num_workers=0)
    assert table(results) == table(evaluate(tiny_model(), dataset, CONDITIONS, device="cpu", num_workers=0))


def test_an_explicit_device_the_model_does_not_support_is_refused(one_gpu, dataset):
    with pytest.raises(ValueError, match="model tiny-int8 cannot run on cuda: it supports cpu only"):
        evaluate(cpu_only_model(), dataset, CONDITIONS, device="cuda", num_workers=0)
    with pytest.raises(ModelError, match="model tiny-int8 cannot run on cuda:0: it supports cpu only"):
        load_model(cpu_only_model(), device="cuda:0")


def test_the_int8_zoo_model_declares_cpu_only():
    from robustness.models import MODELS

    try:
        net = MODELS["mobilenet_v2_quantized"].build("default")
    except (FileNotFoundError, ImportError) as error:
        pytest.skip(f"mobilenet_v2_quantized weights not here: {error}")
    model = Classifier(net, MODELS["mobilenet_v2_quantized"].preprocessing, "mobilenet_v2_quantized")
    assert model.devices == ("cpu",)
    assert model.supports("cpu") and not model.supports("cuda:0")


def test_the_cache_keys_the_device_a_cpu_only_model_really_ran_on(one_gpu, dataset, tmp_path):
    cache = PredictionCache(tmp_path / "cache")
    first = cpu_only_model()
    evaluate(first, dataset, CONDITIONS, num_workers=0, cache=cache)  # automatic choice: cpu
    again = cpu_only_model()
    evaluate(again, dataset, CONDITIONS, device="cpu", num_workers=0, cache=cache)
    assert again.net.seen < first.net.seen  # served from the cpu key: only the probe and a sample recomputed


# ------------------------------------------------------------------ one device validator everywhere


def test_cuda_3_on_a_one_gpu_machine_is_refused_at_every_entry_point(one_gpu, dataset, capsys, tmp_path):
    from robustness.cli import main
    from robustness.settings import check_device

    message = "cuda:3: this machine has 1 CUDA device (cuda:0..cuda:0)"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_device("cuda:3")
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate(tiny_model(), dataset, CONDITIONS, device="cuda:3", num_workers=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_model(tiny_model(), device="cuda:3")
    with pytest.raises(ValueError, match=re.escape(message)):
        inference_device(tiny_model(), "cuda:3")
    for command in (["run", "--model", "tiny"], ["calibrate", "--model", "tiny"], ["activations", "--model", "tiny"]):
        assert main([*command, "--data", str(tmp_path / "data"), "--device", "cuda:3"]) == 2
        err = capsys.readouterr().err
        assert f"robustness {command[0]}: --device {message}" in err, err


# ------------------------------------------------------------------ activations: batches go to the model's device


class _Recorder(torch.nn.Module):
    """A network whose first parameter lives on the ``meta`` device (so that is "the model's device")
    while it computes on the CPU; it records the device and dtype of every input it receives."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.empty(1, device="meta"))
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 1000)
        self.received: list[tuple[str, torch.dtype]] = []

    def forward(self, x):
        self.received.append((x.device.type, x.dtype))
        x = torch.relu(self.conv(torch.zeros(x.shape, dtype=torch.float32)))
        return self.fc(x.mean(dim=(2, 3)))


def test_activations_feed_the_model_on_its_own_device():
    import numpy as np

    from robustness.activations import activation_study

    net = _Recorder()
    model = Classifier(net, Preprocessing(20, 16, "bilinear"), "recorder")
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    activation_study(model, [image], "blur", [1.0])
    assert net.received == [("meta", torch.float32)]


# ------------------------------------------------------------------ dtypes: bf16 / fp16 networks


def test_a_bfloat16_model_gets_bfloat16_inputs_and_its_own_cache_key(dataset, tmp_path):
    seen = []
    model = tiny_model().to(torch.bfloat16)
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    cache = PredictionCache(tmp_path / "cache")
    results = evaluate(model, dataset, CONDITIONS, device="cpu", num_workers=0, cache=cache)
    assert set(seen) == {torch.bfloat16} and all(r.n == 4 for r in results)
    assert model.input_dtype == torch.bfloat16
    assert cache.model_key(model, "cpu") != cache.model_key(tiny_model(), "cpu")


def test_a_float32_model_gets_its_input_unchanged():
    seen = []
    model = tiny_model()
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    batch = torch.rand(2, 3, 32, 32)
    model(batch)
    assert seen[0] is batch  # no copy, no cast: CPU numbers are bit-identical to before


# ------------------------------------------------------------------ determinism and TF32 on CUDA


def test_inference_settings_turn_tf32_off_and_cudnn_deterministic_on_cuda_and_restore_them():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, cudnn.allow_tf32 = True, True
    try:
        with inference_settings("cuda:0"):
            assert (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (
                True,
                False,
                False,
                False,
            )
        with inference_settings("cuda", allow_tf32=True):
            assert cudnn.allow_tf32 and matmul.allow_tf32 and cudnn.deterministic
        assert (cudnn.benchmark, cudnn.allow_tf32) == (True, True)  # restored
        with inference_settings("cpu"):
            assert (cudnn.benchmark, cudnn.allow_tf32) == (True, True)  # the CPU path changes nothing
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = before


def test_device_identity_keys_the_gpu_index_tf32_and_determinism(one_gpu):
    with inference_settings("cuda:0"):
        strict = device_identity("cuda:0")
    with inference_settings("cuda:0", allow_tf32=True):
        loose = device_identity("cuda:0")
    assert strict["name"] == "NVIDIA H200" and strict["capability"] == [9, 0] and strict["index"] == 0
    assert strict["tf32"] == [False, False] and loose["tf32"] == [True, True]
    assert strict["deterministic"] == {"cudnn_deterministic": True, "cudnn_benchmark": False, "algorithms": False}
    # the model key follows (the fingerprint is given: no forward pass on the absent GPU)
    model = tiny_model()
    with inference_settings("cuda:0"):
        strict_key = model_key(model, "cuda:0", fingerprint="f" * 32)
    with inference_settings("cuda:0", allow_tf32=True):
        loose_key = model_key(model, "cuda:0", fingerprint="f" * 32)
    assert strict_key != loose_key


def test_the_cpu_identity_is_what_it_was_so_cpu_cache_keys_stay_valid():
    assert set(device_identity("cpu")) <= {"type", "float32_matmul_precision", "capability"}


# ------------------------------------------------------------------ forks and workers


def test_tests_that_fork_dataloader_workers_pin_the_cpu():
    """``torch.cuda.is_available()`` in a parent poisons later forks: every ``evaluate`` call in the
    tests with ``num_workers`` > 0 must say ``device="cpu"`` (issue 12)."""
    offenders = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "evaluate"):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            workers = keywords.get("num_workers")
            if isinstance(workers, ast.Constant) and workers.value == 0:
                continue
            device = keywords.get("device")
            if not (isinstance(device, ast.Constant) and device.value == "cpu"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_the_workers_help_states_both_defaults(monkeypatch):
    from robustness.settings import SETTINGS

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_num_workers("cpu") == 2 and default_num_workers("cuda") == 8
    assert SETTINGS["workers"].default_text == "min(2, cpus) on cpu, min(8, cpus) on cuda"


# ------------------------------------------------------------------ provenance


def test_a_run_records_the_device_identity_and_dtype_in_its_provenance(tmp_path, capsys):
    import json

    from robustness.cli import main

    make_dataset(tmp_path / "data", 2)
    code = main(
        [
            "run",
            "--model",
            "test_evaluation:tiny_model",
            "--data",
            str(tmp_path / "data"),
            "--distortion",
            "contrast",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-cache",
            "--no-report",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    (provenance,) = (tmp_path / "out").rglob("provenance.json")
    device = json.loads(provenance.read_text())["device"]
    assert device["type"] == "cpu" and device["dtype"] == "torch.float32"
    assert {k: v for k, v in device.items() if k != "dtype"} == device_identity("cpu")
