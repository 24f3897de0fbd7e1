"""Inside the network: how blur and noise change every convolutional layer's feature maps.

Dodge & Karam (2016, Sec. IV-B, Figs. 4-5) show VGG-16's first and last convolutional layers: blur
changes the first layer's responses little and the last layer's much, while noise excites many
first-layer filters and the disturbance propagates to the last layer. This module measures that
for any registered model, as a curve over depth.

What is captured: the output of every ``torch.nn.Conv2d`` (depthwise and 1x1 included), through
forward hooks, in execution order; i.e. the raw convolution output before batch norm and activation.
Layer 1 is the first convolution to run, layer L the last.

Per layer, clean image ``c`` vs distorted image ``d`` (both given the model's own preprocessing after
distorting at native resolution, exactly as in :func:`robustness.evaluate`), with ``F`` the feature
map of shape ``(C, h, w)``:

* **relative L2 change** ``||F_d - F_c||_2 / ||F_c||_2`` over the whole map (dimensionless; 0 = unchanged,
  1 = a change as large as the clean response itself);
* **changed channels**: the share of channels ``k`` whose mean absolute response
  ``a_k = mean_{h,w} |F_k|`` moves by more than :data:`CHANGE_THRESHOLD` (25%) of its clean value,
  ``|a_k(d) - a_k(c)| > 0.25 * max(a_k(c), 0.1 * mean_k a_k(c))`` (the floor keeps near-silent channels
  from counting on noise-level wiggles); also split into the share that went **up** and **down**.

With several images the numbers are means over images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .distortions import DISTORTIONS, distort, get_distortion

__all__ = [
    "CHANGE_THRESHOLD",
    "LayerChange",
    "conv_layers",
    "capture_conv_outputs",
    "layer_changes",
    "activation_study",
    "plot_feature_maps",
    "plot_depth",
    "format_layer_table",
    "main_activations",
]

#: A channel counts as changed when its mean absolute response moves by more than this fraction of its clean value.
CHANGE_THRESHOLD = 0.25
#: Floor of the per-channel reference, as a fraction of the layer's mean clean channel response.
CHANNEL_FLOOR = 0.1


@dataclass
class LayerChange:
    """One conv layer under one distortion level (means over images).

    Attributes:
        index: 1-based position in execution order.
        name: module name in the network (``net.`` prefix dropped).
        kind: e.g. ``3x3/2 dw`` (kernel, stride, depthwise).
        channels: output channels C.
        size: spatial size ``h x w`` of the map.
        rel_l2: ``||F_d - F_c|| / ||F_c||`` (dimensionless).
        changed: share of channels changed (fraction in [0, 1]), see the module docstring.
        up, down: shares of channels whose response rose / fell by more than the threshold.
    """

    index: int
    name: str
    kind: str
    channels: int
    size: str
    rel_l2: float
    changed: float
    up: float
    down: float


def conv_layers(net: torch.nn.Module) -> list[tuple[str, torch.nn.Conv2d]]:
    """All ``Conv2d`` modules of ``net`` as ``(name, module)``, in registration order."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]


def _kind(m: torch.nn.Conv2d) -> str:
    k, s = m.kernel_size, m.stride
    text = f"{k[0]}x{k[1]}" + (f"/{s[0]}" if s[0] != 1 else "")
    if m.groups > 1 and m.groups == m.in_channels:
        text += " dw"
    elif m.groups > 1:
        text += f" g{m.groups}"
    return text


