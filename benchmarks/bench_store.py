"""JPEG 2000 distortion time for a first model against a second one that reuses the distortion store.

Run from the repository root::

    python3 benchmarks/bench_store.py --images 24 [--data DIR] [--engine]

On full-size shared ImageNet validation images (native resolution), at the paper's JPEG 2000 PSNR
levels (20-40 dB in steps of 2), in one process:

* **no store**: :func:`robustness.distortions.distort_with_info`, what every model paid before;
* **first model**: :meth:`robustness.distortion_store.DistortionStore.distort_with_info` on an
  empty store (the rate search, plus writing each entry);
* **second model**: the same calls on the filled store (read, check, decode), as a second model,
  run or release does.

Each is one pass over every (image, level), timed as a whole (wall clock, and this process's CPU
time, the steadier figure on a shared machine); the outputs of the three passes are
checked to be bit-identical. ``--engine`` also times ``robustness.evaluate`` end to end for two
small random-weight models (model cost a few ms per image) with a prediction cache in a temporary
folder, so the second model reads the store the first one filled (``num_workers=0``, CPU).

Prints a Markdown table. The goal (issue 12) is second <= 25% of first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pass(images, levels, function) -> tuple[tuple[float, float], list]:
    """``((wall s, CPU s of this process), outputs)`` of ``function`` over every (image, level)."""
    outputs = []
    start, cpu = time.perf_counter(), time.process_time()
    for image in images:
        for level in levels:
            outputs.append(function(image, level))
    return (time.perf_counter() - start, time.process_time() - cpu), outputs


def _engine(data: str, count: int, levels) -> list[tuple[float, float]]:
    """(wall s, CPU s) of evaluate() for a first and a second model (store filled by the first), and
    for a third model with the store emptied again (what every model cost before the store)."""
    import shutil

    import torch

    from robustness import Classifier, Preprocessing, evaluate, load_dataset
    from robustness.distortion_store import DistortionStore

    class Net(torch.nn.Module):
        def __init__(self, seed: int):
            super().__init__()
            generator = torch.Generator().manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
            self.fc = torch.nn.Linear(8 * 4, 1000)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator))

        def forward(self, x):
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1))

    dataset = load_dataset(data).limit(count)
    conditions = {"jpeg2000": list(levels)}
    times = []
    with tempfile.TemporaryDirectory() as cache:
        for seed, name in ((0, "first"), (1, "second"), (2, "third")):
            if name == "third":
                shutil.rmtree(DistortionStore.beside(cache).root)
            model = Classifier(Net(seed), Preprocessing(36, 32, "bilinear"), f"bench-{name}")
            start, cpu = time.perf_counter(), time.process_time()
            evaluate(model, dataset, conditions, clean=False, num_workers=0, device="cpu", cache=cache)
            times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def main(argv: list[str] | None = None) -> int:
    from robustness import DISTORTIONS, load_dataset
    from robustness.distortion_store import DistortionStore
    from robustness.distortions import distort_with_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("ROBUSTNESS_DATA", "../shared/data/imagenet-val-1024"))
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--engine", action="store_true", help="also time evaluate() for two models")
    args = parser.parse_args(argv)

    levels = DISTORTIONS["jpeg2000"].levels
    dataset = load_dataset(args.data).limit(args.images)
    images = [dataset.load(i)[0] for i in range(len(dataset))]
    pairs = len(images) * len(levels)
    with tempfile.TemporaryDirectory() as folder:
        store = DistortionStore(folder)
        plain, reference = _pass(images, levels, lambda image, level: distort_with_info(image, "jpeg2000", level))
        first, stored = _pass(images, levels, lambda image, level: store.distort_with_info(image, "jpeg2000", level))
        second, reused = _pass(images, levels, lambda image, level: store.distort_with_info(image, "jpeg2000", level))
        size = store.size()
        sizes = {
            level: np.mean([store.path(store.key(image, "jpeg2000", level)).stat().st_size for image in images])
            for level in levels
        }
    for (a, a_info), (b, b_info), (c, c_info) in zip(reference, stored, reused):
        if not (np.array_equal(a, b) and np.array_equal(a, c) and a_info == b_info == c_info):
            raise SystemExit("the stored outputs differ from distort_with_info: a bug")
    print(f"{len(images)} images x {len(levels)} JPEG 2000 levels ({pairs} pairs), store {size.describe()}")
    print(
        "mean entry size by PSNR level: " + ", ".join(f"{level:g} dB {b / 1000:.1f} KB" for level, b in sizes.items())
    )
    print()
    print("| pass | wall s | CPU s | CPU ms per (image, level) | share of first (wall / CPU) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = (("no store", plain), ("first model (encode + store)", first), ("second model (reuse)", second))
    for name, (wall, cpu) in rows:
        share = f"{wall / first[0]:.1%} / {cpu / first[1]:.1%}"
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {1000 * cpu / pairs:.1f} | {share} |")
    if args.engine:
        runs = _engine(args.data, args.images, levels)
        names = ("first model (store empty)", "second model (store filled)", "third model, store emptied again")
        print()
        print("| evaluate(), JPEG 2000 levels only, small model | wall s | CPU s | share of first (wall / CPU) |")
        print("| --- | ---: | ---: | ---: |")
        for name, (wall, cpu) in zip(names, runs):
            print(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / runs[0][0]:.1%} / {cpu / runs[0][1]:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
