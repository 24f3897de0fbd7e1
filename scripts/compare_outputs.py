"""No number changes: snapshot what a commit's code outputs, and compare two snapshots (issue 10).

A refactor must not change any result. This script runs, for any commit of this repository, the README's
main job, the release gate and the report, and compares the outputs of two commits on every number, verdict
and table cell; only the fields listed below (timing, timestamps, paths, code/version provenance) may differ.

Usage::

    python scripts/compare_outputs.py snapshot --rev REV --out DIR [--limit N]
    python scripts/compare_outputs.py compare DIR_A DIR_B [--ignore ARTEFACT:FIELD ...]
    python scripts/compare_outputs.py REV_A REV_B [--limit N] [--out DIR]     # snapshot both + compare

``snapshot`` makes a temporary ``git worktree`` of REV (removed afterwards, also on failure or Ctrl-C), puts a
``shared`` link next to it (so the project's default ``../shared/data/imagenet-val-1024`` and
``../shared/models`` resolve as in a normal checkout), and runs there, with this interpreter
(``sys.executable``) and ``PYTHONPATH=<worktree>`` (checked: ``robustness.__file__`` lies in the worktree):

1. the README main job: ``robustness run --model efficientnet_lite0 --limit N --output DIR/run`` (``--images``
   instead of ``--limit`` when that commit's ``run --help`` lists it), with a fresh prediction cache
   ``DIR/cache``;
2. the release gate: ``python -m pytest tests/test_release_gate.py --junitxml=DIR/gate.xml`` with the same
   cache folder (it reuses the run's predictions where the cache keys agree; the cache verifies a sample);
3. ``robustness report DIR/run --thresholds thresholds.yaml --output DIR/report.html``.

Each step's output goes to ``DIR/<step>.log``; ``DIR/snapshot.json`` records the commit, the paths (so
``compare`` can blank them), the commands and their exit codes. ``$ROBUSTNESS_*`` variables of the caller
are not passed on (the commit's own defaults apply), except ``ROBUSTNESS_CACHE_DIR=DIR/cache``.

``compare`` exits 0 when the two snapshots agree, 1 on any difference (the first ones are printed, each
naming the file and field), 2 when a snapshot is missing or unreadable. What it compares:

* ``run/results.json``: every record (keyed by model, distortion, level) and every field, exactly, with JSON
  types (``1`` vs ``1.0`` is a difference), and the records' order;
* ``run/predictions.npz``: every array, element by element (the per-image top-5 answers), and its ``meta``;
* ``run/provenance.json``: every field but those in ``PROVENANCE_VOLATILE``; paths are blanked;
* ``gate.xml``: the set of test cases, each one's outcome, failure/skip message and JUnit properties (the
  measured accuracies, intervals and thresholds the plugin records); durations are not read;
* ``report.html`` and ``run/report.html``: the text after blanking embedded images, paths, ISO timestamps
  and the provenance rows in ``REPORT_VOLATILE_ROWS``; the embedded images are decoded with Pillow and
  compared pixel by pixel (matplotlib writes its version into PNG metadata); ``run/accuracy_vs_level.png``
  likewise;
* each step's exit code.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import difflib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The README's first command: `robustness run --model efficientnet_lite0 --limit 200`.
MAIN_JOB_MODEL = "efficientnet_lite0"
MAIN_JOB_LIMIT = 200
SNAPSHOT_FORMAT = 1

# Fields that legitimately differ between two runs of the same numbers. Each is named; nothing else is
# skipped. Dotted names reach into nested objects. Add a field on the command line with
# --ignore ARTEFACT:FIELD (printed in the summary) rather than widening these lists silently.
RESULTS_VOLATILE: frozenset[str] = frozenset()  # results.json holds measurements only (model..tolerance_misses)
PROVENANCE_VOLATILE: frozenset[str] = frozenset(
    {
        "date",  # when the run ended (UTC)
        "command",  # argv: the interpreter's path, the output folder, --limit vs --images
        "versions.robustness",  # the package version: code provenance
    }
)
GATE_VOLATILE: frozenset[str] = frozenset()  # JUnit properties; the thresholds file's path is blanked, not skipped
# Provenance rows of the HTML report (the <th> text) whose value is blanked.
REPORT_VOLATILE_ROWS: tuple[str, ...] = ("date (UTC)", "versions", "command")
# Snapshot settings that must agree for two snapshots to be comparable at all.
SETTINGS = ("model", "limit", "distortions", "gate_args")

ISO_TIMESTAMP = re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp);base64,([A-Za-z0-9+/=\s]+)")


class SnapshotError(Exception):
    """A snapshot folder is missing, incomplete or unreadable, or a step of ``snapshot`` failed."""


# --------------------------------------------------------------------------------------------- snapshot


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SnapshotError(f"git {' '.join(args)} (in {repo}) failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _child_env(worktree: Path, cache: Path) -> dict[str, str]:
    """The environment of every step: the caller's, without ``ROBUSTNESS_*`` and ``PYTHONPATH``, plus
    ``PYTHONPATH=<worktree>``, ``ROBUSTNESS_CACHE_DIR=<cache>`` and ``HF_HUB_OFFLINE=1`` unless set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBUSTNESS_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(worktree)
    env["ROBUSTNESS_CACHE_DIR"] = str(cache)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _step(name: str, command: list[str], cwd: Path, env: dict[str, str], out: Path) -> dict[str, Any]:
    """Run one step, its stdout and stderr into ``out/<name>.log``; return its record for snapshot.json."""
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.monotonic()
    with open(out / f"{name}.log", "wb") as log:
        returncode = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = round(time.monotonic() - start, 1)
    print(f"[{name}] exit code {returncode} after {seconds} s (log: {out / f'{name}.log'})", flush=True)
    return {"name": name, "command": command, "returncode": returncode, "seconds": seconds}


