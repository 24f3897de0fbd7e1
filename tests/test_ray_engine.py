"""The Ray engine (robustness.ray_engine, ``evaluate(engine="ray")``): the same top-5 as the local
engine, bit for bit on the CPU, and no prediction lost or duplicated when a worker dies mid-run.

One local Ray instance (2 CPUs, no dashboard) is started for the module and shut down at its end;
the tiny random-weight classifier and synthetic images of ``test_evaluation`` keep it small. Skipped
when Ray Data is not installed, except the check of the error that says how to install it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluation import _TinyNet, make_dataset, table, tiny_model

from robustness import Classifier, Preprocessing, evaluate
from robustness.evaluation import Condition

CONDITIONS = [Condition("clean", 0), Condition("noise", 30), Condition("jpeg2000", 30)]


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """A local Ray with 2 CPUs for this module; the test modules' classes travel by value (the
    workers cannot import ``tests/``)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from ray import cloudpickle

    for module in (sys.modules[_TinyNet.__module__], sys.modules[__name__]):
        cloudpickle.register_pickle_by_value(module)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        for module in (sys.modules[_TinyNet.__module__], sys.modules[__name__]):
            cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("images"), count=5)


@pytest.fixture(scope="module")
def local_results(images):
    return evaluate(tiny_model(), images, CONDITIONS, num_workers=0, device="cpu", batch_size=4)


def test_same_predictions_as_local(ray_instance, images, local_results):
    """Noise (seeded per image, never per worker), JPEG 2000 (with its tolerance flag) and clean:
    every top-5 row, accuracy and count equal to the local engine's (CPU actors: the preprocessing
    in the actors; the tasks' preprocessing, what GPU actors get, is tested with several models)."""
    results = evaluate(tiny_model(), images, CONDITIONS, engine="ray", device="cpu", batch_size=3)
    assert table(results) == table(local_results)
    assert [r.tolerance_misses for r in results] == [r.tolerance_misses for r in local_results]
    for ray_result, local_result in zip(results, local_results):
        assert np.array_equal(ray_result.predictions, local_result.predictions)


class _DiesOnce(_TinyNet):
    """A :class:`_TinyNet` whose first forward pass inside a Ray actor ends that actor's process
    (``os._exit(1)``), once per ``marker`` file: a worker killed mid-run."""

    def __init__(self, marker: Path):
        super().__init__(0)
        self.marker = str(marker)

    def forward(self, x):
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            try:
                with open(self.marker, "x"):
                    pass
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().forward(x)


class _Recording:
    """A prediction store that keeps every ``put`` (``PredictionStore`` protocol): condition index,
    image index, top-5 row."""

    def __init__(self):
        self.puts: list[tuple[int, int, tuple]] = []

    def open_run(self, model, device, dataset, conditions, seed):
        return _RecordingSession(self)


class _RecordingSession:
    def __init__(self, store: _Recording):
        self.store = store

    def claim(self, condition_indices):
        group = list(condition_indices)
        if group:
            yield group

    def get(self, condition_index):
        return {}

    def put(self, condition_indices, image_indices, top5, flags):
        for k, i, row in zip(np.asarray(condition_indices).tolist(), np.asarray(image_indices).tolist(), top5):
            self.store.puts.append((k, i, tuple(np.asarray(row).tolist())))

    def sample_seed(self, condition_indices):
        return 0

    def discard(self):
        pass

    def close(self, error=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(exc[1])


def test_killed_actor_loses_and_duplicates_nothing(ray_instance, images, local_results, tmp_path):
    """The first inference actor dies on its first batch; Ray restarts it and re-runs the batch.
    Every (image, condition) pair is handed to the store exactly once, equal to the local result."""
    marker = tmp_path / "died"
    model = Classifier(_DiesOnce(marker), Preprocessing(36, 32, "bilinear"), "tiny")
    store = _Recording()
    results = evaluate(model, images, CONDITIONS, engine="ray", device="cpu", batch_size=2, cache=store)
    assert marker.exists(), "no actor was killed: the test did not test anything"
    pairs = [(k, i) for k, i, _ in store.puts]
    expected = {(k, i) for k in range(len(CONDITIONS)) for i in range(len(images))}
    assert sorted(pairs) == sorted(expected), "a pair was lost or handed to the store twice"
    for k, i, row in store.puts:
        assert row == tuple(local_results[k].predictions[i].tolist())
    assert table(results) == table(local_results)


def test_unknown_engine_is_named(images):
    with pytest.raises(ValueError, match="unknown engine 'spark'.*local, ray"):
        evaluate(tiny_model(), images, CONDITIONS, engine="spark", device="cpu")


def test_device_pipeline_is_refused_with_the_ray_engine(images, monkeypatch):
    """The Ray engine preprocesses in its tasks or actors (the reference path): ``pipeline="device"``
    is a clear error before Ray starts, and a misspelt pipeline still names the choices (Ray is made
    absent: neither call may reach it)."""
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ValueError, match="pipeline device runs with the local engine only"):
        evaluate(tiny_model(), images, CONDITIONS, engine="ray", pipeline="device", device="cpu")
    with pytest.raises(ValueError, match="auto, device, reference"):
        evaluate(tiny_model(), images, CONDITIONS, engine="ray", pipeline="gpu", device="cpu")


