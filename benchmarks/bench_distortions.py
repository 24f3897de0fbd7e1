"""Per-image cost of each distortion at its mildest and harshest paper level, beside torchvision.

Run from the repository root::

    python3 benchmarks/bench_distortions.py --images 16 [--data DIR] [--repeats 3]

On full-size shared ImageNet validation images (native resolution, e.g. 500x375), in one process,
each operation is timed per image (best of ``--repeats`` calls, interleaving ours and the
reference so machine load hits both alike) and the per-image times are averaged. Comparisons:

* blur: ``torchvision.transforms.v2.functional.gaussian_blur`` with the same sigma and window
  (kernel size ``2 ceil(2 sigma) + 1``) on the uint8 ``(3, H, W)`` tensor.
* noise: ``v2.GaussianNoise(sigma=std / 255)`` (clipping on), with the uint8 <-> float32
  conversions a uint8 pipeline needs (``v2.functional.to_dtype(..., scale=True)``).
* jpeg: ``v2.JPEG(quality)`` (torchvision's libjpeg encode + decode) on the uint8 tensor.
* contrast: torchvision has no blend toward 128 (``adjust_contrast`` blends toward the image's
  mean grey), so the reference is the same formula in torch: ``(1 - w) x + 128 w``, rounded.
* jpeg2000: no torchvision equivalent; the table gives the time and the average encodes per image
  over ``--jpeg2000-images`` images (48 by default: the encode count varies from image to image).

Prints a Markdown table (ratio = ours / reference; below 1 means we are faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustness import DISTORTIONS, distort, load_image
from robustness.distortions import jpeg2000_with_psnr


def tv_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    size = 2 * int(np.ceil(2 * sigma)) + 1
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    return tvf.gaussian_blur(tensor, [size, size], [float(sigma)] * 2).permute(1, 2, 0).numpy()


def tv_noise(image: np.ndarray, std: float) -> np.ndarray:
    tensor = tvf.to_dtype(torch.from_numpy(image).permute(2, 0, 1), torch.float32, scale=True)
    noisy = v2.GaussianNoise(sigma=std / 255.0, clip=True)(tensor)
    return tvf.to_dtype(noisy, torch.uint8, scale=True).permute(1, 2, 0).numpy()


def tv_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    return v2.JPEG(quality=int(quality))(tensor).permute(1, 2, 0).numpy()


def torch_contrast(image: np.ndarray, weight: float) -> np.ndarray:
    tensor = torch.from_numpy(image).float()
    return ((1 - weight) * tensor + 128 * weight).round_().clamp_(0, 255).to(torch.uint8).numpy()


REFERENCES = {
    "blur": ("torchvision gaussian_blur", tv_blur),
    "noise": ("torchvision v2.GaussianNoise", tv_noise),
    "jpeg": ("torchvision v2.JPEG", tv_jpeg),
    "contrast": ("same formula in torch", torch_contrast),
}


def best_time(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("ROBUSTNESS_DATA", "../shared/data/imagenet-val-1024"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--jpeg2000-images", type=int, default=48, help="images for the JPEG 2000 rows (encodes vary per image)"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: our numpy/scipy/Pillow paths are single-threaded, "
        "and torch's OpenMP pool is erratic on a loaded machine)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)

    paths = sorted(Path(args.data).glob("*/*.JPEG"))
    if not paths:
        parser.error(f"no <wnid>/*.JPEG images under {args.data}")
    step = max(1, len(paths) // args.images)
    images = [load_image(p) for p in paths[::step][: args.images]]
    j2k_step = max(1, len(paths) // args.jpeg2000_images)
    j2k_images = [load_image(p) for p in paths[::j2k_step][: args.jpeg2000_images]]
    sizes = sorted({f"{i.shape[1]}x{i.shape[0]}" for i in images})
    print(
        f"{len(images)} images ({', '.join(sizes[:4])}{', ...' if len(sizes) > 4 else ''}); "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats} per image\n"
    )
    print("| distortion | level | ours (ms/image) | reference | reference (ms/image) | ratio |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for name, spec in DISTORTIONS.items():
        for level in (spec.levels[0], spec.levels[-1]):
            level_id = spec.level_id(level)
            if name == "jpeg2000":
                encodes, ours = [], []
                for image in j2k_images:
                    start = time.perf_counter()
                    encodes.append(jpeg2000_with_psnr(image, level)[2])
                    ours.append(time.perf_counter() - start)
                print(
                    f"| {name} | {level_id} | {1e3 * np.mean(ours):.1f} | (none; encodes per image) | "
                    f"{np.mean(encodes):.2f} (max {max(encodes)}, {len(j2k_images)} images) | - |"
                )
                continue
            label, reference = REFERENCES[name]
            ours, theirs = [], []
            for image in images:
                # the lambdas run inside best_time, in this iteration: late binding cannot bite
                ours.append(best_time(lambda: distort(image, name, level, seed=1), args.repeats))  # noqa: B023
                theirs.append(best_time(lambda: reference(image, level), args.repeats))  # noqa: B023
            ratio = np.mean(ours) / np.mean(theirs)
            print(
                f"| {name} | {level_id} | {1e3 * np.mean(ours):.2f} | {label} | {1e3 * np.mean(theirs):.2f} | {ratio:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
