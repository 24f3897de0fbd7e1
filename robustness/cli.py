"""Command line: ``robustness run``, ``robustness list``, ``robustness calibrate``."""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

from .cache import PredictionCache
from .datasets import DATA_ENV_VAR, DatasetError, load_dataset
from .distortions import DISTORTIONS
from .evaluation import evaluate
from .models import list_models, load_model
from .report import format_table, plot_accuracy_vs_level, write_results_json
from .settings import margin_fraction, non_negative_int, positive_int  # argparse types, shared with the pytest plugin

__all__ = ["main", "build_parser"]


def check_device(device: str | None, option: str = "--device") -> None:
    """Raise ``ValueError`` naming ``device`` when it is not a torch device or not available here
    (:func:`robustness.settings.check_device`, shared with the pytest plugin)."""
    from .settings import check_device as _check

    _check(device, option)


def resolve_settings(args: argparse.Namespace, thresholds=None) -> None:
    """Fill the options the user did not give from ``$ROBUSTNESS_*`` variables and the thresholds
    file's ``defaults`` (:mod:`robustness.settings`: flag > variable > thresholds.yaml > default),
    then check the device. Options the command lacks are left alone; a data folder or cache folder
    left at its built-in default stays ``None`` (the loaders apply it).

    Raises:
        ValueError: a malformed variable, or a device that is not available (the message names it).
    """
    from .settings import resolve

    file_values = {} if thresholds is None else {"data": thresholds.dataset, "images": thresholds.images}
    file_name = "thresholds file" if thresholds is None or thresholds.path is None else str(thresholds.path)
    sources = {}
    for name in ("data", "images", "device", "cache_dir", "no_cache", "workers", "batch_size", "margin"):
        if not hasattr(args, name):
            continue
        resolved = resolve(name, flag=getattr(args, name), flag_name="--" + name.replace("_", "-"),
                           file=file_values.get(name), file_name=file_name)
        sources[name] = resolved.source
        if resolved.layer == "default" and name in ("data", "cache_dir"):
            continue
        setattr(args, name, resolved.value)
    if hasattr(args, "device"):
        check_device(args.device, sources.get("device", "--device"))