def test_missing_ray_says_how_to_install(images, monkeypatch):
    """Without Ray the error names the extra to install (``sys.modules`` entry ``None`` makes the
    import fail as if it were absent)."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ImportError, match=r"pip install 'robustness\[ray\]'"):
        evaluate(tiny_model(), images, CONDITIONS, engine="ray", device="cpu")


def test_import_loads_neither_ray_nor_torch():
    """``import robustness`` and the engine module itself load no Ray (and the module no torch): Ray
    is imported when ``engine="ray"`` runs."""
    import subprocess

    code = (
        "import sys, robustness, robustness.ray_engine; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"


def test_receipts_hand_on_each_pair_once():
    """The driver's bookkeeping (no Ray needed): a re-run batch is dropped, a pair that comes back
    with other predictions or never comes back is an error naming it."""
    from robustness.ray_engine import RayEngineError, _Receipts

    items = np.array([[0, 0], [0, 1], [1, 0]], dtype=np.int64)
    receipts = _Receipts(items)

    def batch(pairs, top5):
        pairs = np.array(pairs, dtype=np.int64)
        return {"image_index": pairs[:, 0], "condition_index": pairs[:, 1], "top5": np.array(top5)}

    first = batch([[0, 0], [0, 1]], [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    assert receipts.take(first).tolist() == [0, 1]
    assert receipts.take(first).tolist() == []  # the same batch re-run: nothing handed on twice
    with pytest.raises(RayEngineError, match="did not come back.*\\(1, 0\\)"):
        receipts.check_complete()
    assert receipts.take(batch([[1, 0]], [[1, 2, 3, 4, 5]])).tolist() == [0]
    receipts.check_complete()
    with pytest.raises(RayEngineError, match="image 0 under condition 1 came back twice"):
        receipts.take(batch([[0, 1]], [[10, 9, 8, 7, 6]]))


def test_several_models_as_separate_local_runs(ray_instance, images, local_results, monkeypatch):
    """Two models with different preprocessings in one Ray run (each item distorted once, each model
    fed its own tensors, made in the tasks): each model's top-5 equal to its own local run."""
    from robustness import ray_engine

    monkeypatch.setattr(ray_engine, "preprocess_where", lambda on_gpu: "tasks")
    other = Classifier(_TinyNet(1), Preprocessing(40, 32, "bicubic"), "tiny-other")
    local_other = evaluate(
        Classifier(_TinyNet(1), Preprocessing(40, 32, "bicubic"), "tiny-other"),
        images,
        CONDITIONS,
        num_workers=0,
        device="cpu",
    )
    results = evaluate([tiny_model(), other], images, CONDITIONS, engine="ray", device="cpu", batch_size=4)
    assert table(results["tiny"]) == table(local_results)
    assert table(results["tiny-other"]) == table(local_other)
    assert table(local_other) != table(local_results)  # two models that disagree: the test can tell them apart


