"""Command line: ``robustness run | list | calibrate | report | activations`` (also ``python -m robustness``).

Imports are lazy: building the parser imports neither torch nor numpy (the distortion choices come from
:mod:`robustness.names`), so ``robustness --help``, ``--version`` and ``robustness list`` answer without
loading torch, and each command imports only the machinery it uses, inside its function.

Exit status: 0 on success; 2 on a usage error (argparse) or bad input (:class:`CommandError`: a missing
file, a malformed thresholds file, an unknown model, a missing package; the message names it, prefixed
``robustness COMMAND:``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import sys
from collections.abc import Iterator
from pathlib import Path

from ._io import safe_name
from .names import DISTORTION_NAMES, METRICS
from .settings import COMMAND_ALIASES, DEFAULT_BASELINE_DIR, SETTINGS, cli_flag_help, non_negative_int, positive_int

__all__ = [
    "main",
    "build_parser",
    "CommandError",
    "USER_ERRORS",
    "add_settings_options",
    "resolve_settings",
    "package_version",
]

#: The distribution that installs this package (its metadata holds the version).
DISTRIBUTION = "dnn-image-quality-robustness"

#: Errors that mean bad input rather than a bug: every error of this package is a ``ValueError``
#: (``DatasetError``, ``ModelError``, ``ThresholdsError``, ``ReportError``, ``ImageLoadError``,
#: ``SettingError``, ...); a missing package is an ``ImportError``; a missing or unwritable file an
#: ``OSError``. :func:`main` turns each into ``robustness COMMAND: MESSAGE`` and exit status 2.
USER_ERRORS = (ValueError, ImportError, OSError)


class CommandError(Exception):
    """Bad input to a command: :func:`main` prints ``robustness COMMAND: MESSAGE`` to stderr and returns 2."""


@contextlib.contextmanager
def _context(prefix: str = "", suffix=lambda error: "") -> Iterator[None]:
    """Add context to the :data:`USER_ERRORS` raised inside: re-raised as a :class:`CommandError` whose
    message is ``prefix + str(error) + suffix(error)`` (:func:`main` prints it and returns 2)."""
    try:
        yield
    except USER_ERRORS as error:
        raise CommandError(f"{prefix}{error}{suffix(error)}") from error


def package_version() -> str:
    """The installed version of this package (``importlib.metadata``), else ``robustness.__version__``
    (a source checkout run without installing)."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def check_device(device: str | None, option: str = "--device") -> None:
    """Raise ``ValueError`` naming ``device`` when it is not a torch device or not available here
    (:func:`robustness.settings.check_device`, shared with the pytest plugin)."""
    from .settings import check_device as _check

    _check(device, option)


#: Settings the CLI resolves itself; ``thresholds`` is resolved by ``calibrate`` alone (``run`` and
#: ``report`` show verdicts only from a file given as a flag).
_RESOLVED = tuple(name for name in SETTINGS if name != "thresholds")


