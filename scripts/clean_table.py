"""Print the README's clean-accuracy table from results/clean/<model>.json (written by
scripts/measure_clean.sh through `robustness run --clean-only`) and the registry's published values.

Within sampling error: the published value lies inside the 95% Wilson interval of the measurement.
Usage: python3 scripts/clean_table.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustness.models import MODELS, list_models
from robustness.stats import wilson_interval


def row(name: str) -> str:
    spec = MODELS[name]
    published = spec.published or {}
    path = Path("results/clean") / f"{name}.json"
    pub = lambda m: f"{published[m]:.1f}" if m in published else "—"  # noqa: E731
    if not path.is_file():
        offline = name in ("alexnet", "vgg16", "googlenet", "resnet50", "vgg_cnn_s")
        why = "not measured: no weights offline here" if offline else "not measured yet"
        return f"| `{name}` | {why} | | | {pub('top1')} | {pub('top5')} | |"
    record = next(r for r in json.loads(path.read_text()) if r["distortion"] == "clean")
    n, cells, verdicts = record["n"], [], []
    for metric in ("top1", "top5"):
        value = record[metric]
        low, high = wilson_interval(round(value * n), n)
        cells.append(f"{100 * value:.1f} ({100 * low:.1f}–{100 * high:.1f})")
        if metric in published:
            verdicts.append(
                f"{metric.replace('top', 'top-')} {'yes' if low <= published[metric] / 100 <= high else 'NO'}"
            )
    return (
        f"| `{name}` | {cells[0]} | {cells[1]} | {n} | {pub('top1')} | {pub('top5')} | {', '.join(verdicts) or '—'} |"
    )


def main() -> int:
    """Print the table, one row per registered model."""
    print(
        "| model | clean top-1 % (95% CI) | clean top-5 % (95% CI) | n | published top-1 % | published top-5 % | published inside CI |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in list_models():
        print(row(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
