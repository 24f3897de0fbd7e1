"""Pipeline efficiency: end-to-end evaluated images/s divided by model-only images/s, per model and
distortion, for a first run and for a run that reuses the distortion store (issue 12, "Measure").

    nice python3 benchmarks/bench_pipeline.py --model efficientnet_lite0 --model mobilenet_v2_quantized \\
        --images 8 --jpeg2000-images 4 [--json FILE]

* **model-only**: the model's forward pass and top-5 on already preprocessed batches of
  ``--batch-size`` (on the GPU when present, synchronised), i.e. the ceiling the engine can reach.
* **end-to-end**: :func:`robustness.evaluate` on ``--images`` images at all the paper's levels of one
  distortion (``images x levels`` evaluated images, ``clean=False``): decode, distort, preprocess in
  DataLoader workers, forward, top-5. Three runs per (model, distortion):

  - ``no cache``: ``cache=None`` (no prediction cache, no distortion store), for reference
    (``--no-reference`` skips it);
  - ``first``: a fresh, empty on-disk :class:`robustness.cache.PredictionCache` folder, so the
    distortion store beside it (``<folder>/distortions``) is filled as the run goes;
  - ``store reused``: a second fresh cache folder (no prediction entries) whose ``distortions/`` is the
    first run's (moved over), i.e. what a second model, or the model's next release, pays: JPEG and
    JPEG 2000 are read from the store and only decoded. The other distortions do not go through the
    store, so for them this run is the same work as ``first`` and is not repeated (printed ``= first``).

  A run with a cache also pays the cache's model probe (:func:`robustness.cache.probe_output`: 6
  synthetic images, twice for a model key with no entries): a fixed cost per call, counted in its time.

Every end-to-end run is measured interleaved (model-only before and after it, averaged), so a busy
machine slows both alike. CPU seconds (this process and its reaped DataLoader workers) per image are
printed beside the wall clock: on a shared machine ``model CPU / end-to-end CPU`` (the CPU-time ratio)
estimates the ratio an idle machine would give, and is the steadier figure.

**CPU-bound ceiling** (``--no-costs`` skips it): single-thread CPU seconds per item of each stage,
measured in this process on the same images (decode per image; each distortion per (image, level)
averaged over its levels, and for JPEG / JPEG 2000 also read back from a filled store; the model's
preprocessing per image; its forward + top-5 per image at batch ``--batch-size`` with one torch thread).
A perfectly overlapped pipeline that is bound by the CPU reaches at most
``model / (model + decode / levels + distortion + preprocessing)`` of the model-only rate, whatever
the number of cores: every core works on something, and only the model's share of the work is
counted as model-only time. ``ceiling`` uses the single-thread model cost (what an idle machine
gives); ``ceil@cpu`` the model CPU measured beside the run (torch's threads, which burn extra CPU on a
busy machine), the one to hold the CPU-time ratio against: the gap between that ratio and ``ceil@cpu``
is what the engine adds beyond the stages' own work.

``--rerun``: also a first run against an unchanged re-run of the same evaluation with the cache
(clean + the distortions), per model. ``--cache-overhead``: the fixed cost a fresh cache adds to one
call. ``--no-table`` skips the table.

``--json FILE``: ``{"models": {model: {stage: CPU s per item, "cache_overhead_s": ..., "rerun_s": ...}},
"rows": [...]}``, one row per printed line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from robustness import DISTORTIONS, evaluate, load_dataset, load_model
from robustness.cache import PredictionCache
from robustness.distortion_store import DistortionStore

#: Goals of issue 12 on 2 CPU cores (end-to-end / model-only); ``jpeg2000`` for Lite0 with the store.
GOALS = {
    "efficientnet_lite0": {"blur": 0.85, "noise": 0.85, "jpeg": 0.85, "jpeg2000": 0.5, "contrast": 0.85},
    "mobilenet_v2_quantized": {"blur": 0.5, "noise": 0.5, "jpeg": 0.5, "contrast": 0.5},
}
#: The distortions that go through the distortion store (the others: "store reused" = "first").
STORED = tuple(name for name in DISTORTIONS if DistortionStore.stores(name))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its terminated, waited-for children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_only(model, batch: torch.Tensor, images: int, device: str) -> tuple[float, float]:
    """(images/s, CPU s per image) of the bare forward pass over ``images`` images."""
    batches = max(1, round(images / len(batch)))
    with torch.inference_mode():
        model(batch)
        sync(device)
        cpu, start = cpu_seconds(), time.perf_counter()
        for _ in range(batches):
            model(batch).topk(5, dim=1)
        sync(device)
        wall = time.perf_counter() - start
    count = batches * len(batch)
    return count / wall, (cpu_seconds() - cpu) / count


def end_to_end(model, dataset, name: str, levels, args, cache=None) -> tuple[float, float, int]:
    """(images/s, CPU s per image, images) of evaluate() of one distortion's levels (``cache``: None,
    or a PredictionCache whose store the run uses)."""
    cpu, start = cpu_seconds(), time.perf_counter()
    evaluate(
        model,
        dataset,
        {name: levels},
        clean=False,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        cache=cache,
    )
    wall = time.perf_counter() - start
    count = len(dataset) * len(levels)
    return count / wall, (cpu_seconds() - cpu) / count, count


def cache_overhead(model, dataset, args, repeats: int = 2) -> tuple[float, float]:
    """(wall s, CPU s) that a fresh cache folder adds to one :func:`robustness.evaluate` call: the
    median over ``repeats`` of (the first image, clean, with a fresh cache) minus (the same without a
    cache), interleaved. It is a fixed cost per call (the model probe, run twice for a model key
    with no entries, the model key, locks, the writes), which the "first" and "store reused" rows pay
    once whatever their size."""
    one = dataset.limit(1)
    walls, cpus = [], []
    for _ in range(repeats):
        measured = []
        for cached in (False, True):
            with tempfile.TemporaryDirectory() as folder:
                cpu, start = cpu_seconds(), time.perf_counter()
                evaluate(model, one, {}, batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                         cache=PredictionCache(folder) if cached else None)  # fmt: skip
                measured.append((time.perf_counter() - start, cpu_seconds() - cpu))
        walls.append(measured[1][0] - measured[0][0])
        cpus.append(measured[1][1] - measured[0][1])
    return statistics.median(walls), statistics.median(cpus)


def rerun(model, dataset, names, args) -> tuple[float, float]:
    """Wall seconds of evaluate() with a fresh cache (clean + ``names`` at the paper's levels), then of
    the unchanged re-run served from it (its probe and re-check sample included)."""
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        cache = PredictionCache(folder)
        for _ in range(2):
            start = time.perf_counter()
            evaluate(model, dataset, names, batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                     cache=cache)  # fmt: skip
            seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def _cpu(function, *args) -> float:
    """CPU seconds (this process, all its threads) of ``function(*args)``."""
    start = time.process_time()
    function(*args)
    return time.process_time() - start


def distortion_costs(dataset, seed: int = 0) -> dict[str, float]:
    """Single-thread CPU seconds per item: ``decode`` (per image), each distortion (per (image, level),
    averaged over its paper levels, as the engine calls it) and, for the stored distortions,
    ``<name> reused`` (read + check + decode from a filled :class:`DistortionStore`)."""
    from robustness.distortions import distort, distort_with_info
    from robustness.evaluation import image_seed

    decoded = []
    costs = {"decode": _cpu(lambda: decoded.extend(dataset.load(i)[0] for i in range(len(dataset)))) / len(dataset)}
    with tempfile.TemporaryDirectory() as folder:
        store = DistortionStore(folder)
        for name, spec in DISTORTIONS.items():
            pairs = [(i, level) for i in range(len(decoded)) for level in spec.levels]

            def run(call, name=name, pairs=pairs):
                for i, level in pairs:
                    call(decoded[i], name, level, seed=image_seed(seed, dataset[i].image_id, name, level))

            plain = distort_with_info if name == "jpeg2000" else distort
            costs[name] = _cpu(run, plain) / len(pairs)
            if name in STORED:
                stored = store.distort_with_info if name == "jpeg2000" else store.distort
                run(stored)  # fills the store
                costs[f"{name} reused"] = _cpu(run, stored) / len(pairs)
    return costs


def model_costs(model, dataset, batch_size: int, device: str = "cpu") -> dict[str, float]:
    """Single-thread CPU seconds per image of the model's ``preprocess`` and ``model`` (forward +
    top-5 at ``batch_size``, one torch thread, on ``device``: on a GPU only the CPU the launches take,
    so the ceiling computed from it says nothing there)."""
    images = [dataset.load(i)[0] for i in range(len(dataset))]
    tensors = []
    preprocess = _cpu(lambda: tensors.extend(model.preprocessing(image) for image in images)) / len(images)
    batch = torch.stack([tensors[i % len(tensors)] for i in range(batch_size)]).to(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            model(batch)  # warm-up
            repeat = max(2, round(2 * len(images) / batch_size))
            forward = _cpu(lambda: [model(batch).topk(5, dim=1) for _ in range(repeat)] and sync(device))
            forward /= repeat * batch_size
    finally:
        torch.set_num_threads(threads)
    return {"preprocess": preprocess, "model": forward}


def ceiling(
    costs: dict[str, float], name: str, levels: int, *, reused: bool = False, model: float | None = None
) -> float:
    """``model / (model + decode / levels + distortion + preprocessing)``: the highest end-to-end /
    model-only ratio a CPU-bound pipeline can reach (module docstring); ``reused``: the distortion is
    read back from the store; ``model``: CPU seconds per image of the forward pass to use instead of
    the single-thread ``costs["model"]`` (e.g. the one measured beside a run, with torch's threads)."""
    distortion = costs[f"{name} reused" if reused and name in STORED else name]
    model = costs["model"] if model is None else model
    return model / (model + costs["decode"] / levels + distortion + costs["preprocess"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model name, repeatable (default efficientnet_lite0)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--jpeg2000-images", type=int, default=None, help="images for JPEG 2000 (default --images)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the main process")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--distortion", action="append", choices=list(DISTORTIONS))
    parser.add_argument("--no-reference", action="store_true", help="skip the run without cache and store")
    parser.add_argument("--no-costs", action="store_true", help="skip the per-item CPU costs (and the ceiling)")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--cache-overhead", action="store_true", help="also measure the fixed cost a cache adds to one evaluate call"
    )
    parser.add_argument("--no-table", action="store_true", help="skip the table (e.g. with --cache-overhead)")
    parser.add_argument(
        "--rerun", action="store_true", help="also time a first run vs an unchanged re-run with the cache, per model"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.distortion or list(DISTORTIONS)
    args_device = args.device
    dataset = load_dataset(args.data, limit=args.images)
    costs = {} if args.no_costs else distortion_costs(dataset)
    if costs:
        print("# single-thread CPU ms per item: " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in costs.items()))
    print(
        f"# batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}, "
        f"workers {args.workers if args.workers is not None else 'default'}, cpus {os.cpu_count()}, "
        f"{args.images} images ({args.jpeg2000_images or args.images} for jpeg2000)",
        flush=True,
    )
    rows, per_model = [], {}
    for model_name in args.model or ["efficientnet_lite0"]:
        model = load_model(model_name)
        # a model that declares its devices (the int8 MobileNetV2: CPU only) runs on its first one
        supported = getattr(model, "devices", None)
        device = args_device if not supported or torch.device(args_device).type in supported else supported[0]
        args = argparse.Namespace(**{**vars(args), "device": device})
        if device != args_device:
            print(f"## {model.name}: runs on {device} (it supports {', '.join(supported)} only)")
        model = model.to(device).eval()
        batch = torch.stack([model.preprocess(dataset.load(i % len(dataset))[0]) for i in range(args.batch_size)])
        batch = batch.to(args.device)
        own = dict(costs, **model_costs(model, dataset, args.batch_size, device)) if costs else {}
        per_model[model.name] = own
        if own:
            print(f"## {model.name}: preprocess {1000 * own['preprocess']:.1f} ms, model {1000 * own['model']:.1f} ms"
                  " (single-thread CPU per image)")  # fmt: skip
        if args.cache_overhead:
            wall, cpu = cache_overhead(model, dataset, args)
            per_model[model.name]["cache_overhead_s"] = {"wall": wall, "cpu": cpu}
            print(
                f"## {model.name}: a fresh cache adds {wall:.1f} s wall, {cpu:.1f} s CPU per evaluate call", flush=True
            )
        if args.rerun:
            first, second = rerun(model, dataset, names, args)
            per_model[model.name]["rerun_s"] = {"first": first, "second": second}
            print(f"## {model.name}: cache: first run {first:.1f} s, unchanged re-run {second:.2f} s "
                  f"({100 * second / first:.2f}% of the first)", flush=True)  # fmt: skip
        if args.no_table:
            continue
        print(
            f"{'model':<24} {'distortion':<9} {'run':<13} {'images':>6} {'e2e img/s':>9} {'model img/s':>11} "
            f"{'ratio':>5} {'e2e cpu ms':>10} {'model cpu ms':>12} {'cpu ratio':>9} {'ceiling':>7} {'ceil@cpu':>8} "
            f"{'goal':>5}",
            flush=True,
        )
        for name in names:
            levels = list(DISTORTIONS[name].levels)
            data = dataset if name != "jpeg2000" or not args.jpeg2000_images else dataset.limit(args.jpeg2000_images)
            runs = ([] if args.no_reference else ["no cache"]) + ["first", "store reused"]
            with tempfile.TemporaryDirectory() as folder:
                first, second = Path(folder, "first"), Path(folder, "second")
                for run in runs:
                    goal = GOALS.get(model.name, {}).get(name)
                    bound = ceiling(own, name, len(levels), reused=run == "store reused") if own else None
                    row = {"model": model.name, "distortion": name, "run": run, "goal": goal, "ceiling": bound}
                    if run == "store reused" and name not in STORED:
                        rows.append(dict(row, same_as="first"))
                        print(f"{model.name:<24} {name:<9} {run:<13} = first (not a stored distortion)", flush=True)
                        continue
                    if run == "no cache":
                        cache = None
                    elif run == "first":
                        cache = PredictionCache(first)
                    else:  # a cache without prediction entries, with the first run's distortion store
                        second.mkdir()
                        shutil.move(DistortionStore.beside(first).root, DistortionStore.beside(second).root)
                        cache = PredictionCache(second)
                    before = model_only(model, batch, len(data) * len(levels), args.device)
                    e2e, e2e_cpu, count = end_to_end(model, data, name, levels, args, cache)
                    after = model_only(model, batch, len(data) * len(levels), args.device)
                    model_rate, model_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
                    row.update(images=count, e2e_img_s=e2e, model_img_s=model_rate, ratio=e2e / model_rate,
                               e2e_cpu_ms=1000 * e2e_cpu, model_cpu_ms=1000 * model_cpu,
                               cpu_ratio=model_cpu / e2e_cpu)  # fmt: skip
                    if own:  # the same ceiling with the model CPU measured beside this run (comparable to cpu_ratio)
                        row["ceiling_at_model_cpu"] = ceiling(
                            own, name, len(levels), reused=run == "store reused", model=model_cpu
                        )
                    if cache is not None:
                        row["store"] = DistortionStore.beside(cache.root).size().describe()
                    rows.append(row)
                    print(
                        f"{model.name:<24} {name:<9} {run:<13} {count:>6} {e2e:>9.1f} {model_rate:>11.1f} "
                        f"{row['ratio']:>5.2f} {1000 * e2e_cpu:>10.1f} {1000 * model_cpu:>12.1f} "
                        f"{row['cpu_ratio']:>9.2f} {bound if bound is not None else float('nan'):>7.2f} "
                        f"{row.get('ceiling_at_model_cpu', float('nan')):>8.2f} "
                        f"{goal if goal is not None else '-':>5}",
                        flush=True,
                    )
    if args.json:
        from robustness._io import atomic_write

        report = {"models": per_model, "rows": rows}
        atomic_write(args.json, (json.dumps(report, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