def resolve_settings(args: argparse.Namespace, thresholds=None) -> None:
    """Fill the options the user did not give from ``$ROBUSTNESS_*`` variables and the thresholds
    file's ``defaults`` (:func:`robustness.settings.resolve`: flag > variable > thresholds.yaml >
    default; the CLI has no ini layer), then check the device. Options the command lacks are left
    alone; an image folder left at its built-in default stays ``None`` (the loader applies it and
    names the variable to set when it is missing).

    Args:
        args: the parsed command line (``dest`` = the setting's name in :data:`robustness.settings.SETTINGS`).
        thresholds: the loaded thresholds file (its ``defaults``), or ``None``.

    Raises:
        ValueError: a malformed variable (:class:`robustness.settings.SettingError`), or a device that
            is not a torch device or not available here (the message names the flag or variable).
    """
    from .settings import check_cache_dir, resolve

    file_values = {}
    if thresholds is not None:
        given = thresholds.paired is not None and thresholds.paired.baseline_given
        paired = thresholds.paired.baseline if given else None
        file_values = {
            "data": thresholds.dataset,
            "images": thresholds.images,
            "seed": thresholds.seed,
            "baseline_dir": None if paired is None else str(paired),
            "classes": thresholds.classes,
            "restrict_to_dataset_classes": thresholds.restrict_to_dataset_classes,
            "allow_tf32": thresholds.allow_tf32,
        }
    file_name = "thresholds file" if thresholds is None or thresholds.path is None else str(thresholds.path)
    sources = {}
    for name in _RESOLVED:
        if not hasattr(args, name):
            continue
        setting = SETTINGS[name]
        resolved = resolve(
            name, flag=getattr(args, name), flag_name=setting.cli, file=file_values.get(name), file_name=file_name
        )
        sources[name] = resolved.source
        if resolved.layer == "default" and name in ("data", "baseline_dir"):
            continue  # the loader applies (and names) the default; the baseline's depends on the file
        setattr(args, name, resolved.value)
    if hasattr(args, "device"):
        check_device(args.device, sources.get("device", "--device"))
    if getattr(args, "cache_dir", None) and not getattr(args, "no_cache", False):
        check_cache_dir(args.cache_dir, sources.get("cache_dir", "--cache-dir"))  # a SettingError: exit 2


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores its value under the new option's dest and prints, once per
    command line, ``robustness COMMAND: warning: OLD is deprecated ...; use NEW`` to stderr.

    A printed note rather than a Python ``DeprecationWarning``: Python hides those outside ``__main__``,
    and under ``python -W error`` a warning would turn a working command into a crash.
    """

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        self.new = new
        kwargs.setdefault("help", f"deprecated spelling of {new} (accepted until the next release)")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        noted = vars(namespace).setdefault("deprecated_options", [])
        if option_string not in noted:
            noted.append(option_string)
            print(
                f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the next release; "
                f"use {self.new}",
                file=sys.stderr,
            )


def add_deprecated_alias(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """Accept ``old`` as a deprecated spelling of ``new`` (same ``dest``, ``type`` etc. in ``kwargs``)."""
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, default=argparse.SUPPRESS, **kwargs)


def add_settings_options(parser, names, *, title: str | None = None, file: bool = False):
    """Add the CLI flags of the settings ``names`` (rows of :data:`robustness.settings.SETTINGS`) to
    ``parser``, in a group titled ``title``, with each row's parser, metavar and help, ``default=None``
    (so :func:`resolve_settings` can tell a flag from its absence) and its deprecated aliases.

    ``file``: the command reads thresholds.yaml ``defaults`` (named in the help). Returns the group.
    """
    group = parser.add_argument_group(title) if title else parser
    for name in names:
        setting = SETTINGS[name]
        help_text = cli_flag_help(setting, file=file)
        if setting.switch:
            group.add_argument(setting.cli, dest=name, action="store_true", default=None, help=help_text)
            continue
        typed = {} if setting.text else {"type": setting.parse}
        group.add_argument(setting.cli, dest=name, default=None, metavar=setting.metavar, help=help_text, **typed)
        for alias in setting.aliases:
            add_deprecated_alias(group, alias, setting.cli, name, metavar=setting.metavar, **typed)
    return group


#: The option groups the subcommands share, built by :func:`_add_groups` (one definition each).
_DATA_GROUP = ("data", "classes", "restrict_to_dataset_classes", "images", "seed")
_ENGINE_GROUP = ("device", "allow_tf32", "pipeline", "batch_size", "workers", "cache_dir", "no_cache")


def _add_groups(parser: argparse.ArgumentParser, *, file: bool = False) -> None:
    """The shared groups of ``run`` and ``calibrate``: images (folder, count, seed) and the engine
    (device, batch size, workers, cache, progress bar)."""
    add_settings_options(parser, _DATA_GROUP, title="images", file=file)
    engine = add_settings_options(parser, _ENGINE_GROUP, title="engine")
    engine.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fresh_output_dir(model: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{model}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


#: The model ``run`` evaluates when no ``--model`` is given.
DEFAULT_RUN_MODEL = "efficientnet_lite0"

#: ``run`` options that describe one model: refused with several ``--model``.
_ONE_MODEL_OPTIONS = {
    "weights": "--weights",
    "arch": "--arch",
    "preprocessing": "--preprocessing",
    "background_class": "--background-class",
    "name": "--name",
}


def _run_model_specs(args: argparse.Namespace) -> list[str]:
    """The ``--model`` values of ``run`` (default :data:`DEFAULT_RUN_MODEL`). With several, the
    per-model options are refused: they would not say which model they describe.

    Raises:
        CommandError: several ``--model`` with ``--weights``, ``--arch``, ``--preprocessing``,
            ``--background-class`` or ``--name`` (naming the options given).
    """
    specs = list(args.model or [DEFAULT_RUN_MODEL])
    if len(specs) > 1:
        given = [flag for dest, flag in _ONE_MODEL_OPTIONS.items() if getattr(args, dest, None)]
        if given:
            raise CommandError(
                f"{', '.join(given)} describe{'s' if len(given) == 1 else ''} one model, but {len(specs)} --model "
                f"were given ({', '.join(specs)}); run such a model on its own, or register it "
                "(robustness.register_model) and give its name"
            )
    return specs


def _run_outputs(args: argparse.Namespace, models) -> list[Path]:
    """The run folder of each model: ``--output`` (else a fresh ``runs/<model>-<timestamp>``) for one
    model; for several, ``--output/<model>/`` (else a fresh ``runs/<model>-<timestamp>`` each).

    Raises:
        CommandError: two models with the same name, or names that give the same folder.
    """
    names = [model.name for model in models]
    folders = [safe_name(name) for name in names]
    for k, folder in enumerate(folders):
        if folder in folders[:k]:
            other = names[folders.index(folder)]
            same = "the same name" if other == names[k] else f"names that give the same folder {folder!r}"
            raise CommandError(
                f"--model: two models have {same} ({other!r}, {names[k]!r}); each model needs its own name "
                "(register one under another name, or run it on its own with --name)"
            )
    if len(models) == 1:
        return [Path(args.output) if args.output else _fresh_output_dir(folders[0])]
    if args.output:
        return [Path(args.output) / folder for folder in folders]
    return [_fresh_output_dir(folder) for folder in folders]


def _cmd_run(args: argparse.Namespace) -> int:
    from .cache import PredictionCache
    from .evaluation import evaluate
    from .report import format_table, plot_accuracy_vs_level
    from .runs import write_results_json

    specs = _run_model_specs(args)
    distortions = _run_distortions(args)
    resolve_settings(args)
    dataset = _load_run_dataset(args)
    models = []
    for spec in specs:
        model, matched = _match_classes(args, _load_run_model(args, spec), dataset)
        models.append(model)
    dataset = matched  # the same class list for every model
    outputs = _run_outputs(args, models)
    for output in outputs:
        with _context(f"cannot create output folder {output}: "):
            output.mkdir(parents=True, exist_ok=True)  # before the work, so a bad --output fails at once
    described = _describe_distortions(distortions) or "none (clean only)"
    print(
        f"{'model' if len(models) == 1 else 'models'} {', '.join(m.name for m in models)}  |  {len(dataset)} images "
        f"from {dataset.root}  |  distortions: {described}"
    )
    cache = None if args.no_cache else PredictionCache(args.cache_dir)
    measured = evaluate(
        models if len(models) > 1 else models[0],
        dataset,
        distortions,
        seed=args.seed,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        pipeline=args.pipeline,
        progress=not args.no_progress,
        cache=cache,
        allow_tf32=args.allow_tf32,
        engine=args.engine,
        ray_address=args.ray_address,
    )
    per_model = list(measured.values()) if len(models) > 1 else [measured]
    print(format_table([r for results in per_model for r in results]))
    if cache is not None:
        print(_distortion_store_line(cache))
    skipped = {}
    for results in per_model:
        skipped.update(results[0].skipped)
    for image_id, message in skipped.items():
        print(f"skipped unreadable image {image_id}: {message}", file=sys.stderr)
    for model, results, output in zip(models, per_model, outputs):
        write_results_json(results, output / "results.json")
        plot_accuracy_vs_level(results, output / "accuracy_vs_level.png")
        print(
            f"{model.name}: " * (len(models) > 1)
            + f"wrote {output / 'results.json'} and {output / 'accuracy_vs_level.png'}"
        )
        _write_run_report(args, model, dataset, results, output, label=f"{model.name}: " * (len(models) > 1))
    if len(models) > 1 and args.output and not args.no_report:
        from .html_report import write_report

        with _context("report: "):
            path = write_report(outputs, Path(args.output) / "report.html", thresholds=args.thresholds)
        print(f"wrote {path} (all {len(models)} models)")
    return 0


def _distortion_store_line(cache) -> str:
    """``distortion store DIR: N entries, X MB``: the JPEG / JPEG 2000 outputs kept beside the
    prediction cache (docs/caching.md), one walk of the store. No "+K this run": the change in the
    total would count another run's entries written meanwhile into a shared folder, and this run's
    own writes happen in worker processes (DataLoader workers, Ray tasks) that cannot be tallied cheaply."""
    from .distortion_store import DistortionStore

    store = DistortionStore.beside(cache.root)
    return f"distortion store {store.root}: {store.size().describe()}"


def _load_run_model(args: argparse.Namespace, spec: str | None = None):
    """The model of ``run``: a registered name or any spec load_model takes (``spec``, default the
    first ``--model``), with --weights/--arch/--preprocessing/--background-class."""
    import os

    from .models import MODELS_ENV_VAR, load_model

    if spec is None:
        spec = _run_model_specs(args)[0]
    if args.models_dir:
        os.environ[MODELS_ENV_VAR] = args.models_dir
    weights = {None: "default", "random": None}.get(args.weights, args.weights)
    return load_model(
        spec,
        device=args.device,
        weights=weights,
        preprocessing=args.preprocessing,
        arch=args.arch,
        model_name=args.name,
        background_class=args.background_class or None,
    )


def _load_run_dataset(args: argparse.Namespace):
    """The dataset of ``run``: folder / flat ILSVRC2012 val / --manifest, then --per-class/--subset, then --images."""
    from .datasets import coverage_problem, load_dataset

    dataset = load_dataset(
        args.data,
        manifest=args.manifest,
        devkit=args.devkit,
        per_class=args.per_class,
        total=args.subset,
        subset_seed=args.subset_seed,
        classes=args.classes,
    )
    sample = dataset.limit(args.images)
    biased = coverage_problem(dataset, sample)
    if biased:
        print(f"robustness run: warning: --images {args.images}: {biased}", file=sys.stderr)
    return sample


def _match_classes(args: argparse.Namespace, model, dataset):
    """``(model, dataset)`` with matching label spaces: with --restrict-to-dataset-classes the
    ImageNet-1k model's logits are restricted to the dataset's classes (an ImageNet-1k dataset first
    cut to the classes it has images of); then the model's width must equal the class count."""
    from .labels import check_output_width, restrict_to_classes

    if getattr(args, "restrict_to_dataset_classes", False):
        if dataset.classes.is_imagenet:
            dataset = dataset.present_classes()
        model = restrict_to_classes(model, dataset.classes)
    check_output_width(model, dataset.classes)
    return model, dataset


