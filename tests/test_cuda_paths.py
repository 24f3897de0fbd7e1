"""The CUDA path, exercised without a GPU (issue 12): simulated devices (monkeypatched
``torch.cuda.*``), a ``meta``-device anchor, recording fakes and a bfloat16 toy on the CPU, so the
first GPU run is not the first time this code runs.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_evaluation import CONDITIONS, make_dataset, table, tiny_model

from robustness import Classifier, Preprocessing, evaluate, load_model
from robustness.cache import PredictionCache, device_identity, model_key
from robustness.evaluation import (
    DeterminismError,
    DeterminismWarning,
    default_num_workers,
    inference_device,
    inference_settings,
)
from robustness.models import ModelError
from robustness.settings import CUBLAS_WORKSPACE_VARIABLE

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def one_gpu(monkeypatch):
    """Pretend this machine has one CUDA device (cuda:0), an H200, without touching a driver."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))


@pytest.fixture(autouse=True)
def no_cublas_variable(monkeypatch):
    """Start each test with ``$CUBLAS_WORKSPACE_CONFIG`` unset, and undo whatever the code sets (setenv
    first, so that monkeypatch removes a value the code under test adds)."""
    monkeypatch.setenv(CUBLAS_WORKSPACE_VARIABLE, "")
    monkeypatch.delenv(CUBLAS_WORKSPACE_VARIABLE)
    monkeypatch.setattr("robustness.evaluation._CUBLAS_WARNED", [])  # "once" is per process: start afresh


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


def _switches():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return (
        cudnn.deterministic,
        cudnn.benchmark,
        cudnn.allow_tf32,
        matmul.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )


@pytest.fixture
def restore_switches():
    """Put the global switches back however a test leaves them."""
    before = _switches()
    yield
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = before[:4]
    torch.use_deterministic_algorithms(before[4], warn_only=before[5])


def test_inference_settings_set_deterministic_algorithms_and_tf32_off_on_cuda_and_restore_them(restore_switches):
    cudnn = torch.backends.cudnn
    cudnn.benchmark, cudnn.allow_tf32 = True, True
    torch.use_deterministic_algorithms(False)
    outside = _switches()
    with inference_settings("cuda:0"):
        # (cudnn.deterministic, benchmark, cudnn TF32, matmul TF32, deterministic algorithms, warn_only)
        assert _switches() == (True, False, False, False, True, False)
    assert _switches() == outside  # restored
    with inference_settings("cuda", allow_tf32=True):
        assert _switches() == (True, False, True, True, True, False)
    assert _switches() == outside
    torch.use_deterministic_algorithms(True, warn_only=True)  # a caller's own setting comes back as it was
    with inference_settings("cuda"):
        assert torch.is_deterministic_algorithms_warn_only_enabled() is False
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    with inference_settings("cpu"):
        assert _switches() == outside  # the CPU path changes nothing
    assert CUBLAS_WORKSPACE_VARIABLE in os.environ  # set by the CUDA entries above, and kept
    os.environ.pop(CUBLAS_WORKSPACE_VARIABLE)
    with inference_settings("cpu"):
        assert CUBLAS_WORKSPACE_VARIABLE not in os.environ  # ... but never on the CPU


def test_the_switches_are_restored_after_an_error(restore_switches):
    torch.use_deterministic_algorithms(False)
    outside = _switches()
    with pytest.raises(KeyError), inference_settings("cuda"):
        raise KeyError("boom")  # any error: passed through unchanged
    assert _switches() == outside


def test_an_operation_without_a_deterministic_implementation_is_a_clear_error(restore_switches):
    """``put_`` has no deterministic implementation (on the CPU too, so the real PyTorch refusal runs here)."""
    torch.use_deterministic_algorithms(False)
    with (
        pytest.raises(DeterminismError, match=r"uses put_, which has no deterministic CUDA implementation") as info,
        inference_settings("cuda"),
    ):
        torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    assert "--device cpu" in str(info.value) and isinstance(info.value.__cause__, RuntimeError)
    assert isinstance(info.value, ValueError)  # the CLI prints it as one line, exit status 2
    assert not torch.are_deterministic_algorithms_enabled()
    torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))  # outside: allowed again


