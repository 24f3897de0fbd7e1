"""Pipeline efficiency: end-to-end evaluated images/s divided by model-only images/s, per distortion.

    python3 benchmarks/bench_pipeline.py --model efficientnet_lite0 --images 32 --batch-size 32

* **model-only**: the model's forward pass on already preprocessed batches of ``--batch-size``
  (on the GPU when present, synchronised), i.e. the ceiling the engine can reach.
* **end-to-end**: :func:`robustness.evaluate` without the cache on ``--images`` images at all the
  paper's levels of one distortion (``images x levels`` evaluated images): decode, distort,
  preprocess in DataLoader workers, forward, top-5.

Both are measured in the same process, interleaved (model-only before and after each end-to-end run,
averaged), so a busy machine slows both alike; ``--repeats`` repeats the whole table and reports
the median ratio. CPU seconds (this process and its reaped workers) per image are printed too: on
a shared machine ``model cpu / end-to-end cpu`` estimates the ratio an idle machine would give.
Also measures the cache: first run vs unchanged re-run of the same evaluation (``--rerun``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from robustness import DISTORTIONS, evaluate, load_dataset, load_model
from robustness.cache import PredictionCache


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


def end_to_end(model, dataset, name: str, levels, args) -> tuple[float, float, int]:
    """(images/s, CPU s per image, images) of evaluate() without the cache."""
    cpu, start = cpu_seconds(), time.perf_counter()
    evaluate(
        model,
        dataset,
        {name: levels},
        clean=False,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        cache=None,
    )
    wall = time.perf_counter() - start
    count = len(dataset) * len(levels)
    return count / wall, (cpu_seconds() - cpu) / count, count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--data", default=None)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--jpeg2000-images", type=int, default=None, help="images for JPEG 2000 (default --images)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the main process")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--distortion", action="append", choices=list(DISTORTIONS))
    parser.add_argument("--repeats", type=int, default=1, help="0 skips the table (e.g. with --rerun)")
    parser.add_argument(
        "--rerun", action="store_true", help="also time a first run vs an unchanged re-run with the cache"
    )
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model).to(args.device).eval()
    dataset = load_dataset(args.data, limit=args.images)
    batch = torch.stack([model.preprocess(dataset.load(i % len(dataset))[0]) for i in range(args.batch_size)])
    batch = batch.to(args.device)
    print(
        f"# {model.name}, batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}, "
        f"workers {args.workers if args.workers is not None else 'default'}, cpus {os.cpu_count()}"
    )
    print(
        f"{'distortion':<10} {'images':>6} {'e2e img/s':>10} {'model img/s':>11} {'ratio':>6} "
        f"{'e2e cpu ms/img':>15} {'model cpu ms/img':>17} {'cpu ratio':>9}"
    )
    rows = []
    for name in (args.distortion or list(DISTORTIONS)) if args.repeats > 0 else []:
        levels = list(DISTORTIONS[name].levels)
        data = dataset if name != "jpeg2000" or not args.jpeg2000_images else dataset.limit(args.jpeg2000_images)
        ratios, cpu_ratios, measured = [], [], []
        for _ in range(args.repeats):
            before = model_only(model, batch, len(data) * len(levels), args.device)
            e2e, e2e_cpu, count = end_to_end(model, data, name, levels, args)
            after = model_only(model, batch, len(data) * len(levels), args.device)
            model_rate = (before[0] + after[0]) / 2
            model_cpu = (before[1] + after[1]) / 2
            ratios.append(e2e / model_rate)
            cpu_ratios.append(model_cpu / e2e_cpu)
            measured.append((e2e, model_rate, e2e_cpu, model_cpu))
        k = ratios.index(statistics.median_low(ratios))
        e2e, model_rate, e2e_cpu, model_cpu = measured[k]
        row = {
            "distortion": name,
            "images": count,
            "e2e_img_s": e2e,
            "model_img_s": model_rate,
            "ratio": ratios[k],
            "e2e_cpu_ms": 1000 * e2e_cpu,
            "model_cpu_ms": 1000 * model_cpu,
            "cpu_ratio": statistics.median(cpu_ratios),
            "all_ratios": ratios,
        }
        rows.append(row)
        print(
            f"{name:<10} {count:>6} {e2e:>10.1f} {model_rate:>11.1f} {ratios[k]:>6.2f} {1000 * e2e_cpu:>15.1f} "
            f"{1000 * model_cpu:>17.1f} {row['cpu_ratio']:>9.2f}",
            flush=True,
        )
    if args.rerun:
        with tempfile.TemporaryDirectory() as folder:
            cache = PredictionCache(folder)
            names = args.distortion or list(DISTORTIONS)
            seconds = []
            for _ in range(2):  # the first run fills the cache, the second is served from it
                start = time.perf_counter()
                evaluate(
                    model,
                    dataset,
                    names,
                    batch_size=args.batch_size,
                    num_workers=args.workers,
                    device=args.device,
                    cache=cache,
                )
                seconds.append(time.perf_counter() - start)
            first, second = seconds
        print(
            f"cache: first run {first:.1f} s, unchanged re-run {second:.2f} s ({100 * second / first:.2f}% of the first)"
        )
        rows.append({"rerun_first_s": first, "rerun_second_s": second})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