def _run_distortions(args: argparse.Namespace):
    """--clean-only: just the clean condition; else the chosen distortions and levels (default all five
    at the paper's levels), as the ``{name: levels or None}`` mapping :func:`robustness.evaluate` takes."""
    if args.clean_only:
        if args.distortion:
            raise CommandError("--clean-only and --distortion exclude each other")
        return {}  # an empty {name: levels} mapping: evaluate() runs the clean condition only
    return distortion_levels(args.distortion) or dict.fromkeys(DISTORTION_NAMES)


#: The --distortion option's help, shared by ``run`` and ``calibrate``.
DISTORTION_HELP = (
    "a distortion and, after '=', its levels in the distortion's unit, comma-separated: jpeg=50,75,90, "
    "blur=0.5,1.5 (any level in the valid range, see 'robustness list'); NAME alone means the paper's levels. "
    "Repeatable: --distortion jpeg=50,75 --distortion blur. Names: " + ", ".join(DISTORTION_NAMES)
)


def distortion_levels(values: list[str] | None) -> dict[str, tuple[float, ...] | None]:
    """The ``--distortion NAME[=LEVEL,LEVEL,...]`` values of ``run`` and ``calibrate`` as ``{name: levels}``.

    ``NAME`` alone maps to ``None`` (the distortion's default grid, for the built-ins the paper's);
    ``NAME=50,75,90`` to those levels, parsed with :meth:`robustness.distortions.Distortion.parse_level`
    (any level in the valid range; a level on the grid is the grid's own value). A name given twice
    gets the union of its levels, in the order given (``NAME`` alone adds the default grid). Names may
    be distortions registered with :func:`robustness.register_distortion` before the command runs
    (``calibrate --import MODULE``). ``None`` or ``[]`` gives ``{}``.

    Raises:
        CommandError: an unknown distortion, an empty level list, or a level that is not a number or
            is outside the valid range; the message names the option value, the distortion, the level
            and the valid range.
    """
    from .distortions import get_distortion

    chosen: dict[str, list[float] | None] = {}
    for value in values or ():
        name, has_levels, text = value.partition("=")
        name = name.strip()
        try:
            spec = get_distortion(name)
        except ValueError as error:
            raise CommandError(f"--distortion {value}: {error}") from None
        if not has_levels:
            levels = list(spec.levels)
        else:
            parts = [part.strip() for part in text.split(",")]
            if not all(parts):
                raise CommandError(
                    f"--distortion {value}: an empty level; write {name}=LEVEL,LEVEL,... "
                    f"({spec.label}, valid range {spec.range_text}), or {name} alone for the paper's levels"
                )
            try:
                levels = [spec.parse_level(part) for part in parts]
            except ValueError as error:
                raise CommandError(f"--distortion {value}: {error}") from None
        before = chosen.get(name) or []
        chosen[name] = list(dict.fromkeys(before + levels))
    return {
        name: None if levels == list(get_distortion(name).levels) else tuple(levels) for name, levels in chosen.items()
    }