def capture_conv_outputs(
    model: torch.nn.Module, batch: torch.Tensor
) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor]:
    """Run ``batch`` through ``model`` with a forward hook on every Conv2d.

    Args:
        model: a :class:`robustness.models.Classifier` (or any module containing Conv2d layers).
        batch: float32 ``(N, 3, H, W)``, already preprocessed.

    Returns:
        ``(order, maps, logits)``: layer names in execution order; ``{name: float32 (N, C, h, w)}`` on
        the CPU; the model output. A layer run twice keeps its first output.

    Raises:
        ValueError: the model has no Conv2d layer (e.g. a TorchScript module, whose submodules cannot be hooked).
    """
    layers = conv_layers(model)
    if not layers:
        raise ValueError(
            f"{getattr(model, 'name', type(model).__name__)} has no torch.nn.Conv2d layers to hook "
            "(TorchScript and quantized models are not supported)"
        )
    order: list[str] = []
    maps: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module, inputs, output):
            if name not in maps:
                order.append(name)
                maps[name] = output.detach().float().cpu()

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in layers]
    try:
        with torch.inference_mode():
            logits = model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return order, maps, logits


def layer_changes(clean: torch.Tensor, distorted: torch.Tensor) -> tuple[float, float, float, float]:
    """Compare one layer's maps for one image.

    Args:
        clean, distorted: float ``(C, h, w)`` feature maps.

    Returns:
        ``(rel_l2, changed, up, down)``, see the module docstring (fractions; ``rel_l2`` is ``inf``
        when the clean map is all zero and the distorted one is not).
    """
    clean = clean.double()
    distorted = distorted.double()
    norm = float(clean.norm())
    diff = float((distorted - clean).norm())
    rel = diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
    a_clean = clean.abs().mean(dim=(1, 2))
    a_dist = distorted.abs().mean(dim=(1, 2))
    reference = torch.clamp(a_clean, min=CHANNEL_FLOOR * float(a_clean.mean()))
    delta = a_dist - a_clean
    up = delta > CHANGE_THRESHOLD * reference
    down = delta < -CHANGE_THRESHOLD * reference
    if float(a_clean.mean()) == 0:
        up = delta > 0
        down = torch.zeros_like(up)
    channels = clean.shape[0]
    return rel, float((up | down).sum()) / channels, float(up.sum()) / channels, float(down.sum()) / channels


def _device_of(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def activation_study(
    model,
    images: Sequence[np.ndarray],
    distortion: str,
    levels: Sequence[float],
    *,
    image_ids: Sequence[str] | None = None,
    seed: int = 0,
) -> dict:
    """Per-layer changes for each level, averaged over ``images``.

    Args:
        model: a :class:`robustness.models.Classifier` (its ``preprocessing`` is applied).
        images: ``uint8 (H, W, 3)`` RGB images at native resolution.
        distortion: a name in :data:`robustness.DISTORTIONS`.
        levels: levels in the distortion's unit.
        image_ids: one id per image (default ``"0"``, ``"1"``, ...); with ``seed`` they seed the noise exactly as
            :func:`robustness.evaluate` does (:func:`robustness.evaluation.image_seed`).
        seed: base noise seed.

    Returns:
        ``{"order": [layer names], "layers": {level: [LayerChange, ...]}, "first": {...}, "last": {...}}``
        where ``first``/``last`` hold the first image's feature maps of the first / last layer:
        ``{"name", "clean": (C, h, w) array, level: (C, h, w) array}``, plus ``"inputs"``:
        ``{"clean": image, level: distorted image}`` for the first image, and ``"top1"``:
        ``{"clean": [class per image], level: [...]}``.
    """
    spec = get_distortion(distortion)
    for level in levels:
        spec.check_level(level)
    if not images:
        raise ValueError("activation_study needs at least one image")
    from .evaluation import image_seed

    image_ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(images))]
    sums: dict[float, list[np.ndarray]] = {}
    out: dict = {"layers": {}, "first": {}, "last": {}, "inputs": {}, "top1": {"clean": []}}
    kinds: dict[str, tuple[str, int, str]] = {}
    order: list[str] = []
    modules = dict(conv_layers(model))
    for i, (image, image_id) in enumerate(zip(images, image_ids)):
        variants = [image] + [
            distort(image, distortion, level, seed=image_seed(seed, image_id, distortion, level)) for level in levels
        ]
        batch = torch.stack([model.preprocessing(v) for v in variants]).to(_device_of(model))
        order, maps, logits = capture_conv_outputs(model, batch)
        top1 = logits.argmax(dim=1).tolist()
        out["top1"]["clean"].append(top1[0])
        for j, level in enumerate(levels, start=1):
            out["top1"].setdefault(level, []).append(top1[j])
            rows = np.array([layer_changes(maps[name][0], maps[name][j]) for name in order])
            sums.setdefault(level, []).append(rows)
        if i == 0:
            for key, name in (("first", order[0]), ("last", order[-1])):
                out[key] = {"name": name, "clean": maps[name][0].numpy()}
                for j, level in enumerate(levels, start=1):
                    out[key][level] = maps[name][j].numpy()
            out["inputs"] = {"clean": variants[0], **{level: v for level, v in zip(levels, variants[1:])}}
            for name in order:
                m = modules[name]
                shape = maps[name].shape
                kinds[name] = (_kind(m), int(shape[1]), f"{shape[2]}x{shape[3]}")
    for level in levels:
        mean = np.mean(np.stack(sums[level]), axis=0)
        out["layers"][level] = [
            LayerChange(k + 1, name.removeprefix("net."), *kinds[name], *(float(v) for v in mean[k]))
            for k, name in enumerate(order)
        ]
    out["order"] = [name.removeprefix("net.") for name in order]
    out["distortion"] = distortion
    out["levels"] = list(levels)
    out["images"] = len(images)
    return out