def _help_lists(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def snapshot(
    rev: str,
    out: Path,
    limit: int = MAIN_JOB_LIMIT,
    *,
    repo: Path = ROOT,
    shared: Path | None = None,
    distortions: Sequence[str] = (),
    gate_args: Sequence[str] = (),
    python: str = sys.executable,
) -> int:
    """Run the main job, the gate and the report of commit ``rev`` into ``out`` (see the module docstring).

    Args:
        rev: any commit-ish of ``repo`` (``fd6f937``, ``main``, ``HEAD~2``); uncommitted changes are not seen.
        out: the snapshot folder; must not exist or be empty.
        limit: images of the main job (the README's 200).
        repo: the git repository holding ``rev``.
        shared: the folder a checkout sees as ``../shared`` (data and models); default ``<repo>/../shared``.
        distortions: restrict the main job to these (``--distortion``, for quick checks); default all.
        gate_args: extra pytest arguments for the gate (e.g. ``-m clean``, for quick checks); default none.
        python: the interpreter that runs every step.

    Returns:
        0 when the run and the report succeeded and pytest ended with 0 or 1 (1 = some gate case failed,
        itself a verdict to compare); 1 otherwise. The worktree is removed in every case.

    Raises:
        SnapshotError: ``rev`` is unknown, ``out`` is not empty, ``shared`` is missing, or the worktree's
            ``robustness`` is not the one imported.
    """
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        raise SnapshotError(f"--out {out}: folder is not empty; give a new folder")
    commit = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
    shared = (shared if shared is not None else repo / ".." / "shared").resolve()
    if not shared.is_dir():
        raise SnapshotError(f"shared folder {shared} (data and models, seen as ../shared) does not exist")
    out.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix=f"compare-outputs-{commit[:7]}-"))
    worktree = parent / "repo"
    cache = out / "cache"
    manifest: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "rev": rev,
        "commit": commit,
        "worktree": str(worktree),
        "out": str(out),
        "shared": str(shared),
        "python": python,
        "model": MAIN_JOB_MODEL,
        "limit": limit,
        "distortions": list(distortions),
        "gate_args": list(gate_args),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "steps": [],
    }
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None  # kill: still clean up
    try:
        (parent / "shared").symlink_to(shared, target_is_directory=True)
        _git(repo, "worktree", "add", "--detach", str(worktree), commit)
        env = _child_env(worktree, cache)
        where = subprocess.run(
            [python, "-c", "import robustness; print(robustness.__file__)"],
            cwd=worktree,
            env=env,
            capture_output=True,
            text=True,
        )
        imported = Path(where.stdout.strip() or "?").resolve()
        if where.returncode != 0 or worktree.resolve() not in imported.parents:
            raise SnapshotError(
                f"the worktree's code is not what runs: `import robustness` gave {imported} "
                f"(expected under {worktree}): {where.stderr.strip()}"
            )
        manifest["robustness_file"] = str(imported)
        run_help = subprocess.run(
            [python, "-m", "robustness", "run", "--help"], cwd=worktree, env=env, capture_output=True, text=True
        ).stdout
        image_flag = "--images" if _help_lists(run_help, "--images") else "--limit"
        manifest["image_flag"] = image_flag
        run = [python, "-m", "robustness", "run", "--model", MAIN_JOB_MODEL, image_flag, str(limit)]
        run += ["--output", str(out / "run")]
        if _help_lists(run_help, "--cache-dir"):
            run += ["--cache-dir", str(cache)]
        for name in distortions:
            run += ["--distortion", name]
        steps = manifest["steps"]
        steps.append(_step("run", run, worktree, env, out))
        gate = [python, "-m", "pytest", "tests/test_release_gate.py", "-p", "no:cacheprovider", "-rfEs"]
        gate += [f"--junitxml={out / 'gate.xml'}", "-o", "junit_family=xunit2", *gate_args]
        steps.append(_step("gate", gate, worktree, env, out))
        report = [python, "-m", "robustness", "report", str(out / "run"), "--thresholds", "thresholds.yaml"]
        report += ["--output", str(out / "report.html")]
        steps.append(_step("report", report, worktree, env, out))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        manifest["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        _write_json(out / "snapshot.json", manifest)
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
    codes = {s["name"]: s["returncode"] for s in manifest["steps"]}
    ok = codes.get("run") == 0 and codes.get("report") == 0 and codes.get("gate") in (0, 1)
    print(f"snapshot of {rev} ({commit[:12]}) in {out}: " + ", ".join(f"{k} exit {v}" for k, v in codes.items()))
    return 0 if ok else 1


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _write_json(path: Path, value: Any) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from robustness._io import atomic_write

    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------- compare


class Snapshot:
    """A snapshot folder, with the paths ``snapshot.json`` recorded (blanked before comparing)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SnapshotError(f"{self.folder}: no such snapshot folder")
        manifest_path = self.folder / "snapshot.json"
        self.manifest: dict[str, Any] = {}
        if manifest_path.is_file():
            try:
                self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SnapshotError(f"{manifest_path}: unreadable ({exc})") from exc
        paths = {
            "<worktree>": self.manifest.get("worktree"),
            "<out>": self.manifest.get("out") or str(self.folder.resolve()),
            "<shared>": self.manifest.get("shared"),
        }
        pairs = []
        for placeholder, value in paths.items():
            if value:
                pairs.append((value, placeholder))
                if os.path.realpath(value) != value:
                    pairs.append((os.path.realpath(value), placeholder))
        # The worktree's parent holds the `shared` link: <worktree>/../shared reads as <shared>.
        if self.manifest.get("worktree"):
            pairs.append((str(Path(self.manifest["worktree"]).parent / "shared"), "<shared>"))
        self.paths = sorted(pairs, key=lambda p: -len(p[0]))  # longest first: /a/b before /a

    def blank_paths(self, text: str) -> str:
        """``text`` with this snapshot's worktree, output and shared folders replaced by placeholders."""
        for value, placeholder in self.paths:
            text = text.replace(value, placeholder)
        return text

    def path(self, name: str) -> Path:
        return self.folder / name


class Differences:
    """The differences found, per artefact, in the order found."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.checked: list[str] = []

    def add(self, artefact: str, message: str) -> None:
        self.items.append((artefact, message))

    def __len__(self) -> int:
        return len(self.items)

    def count(self, artefact: str) -> int:
        return sum(1 for a, _ in self.items if a == artefact)


def _ignored(ignore: Iterable[str], artefact: str) -> set[str]:
    return {item.split(":", 1)[1] for item in ignore if item.split(":", 1)[0] == artefact}


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}.get(type(value), "")


def _compare_values(a: Any, b: Any, where: str, skip: set[str], diff: Differences, artefact: str) -> None:
    """Compare two JSON values exactly (types included), recursing into objects and arrays; the dotted
    field names in ``skip`` are not compared."""
    if where in skip:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{where}.{key}" if where else str(key)
            if sub in skip:
                continue
            if key not in b:
                diff.add(artefact, f"{sub}: only in A ({a[key]!r})")
            elif key not in a:
                diff.add(artefact, f"{sub}: only in B ({b[key]!r})")
            else:
                _compare_values(a[key], b[key], sub, skip, diff, artefact)
        if [k for k in a if k in b] != [k for k in b if k in a]:
            diff.add(artefact, f"{where or '(top)'}: fields in another order: {list(a)} vs {list(b)}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diff.add(artefact, f"{where}: {len(a)} items vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _compare_values(x, y, f"{where}[{i}]", skip, diff, artefact)
    elif type(a) is not type(b) or a != b:
        if a == b:  # 1 vs 1.0, True vs 1
            diff.add(artefact, f"{where}: {a!r} ({_type_name(a)}) vs {b!r} ({_type_name(b)})")
        elif not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):  # NaN == NaN here
            diff.add(artefact, f"{where}: {a!r} vs {b!r}")


def _load_json(snap: Snapshot, name: str) -> Any:
    path = snap.path(name)
    try:
        return json.loads(snap.blank_paths(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: unreadable ({exc})") from exc


def _record_key(record: dict) -> str:
    return f"{record.get('model')}/{record.get('distortion')}/{record.get('level')!r}"


def compare_results(a: Snapshot, b: Snapshot, diff: Differences, ignore: Iterable[str] = ()) -> None:
    """``run/results.json``: the same records (by model/distortion/level), in the same order, with every
    field equal except ``RESULTS_VOLATILE`` and ``--ignore results:FIELD``."""
    artefact = "results.json"
    skip = set(RESULTS_VOLATILE) | _ignored(ignore, "results")
    ra, rb = _load_json(a, "run/results.json"), _load_json(b, "run/results.json")
    if not (isinstance(ra, list) and isinstance(rb, list)):
        _compare_values(ra, rb, "", skip, diff, artefact)
        return
    ka, kb = [_record_key(r) for r in ra], [_record_key(r) for r in rb]
    by_a, by_b = dict(zip(ka, ra)), dict(zip(kb, rb))
    for key in ka:
        if key not in by_b:
            diff.add(artefact, f"record {key}: only in A")
    for key in kb:
        if key not in by_a:
            diff.add(artefact, f"record {key}: only in B")
    for key in ka:
        if key in by_b:
            for field in list(by_a[key]) + [f for f in by_b[key] if f not in by_a[key]]:
                if field in skip:
                    continue
                if field not in by_b[key] or field not in by_a[key]:
                    side = "A" if field in by_a[key] else "B"
                    diff.add(artefact, f"record {key}: field {field} only in {side}")
                else:
                    _compare_values(by_a[key][field], by_b[key][field], f"record {key}: {field}", set(), diff, artefact)
    common = [k for k in ka if k in by_b]
    if common != [k for k in kb if k in by_a]:
        diff.add(artefact, "the records are in another order")


def compare_provenance(a: Snapshot, b: Snapshot, diff: Differences, ignore: Iterable[str] = ()) -> None:
    """``run/provenance.json``: every field but ``PROVENANCE_VOLATILE``, paths blanked."""
    skip = set(PROVENANCE_VOLATILE) | _ignored(ignore, "provenance")
    _compare_values(
        _load_json(a, "run/provenance.json"), _load_json(b, "run/provenance.json"), "", skip, diff, "provenance.json"
    )


def compare_predictions(a: Snapshot, b: Snapshot, diff: Differences, ignore: Iterable[str] = ()) -> None:
    """``run/predictions.npz``: the same arrays, equal in dtype, shape and every element; ``meta`` (a JSON
    string holding the provenance) compared like ``provenance.json``."""
    import numpy as np

    artefact = "predictions.npz"
    skip = {f"provenance.{name}" for name in PROVENANCE_VOLATILE | _ignored(ignore, "provenance")}
    skip |= _ignored(ignore, "predictions")
    arrays = []
    for snap in (a, b):
        path = snap.path("run/predictions.npz")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays.append({name: data[name] for name in data.files})
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"{path}: unreadable ({exc})") from exc
    pa, pb = arrays
    for name in list(pa) + [n for n in pb if n not in pa]:
        if name in skip:
            continue
        if name not in pa or name not in pb:
            diff.add(artefact, f"array {name}: only in {'A' if name in pa else 'B'}")
            continue
        x, y = pa[name], pb[name]
        if name == "meta" and x.shape == () and y.shape == ():
            ma, mb = (json.loads(s.blank_paths(str(v))) for s, v in ((a, x), (b, y)))
            _compare_values(ma, mb, "meta", {f"meta.{k}" for k in skip}, diff, artefact)
        elif x.dtype != y.dtype or x.shape != y.shape:
            diff.add(artefact, f"array {name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        elif not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            where = np.argwhere(x != y)
            first = tuple(int(i) for i in where[0])
            diff.add(
                artefact,
                f"array {name}: {len(where)} elements differ, first at {list(first)}: {x[first]!r} vs {y[first]!r}",
            )


def _gate_cases(snap: Snapshot) -> dict[str, dict[str, Any]]:
    """``{classname::name: {outcome, message, properties}}`` from a JUnit XML file (paths blanked)."""
    path = snap.path("gate.xml")
    try:
        root = ET.fromstring(path.read_text(encoding="utf-8"))
    except (OSError, ET.ParseError) as exc:
        raise SnapshotError(f"{path}: unreadable ({exc})") from exc
    cases: dict[str, dict[str, Any]] = {}
    for case in root.iter("testcase"):
        key = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome, message = tag, element.get("message")
                break
        if message is not None:
            message = snap.blank_paths(message)
        properties = {p.get("name"): snap.blank_paths(p.get("value") or "") for p in case.iter("property")}
        if key in cases:
            raise SnapshotError(f"{path}: test case {key} appears twice")
        cases[key] = {"outcome": outcome, "message": message, "properties": properties}
    return cases


def compare_gate(a: Snapshot, b: Snapshot, diff: Differences, ignore: Iterable[str] = ()) -> None:
    """``gate.xml``: the same test cases, each with the same outcome (passed, failure, error, skipped),
    message and JUnit properties (except ``GATE_VOLATILE`` and ``--ignore gate:NAME``); durations unread."""
    artefact = "gate.xml"
    skip = set(GATE_VOLATILE) | _ignored(ignore, "gate")
    ca, cb = _gate_cases(a), _gate_cases(b)
    for key in ca:
        if key not in cb:
            diff.add(artefact, f"{key}: only in A ({ca[key]['outcome']})")
    for key in cb:
        if key not in ca:
            diff.add(artefact, f"{key}: only in B ({cb[key]['outcome']})")
    for key, x in ca.items():
        y = cb.get(key)
        if y is None:
            continue
        if x["outcome"] != y["outcome"]:
            diff.add(artefact, f"{key}: {x['outcome']} vs {y['outcome']}")
        if x["message"] != y["message"]:
            diff.add(artefact, f"{key}: message differs:\n{_line_diff(x['message'] or '', y['message'] or '')}")
        props = {k: v for k, v in x["properties"].items() if k not in skip}
        other = {k: v for k, v in y["properties"].items() if k not in skip}
        _compare_values(props, other, f"{key} property", set(), diff, artefact)
    if not ca and not cb:
        diff.add(artefact, "no test case in either file: the gate did not run")


def _decode_image(data: bytes, where: str) -> tuple[str, tuple[int, int], bytes]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.mode, image.size, image.tobytes()
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{where}: an embedded image does not decode ({exc})") from exc


def normalise_report(html: str, snap: Snapshot) -> tuple[str, list[bytes]]:
    """Blank the volatile parts of a report: returns (text, embedded image bytes in order).

    Replaced, and nothing else: each ``data:image/...;base64,...`` by ``<image k>`` (the bytes are
    returned, to be compared as decoded pixels); this snapshot's paths by ``<worktree>``, ``<out>``,
    ``<shared>``; the value cell of each provenance row in ``REPORT_VOLATILE_ROWS``; ISO 8601 date-times
    (``2026-11-30T12:02:37+00:00``) by ``<timestamp>``. A number in a table cell is never touched.
    """
    images: list[bytes] = []

    def take(match: re.Match) -> str:
        images.append(base64.b64decode(re.sub(r"\s", "", match.group(2))))
        return f"data:image/{match.group(1)};base64,<image {len(images)}>"

    text = DATA_IMAGE.sub(take, html)
    text = snap.blank_paths(text)
    for label in REPORT_VOLATILE_ROWS:
        text = re.sub(
            rf"(<th[^>]*>{re.escape(label)}</th>\s*<td[^>]*>)(.*?)(</td>)",
            lambda m: m.group(1) + "<volatile>" + m.group(3),
            text,
            flags=re.DOTALL,
        )
    text = ISO_TIMESTAMP.sub("<timestamp>", text)
    return text, images


def _line_diff(a: str, b: str, context: int = 0, limit: int = 12) -> str:
    """The first differing lines, each cut to the differing part with a little context on either side."""
    lines = list(difflib.unified_diff(a.splitlines(), b.splitlines(), "A", "B", n=context, lineterm=""))[2:]
    shown = []
    for line in lines[:limit]:
        shown.append("    " + (line if len(line) <= 200 else _cut(line)))
    if len(lines) > limit:
        shown.append(f"    ... {len(lines) - limit} more diff lines")
    return "\n".join(shown)


def _cut(line: str) -> str:
    return line[:1] + "..." + line[-197:] if line.startswith("@") else line[:200] + "..."


def _first_difference(a: str, b: str) -> str:
    """``a`` and ``b`` around the first character where they differ (for long one-line HTML rows)."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, i - 80)
    return f"    A: ...{a[start : i + 80]}...\n    B: ...{b[start : i + 80]}..."


def compare_report(a: Snapshot, b: Snapshot, name: str, diff: Differences) -> None:
    """One HTML report: equal text after :func:`normalise_report`, and pixel-equal embedded images."""
    texts = []
    for snap in (a, b):
        path = snap.path(name)
        try:
            texts.append(normalise_report(path.read_text(encoding="utf-8"), snap))
        except OSError as exc:
            raise SnapshotError(f"{path}: unreadable ({exc})") from exc
    (ta, ia), (tb, ib) = texts
    if ta != tb:
        la, lb = ta.splitlines(), tb.splitlines()
        first = next((k for k, (x, y) in enumerate(zip(la, lb)) if x != y), None)
        where = f"line {first + 1}:\n{_first_difference(la[first], lb[first])}" if first is not None else ""
        diff.add(name, f"text differs at {where or 'the end'}\n{_line_diff(ta, tb)}")
    if len(ia) != len(ib):
        diff.add(name, f"{len(ia)} embedded images vs {len(ib)}")
    for k, (x, y) in enumerate(zip(ia, ib), start=1):
        if x != y:
            px, py = _decode_image(x, f"{a.path(name)} <image {k}>"), _decode_image(y, f"{b.path(name)} <image {k}>")
            if px != py:
                diff.add(name, f"<image {k}>: pixels differ ({px[0]} {px[1]} vs {py[0]} {py[1]})")


def compare_png(a: Snapshot, b: Snapshot, name: str, diff: Differences) -> None:
    """A PNG file: equal decoded pixels (mode, size and every value); metadata is not compared."""
    images = []
    for snap in (a, b):
        path = snap.path(name)
        try:
            images.append(_decode_image(path.read_bytes(), str(path)))
        except OSError as exc:
            raise SnapshotError(f"{path}: unreadable ({exc})") from exc
    if images[0] != images[1]:
        diff.add(name, "pixels differ")


def compare_steps(a: Snapshot, b: Snapshot, diff: Differences) -> None:
    """``snapshot.json``: the same settings (model, limit, ...) and the same exit code for each step."""
    for key in SETTINGS:
        if a.manifest.get(key) != b.manifest.get(key):
            diff.add("snapshot.json", f"setting {key}: {a.manifest.get(key)!r} vs {b.manifest.get(key)!r}")
    codes_a = {s["name"]: s["returncode"] for s in a.manifest.get("steps", [])}
    codes_b = {s["name"]: s["returncode"] for s in b.manifest.get("steps", [])}
    if codes_a != codes_b:
        diff.add("snapshot.json", f"exit codes: {codes_a} vs {codes_b}")


# Without these, a snapshot proves nothing: missing from both is a difference too.
REQUIRED = ("results.json", "gate.xml", "report.html")
ARTEFACTS = (
    ("snapshot.json", "snapshot.json"),
    ("results.json", "run/results.json"),
    ("predictions.npz", "run/predictions.npz"),
    ("provenance.json", "run/provenance.json"),
    ("gate.xml", "gate.xml"),
    ("report.html", "report.html"),
    ("run/report.html", "run/report.html"),
    ("run/accuracy_vs_level.png", "run/accuracy_vs_level.png"),
)


def compare(folder_a: str | os.PathLike, folder_b: str | os.PathLike, ignore: Iterable[str] = ()) -> Differences:
    """Compare two snapshot folders (see the module docstring for what, exactly).

    Args:
        folder_a, folder_b: snapshot folders written by :func:`snapshot` (or laid out the same way).
        ignore: extra ``ARTEFACT:FIELD`` names not to compare (``results``, ``provenance``, ``predictions``,
            ``gate``), on top of the module's ``*_VOLATILE`` lists.

    Returns:
        :class:`Differences`; empty when the two agree. ``checked`` lists the artefacts compared.

    Raises:
        SnapshotError: a folder is missing, a file is unreadable, or ``ignore`` is malformed. A file
            present in one snapshot only, or one of ``REQUIRED`` in neither, is a difference.
    """
    a, b = Snapshot(folder_a), Snapshot(folder_b)
    ignore = list(ignore)
    for item in ignore:
        if ":" not in item or item.split(":", 1)[0] not in ("results", "provenance", "predictions", "gate"):
            raise SnapshotError(
                f"--ignore {item!r}: expected ARTEFACT:FIELD, ARTEFACT one of results, provenance, predictions, gate"
            )
    diff = Differences()
    compare_steps(a, b, diff)
    diff.checked.append("snapshot.json")
    runners = {
        "results.json": lambda: compare_results(a, b, diff, ignore),
        "predictions.npz": lambda: compare_predictions(a, b, diff, ignore),
        "provenance.json": lambda: compare_provenance(a, b, diff, ignore),
        "gate.xml": lambda: compare_gate(a, b, diff, ignore),
        "report.html": lambda: compare_report(a, b, "report.html", diff),
        "run/report.html": lambda: compare_report(a, b, "run/report.html", diff),
        "run/accuracy_vs_level.png": lambda: compare_png(a, b, "run/accuracy_vs_level.png", diff),
    }
    for artefact, relative in ARTEFACTS[1:]:
        in_a, in_b = a.path(relative).is_file(), b.path(relative).is_file()
        if not in_a and not in_b:
            if artefact in REQUIRED:  # e.g. the run failed in both: nothing was compared, nothing proven
                diff.add(artefact, f"in neither snapshot ({relative})")
            continue
        if in_a != in_b:
            diff.add(artefact, f"only in {'A' if in_a else 'B'} ({(a if in_a else b).path(relative)})")
            continue
        runners[artefact]()
        diff.checked.append(artefact)
    return diff


def print_summary(diff: Differences, a: str, b: str, show: int = 20, ignore: Sequence[str] = ()) -> None:
    """The verdict, one line per artefact, then the first ``show`` differences."""
    print(f"A = {a}\nB = {b}")
    if ignore:
        print("not compared on request (--ignore): " + ", ".join(ignore))
    for artefact, _ in ARTEFACTS:
        if artefact in diff.checked or diff.count(artefact):
            n = diff.count(artefact)
            print(f"  {artefact:28s} {'same' if n == 0 else f'{n} difference' + ('s' if n > 1 else '')}")
    if not diff:
        print("no number changes: every compared result, verdict and report value is equal")
        return
    print(f"{len(diff)} difference{'s' if len(diff) > 1 else ''}; the first {min(show, len(diff))}:")
    for artefact, message in diff.items[:show]:
        print(f"- {artefact}: {message}")


# ------------------------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_outputs.py",
        description="Snapshot a commit's results, gate verdicts and report, and compare two snapshots "
        "(no number changes). Also: compare_outputs.py REV_A REV_B [--limit N] [--out DIR].",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot", help="run the main job, the gate and the report of one commit")
    snap.add_argument("--rev", required=True, help="commit of this repository (hash, branch, tag)")
    snap.add_argument("--out", required=True, type=Path, help="new snapshot folder")
    _snapshot_options(snap)
    comp = sub.add_parser("compare", help="compare two snapshot folders")
    comp.add_argument("a", help="snapshot folder A (before)")
    comp.add_argument("b", help="snapshot folder B (after)")
    _compare_options(comp)
    both = sub.add_parser("both", help="snapshot two commits and compare (also: compare_outputs.py REV_A REV_B)")
    both.add_argument("rev_a")
    both.add_argument("rev_b")
    both.add_argument(
        "--out", type=Path, default=None, help="folder for the two snapshots (default: a new temporary one)"
    )
    _snapshot_options(both)
    _compare_options(both)
    return parser


def _snapshot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit",
        type=int,
        default=MAIN_JOB_LIMIT,
        help=f"images of the main job (default {MAIN_JOB_LIMIT}, as the README)",
    )
    parser.add_argument("--repo", type=Path, default=ROOT, help="git repository (default: this script's)")
    parser.add_argument("--shared", type=Path, default=None, help="folder seen as ../shared (default <repo>/../shared)")
    parser.add_argument(
        "--distortion", action="append", default=[], help="quick check: run only this distortion (repeatable)"
    )
    parser.add_argument(
        "--gate-arg",
        action="append",
        default=[],
        help="quick check: extra pytest argument for the gate, e.g. --gate-arg=-mclean (repeatable)",
    )


