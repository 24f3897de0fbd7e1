"""Agreement of the device-side pipeline with the reference (Pillow / numpy) pipeline, per image.

Run from the repository root::

    nice python3 benchmarks/pipeline_agreement.py [--model efficientnet_lite0] [--images N] [--data DIR]
        [--device cpu] [--batch-size 32] [--distortion NAME ...] [--json FILE]

Evaluates the model twice on the same images, ``evaluate(..., pipeline="reference")`` and
``evaluate(..., pipeline="device")`` (no cache), clean and at each ``--distortion``'s paper levels
(default: clean only), and prints one Markdown row per condition: n, top-1 and top-5 accuracy of each
path, their differences (device minus reference, points), the per-image top-1 agreement (the same
predicted class), the images whose top-1 correctness differs (reference right / device right:
McNemar's discordant pairs ``b`` / ``c``) and the two-sided exact McNemar p-value
(``2 min(P(X >= b), P(X >= c))``, ``X ~ Binomial(b + c, 1/2)``, capped at 1). Seconds per path are
printed for information (machine load moves them).

``--pixel-images N`` (no model run) instead measures, on the first N images at native size, the
largest difference in grey levels (0-255) and the share of values that differ between
:mod:`robustness.device_pipeline` and the reference: blur at sigma 1, 3, 9 and contrast at 0.5 against
``distort()``, and the model's preprocessing against :meth:`robustness.Preprocessing.__call__`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustness import DISTORTIONS, evaluate, load_dataset, load_model
from robustness.stats import correct, mcnemar


def agreement_rows(reference: list, device: list) -> list[dict]:
    """One dict per condition comparing two lists of :class:`robustness.evaluation.ConditionResult`
    over the same images (same order): accuracies, differences in points, top-1 agreement, McNemar."""
    rows = []
    for r, d in zip(reference, device):
        if r.image_ids != d.image_ids:
            raise ValueError(f"{r.distortion} {r.level}: the two runs cover different images")
        right_r, right_d = correct(r.predictions, r.labels, "top1"), correct(d.predictions, d.labels, "top1")
        worse, better = mcnemar(right_r, right_d), mcnemar(right_d, right_r)
        rows.append(
            {
                "distortion": r.distortion,
                "level": r.level,
                "n": r.n,
                "top1_reference": r.top1,
                "top1_device": d.top1,
                "top5_reference": r.top5,
                "top5_device": d.top5,
                "top1_difference_points": 100 * (d.top1 - r.top1),
                "top5_difference_points": 100 * (d.top5 - r.top5),
                "top1_agreement": float((r.predictions[:, 0] == d.predictions[:, 0]).mean()),
                "top5_same_order": float((r.predictions == d.predictions).all(axis=1).mean()),
                "reference_right_device_wrong": worse.b,
                "device_right_reference_wrong": worse.c,
                "mcnemar_two_sided_p": min(1.0, 2 * min(worse.p_value, better.p_value)),
            }
        )
    return rows


def pixel_rows(dataset, count: int, preprocessing) -> list[dict]:
    """Per operation: ``max`` difference in grey levels and ``share`` of differing values over the
    first ``count`` images of ``dataset`` (device pipeline on the CPU against the reference)."""
    import torch

    from robustness import device_pipeline as dp
    from robustness import distort

    operations = {f"blur {s:g}": ("blur", s) for s in (1, 3, 9)} | {"contrast 0.5": ("contrast", 0.5)}
    stats = {name: [0.0, 0, 0] for name in [*operations, "preprocessing"]}  # max, differing, total
    scale = torch.tensor(preprocessing.std).view(3, 1, 1)
    for index in range(min(count, len(dataset))):
        image = dataset.load(index)[0]
        tensor = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32)
        for name, (distortion, level) in operations.items():
            reference = torch.from_numpy(distort(image, distortion, level)).permute(2, 0, 1).to(torch.float32)
            device = dp.gaussian_blur(tensor, level) if distortion == "blur" else dp.contrast(tensor, level)
            difference = (device - reference).abs()
            entry = stats[name]
            entry[0] = max(entry[0], float(difference.max()))
            entry[1] += int((difference > 0).sum())
            entry[2] += difference.numel()
        difference = ((dp.preprocess(tensor, preprocessing) - preprocessing(image)) * scale).abs()
        entry = stats["preprocessing"]
        entry[0] = max(entry[0], float(difference.max()))
        entry[1] += int((difference > 1e-3).sum())
        entry[2] += difference.numel()
    return [{"operation": k, "max": v[0], "share": v[1] / max(v[2], 1)} for k, v in stats.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--data", default=None)
    parser.add_argument("--images", type=int, default=None, help="first N images (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--distortion", action="append", choices=list(DISTORTIONS), help="paper levels (repeatable)")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    parser.add_argument("--pixel-images", type=int, default=0, help="measure pixel differences on N images instead")
    args = parser.parse_args(argv)

    model = load_model(args.model)
    dataset = load_dataset(args.data, limit=args.images)
    if args.pixel_images:
        rows = pixel_rows(dataset, args.pixel_images, model.preprocessing)
        print(f"# {min(args.pixel_images, len(dataset))} images, preprocessing {model.preprocessing.describe()}")
        print("| operation | max difference (grey levels) | values that differ % |\n| --- | --- | --- |")
        for row in rows:
            print(f"| {row['operation']} | {row['max']:.3g} | {100 * row['share']:.4f} |")
        if args.json:
            Path(args.json).write_text(json.dumps({"pixels": rows}, indent=1) + "\n")
        return 0
    results, seconds = {}, {}
    for pipeline in ("reference", "device"):
        start = time.perf_counter()
        results[pipeline] = evaluate(
            model,
            dataset,
            args.distortion or [],
            clean=True,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=args.device,
            pipeline=pipeline,
        )
        seconds[pipeline] = time.perf_counter() - start
    rows = agreement_rows(results["reference"], results["device"])
    print(
        f"# {model.name}, {len(dataset)} images from {dataset.root}, device {args.device}, batch {args.batch_size}; "
        f"seconds: reference {seconds['reference']:.0f}, device {seconds['device']:.0f}"
    )
    print(
        "| condition | n | top-1 ref / dev % | top-5 ref / dev % | top-1 diff (pts) | top-5 diff (pts) "
        "| top-1 agreement % | ref-only right / dev-only right | McNemar p |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        condition = "clean" if row["distortion"] == "clean" else f"{row['distortion']} {row['level']:g}"
        print(
            f"| {condition} | {row['n']} | {100 * row['top1_reference']:.2f} / {100 * row['top1_device']:.2f} "
            f"| {100 * row['top5_reference']:.2f} / {100 * row['top5_device']:.2f} "
            f"| {row['top1_difference_points']:+.2f} | {row['top5_difference_points']:+.2f} "
            f"| {100 * row['top1_agreement']:.2f} | {row['reference_right_device_wrong']} / "
            f"{row['device_right_reference_wrong']} | {row['mcnemar_two_sided_p']:.3g} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": seconds, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