def _describe_distortions(distortions) -> str:
    """``jpeg (50, 75, 90), blur`` for the run's first line (a name alone: its default levels)."""
    return ", ".join(
        name if levels is None else f"{name} ({', '.join(f'{v:g}' for v in levels)})"
        for name, levels in distortions.items()
    )


def _add_model_dataset_options(run: argparse.ArgumentParser) -> None:
    """Options of ``run`` for user models and datasets."""
    run.add_argument(
        "--weights",
        default=None,
        help="state dict for the model (loaded with weights_only=True); 'random' for random initialisation",
    )
    run.add_argument("--arch", default=None, help="torchvision architecture of a state-dict file given as --model")
    run.add_argument(
        "--preprocessing",
        default=None,
        help="how the model was trained: preset (torchvision, caffe, inception, efficientnet_lite) and/or key=value fields, e.g. 'caffe,crop_size=224'",
    )
    run.add_argument(
        "--models-dir",
        default=None,
        help="folder of shared weight files (default $ROBUSTNESS_MODELS or ../shared/models)",
    )
    run.add_argument(
        "--background-class",
        action="store_true",
        help="the model outputs 1001 logits with a background class at index 0",
    )
    run.add_argument(
        "--name",
        default=None,
        help="the model's name in results, reports and thresholds (default: the registered name, the file's stem or the factory's function name)",
    )
    run.add_argument(
        "--manifest",
        default=None,
        help="CSV manifest with columns path and label (wnid or class index); paths relative to --data when given, else to the CSV",
    )
    run.add_argument(
        "--devkit",
        default=None,
        help="ILSVRC2012 devkit folder for a flat validation folder (default: ../shared/data/imagenet-meta or $ROBUSTNESS_DEVKIT)",
    )
    run.add_argument(
        "--per-class", type=positive_int, default=None, help="deterministic subset: N images per class (seeded)"
    )
    run.add_argument(
        "--subset",
        type=positive_int,
        default=None,
        help="deterministic subset: N images in total, spread over classes (seeded)",
    )
    run.add_argument("--subset-seed", type=non_negative_int, default=0, help="seed of --per-class/--subset (default 0)")
    run.add_argument("--clean-only", action="store_true", help="evaluate the undistorted images only")