def format_layer_table(study: dict) -> str:
    """Plain-text table: one row per conv layer, per level ``relL2`` and ``chg%`` columns."""
    levels = study["levels"]
    spec = DISTORTIONS[study["distortion"]]
    head = f"{'#':>3} {'layer':<34} {'kind':<9} {'C':>5} {'h x w':>8}"
    for level in levels:
        head += f" | {spec.level_id(level):>14}"
    sub = f"{'':>3} {'':<34} {'':<9} {'':>5} {'':>8}" + "".join(f" | {'relL2':>6} {'chg%':>6} " for _ in levels)
    lines = [head, sub, "-" * len(head)]
    first_level = study["layers"][levels[0]]
    for k, row in enumerate(first_level):
        line = f"{row.index:>3} {row.name[-34:]:<34} {row.kind:<9} {row.channels:>5} {row.size:>8}"
        for level in levels:
            r = study["layers"][level][k]
            line += f" | {r.rel_l2:6.3f} {100 * r.changed:5.1f}% "
        lines.append(line)
    return "\n".join(lines)


def _mosaic(maps: np.ndarray, reference: np.ndarray, channels: Sequence[int], cols: int = 4) -> np.ndarray:
    """Tile ``channels`` of ``maps`` (C, h, w) into one image, each channel scaled to [0, 1] with the
    clean ``reference`` map's min/max (so a brighter tile means a stronger response than clean); 1-px gaps."""
    h, w = maps.shape[1:]
    rows = math.ceil(len(channels) / cols)
    tile = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for n, k in enumerate(channels):
        lo, hi = float(reference[k].min()), float(reference[k].max())
        scaled = (maps[k] - lo) / (hi - lo) if hi > lo else np.zeros_like(maps[k])
        r, c = divmod(n, cols)
        tile[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = np.clip(scaled, 0, 1)
    return tile


def _save(fig, path: str | os.PathLike, dpi: int = 80) -> None:
    from .report import write_figure

    write_figure(fig, path, dpi=dpi)  # a pyplot-free Figure: nothing to close


def plot_feature_maps(study: dict, path: str | os.PathLike, *, channels: int = 16, title: str = "") -> None:
    """The paper's Figs. 4-5 for one image: row 1 the input at each level, row 2 the first conv layer,
    row 3 the last, each a grid of ``channels`` channels (the most active ones on the clean image),
    clean and each level side by side. Written atomically as PNG."""
    from matplotlib.figure import Figure  # the object API: no pyplot, the caller's backend untouched

    levels = study["levels"]
    spec = DISTORTIONS[study["distortion"]]
    columns = ["clean"] + list(levels)
    fig = Figure(figsize=(2.3 * len(columns), 7.2))
    axes = fig.subplots(3, len(columns), squeeze=False)
    for row, key in enumerate(("inputs", "first", "last")):
        block = study[key]
        if key != "inputs":
            reference = block["clean"]
            strongest = np.argsort(-np.abs(reference).mean(axis=(1, 2)))[:channels]
            strongest = sorted(int(k) for k in strongest)
            cols = int(math.ceil(math.sqrt(len(strongest))))
        for col, level in enumerate(columns):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if key == "inputs":
                ax.imshow(block[level])
                label = "clean" if level == "clean" else spec.level_id(level)
                ax.set_title(label, fontsize=9)
            else:
                ax.imshow(
                    _mosaic(block[level], reference, strongest, cols),
                    cmap="viridis",
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
                if level != "clean":
                    rows_ = study["layers"][level]
                    r = rows_[0] if key == "first" else rows_[-1]
                    mean = f" (mean of {study['images']} images)" if study.get("images", 1) > 1 else ""
                    ax.set_xlabel(f"relL2 {r.rel_l2:.2f}, chg {100 * r.changed:.0f}%{mean}", fontsize=7)
            if col == 0:
                name = "input" if key == "inputs" else f"{key} conv\n{block['name'].removeprefix('net.')}"
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(
        title
        or f"{study['distortion']}: first and last conv layers, {channels} most active channels,\n"
        "each scaled by its clean map's range",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, path)


def plot_depth(studies: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Relative L2 change (left) and share of changed channels (right) against conv-layer index, one
    line per (distortion, level). Written atomically as PNG."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # the object API: no pyplot, the caller's backend untouched

    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    styles = {"blur": colormaps["Blues"], "noise": colormaps["Reds"]}
    for study in studies:
        cmap = styles.get(study["distortion"], colormaps["Greens"])
        spec = DISTORTIONS[study["distortion"]]
        for n, level in enumerate(study["levels"]):
            rows = study["layers"][level]
            color = cmap(0.45 + 0.5 * n / max(1, len(study["levels"]) - 1))
            x = [r.index for r in rows]
            for ax, y in ((axes[0], [r.rel_l2 for r in rows]), (axes[1], [100 * r.changed for r in rows])):
                ax.plot(x, y, "-", color=color, lw=1.2, label=spec.level_id(level))
                for marker, test in (
                    ("v", lambda r: "dw" in r.kind),
                    ("o", lambda r: "dw" not in r.kind and not r.kind.startswith("1x1")),
                ):
                    chosen = [(xi, yi) for xi, yi, r in zip(x, y, rows) if test(r)]
                    if chosen:
                        ax.plot(*zip(*chosen), marker, color=color, ms=3.5, ls="none")
    axes[0].set_ylabel("relative L2 change of the map")
    axes[1].set_ylabel(f"channels changed > {100 * CHANGE_THRESHOLD:.0f}% (%)")
    for ax in axes:
        ax.set_xlabel("conv layer (execution order)")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 100)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title + "\n(markers: v depthwise, o full k x k conv, none 1x1)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------------------ command line


_DEFAULT_LEVELS = {"blur": (1, 3, 5), "noise": (20, 50, 100)}


def _default_levels(name: str) -> tuple[float, ...]:
    if name in _DEFAULT_LEVELS:
        return _DEFAULT_LEVELS[name]
    grid = DISTORTIONS[name].levels
    return (grid[0], grid[len(grid) // 2], grid[-1])


def main_activations(args: argparse.Namespace) -> int:
    """``robustness activations``: figure per distortion, depth curves, per-layer table (printed and JSON).

    ``args`` holds the options :func:`robustness.cli.add_activations_arguments` defines, with the
    settings (``data``, ``seed``, ``device``, ``allow_tf32``) already resolved
    (:func:`robustness.cli.resolve_settings`); ``device`` ``None`` means cuda when available, else cpu,
    unless the model supports only other devices (:func:`robustness.evaluation.inference_device`, as
    for ``robustness run``). The forward passes run under the same numerics as ``evaluate``
    (:func:`robustness.evaluation.inference_settings`: on CUDA deterministic algorithms, TF32 only
    with ``allow_tf32``).

    Returns 0. Raises ``ValueError`` for bad input (an unknown model or image, a level outside the
    distortion's range, ``--levels`` with several distortions), ``ImportError`` or ``OSError``:
    ``robustness`` prints ``robustness activations: MESSAGE`` and exits with status 2.
    """
    from ._io import atomic_write
    from .datasets import DatasetError, imagenet_class_names, load_dataset
    from .images import load_image
    from .models import load_model

    distortions = args.distortion or ["blur", "noise"]
    if args.levels is not None and len(distortions) != 1:
        raise ValueError("--levels needs exactly one --distortion")
    from .evaluation import inference_device, inference_settings

    model = load_model(args.model)
    device = inference_device(model, args.device)
    model = model.to(device)  # a CPU-only model stays on the CPU (issue 12)
    if args.image and Path(args.image).is_file():
        images, ids = [load_image(args.image)], [Path(args.image).name]
        labels = [None]
    else:
        dataset = load_dataset(args.data)
        if args.image:
            matches = [
                i
                for i, s in enumerate(dataset.samples)
                if s.image_id == args.image or Path(s.image_id).name == args.image
            ]
            if not matches:
                raise DatasetError(f"image {args.image!r} is neither a file nor an image id in {dataset.root}")
            chosen = matches[:1]
        else:
            chosen = list(range(min(max(1, args.average_over), len(dataset))))
        images = [dataset.load(i)[0] for i in chosen]
        ids = [dataset[i].image_id for i in chosen]
        labels = [dataset[i].label for i in chosen]
    for name in distortions:
        for level in args.levels or _default_levels(name):
            get_distortion(name).check_level(level)
    output = Path(args.output) if args.output else Path("runs") / f"activations-{model.name}"
    names = imagenet_class_names()
    model = model.eval()
    studies = []
    print(
        f"model {model.name}  |  {len(images)} image(s), figure from {ids[0]}"
        + (f" (true class: {names[labels[0]]})" if labels[0] is not None else "")
    )
    with inference_settings(device, allow_tf32=getattr(args, "allow_tf32", False)):  # as evaluate() (issue 12)
        for name in distortions:
            levels = [
                float(v) if not DISTORTIONS[name].integer else int(v) for v in (args.levels or _default_levels(name))
            ]
            study = activation_study(model, images, name, levels, image_ids=ids, seed=args.seed)
            studies.append(study)
            top1 = study["top1"]
            print(
                f"\n{name}: top-1 of the figure's image: clean {names[top1['clean'][0]]}; "
                + "; ".join(f"{DISTORTIONS[name].level_id(lv)} {names[top1[lv][0]]}" for lv in levels)
            )
            print(format_layer_table(study))
            figure = output / f"feature_maps_{name}.png"
            plot_feature_maps(
                study,
                figure,
                channels=args.channels,
                title=f"{model.name}, {name}, {Path(ids[0]).name}: first and last conv layers,\n"
                f"{args.channels} most active channels, each scaled by its clean map's range",
            )
            print(f"wrote {figure}")
    plot_depth(
        studies,
        output / "depth.png",
        title=f"{model.name}: change of each conv layer's output vs clean, mean over {len(images)} image(s)",
    )
    record = {
        "model": model.name,
        "weights_digest": model.weights_digest,
        "images": ids,
        "seed": args.seed,
        "change_threshold": CHANGE_THRESHOLD,
        "channel_floor": CHANNEL_FLOOR,
        "studies": [
            {
                "distortion": s["distortion"],
                "levels": s["levels"],
                "layers": {f"{lv:g}": [asdict(r) for r in s["layers"][lv]] for lv in s["levels"]},
            }
            for s in studies
        ],
    }
    atomic_write(output / "layers.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {output / 'depth.png'} and {output / 'layers.json'}")
    return 0