def _compare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="ARTEFACT:FIELD",
        help="also skip this field (results:, provenance:, predictions:, gate:); printed in the summary",
    )
    parser.add_argument("--show", type=int, default=20, help="differences to print (default 20)")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``snapshot``, ``compare`` or ``REV_A REV_B``; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in ("snapshot", "compare", "both"):
        argv = ["both", *argv]
    args = _parser().parse_args(argv)
    try:
        if args.command == "snapshot":
            return snapshot(
                args.rev,
                args.out,
                args.limit,
                repo=args.repo,
                shared=args.shared,
                distortions=args.distortion,
                gate_args=args.gate_arg,
            )
        if args.command == "both":
            out = args.out or Path(tempfile.mkdtemp(prefix="compare-outputs-"))
            folders = []
            for label, rev in (("a", args.rev_a), ("b", args.rev_b)):
                folder = out / f"{label}-{re.sub(r'[^A-Za-z0-9_.-]', '_', rev)}"
                code = snapshot(
                    rev,
                    folder,
                    args.limit,
                    repo=args.repo,
                    shared=args.shared,
                    distortions=args.distortion,
                    gate_args=args.gate_arg,
                )
                if code != 0:
                    print(
                        f"snapshot of {rev} failed (see the logs in {folder}); comparing what there is", file=sys.stderr
                    )
                folders.append(folder)
            args.a, args.b = (str(f) for f in folders)
        diff = compare(args.a, args.b, args.ignore)
    except SnapshotError as exc:
        print(f"compare_outputs: {exc}", file=sys.stderr)
        return 2
    print_summary(diff, args.a, args.b, args.show, args.ignore)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