def _cmd_list(args: argparse.Namespace) -> int:
    """Each built-in model with whether its weights are here and where they come from (no torch: the
    table of :mod:`robustness.weights`), then each distortion with its paper levels."""
    from .distortions import DISTORTIONS  # numpy, Pillow, scipy; not torch
    from .weights import WEIGHT_SOURCES, weight_status

    statuses = [weight_status(name, models_dir=args.models_dir) for name in WEIGHT_SOURCES]
    width = max(len(status.model) for status in statuses)
    print("models (weights: here / download = fetched on first use / missing):")
    for status in statuses:
        print(f"  {status.model:<{width}}  {status.state:<8}  {status.detail}")
    print(
        "  (torchvision:ARCH, timm:NAME (pip install '.[timm]'), a TorchScript or state-dict file, or "
        "module:function also work: see 'robustness run --help')"
    )
    print("distortions:")
    for spec in DISTORTIONS.values():
        levels = ", ".join(f"{v:g}" for v in spec.levels)
        print(f"  {spec.name:<9} {spec.label}; paper levels {levels}; any level in {spec.range_text}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure ``args.model`` and write its thresholds (measured - margin), keeping the rest of the file."""
    import dataclasses
    import difflib
    import importlib

    from .cache import PredictionCache
    from .datasets import coverage_problem, load_dataset
    from .distortions import DISTORTIONS
    from .evaluation import CLEAN, Condition, evaluate
    from .gate import save_baseline
    from .labels import applicable_metrics
    from .models import list_models, load_model
    from .report import format_table
    from .settings import resolve
    from .thresholds import check_metrics, load_thresholds, update_thresholds_file

    if args.import_ and "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    imported = {}
    for module in args.import_ or ():
        with _context(f"--import {module}: "):
            imported[module] = importlib.import_module(module)

    # The thresholds entry: --name, else the model's own name (a registered name, or the spec as given).
    name = args.name or args.model
    path = Path(resolve("thresholds", flag=args.thresholds, flag_name=SETTINGS["thresholds"].cli).value)
    existing = None
    if path.is_file():
        with _context("fix the thresholds file first:\n"):
            existing = load_thresholds(path, known_models=set(list_models()) | {name})
    if args.distortion:
        chosen = distortion_levels(args.distortion)  # after --import: registered distortions are known
        conditions = [Condition(d, v) for d, levels in chosen.items() for v in levels or DISTORTIONS[d].levels]
    elif args.all_levels or existing is None or not existing.for_model(name):
        conditions = [Condition(distortion, level) for distortion, spec in DISTORTIONS.items() for level in spec.levels]
    else:
        conditions = [t.condition for t in existing.for_model(name) if t.condition.distortion != CLEAN]
    conditions = [Condition(CLEAN, 0)] + [c for c in dict.fromkeys(conditions) if c.distortion != CLEAN]
    resolve_settings(args, existing)
    images, data, seed = args.images, args.data, args.seed
    with _context(suffix=lambda error: _fixture_hint(args.model, imported)):
        full = load_dataset(data, classes=args.classes)
        dataset = full.limit(images)
        biased = coverage_problem(full, dataset)
        if biased:  # the gate refuses this sample too: bars measured on it would judge one class
            raise CommandError(f"{images} images: {biased}")
        model = load_model(args.model, device=args.device, preprocessing=args.preprocessing, model_name=args.name)
        model, dataset = _match_classes(args, model, dataset)
    allowed = applicable_metrics(len(dataset.classes))
    if existing is not None:  # its bars are recalculated: one that cannot be measured is the gate's error
        with _context("fix the thresholds file first:\n"):
            check_metrics(
                dataclasses.replace(existing, entries=existing.for_model(name)),
                len(dataset.classes),
                dataset.classes.source,
            )
    if args.metric and not set(args.metric) <= set(allowed):
        raise CommandError(
            f"--metric {', '.join(sorted(set(args.metric) - set(allowed)))} needs more classes than its k (top-k); "
            f"the dataset has {dataset.classes.describe()}"
        )
    if args.name is None and model.name != args.model and args.model in list_models():
        name = model.name  # a registered model with --preprocessing is another model: NAME+custom-preprocessing
    print(
        f"calibrating {name} on {len(dataset)} images from {dataset.root}: clean + {len(conditions) - 1} "
        f"distortion levels, margin {args.margin:g}"
    )
    cache = None if args.no_cache else PredictionCache(args.cache_dir)
    results = evaluate(
        model,
        dataset,
        conditions,
        seed=seed,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        pipeline=args.pipeline,
        progress=not args.no_progress,
        cache=cache,
        allow_tf32=args.allow_tf32,
        engine=args.engine,
        ray_address=args.ray_address,
    )
    for result in results:
        result.model = name
    print(format_table(results))
    measured = {r.condition: {m: r.metric(m) for m in allowed} for r in results}
    old, new = update_thresholds_file(
        path,
        name,
        measured,
        margin=args.margin,
        metrics=args.metric,
        defaults={"images": images, "seed": seed},
        write=not args.dry_run,
    )
    if existing is not None and existing.images is not None and existing.images != len(dataset):
        print(f"note: calibrated on {len(dataset)} images, but {path} sets defaults.images: {existing.images}")
    diff = "".join(
        difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{path} (before)", f"{path} (after)")
    )
    print(diff if diff else f"{path}: no change")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    if not args.no_baseline:
        folder = Path(args.baseline_dir) if args.baseline_dir else path.parent / DEFAULT_BASELINE_DIR
        written = save_baseline(results, folder, seed=seed, model=name)
        print(f"stored baseline predictions for the paired check in {folder} ({len(written)} files)")
    print(f"wrote {path}")
    return 0


def _fixture_hint(model: str, imported: dict) -> str:
    """For ``calibrate``: when ``model`` is not a registered name, say that a model a conftest.py provides
    as the ``robustness_model`` pytest fixture is only visible to pytest (``""`` otherwise)."""
    from .models import list_models

    if model in list_models() or ":" in model or Path(model).expanduser().is_file():
        return ""
    defining = [name for name, module in imported.items() if hasattr(module, "robustness_model")]
    where = (
        f"{', '.join(defining)} defines a robustness_model pytest fixture, but"
        if defining
        else "if a conftest.py provides it as the robustness_model pytest fixture,"
    )
    return (
        f"\n{where} calibrate cannot run pytest fixtures: calibrate that model with "
        f"`pytest --robustness-update-thresholds` (it measures and rewrites the thresholds of the models the "
        f"gate runs), or register it with robustness.register_model in a module and pass --import MODULE"
    )


def _add_calibrate(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="measure a model and write its thresholds (measured - margin) into thresholds.yaml",
        description="Measure MODEL and write its thresholds: measured accuracy minus --margin, floored to 3 "
        "decimals. Other models' entries and the file's comments are kept; the entry's existing "
        "bar keys are recalculated (relative bars stay relative); a diff is shown. Per-image "
        "predictions are stored as the baseline for the paired (McNemar) check.",
    )
    calibrate.add_argument(
        "--model",
        required=True,
        help="registered model name (see 'robustness list' and --import), torchvision:ARCH, timm:NAME, a TorchScript file or module:function",
    )
    calibrate.add_argument(
        "--preprocessing",
        default=None,
        help="how the model was trained (required for module:function and files): preset (torchvision, caffe, inception, efficientnet_lite) and/or key=value fields",
    )
    calibrate.add_argument(
        "--name", default=None, help="the model's name in thresholds.yaml and the baseline (default: --model as given)"
    )
    add_settings_options(calibrate, ("thresholds", "margin", "baseline_dir"), title="thresholds file", file=True)
    add_settings_options(calibrate, ("engine", "ray_address"), title="cluster (Ray)")
    calibrate.add_argument(
        "--distortion",
        action="append",
        metavar="NAME[=LEVELS]",
        help=DISTORTION_HELP
        + "; default: the levels the file lists for the model, or every paper level for a new model",
    )
    calibrate.add_argument(
        "--all-levels",
        action="store_true",
        help="calibrate every default (paper) level of every distortion, including those registered by --import",
    )
    calibrate.add_argument(
        "--metric",
        action="append",
        choices=list(METRICS),
        help="bars for new entries (repeatable; default top1; topK needs more than K classes)",
    )
    calibrate.add_argument(
        "--import",
        dest="import_",
        action="append",
        metavar="MODULE",
        help="import MODULE first (e.g. one that calls register_model)",
    )
    calibrate.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    calibrate.add_argument("--no-baseline", action="store_true", help="do not store baseline predictions")
    _add_groups(calibrate, file=True)
    calibrate.set_defaults(func=_cmd_calibrate)


# ------------------------------------------------------------- report and activations


def _add_run_report_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--no-report",
        action="store_true",
        help="do not write report.html (predictions.npz and provenance.json are always written)",
    )
    run.add_argument(
        "--thresholds", default=None, metavar="FILE", help="thresholds.yaml whose verdicts the report shows"
    )