def test_cache_written_by_ray_serves_the_local_engine(ray_instance, images, local_results, tmp_path):
    """The driver writes the Ray engine's predictions in the cache's own format: a local run then
    reads them, re-checks its sample without a disagreement (a CacheWarning would fail under -W
    error) and reports the same numbers."""
    cache = tmp_path / "cache"
    first = evaluate(tiny_model(), images, CONDITIONS, engine="ray", device="cpu", cache=cache)
    model = tiny_model()
    second = evaluate(model, images, CONDITIONS, num_workers=0, device="cpu", cache=cache)
    assert table(first) == table(second) == table(local_results)
    computed = len(images) * len(CONDITIONS)
    assert model.net.seen < computed, "the local run recomputed everything instead of reading the cache"


class _Narrow(_TinyNet):
    """A :class:`_TinyNet` with 10 outputs: a width the dataset's 1000 classes do not match."""

    def __init__(self):
        super().__init__(0)
        self.fc = torch.nn.Linear(8 * 4, 10)


def test_model_error_in_an_actor_reaches_the_caller_as_itself(ray_instance, images):
    """A model whose output width is wrong fails in the actor (``top5_of``); the caller gets the
    ValueError naming the shape, not a Ray wrapper."""
    from robustness.labels import ClassListError

    model = Classifier(_Narrow(), Preprocessing(36, 32, "bilinear"), "narrow")
    with pytest.raises(ClassListError, match=r"logits of shape \(\d+, 10\), expected \(N, 1000\)"):
        evaluate(model, images, CONDITIONS[:1], engine="ray", device="cpu")


class _Stop(Exception):
    """Raised by a stand-in ``evaluate`` once it has seen its arguments."""


def test_run_flags_reach_evaluate(images, monkeypatch, tmp_path):
    """``robustness run --engine ray --ray-address ADDR`` hands both to ``evaluate`` (stopped there:
    no model runs); a misspelt engine is a usage error."""
    from robustness import cli, evaluation

    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(evaluation, "evaluate", stop)
    monkeypatch.setattr(cli, "_load_run_model", lambda args, spec=None: tiny_model())
    with pytest.raises(_Stop):
        cli.main(["run", "--data", str(images.root), "--engine", "ray", "--ray-address", "auto",
                  "--no-cache", "--output", str(tmp_path / "out"), "--distortion", "noise=30"])  # fmt: skip
    assert (seen["engine"], seen["ray_address"]) == ("ray", "auto")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--engine", "spark"])


def test_a_torchscript_model_runs_on_ray_as_locally(ray_instance, images, local_results):
    """A TorchScript network (a ``.pt`` file such as the shared ``mobilenet_v2_quantized``) cannot be
    pickled (``RuntimeError: Tried to serialize object __torch__... which does not have a
    __getstate__``): it travels to the actors as ``torch.jit.save`` bytes and gives the local top-5."""
    net = torch.jit.trace(_TinyNet(0).eval(), torch.zeros(1, 3, 32, 32))
    scripted = Classifier(net, Preprocessing(36, 32, "bilinear"), "tiny")
    results = evaluate(scripted, images, CONDITIONS, engine="ray", device="cpu", batch_size=4)
    assert table(results) == table(local_results)
    # the driver's model is left as it was (still TorchScript, still usable)
    assert isinstance(scripted.net, torch.jit.ScriptModule)
    assert table(evaluate(scripted, images, CONDITIONS, num_workers=0, device="cpu")) == table(local_results)


def test_a_ray_address_without_the_ray_engine_is_refused(images, capsys):
    """``--ray-address auto`` without ``--engine ray`` ran everything on this machine, silently: the
    user believes the cluster did the work (and sized the run for it). Now one error naming both."""
    from robustness import cli

    with pytest.raises(ValueError, match=r"ray_address 'auto'.*engine 'local'.*--engine ray"):
        evaluate(tiny_model(), images, CONDITIONS[:1], ray_address="auto", num_workers=0, device="cpu")
    status = cli.main(
        ["run", "--data", str(images.root), "--model", "resnet18", "--weights", "random", "--ray-address", "auto",
         "--clean-only", "--no-cache", "--output", str(images.root.parent / "out"), "--device", "cpu"]
    )  # fmt: skip
    assert status == 2 and "--ray-address" in capsys.readouterr().err