def _fresh_output_dir(model: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{model}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        resolve_settings(args)
        dataset = _load_run_dataset(args)
    except (DatasetError, ValueError) as error:
        print(f"robustness run: {error}", file=sys.stderr)
        return 2
    try:
        model = _load_run_model(args)
    except (ValueError, ImportError, FileNotFoundError) as error:
        print(f"robustness run: {error}", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else _fresh_output_dir(_safe_name(model.name))
    try:
        output.mkdir(parents=True, exist_ok=True)  # before the work, so a bad --output fails at once
    except OSError as error:
        print(f"robustness run: cannot create output folder {output}: {error}", file=sys.stderr)
        return 2
    distortions = _run_distortions(args)
    print(f"model {model.name}  |  {len(dataset)} images from {dataset.root}  |  distortions: {', '.join(distortions) or 'none (clean only)'}")
    cache = None if args.no_cache else PredictionCache(args.cache_dir)
    results = evaluate(model, dataset, distortions, seed=args.seed, batch_size=args.batch_size,
                       num_workers=args.workers, device=args.device, progress=not args.no_progress, cache=cache)
    print(format_table(results))
    for image_id, message in results[0].skipped.items():
        print(f"skipped unreadable image {image_id}: {message}", file=sys.stderr)
    write_results_json(results, output / "results.json")
    plot_accuracy_vs_level(results, output / "accuracy_vs_level.png")
    print(f"wrote {output / 'results.json'} and {output / 'accuracy_vs_level.png'}")
    return _write_run_report(args, model, dataset, results, output)


def _safe_name(name: str) -> str:
    """A model name usable as a folder name (specs may hold ':' or '/')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _load_run_model(args: argparse.Namespace):
    """The model of ``run``: a registered name or any spec load_model takes, with --weights/--arch/
    --preprocessing/--background-class."""
    if args.models_dir:
        import os
        from .models import MODELS_ENV_VAR
        os.environ[MODELS_ENV_VAR] = args.models_dir
    weights = {None: "default", "random": None}.get(args.weights, args.weights)
    return load_model(args.model, device=args.device, weights=weights, preprocessing=args.preprocessing,
                      arch=args.arch, model_name=args.name, background_class=args.background_class or None)


def _load_run_dataset(args: argparse.Namespace):
    """The dataset of ``run``: folder / flat ILSVRC2012 val / --manifest, then --per-class/--subset, then --limit."""
    dataset = load_dataset(args.data, manifest=args.manifest, devkit=args.devkit,
                           per_class=args.per_class, total=args.subset, subset_seed=args.subset_seed)
    return dataset.limit(args.limit)


def _run_distortions(args: argparse.Namespace):
    """--clean-only: just the clean condition; else the chosen distortions (default all five)."""
    if args.clean_only:
        if args.distortion:
            raise SystemExit("robustness run: --clean-only and --distortion exclude each other")
        return {}  # an empty {name: levels} mapping: evaluate() runs the clean condition only
    return args.distortion or list(DISTORTIONS)


def _add_model_dataset_options(run: argparse.ArgumentParser) -> None:
    """Options of ``run`` for user models and datasets (issue 4)."""
    run.add_argument("--weights", default=None, help="state dict for the model (loaded with weights_only=True); 'random' for random initialisation")
    run.add_argument("--arch", default=None, help="torchvision architecture of a state-dict file given as --model")
    run.add_argument("--preprocessing", default=None, help="how the model was trained: preset (torchvision, caffe, inception, efficientnet_lite) and/or key=value fields, e.g. 'caffe,crop_size=224'")
    run.add_argument("--models-dir", default=None, help="folder of shared weight files (default $ROBUSTNESS_MODELS or ../shared/models)")
    run.add_argument("--background-class", action="store_true", help="the model outputs 1001 logits with a background class at index 0")
    run.add_argument("--name", default=None, help="the model's name in results, reports and thresholds (default: the registered name, the file's stem or the factory's function name)")
    run.add_argument("--manifest", default=None, help="CSV manifest with columns path and label (wnid or class index); paths relative to --data when given, else to the CSV")
    run.add_argument("--devkit", default=None, help="ILSVRC2012 devkit folder for a flat validation folder (default: ../shared/data/imagenet-meta or $ROBUSTNESS_DEVKIT)")
    run.add_argument("--per-class", type=positive_int, default=None, help="deterministic subset: N images per class (seeded)")
    run.add_argument("--subset", type=positive_int, default=None, help="deterministic subset: N images in total, spread over classes (seeded)")
    run.add_argument("--subset-seed", type=non_negative_int, default=0, help="seed of --per-class/--subset (default 0)")
    run.add_argument("--clean-only", action="store_true", help="evaluate the undistorted images only")


def _cmd_list(args: argparse.Namespace) -> int:
    print("models:")
    for name in list_models():
        print(f"  {name}")
    print("distortions:")
    for spec in DISTORTIONS.values():
        levels = ", ".join(f"{v:g}" for v in spec.levels)
        print(f"  {spec.name:<9} {spec.label}; paper levels {levels}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure ``args.model`` and write its thresholds (measured - margin), keeping the rest of the file."""
    import difflib
    import importlib

    from .evaluation import CLEAN, Condition
    from .gate import save_baseline
    from .thresholds import ThresholdsError, load_thresholds, update_thresholds_file

    def fail(message: str) -> int:
        print(f"robustness calibrate: {message}", file=sys.stderr)
        return 2

    if args.import_ and "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    imported = {}
    for module in args.import_ or ():
        try:
            imported[module] = importlib.import_module(module)
        except ImportError as error:
            return fail(f"--import {module}: {error}")
    from .settings import resolve

    # The thresholds entry: --name, else the model's own name (a registered name, or the spec as given).
    name = args.name or args.model
    path = Path(resolve("thresholds", flag=args.thresholds, flag_name="--thresholds").value)
    existing = None
    if path.is_file():
        try:
            existing = load_thresholds(path, known_models=set(list_models()) | {name})
        except ThresholdsError as error:
            return fail(f"fix the thresholds file first:\n{error}")
    if args.distortion:
        conditions = [Condition(d, level) for d in args.distortion for level in DISTORTIONS[d].levels]
    elif args.all_levels or existing is None or not existing.for_model(name):
        conditions = [Condition(distortion, level) for distortion, spec in DISTORTIONS.items() for level in spec.levels]
    else:
        conditions = [t.condition for t in existing.for_model(name) if t.condition.distortion != CLEAN]
    conditions = [Condition(CLEAN, 0)] + [c for c in dict.fromkeys(conditions) if c.distortion != CLEAN]
    seed = args.seed if args.seed is not None else (existing.seed if existing else 0)
    try:
        resolve_settings(args, existing)
    except ValueError as error:
        return fail(str(error))
    images, data = args.images, args.data
    try:
        dataset = load_dataset(data, limit=images)
        model = load_model(args.model, device=args.device, preprocessing=args.preprocessing, model_name=args.name)
    except (DatasetError, ValueError, ImportError, FileNotFoundError) as error:
        return fail(str(error) + _fixture_hint(args.model, imported))
    if args.name is None and model.name != args.model and args.model in list_models():
        name = model.name  # a registered model with --preprocessing is another model: NAME+custom-preprocessing
    print(f"calibrating {name} on {len(dataset)} images from {dataset.root}: clean + {len(conditions) - 1} "
          f"distortion levels, margin {args.margin:g}")
    cache = None if args.no_cache else PredictionCache(args.cache_dir)
    results = evaluate(model, dataset, conditions, seed=seed, batch_size=args.batch_size, num_workers=args.workers,
                       device=args.device, progress=not args.no_progress, cache=cache)
    for result in results:
        result.model = name
    print(format_table(results))
    measured = {r.condition: {"top1": r.top1, "top5": r.top5} for r in results}
    old, new = update_thresholds_file(path, name, measured, margin=args.margin, metrics=args.metric,
                                      defaults={"images": images, "seed": seed}, write=not args.dry_run)
    if existing is not None and existing.images is not None and existing.images != len(dataset):
        print(f"note: calibrated on {len(dataset)} images, but {path} sets defaults.images: {existing.images}")
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{path} (before)", f"{path} (after)"))
    print(diff if diff else f"{path}: no change")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    if not args.no_baseline:
        folder = existing.paired.baseline if existing is not None and existing.paired else path.parent / "robustness-baseline"
        written = save_baseline(results, folder, seed=seed, model=name)
        print(f"stored baseline predictions for the paired check in {folder} ({len(written)} files)")
    print(f"wrote {path}")
    return 0


def _fixture_hint(model: str, imported: dict) -> str:
    """For ``calibrate``: when ``model`` is not a registered name, say that a model a conftest.py provides
    as the ``robustness_model`` pytest fixture is only visible to pytest (``""`` otherwise)."""
    if model in list_models() or ":" in model or Path(model).expanduser().is_file():
        return ""
    defining = [name for name, module in imported.items() if hasattr(module, "robustness_model")]
    where = f"{', '.join(defining)} defines a robustness_model pytest fixture, but" if defining else "if a conftest.py provides it as the robustness_model pytest fixture,"
    return (f"\n{where} calibrate cannot run pytest fixtures: calibrate that model with "
            f"`pytest --robustness-update-thresholds` (it measures and rewrites the thresholds of the models the "
            f"gate runs), or register it with robustness.register_model in a module and pass --import MODULE")


def _add_calibrate(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="measure a model and write its thresholds (measured - margin) into thresholds.yaml",
        description="Measure MODEL and write its thresholds: measured accuracy minus --margin, floored to 3 "
                    "decimals. Other models' entries and the file's comments are kept; the entry's existing "
                    "bar keys are recalculated (relative bars stay relative); a diff is shown. Per-image "
                    "predictions are stored as the baseline for the paired (McNemar) check.")
    calibrate.add_argument("--model", required=True, help="registered model name (see 'robustness list' and --import), torchvision:ARCH, a TorchScript file or module:function")
    calibrate.add_argument("--preprocessing", default=None, help="how the model was trained (required for module:function and files): preset (torchvision, caffe, inception, efficientnet_lite) and/or key=value fields")
    calibrate.add_argument("--name", default=None, help="the model's name in thresholds.yaml and the baseline (default: --model as given)")
    calibrate.add_argument("--margin", type=margin_fraction, default=None, help="subtracted from each measured accuracy (fraction; default $ROBUSTNESS_MARGIN, else 0.05)")
    calibrate.add_argument("--thresholds", default=None, help="thresholds file to update (default $ROBUSTNESS_THRESHOLDS, else thresholds.yaml)")
    calibrate.add_argument("--distortion", action="append", choices=list(DISTORTIONS),
                           help="calibrate all paper levels of this distortion (repeatable); default: the levels the file lists for the model, or all levels for a new model")
    calibrate.add_argument("--all-levels", action="store_true", help="calibrate every paper level of every distortion")
    calibrate.add_argument("--metric", action="append", choices=["top1", "top5"], help="bars for new entries (repeatable; default top1)")
    calibrate.add_argument("--images", type=positive_int, default=None, help="images per condition (default the file's defaults.images, else all)")
    calibrate.add_argument("--data", default=None, help="image folder (default the file's defaults.dataset, $ROBUSTNESS_DATA or ../shared/data/imagenet-val-1024)")
    calibrate.add_argument("--seed", type=non_negative_int, default=None, help="base seed (default the file's defaults.seed, else 0)")
    calibrate.add_argument("--import", dest="import_", action="append", metavar="MODULE", help="import MODULE first (e.g. one that calls register_model)")
    calibrate.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    calibrate.add_argument("--no-baseline", action="store_true", help="do not store baseline predictions")
    calibrate.add_argument("--batch-size", type=positive_int, default=None, help="default $ROBUSTNESS_BATCH_SIZE, else 32")
    calibrate.add_argument("--workers", type=non_negative_int, default=None, help="DataLoader workers (default min(2, cpus))")
    calibrate.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    calibrate.add_argument("--no-progress", action="store_true", help="no progress bar")
    calibrate.add_argument("--no-cache", action="store_true", help="do not read or write the prediction cache")
    calibrate.add_argument("--cache-dir", default=None, help="prediction cache folder (default $ROBUSTNESS_CACHE_DIR or .robustness-cache)")
    calibrate.set_defaults(func=_cmd_calibrate)


# ------------------------------------------------------------- report and activations (issue 6)


def _add_run_report_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--no-report", action="store_true", help="do not write report.html (predictions.npz and provenance.json are always written)")
    run.add_argument("--thresholds", default=None, help="thresholds.yaml whose verdicts the report shows")


def _write_run_report(args, model, dataset, results, output: Path) -> int:
    """After ``run``: per-image predictions + provenance, then report.html unless ``--no-report``."""
    import json

    from .report import atomic_write, run_provenance, write_predictions

    provenance = run_provenance(model, dataset, seed=args.seed, thresholds=args.thresholds)
    write_predictions(results, output / "predictions.npz", provenance)
    atomic_write(output / "provenance.json", (json.dumps(provenance, indent=2) + "\n").encode())
    print(f"wrote {output / 'predictions.npz'} and {output / 'provenance.json'}")
    if args.no_report:
        return 0
    from .html_report import ReportError, write_report

    try:
        path = write_report([output], output / "report.html", thresholds=args.thresholds)
    except ReportError as error:
        print(f"robustness run: report: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .html_report import ReportError, write_report

    output = Path(args.output) if args.output else Path(args.results[0]) / "report.html"
    try:
        path = write_report(args.results, output, thresholds=args.thresholds, baseline=args.baseline,
                            data=args.data, examples=args.examples)
    except ReportError as error:
        print(f"robustness report: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _cmd_activations(args: argparse.Namespace) -> int:
    from .activations import main_activations

    return main_activations(args)


def _add_report_commands(commands) -> None:
    report = commands.add_parser("report", help="write a self-contained HTML report from one or more run folders")
    report.add_argument("results", nargs="+", help="run folder(s) holding results.json (or a folder of run folders); several models share the axes")
    report.add_argument("--output", "-o", default=None, help="HTML file to write; default RESULTS/report.html (first folder)")
    report.add_argument("--thresholds", default=None, help="thresholds.yaml: show pass/fail and margin per level")
    report.add_argument("--baseline", default=None, help="model whose errors normalise the corruption error (default: the first model)")
    report.add_argument("--data", default=None, help="image folder for the example strips (default: the dataset root recorded by the run)")
    report.add_argument("--examples", type=non_negative_int, default=1, help="example images per distortion (default %(default)s)")
    report.set_defaults(func=_cmd_report)

    from .activations import add_activations_arguments

    activations = commands.add_parser("activations", help="compare conv-layer feature maps, clean vs distorted (the paper's Fig. 4-5)")
    add_activations_arguments(activations)
    activations.set_defaults(func=_cmd_activations)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustness", description="How image-quality distortions degrade ImageNet classifiers (Dodge & Karam 2016).")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="evaluate a model under the distortions and write results.json + a figure")
    run.add_argument("--model", default="efficientnet_lite0", help="registered model name (see 'robustness list'), torchvision:ARCH, a TorchScript or state-dict file, or module:function; default %(default)s")
    run.add_argument("--data", default=None, help=f"image folder (<wnid>/<file>); default ${DATA_ENV_VAR} or ../shared/data/imagenet-val-1024")
    run.add_argument("--distortion", action="append", choices=list(DISTORTIONS), help="distortion to run (repeatable); default all five")
    run.add_argument("--limit", type=positive_int, default=None, help="use the first N images in file-name order")
    run.add_argument("--output", default=None, help="output folder; default a fresh runs/<model>-<timestamp>")
    run.add_argument("--seed", type=non_negative_int, default=0, help="base seed for noise (default 0)")
    run.add_argument("--batch-size", type=positive_int, default=None, help="default $ROBUSTNESS_BATCH_SIZE, else 32")
    run.add_argument("--workers", type=non_negative_int, default=None, help="DataLoader workers (default min(2, cpus))")
    run.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_dataset_options(run)
    run.add_argument("--no-cache", action="store_true", help="do not read or write the prediction cache")
    run.add_argument("--cache-dir", default=None, help="prediction cache folder (default $ROBUSTNESS_CACHE_DIR or .robustness-cache)")
    run.set_defaults(func=_cmd_run)
    _add_run_report_options(run)
    _add_report_commands(commands)

    lister = commands.add_parser("list", help="list registered models and distortions")
    lister.set_defaults(func=_cmd_list)

    _add_calibrate(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``robustness`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