def test_cublas_refusing_deterministic_work_names_the_variable(restore_switches):
    refusal = (
        "Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` or "
        "`at::Context::setDeterministicAlgorithms(true)`, but this operation is not deterministic because it uses "
        "CuBLAS and you have CUDA >= 10.2. To enable deterministic behavior in this case, you must set an "
        "environment variable before running your PyTorch application: CUBLAS_WORKSPACE_CONFIG=:4096:8 or "
        "CUBLAS_WORKSPACE_CONFIG=:16:8."
    )  # PyTorch's message (aten/src/ATen/Context.cpp), raised by a real GPU when the variable came too late
    with (
        pytest.raises(DeterminismError, match=r"export CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting Python"),
        inference_settings("cuda"),
    ):
        raise RuntimeError(refusal)


def test_the_cublas_variable_is_set_when_unset_and_a_late_one_warns_once(one_gpu, monkeypatch, restore_switches):
    initialised = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: bool(initialised))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CUDA not initialised yet: set silently
        with inference_settings("cuda"):
            assert os.environ[CUBLAS_WORKSPACE_VARIABLE] == ":4096:8"
    os.environ.pop(CUBLAS_WORKSPACE_VARIABLE)
    initialised.append(True)  # something initialised CUDA before robustness could set the variable
    with (
        pytest.warns(DeterminismWarning, match=r"\$CUBLAS_WORKSPACE_CONFIG was unset and CUDA was already"),
        inference_settings("cuda"),
    ):
        pass
    assert os.environ[CUBLAS_WORKSPACE_VARIABLE] == ":4096:8"
    os.environ.pop(CUBLAS_WORKSPACE_VARIABLE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        with inference_settings("cuda"):
            pass


def test_robustness_sets_the_cublas_variable_when_it_chooses_cuda(one_gpu, monkeypatch):
    """Before the model moves there: an explicit device (check_device) or the automatic choice."""
    from robustness.settings import check_device

    check_device("cuda:0")
    assert os.environ[CUBLAS_WORKSPACE_VARIABLE] == ":4096:8"
    os.environ.pop(CUBLAS_WORKSPACE_VARIABLE)
    assert inference_device(cpu_only_model()) == "cpu"
    assert CUBLAS_WORKSPACE_VARIABLE not in os.environ  # a CPU-only model: nothing goes to CUDA
    assert inference_device(tiny_model()) == "cuda"
    assert os.environ[CUBLAS_WORKSPACE_VARIABLE] == ":4096:8"
    monkeypatch.setenv(CUBLAS_WORKSPACE_VARIABLE, ":16:8")  # the user's own deterministic choice is kept
    check_device("cuda")
    with inference_settings("cuda"):
        assert os.environ[CUBLAS_WORKSPACE_VARIABLE] == ":16:8"


def test_a_non_deterministic_cublas_value_is_refused(monkeypatch, restore_switches):
    outside = _switches()
    monkeypatch.setenv(CUBLAS_WORKSPACE_VARIABLE, ":4096:2:16:8")
    with (
        pytest.raises(DeterminismError, match=r"\$CUBLAS_WORKSPACE_CONFIG=':4096:2:16:8': cuBLAS is not"),
        inference_settings("cuda"),
    ):
        pass
    assert _switches() == outside  # refused before any switch moved


def test_device_identity_keys_the_gpu_index_tf32_and_determinism(one_gpu, restore_switches, monkeypatch):
    torch.use_deterministic_algorithms(False)
    with inference_settings("cuda:0"):
        strict = device_identity("cuda:0")
    with inference_settings("cuda:0", allow_tf32=True):
        loose = device_identity("cuda:0")
    assert strict["name"] == "NVIDIA H200" and strict["capability"] == [9, 0] and strict["index"] == 0
    assert strict["tf32"] == [False, False] and loose["tf32"] == [True, True]
    assert strict["deterministic"] == {
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "algorithms": True,
        "warn_only": False,
        "cublas_workspace_config": ":4096:8",
    }
    assert device_identity("cuda:0")["deterministic"]["algorithms"] is False  # outside: keyed as it is
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert device_identity("cuda:0")["deterministic"]["warn_only"] is True
    torch.use_deterministic_algorithms(False)
    # the model key follows (the fingerprint is given: no forward pass on the absent GPU)
    model = tiny_model()
    with inference_settings("cuda:0"):
        strict_key = model_key(model, "cuda:0", fingerprint="f" * 32)
    with inference_settings("cuda:0", allow_tf32=True):
        loose_key = model_key(model, "cuda:0", fingerprint="f" * 32)
    monkeypatch.setenv(CUBLAS_WORKSPACE_VARIABLE, ":16:8")
    with inference_settings("cuda:0"):
        small_workspace_key = model_key(model, "cuda:0", fingerprint="f" * 32)
    assert len({strict_key, loose_key, small_workspace_key}) == 3


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


@pytest.mark.parametrize(
    "cpus, on_cpu, on_cuda", [(16, 2, 15), (64, 2, 63), (4, 2, 3), (3, 2, 2), (2, 2, 2), (1, 1, 1), (None, 1, 1)]
)
def test_default_workers_use_an_accelerator_machines_cores_but_one(monkeypatch, cpus, on_cpu, on_cuda):
    monkeypatch.setattr("os.cpu_count", lambda: cpus)  # None: os.cpu_count cannot tell
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # a platform without it (macOS, Windows)
    assert default_num_workers("cpu") == on_cpu and default_num_workers("cuda:0") == on_cuda


def test_default_workers_count_the_cpus_this_process_may_use(monkeypatch):
    """A GPU job given 8 cores of a 128-core node (Slurm, ``taskset``, ``docker --cpuset-cpus``) sees
    ``os.cpu_count() == 128``: 127 DataLoader workers on 8 cores, each holding two batches in shared
    memory. The default counts the CPUs in the process's affinity mask instead."""
    monkeypatch.setattr("os.cpu_count", lambda: 128)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert default_num_workers("cuda") == 7 and default_num_workers("cpu") == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {5}, raising=False)
    assert default_num_workers("cuda") == 1 and default_num_workers("cpu") == 1