def _differs_on_workers(real, part: str):
    """``real`` (an environment function of ``robustness.evaluation``), except that in any process but
    this one (a Ray worker) it reports ``part`` (``"libraries.<name>"`` or ``"device.<name>"``) as
    ``"0.0-node"``: a node with another version or device than the driver."""
    driver = os.getpid()
    group, name = part.split(".")

    def reported(*args):
        fields = real(*args)
        if os.getpid() != driver:
            fields[group][name] = "0.0-node"
        return fields

    return reported


@pytest.mark.parametrize(
    ("function", "part", "who"),
    [
        ("ray_task_environment", "libraries.openjpeg", "read-and-distort task"),
        ("ray_actor_environment", "libraries.torch", "inference actor"),
        ("ray_actor_environment", "device.capability", "inference actor"),
    ],
)
def test_a_node_that_differs_from_the_driver_is_refused(
    ray_instance, images, tmp_path, monkeypatch, function, part, who
):
    """Predictions computed on a node are cached under the driver's model key: a worker that reports
    another library version or CPU instruction set than the driver is a RayEngineError naming the node,
    the field and both values, and none of its predictions reaches the cache."""
    import re

    from robustness import evaluation
    from robustness.ray_engine import RayEngineError

    real = getattr(evaluation, function)
    group, name = part.split(".")
    driver = (real("cpu") if "actor" in function else real())[group][name]
    monkeypatch.setattr(evaluation, function, _differs_on_workers(real, part))
    cache = tmp_path / "cache"
    with pytest.raises(RayEngineError) as raised:
        evaluate(tiny_model(), images, CONDITIONS, engine="ray", device="cpu", cache=cache)
    pattern = (
        rf"node \S+ \(node id \w+\) differs from the driver: its {who} has \S*{re.escape(part)} = '0.0-node', "
        rf"the driver {re.escape(repr(driver))}"
    )
    assert re.search(pattern, str(raised.value)), str(raised.value)
    assert not list(cache.rglob("*.rpc")), "a prediction of the node that differs reached the cache"


def test_nodes_like_the_driver_pass_the_check(ray_instance, images, tmp_path):
    """The check compares what it should: unpatched local workers report exactly the driver's values
    (every field, the device index aside), so the run writes its predictions."""
    cache = tmp_path / "cache"
    evaluate(tiny_model(), images, CONDITIONS[:1], engine="ray", device="cpu", cache=cache)
    assert list(cache.rglob("*.rpc"))


def test_ray_data_keeps_quiet_but_for_warnings(ray_instance, images, monkeypatch):
    """Ray Data's own INFO lines (execution plan, a progress report every few seconds, per-operator
    stats) flooded stderr beside the engine's own bar; the engine turns its progress bars off and its
    logger to warnings for the run (both restored after), unless the user configured Ray Data's
    logging ($RAY_DATA_LOGGING_CONFIG). Ray Data's handlers write to the stream they found at import
    (not pytest's capfd), so a handler of our own on the ``ray.data`` logger sees what they would print."""
    import logging
    import warnings

    import ray.data

    logger = logging.getLogger("ray.data")
    with warnings.catch_warnings():  # Ray Data warns about its own deprecated settings when it builds this
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray.data.DataContext.get_current()
    level, bars = logger.level, context.enable_progress_bars

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.levels = []

        def emit(self, record):
            self.levels.append(record.levelno)

    def run() -> list[int]:
        records = Records()
        logger.addHandler(records)
        try:
            evaluate(tiny_model(), images, CONDITIONS[:1], engine="ray", device="cpu", progress=False)
        finally:
            logger.removeHandler(records)
        return records.levels

    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    assert [n for n in run() if n < logging.WARNING] == []
    assert (logger.level, context.enable_progress_bars) == (level, bars)
    from robustness.ray_engine import _quiet_ray_data

    monkeypatch.setenv("RAY_DATA_LOGGING_CONFIG", "user.yaml")  # the user asked for Ray Data's own logging
    with _quiet_ray_data(context):
        assert (logger.level, context.enable_progress_bars) == (level, bars)