def _write_run_report(args, model, dataset, results, output: Path, label: str = "") -> int:
    """After ``run``: per-image predictions + provenance, then report.html unless ``--no-report``;
    each "wrote" line starts with ``label`` (the model's name when a run has several)."""
    import json

    from ._io import atomic_write
    from .cache import device_identity
    from .evaluation import inference_device, inference_settings
    from .runs import run_provenance, write_predictions

    device = inference_device(model, args.device)  # the device evaluate chose (issue 12)
    with inference_settings(device, allow_tf32=args.allow_tf32):
        identity = {**device_identity(device), "dtype": str(getattr(model, "input_dtype", None))}
    provenance = run_provenance(
        model,
        dataset,
        seed=args.seed,
        thresholds=args.thresholds,
        device=identity,
        pipeline=results[0].pipeline if results else None,
    )
    write_predictions(results, output / "predictions.npz", provenance)
    atomic_write(output / "provenance.json", (json.dumps(provenance, indent=2) + "\n").encode())
    print(f"{label}wrote {output / 'predictions.npz'} and {output / 'provenance.json'}")
    if args.no_report:
        return 0
    from .html_report import write_report

    with _context("report: "):
        path = write_report([output], output / "report.html", thresholds=args.thresholds)
    print(f"{label}wrote {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .html_report import write_report

    output = Path(args.output) if args.output else Path(args.results[0]) / "report.html"
    path = write_report(
        args.results,
        output,
        thresholds=args.thresholds,
        baseline=args.baseline,
        data=args.data,
        examples=args.examples,
    )
    print(f"wrote {path}")
    return 0


def _cmd_activations(args: argparse.Namespace) -> int:
    from .activations import main_activations

    resolve_settings(args)
    return main_activations(args)


def _add_report_commands(commands) -> None:
    report = commands.add_parser("report", help="write a self-contained HTML report from one or more run folders")
    report.add_argument(
        "results",
        nargs="+",
        help="run folder(s) holding results.json (or a folder of run folders); several models share the axes",
    )
    report.add_argument(
        "--output", "-o", default=None, help="HTML file to write; default RESULTS/report.html (first folder)"
    )
    report.add_argument(
        "--thresholds", default=None, metavar="FILE", help="thresholds.yaml: show pass/fail and margin per level"
    )
    report.add_argument(
        "--baseline", default=None, help="model whose errors normalise the corruption error (default: the first model)"
    )
    report.add_argument(
        "--data",
        default=None,
        help="image folder for the example strips (default: the dataset root recorded by the run)",
    )
    report.add_argument(
        "--examples", type=non_negative_int, default=1, help="example images per distortion (default %(default)s)"
    )
    report.set_defaults(func=_cmd_report)

    activations = commands.add_parser(
        "activations", help="compare conv-layer feature maps, clean vs distorted (the paper's Fig. 4-5)"
    )
    add_activations_arguments(activations)
    activations.set_defaults(func=_cmd_activations)


def add_activations_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``robustness activations`` (:func:`robustness.activations.main_activations` reads them)."""
    parser.add_argument("--model", default="efficientnet_lite0", help="registered model name (default %(default)s)")
    parser.add_argument(
        "--image",
        default=None,
        help="one image file, or an image id inside --data (default: the dataset's first image)",
    )
    parser.add_argument(
        "--average-over",
        type=positive_int,
        default=1,
        metavar="N",
        help="average the per-layer numbers over the first N dataset images (the figure shows the first); "
        "default %(default)s",
    )
    for old, new in COMMAND_ALIASES["activations"].items():
        add_deprecated_alias(parser, old, new, new[2:].replace("-", "_"), type=positive_int, metavar="N")
    parser.add_argument(
        "--distortion", action="append", choices=list(DISTORTION_NAMES), help="repeatable; default blur and noise"
    )
    parser.add_argument(
        "--levels",
        type=float,
        nargs="+",
        default=None,
        help="levels (with one --distortion); default three of the paper's: blur 1 3 5, noise 20 50 100, others first/middle/last",
    )
    parser.add_argument(
        "--channels", type=positive_int, default=16, help="channels per grid in the figure (default 16)"
    )
    parser.add_argument("--output", default=None, help="output folder (default runs/activations-<model>)")
    add_settings_options(parser, ("data", "seed"), title="images")
    add_settings_options(parser, ("device", "allow_tf32"), title="engine")


def build_parser() -> argparse.ArgumentParser:
    """The ``robustness`` argument parser (built without importing torch or numpy)."""
    parser = argparse.ArgumentParser(
        prog="robustness",
        description="How image-quality distortions degrade image classifiers: ImageNet-1k by default (Dodge & Karam 2016), or your own classes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="evaluate a model under the distortions and write results.json + a figure")
    run.add_argument(
        "--model",
        action="append",
        default=None,
        help="registered model name (see 'robustness list'), torchvision:ARCH, timm:NAME (pip install '.[timm]'), a TorchScript or state-dict file, or module:function; default "
        + DEFAULT_RUN_MODEL
        + ". Repeatable: --model a --model b evaluates several models in one run, each image and condition "
        "distorted once for all of them, one run folder per model (--output DIR: DIR/<model>/ and a report.html "
        "of all models); --weights, --arch, --preprocessing, --background-class and --name then refuse",
    )
    run.add_argument(
        "--distortion",
        action="append",
        metavar="NAME[=LEVELS]",
        help=DISTORTION_HELP + "; default: all five at the paper's levels",
    )
    run.add_argument(
        "--output",
        default=None,
        help="output folder; default a fresh runs/<model>-<timestamp>. With several --model: the folder that "
        "holds one run folder per model (DIR/<model>/) and report.html of all of them; default a fresh "
        "runs/<model>-<timestamp> per model",
    )
    _add_groups(run)
    add_settings_options(run, ("engine", "ray_address"), title="cluster (Ray)")
    _add_model_dataset_options(run)
    run.set_defaults(func=_cmd_run)
    _add_run_report_options(run)
    _add_report_commands(commands)

    lister = commands.add_parser(
        "list", help="list the built-in models (are their weights here, where do they come from) and the distortions"
    )
    lister.add_argument(
        "--models-dir",
        default=None,
        help="folder of shared weight files (default $ROBUSTNESS_MODELS or ../shared/models)",
    )
    lister.set_defaults(func=_cmd_list)

    _add_calibrate(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``robustness`` console script and of ``python -m robustness``.

    Returns the exit status: 0, or 2 after printing ``robustness COMMAND: MESSAGE`` for a
    :class:`CommandError` or any of :data:`USER_ERRORS` a command raises (the only place that does). argparse exits (``SystemExit``, status 2) on a usage error, and on ``--help``
    and ``--version`` (status 0).
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, *USER_ERRORS) as error:  # the one place bad input becomes exit status 2
        message = str(error)
    # printed outside the except block, so nothing chains onto the error
    print(f"robustness {args.command}: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