def test_the_workers_help_states_both_defaults(capsys):
    from robustness.cli import main
    from robustness.settings import SETTINGS

    assert SETTINGS["workers"].default_text == "min(2, cpus) on cpu, max(that, cpus - 1) on cuda"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "else min(2, cpus) on cpu, max(that, cpus - 1) on cuda" in " ".join(capsys.readouterr().out.split())
    docs = (TESTS.parent / "docs" / "caching.md").read_text(encoding="utf-8")
    assert "`min(8, cpus)` on CUDA" not in docs and "`cpus - 1` on CUDA" in docs


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


# ------------------------------------------------------------------ the GPU measurement script


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_the_gpu_measurement_script_stops_at_once_without_a_gpu(tmp_path):
    """No ``nvidia-smi`` on the PATH (a folder holding only a fake ``python3`` that must never run):
    exit status 2 with a message, before any Python or output folder."""
    import subprocess

    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "python3"
    fake.write_text("#!/bin/sh\ntouch '%s'\n" % (tmp_path / "python-ran"))
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if any(Path(d, "nvidia-smi").exists() for d in env["PATH"].split(":")):
        pytest.skip("this machine has nvidia-smi")
    script = TESTS.parent / "benchmarks" / "gpu_measure.sh"
    result = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    assert "gpu_measure: no nvidia-smi: this script measures a GPU" in result.stderr
    assert not (tmp_path / "python-ran").exists() and not (tmp_path / "out").exists()
