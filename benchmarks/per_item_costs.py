"""CPU seconds per work item of each stage of the pipeline, for the cluster scaling estimate
(docs/cluster.md, issue 12).

    nice python3 benchmarks/per_item_costs.py --images 16 [--model efficientnet_lite0] [--json FILE]

Stages, each timed on its own over the first ``--images`` images of ``--data``, in this process:

* **decode**: :meth:`robustness.ImageDataset.load` (read + decode + the loading rules), per image;
* **each distortion**: :func:`robustness.distortions.distort` (``distort_with_info`` for JPEG 2000)
  at every paper level, with the engine's seed (:func:`robustness.evaluation.image_seed`), per
  (image, level), averaged over the levels;
* **preprocessing**: the model's preprocessing (resize, crop, normalise), per image;
* **inference**: the model's forward pass and top-5 on batches of ``--batch-size`` preprocessed
  images, per image (all torch threads counted).

CPU seconds are ``time.process_time()`` (user + system, every thread of this process), so a
multi-threaded stage (inference) reports the CPU it uses, not the wall time it takes; wall seconds
are printed beside them. Run it niced on an otherwise idle machine; the numbers are per core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(function, repeat: int = 1) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``repeat`` calls of ``function()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        function()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(data: str | None, images: int, model_name: str, batch_size: int, seed: int = 0) -> list[dict]:
    """Rows ``{"stage", "items", "cpu_s_per_item", "wall_s_per_item"}``: decode, each distortion,
    preprocessing, inference (see the module docstring)."""
    import torch

    from robustness import DISTORTIONS, load_dataset, load_model
    from robustness.distortions import distort, distort_with_info
    from robustness.evaluation import image_seed

    dataset = load_dataset(data, limit=images)
    rows = []

    decoded = []

    def decode():
        decoded.extend(dataset.load(i)[0] for i in range(len(dataset)))

    cpu, wall = _timed(decode)
    rows.append({"stage": "decode", "items": len(dataset), "cpu_s_per_item": cpu / len(dataset),
                 "wall_s_per_item": wall / len(dataset)})  # fmt: skip

    for name, spec in DISTORTIONS.items():
        levels = list(spec.levels)

        def run(name=name, levels=levels):
            for i, image in enumerate(decoded):
                for level in levels:
                    item_seed = image_seed(seed, dataset[i].image_id, name, level)
                    if name == "jpeg2000":
                        distort_with_info(image, name, level, seed=item_seed)
                    else:
                        distort(image, name, level, seed=item_seed)

        count = len(decoded) * len(levels)
        cpu, wall = _timed(run)
        rows.append({"stage": f"distort {name} ({len(levels)} levels)", "items": count,
                     "cpu_s_per_item": cpu / count, "wall_s_per_item": wall / count})  # fmt: skip

    model = load_model(model_name, device="cpu").eval()
    tensors = []
    cpu, wall = _timed(lambda: tensors.extend(model.preprocessing(image) for image in decoded))
    rows.append({"stage": "preprocess", "items": len(decoded), "cpu_s_per_item": cpu / len(decoded),
                 "wall_s_per_item": wall / len(decoded)})  # fmt: skip

    batch = torch.stack([tensors[i % len(tensors)] for i in range(batch_size)])
    with torch.inference_mode():
        model(batch)  # warm-up
        repeat = max(4, round(len(decoded) * 2 / batch_size))  # at least 4 batches
        cpu, wall = _timed(lambda: model(batch).topk(5, dim=1), repeat=repeat)
    count = repeat * batch_size
    rows.append({"stage": f"inference {model_name} (batch {batch_size}, {torch.get_num_threads()} threads)",
                 "items": count, "cpu_s_per_item": cpu / count, "wall_s_per_item": wall / count})  # fmt: skip
    return rows


def estimate(rows: list[dict], *, images: int, nodes: int, cores: int, gpu_rate: float | None) -> dict:
    """Estimated wall seconds of ``images`` images x every paper condition (52 with clean) on ``nodes``
    nodes of ``cores`` cores, from the measured CPU seconds per item (``rows`` of :func:`measure`),
    assuming perfect spreading over the cores (a lower bound: no scheduling, transfer or straggler cost).

    Without a GPU (``gpu_rate`` None): the total CPU seconds (one decode per image, every distortion
    level, 52 preprocessings and forward passes per image) over ``nodes * cores``.

    With one GPU per node doing ``gpu_rate`` images/s (an assumption, not measured): per node, the
    read-and-distort tasks run on ``cores - 1`` cores, and the one inference actor (1 core) preprocesses
    and then runs each batch, so its rate is ``1 / (preprocess + 1 / gpu_rate)``; the node goes at the
    slower of the two. ``seconds_preprocess_in_tasks`` is the same with the preprocessing in the CPU
    tasks (the actor then only feeds the GPU): what :mod:`robustness.ray_engine` does for GPU actors.

    Returns ``{"items", "seconds", "bound"}`` (and ``"seconds_preprocess_in_tasks"`` with a GPU).
    """
    from robustness import DISTORTIONS

    cost = {row["stage"].split(" (")[0]: row["cpu_s_per_item"] for row in rows}
    inference = next(row["cpu_s_per_item"] for row in rows if row["stage"].startswith("inference"))
    conditions = 1 + sum(len(spec.levels) for spec in DISTORTIONS.values())
    distort_per_image = cost["decode"] + sum(
        len(spec.levels) * cost[f"distort {name}"] for name, spec in DISTORTIONS.items()
    )
    items = images * conditions
    if gpu_rate is None:
        total = images * (distort_per_image + conditions * (cost["preprocess"] + inference))
        return {"items": items, "seconds": total / (nodes * cores), "bound": "CPU"}
    distort_per_item = distort_per_image / conditions
    tasks_rate = (cores - 1) / distort_per_item
    actor_rate = 1 / (cost["preprocess"] + 1 / gpu_rate)
    rate = min(tasks_rate, actor_rate)
    moved_rate = min((cores - 1) / (distort_per_item + cost["preprocess"]), gpu_rate)
    return {
        "items": items,
        "seconds": items / (nodes * rate),
        "bound": "actor preprocessing" if actor_rate < tasks_rate else "distortion (CPU tasks)",
        "seconds_preprocess_in_tasks": items / (nodes * moved_rate),
    }


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="image folder (default: the shared ImageNet images)")
    parser.add_argument("--images", type=int, default=16, help="images to time (default %(default)s)")
    parser.add_argument("--model", default="efficientnet_lite0", help="model to time (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch size (default %(default)s)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--rows", default=None, help="skip the measuring: read the rows from this JSON file")
    parser.add_argument("--gpu-rate", type=float, default=1500.0,
                        help="ASSUMED model images/s of one GPU for the estimate (default %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rows:
        rows = json.loads(Path(args.rows).read_text(encoding="utf-8"))
    else:
        rows = measure(args.data, args.images, args.model, args.batch_size)
    print("| stage | items | CPU ms per item | wall ms per item |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['stage']} | {row['items']} | {1000 * row['cpu_s_per_item']:.1f} | "
              f"{1000 * row['wall_s_per_item']:.1f} |")  # fmt: skip
    print(f"\n50,000 images x every paper condition; nodes of 16 cores; GPU rate {args.gpu_rate:g} img/s ASSUMED\n")
    print(
        "| nodes | no GPU | one GPU each, preprocessing in the actor (bound) | one GPU each, preprocessing in the tasks |"
    )
    print("| --- | --- | --- | --- |")
    for nodes in (1, 4, 16):
        cpu = estimate(rows, images=50_000, nodes=nodes, cores=16, gpu_rate=None)
        gpu = estimate(rows, images=50_000, nodes=nodes, cores=16, gpu_rate=args.gpu_rate)
        print(f"| {nodes} | {_hours(cpu['seconds'])} | {_hours(gpu['seconds'])} ({gpu['bound']}) | "
              f"{_hours(gpu['seconds_preprocess_in_tasks'])} |")  # fmt: skip
    if args.json:
        from robustness._io import atomic_write

        atomic_write(args.json, (json.dumps(rows, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
