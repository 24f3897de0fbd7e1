"""scripts/compare_outputs.py (issue 10, no number changes): ``compare`` finds every changed number, verdict
and report value, and only the listed volatile parts (paths, timestamps, versions, PNG metadata) are
blanked; ``snapshot`` runs a commit in a temporary git worktree with that commit's code and removes it.

The snapshot tests use a tiny git repository with a stand-in ``robustness`` package (no torch, no model);
the real main job runs only when ``ROBUSTNESS_COMPARE_REAL=1`` (two images, one distortion, the clean gate
case on two images).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_outputs", ROOT / "scripts" / "compare_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


co = _load_script()


# ------------------------------------------------------------------------------------- synthetic snapshots


def _png(pixels: np.ndarray, software: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", software)  # matplotlib writes its version here
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


PIXELS = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4

RECORDS = [
    {"model": "m", "distortion": "clean", "level": 0, "top1": 0.74, "top5": 0.915, "n": 200, "tolerance_misses": 0},
    {"model": "m", "distortion": "blur", "level": 1, "top1": 0.695, "top5": 0.88, "n": 200, "tolerance_misses": 0},
    {"model": "m", "distortion": "jpeg2000", "level": 30, "top1": 0.605, "top5": 0.8, "n": 200, "tolerance_misses": 3},
]


def _report(root: Path, out: Path, date: str, version: str, figure: bytes) -> str:
    """A report laid out like robustness.html_report's: numbers in cells, an image, a provenance table."""
    png = base64.b64encode(figure).decode()
    return textwrap.dedent(f"""\
        <!DOCTYPE html>
        <html><body><h1>Robustness report: m</h1>
        <p>Images per condition: 200. Most damaging: <b>blur</b>, keeps 28% of its clean top-1 (74.0%).</p>
        <table><tr><th>model</th><th>distortion</th><th>level</th><th>top-1</th><th>95% interval</th><th>n</th></tr>
        <tr><td>m</td><td>clean</td><td>clean</td><td>74.0%</td><td>67.5%&ndash;79.6%</td><td>200</td></tr>
        <tr><td>m</td><td>blur</td><td>sigma 1 px</td><td>69.5%</td><td>62.8%&ndash;75.4%</td><td>200</td></tr>
        <tr><td>m</td><td>jpeg2000</td><td>30 dB</td><td>60.5%</td><td>53.6%&ndash;67.0%</td><td>200</td></tr>
        </table>
        <p>rAUC 0.281, CE 1.000, relative mCE 0.913 over 5 distortions; thresholds: 49 pass, 1 fail (blur 9: 12.5% &lt; 13.0%).</p>
        <img class='curves' src='data:image/png;base64,{png}'>
        <table><tr><th class='l'>run folder</th><td class='l'>{out}/run</td></tr><tr><th class='l'>weights digest (SHA-256, 16 hex)</th><td class='l'>dc9dc1ddede5e75b</td></tr><tr><th class='l'>dataset</th><td class='l'>{root.parent}/shared/data/imagenet-val-1024</td></tr><tr><th class='l'>images</th><td class='l'>200</td></tr><tr><th class='l'>noise seed</th><td class='l'>0</td></tr><tr><th class='l'>versions</th><td class='l'>python 3.11.7, robustness {version}, torch 2.14.1</td></tr><tr><th class='l'>date (UTC)</th><td class='l'>{date}</td></tr><tr><th class='l'>command</th><td class='l'>{root}/robustness/__main__.py run --limit 200 --output {out}/run</td></tr></table>
        <p class='muted'>generated {date}</p>
        </body></html>
        """)


def _gate_xml(root: Path, seconds: str) -> str:
    message = f"efficientnet_lite0 blur sigma 9: top-1 12.5% (95% CI 8.6-17.8%, n=200) below 13.0%&#10;  threshold set at {root}/thresholds.yaml:21"
    return textwrap.dedent(f"""\
        <?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="0" tests="2" time="{seconds}" timestamp="2026-11-30T12:00:00.000000+00:00" hostname="h">
        <testcase classname="tests.test_release_gate" name="test_accuracy[m-clean]" time="{seconds}"><properties><property name="robustness_top1" value="0.74" /><property name="robustness_top1_required" value="0.72" /><property name="robustness_thresholds_file" value="{root}/thresholds.yaml" /></properties></testcase>
        <testcase classname="tests.test_release_gate" name="test_accuracy[m-blur-s9]" time="{seconds}"><properties><property name="robustness_top1" value="0.125" /><property name="robustness_top1_required" value="0.13" /></properties><failure message="{message}">traceback at {root}/robustness/gate.py:197</failure></testcase>
        </testsuite></testsuites>
        """)


def make_snapshot(folder: Path, *, root: str, date: str, version: str, seconds: str, software: str) -> Path:
    """A snapshot folder as ``compare_outputs.py snapshot`` writes it, with run-specific paths and times."""
    root_path, out = Path(root), folder.resolve()
    (folder / "run").mkdir(parents=True)
    manifest = {
        "format": 1,
        "commit": "0" * 40,
        "worktree": str(root_path),
        "out": str(out),
        "shared": str(root_path.parent / "shared"),
        "model": "m",
        "limit": 200,
        "distortions": [],
        "gate_args": [],
        "steps": [
            {"name": n, "returncode": c, "seconds": float(seconds)} for n, c in (("run", 0), ("gate", 1), ("report", 0))
        ],
    }
    (folder / "snapshot.json").write_text(json.dumps(manifest))
    (folder / "run" / "results.json").write_text(json.dumps(RECORDS, indent=2))
    provenance = {
        "model": "m",
        "weights_digest": "dc9dc1ddede5e75b",
        "dataset_root": f"{root_path.parent}/shared/data/imagenet-val-1024",
        "images": 200,
        "seed": 0,
        "versions": {"python": "3.11.7", "robustness": version},
        "date": date,
        "command": [f"{root}/robustness/__main__.py", "run", "--limit", "200"],
    }
    (folder / "run" / "provenance.json").write_text(json.dumps(provenance))
    np.savez(
        folder / "run" / "predictions.npz",
        image_ids=np.array(["a/1.JPEG", "b/2.JPEG"]),
        labels=np.array([3, 7], dtype=np.int16),
        level=np.array([0.0, 1.0, 30.0]),
        predictions=np.arange(3 * 2 * 5, dtype=np.int16).reshape(3, 2, 5),
        meta=np.array(json.dumps({"format": 1, "model": "m", "provenance": provenance})),
    )
    figure = _png(PIXELS, software)
    (folder / "run" / "accuracy_vs_level.png").write_bytes(figure)
    report = _report(root_path, out, date, version, figure)
    (folder / "report.html").write_text(report)
    (folder / "run" / "report.html").write_text(report)
    (folder / "gate.xml").write_text(_gate_xml(root_path, seconds))
    return folder


@pytest.fixture
def pair(tmp_path):
    """Two snapshots of the same numbers from different folders, dates, versions, durations, matplotlibs."""
    a = make_snapshot(
        tmp_path / "a",
        root="/tmp/compare-outputs-aaa/repo",
        date="2026-11-30T12:02:37+00:00",
        version="0.1.0",
        seconds="41.2",
        software="Matplotlib version3.11.2",
    )
    b = make_snapshot(
        tmp_path / "b",
        root="/tmp/compare-outputs-bbbbbb/repo",
        date="2026-12-01T09:15:00+00:00",
        version="0.2.0.dev3",
        seconds="57.9",
        software="Matplotlib version3.12.0",
    )
    return a, b


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) >= count, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def _messages(diff) -> str:
    return "\n".join(f"{a}: {m}" for a, m in diff.items)


# ------------------------------------------------------------------------------------------------ compare


def test_equal_numbers_from_different_runs_agree(pair):
    a, b = pair
    assert (a / "report.html").read_text() != (b / "report.html").read_text()  # paths, dates, PNG metadata
    assert (a / "run" / "accuracy_vs_level.png").read_bytes() != (b / "run" / "accuracy_vs_level.png").read_bytes()
    diff = co.compare(a, b)
    assert len(diff) == 0, _messages(diff)
    assert set(diff.checked) == {name for name, _ in co.ARTEFACTS}


def test_a_changed_top1_is_caught(pair):
    a, b = pair
    records = json.loads((b / "run" / "results.json").read_text())
    records[1]["top1"] = 0.7
    (b / "run" / "results.json").write_text(json.dumps(records))
    diff = co.compare(a, b)
    assert [m for art, m in diff.items if art == "results.json"] == ["record m/blur/1: top1: 0.695 vs 0.7"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r[0].update(level=0.0), "record m/clean/0: only in A"),  # the key changes type: 0 vs 0.0
        (lambda r: r[2].update(n=200.0), "n: 200 (int) vs 200.0 (float)"),
        (lambda r: r[2].update(tolerance_misses=2), "tolerance_misses: 3 vs 2"),
        (lambda r: r[1].update(seconds=3.5), "field seconds only in B"),
        (lambda r: r.pop(), "record m/jpeg2000/30: only in A"),
        (lambda r: r.reverse(), "the records are in another order"),
    ],
    ids=["level-type", "int-vs-float", "tolerance-misses", "new-field", "missing-record", "order"],
)
def test_every_results_change_is_caught(pair, change, expected):
    a, b = pair
    records = json.loads((b / "run" / "results.json").read_text())
    change(records)
    (b / "run" / "results.json").write_text(json.dumps(records))
    assert expected in _messages(co.compare(a, b))


def test_ignore_names_one_field_and_nothing_else(pair):
    a, b = pair
    records = json.loads((b / "run" / "results.json").read_text())
    records[1]["seconds"] = 3.5
    records[1]["top5"] = 0.5
    (b / "run" / "results.json").write_text(json.dumps(records))
    diff = co.compare(a, b, ignore=["results:seconds"])
    assert _messages(diff) == "results.json: record m/blur/1: top5: 0.88 vs 0.5"
    with pytest.raises(co.SnapshotError, match="ARTEFACT:FIELD"):
        co.compare(a, b, ignore=["seconds"])


def test_a_flipped_verdict_is_caught(pair):
    a, b = pair
    _edit(
        b / "gate.xml",
        '<failure message="efficientnet_lite0 blur sigma 9',
        '<skipped message="efficientnet_lite0 blur sigma 9',
    )
    _edit(b / "gate.xml", "</failure>", "</skipped>")
    messages = _messages(co.compare(a, b))
    assert "gate.xml: tests.test_release_gate::test_accuracy[m-blur-s9]: failure vs skipped" in messages


def test_a_passing_case_that_fails_is_caught(pair):
    a, b = pair
    _edit(b / "gate.xml", '<property name="robustness_thresholds_file"', '<property name="x"')
    _edit(
        b / "gate.xml",
        '" /></properties></testcase>',
        '" /></properties><failure message="below">x</failure></testcase>',
    )
    messages = _messages(co.compare(a, b))
    assert "test_accuracy[m-clean]: passed vs failure" in messages
    assert "robustness_thresholds_file: only in A" in messages


@pytest.mark.parametrize(
    ("old", "new"),
    [("top-1 12.5%", "top-1 12.0%"), ("below 13.0%", "below 13.5%"), ("thresholds.yaml:21", "thresholds.yaml:22")],
)
def test_a_changed_failure_message_is_caught(pair, old, new):
    a, b = pair
    _edit(b / "gate.xml", old, new)
    messages = _messages(co.compare(a, b))
    assert "test_accuracy[m-blur-s9]: message differs" in messages
    assert old in messages and new in messages


def test_a_changed_gate_property_is_caught(pair):
    a, b = pair
    _edit(b / "gate.xml", 'name="robustness_top1" value="0.74"', 'name="robustness_top1" value="0.745"')
    assert "robustness_top1: '0.74' vs '0.745'" in _messages(co.compare(a, b))


def test_a_changed_report_number_is_caught(pair):
    a, b = pair
    _edit(b / "report.html", "<td>69.5%</td>", "<td>69.0%</td>")
    diff = co.compare(a, b)
    assert [art for art, _ in diff.items] == ["report.html"]
    assert "69.5%" in diff.items[0][1] and "69.0%" in diff.items[0][1]


def _digits_outside(text: str, volatile: list[str]) -> list[int]:
    """Positions of every digit in ``text`` that is outside an embedded image and the ``volatile`` strings."""
    blocked = [m.span() for m in re.finditer(r"data:image/png;base64,[A-Za-z0-9+/=]+", text)]
    for value in volatile:
        blocked += [m.span() for m in re.finditer(re.escape(value), text)]
    return [m.start() for m in re.finditer(r"\d", text) if not any(lo <= m.start() < hi for lo, hi in blocked)]


def test_the_normaliser_hides_no_number(pair):
    """Change each digit of the report, one at a time, except inside what the script blanks on purpose
    (the image bytes, the three volatile provenance values, the snapshot's paths): every change is caught."""
    a, b = pair
    path = b / "report.html"
    original = path.read_text()
    date = "2026-12-01T09:15:00+00:00"
    volatile = [
        date,
        "python 3.11.7, robustness 0.2.0.dev3, torch 2.14.1",
        str(b.resolve()),
        "/tmp/compare-outputs-bbbbbb",
    ]
    volatile.append(
        "/tmp/compare-outputs-bbbbbb/repo/robustness/__main__.py run --limit 200 --output " + str(b.resolve())
    )
    unchanged = co.compare(a, b)
    assert len(unchanged) == 0, _messages(unchanged)  # so each difference below is the changed digit
    positions = _digits_outside(original, volatile)
    assert len(positions) > 60  # the table cells, the interval bounds, the summary numbers, the seed, the digest
    missed = []
    for i in positions:
        path.write_text(original[:i] + str((int(original[i]) + 1) % 10) + original[i + 1 :])
        if not any(art == "report.html" for art, _ in co.compare(a, b).items):
            missed.append(original[max(0, i - 30) : i + 10])
    path.write_text(original)
    assert missed == []


def test_normalise_report_keeps_numbers_beside_blanked_parts(tmp_path):
    snap = co.Snapshot(make_snapshot(tmp_path / "s", root="/r/repo", date="d", version="v", seconds="1", software="x"))
    html = (
        f"<p>{tmp_path / 's'}/run 74.0% at 2026-11-30T12:02:37+00:00 n=200 1.000</p>"
        "<tr><th class='l'>date (UTC)</th><td class='l'>2026-11-30</td></tr><td>12.5%</td>"
    )
    text, images = co.normalise_report(html, snap)
    assert text == (
        "<p><out>/run 74.0% at <timestamp> n=200 1.000</p>"
        "<tr><th class='l'>date (UTC)</th><td class='l'><volatile></td></tr><td>12.5%</td>"
    )
    assert images == []


def test_a_changed_pixel_is_caught_and_png_metadata_is_not_compared(pair):
    a, b = pair
    pixels = PIXELS.copy()
    pixels[2, 3, 1] += 1
    changed = _png(pixels, "Matplotlib version3.11.2")
    (b / "run" / "accuracy_vs_level.png").write_bytes(changed)
    old = base64.b64encode((b / "run" / "accuracy_vs_level.png").read_bytes()).decode()
    report = (b / "report.html").read_text()
    embedded = re.search(r"base64,([A-Za-z0-9+/=]+)", report).group(1)
    (b / "report.html").write_text(report.replace(embedded, old))
    messages = _messages(co.compare(a, b))
    assert "run/accuracy_vs_level.png: pixels differ" in messages
    assert "report.html: <image 1>: pixels differ" in messages
    assert "run/report.html" not in messages  # its image has other metadata, the same pixels


def test_a_changed_prediction_is_caught(pair):
    a, b = pair
    with np.load(b / "run" / "predictions.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["predictions"][2, 1, 0] = 999
    np.savez(b / "run" / "predictions.npz", **arrays)
    assert "array predictions: 1 elements differ, first at [2, 1, 0]" in _messages(co.compare(a, b))


def test_provenance_skips_only_the_listed_fields(pair):
    a, b = pair
    provenance = json.loads((b / "run" / "provenance.json").read_text())
    provenance["versions"]["python"] = "3.12.1"
    provenance["seed"] = 1
    (b / "run" / "provenance.json").write_text(json.dumps(provenance))
    messages = [m for art, m in co.compare(a, b).items if art == "provenance.json"]
    assert messages == ["seed: 0 vs 1", "versions.python: '3.11.7' vs '3.12.1'"]


def test_missing_files_and_step_codes_are_differences(pair):
    a, b = pair
    (b / "gate.xml").unlink()
    manifest = json.loads((b / "snapshot.json").read_text())
    manifest["steps"][1]["returncode"] = 2
    manifest["limit"] = 100
    (b / "snapshot.json").write_text(json.dumps(manifest))
    messages = _messages(co.compare(a, b))
    assert "gate.xml: only in A" in messages
    assert "exit codes: {'run': 0, 'gate': 1, 'report': 0} vs {'run': 0, 'gate': 2, 'report': 0}" in messages
    assert "setting limit: 200 vs 100" in messages
    with pytest.raises(co.SnapshotError, match="no such snapshot folder"):
        co.compare(a, b / "missing")
    (a / "gate.xml").unlink()  # the gate ran in neither: nothing about verdicts is proven
    assert "gate.xml: in neither snapshot (gate.xml)" in _messages(co.compare(a, b))


def test_main_exit_codes_and_summary(pair, capsys):
    a, b = pair
    assert co.main(["compare", str(a), str(b)]) == 0
    assert "no number changes" in capsys.readouterr().out
    _edit(b / "report.html", "<td>60.5%</td>", "<td>61.0%</td>")
    assert co.main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "report.html                  1 difference" in out and "61.0%" in out
    assert co.main(["compare", str(a), str(b / "nope")]) == 2
    assert "no such snapshot folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- snapshot

FAKE_MAIN = """\
import json, sys
from pathlib import Path

FLAG, TOP1 = {flag!r}, {top1!r}
args = sys.argv[1:]
if args[:2] == ["run", "--help"]:
    print("usage: robustness run [--model MODEL] [" + FLAG + " N] [--output OUTPUT] [--cache-dir CACHE_DIR]")
    sys.exit(0)
if args[0] == "run":
    out = Path(args[args.index("--output") + 1])
    out.mkdir(parents=True)
    n = int(args[args.index(FLAG) + 1])
    record = dict(model=args[args.index("--model") + 1], distortion="clean", level=0, top1=TOP1, n=n)
    (out / "results.json").write_text(json.dumps([record]))
    (out / "provenance.json").write_text(json.dumps(dict(command=sys.argv, cache=args[args.index("--cache-dir") + 1])))
elif args[0] == "report":
    Path(args[args.index("--output") + 1]).write_text("<p>report of " + args[1] + ": " + str(TOP1) + "</p>")
"""


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    return subprocess.run([*command, *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, flag: str, top1: float, message: str) -> str:
    (repo / "robustness").mkdir(exist_ok=True)
    (repo / "robustness" / "__init__.py").write_text("")
    (repo / "robustness" / "pytest_plugin.py").write_text("")  # the installed pytest11 entry point loads it
    (repo / "robustness" / "__main__.py").write_text(FAKE_MAIN.format(flag=flag, top1=top1))
    (repo / "tests").mkdir(exist_ok=True)
    (repo / "tests" / "test_release_gate.py").write_text(
        f"def test_accuracy():\n    assert {top1} > 0.7, 'top-1 {top1} below 0.7'\n"
    )
    (repo / "thresholds.yaml").write_text("models: {}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def _fake_repo(folder: Path) -> tuple[Path, str, str]:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = folder / "repo"
    repo.mkdir()
    (folder / "shared").mkdir()  # seen as ../shared
    _git(repo, "init", "-q")
    old = _commit(repo, "--limit", 0.74, "old: --limit")
    new = _commit(repo, "--images", 0.69, "new: --images, another number")
    return repo, old, new


@pytest.fixture(scope="module")
def fake_snapshots(tmp_path_factory):
    """Snapshots of a stand-in repository: its old commit twice, its new commit once (each about 7 quick
    subprocesses: worktree, import check, --help, run, gate, report, cleanup)."""
    folder = tmp_path_factory.mktemp("fake")
    repo, old, new = _fake_repo(folder)
    # REV_A REV_B: both snapshots, then compare (exit 1: they differ).
    both = co.main([old, new, "--limit", "3", "--repo", str(repo), "--out", str(folder / "both")])
    codes = {"both": both, "again": co.snapshot(old, folder / "again", 3, repo=repo)}
    folders = {"old": folder / "both" / f"a-{old}", "new": folder / "both" / f"b-{new}", "again": folder / "again"}
    return folders, repo, old, new, codes


def test_snapshot_runs_each_commit_in_its_own_worktree(fake_snapshots):
    folders, repo, old, new, codes = fake_snapshots
    assert codes == {"both": 1, "again": 0}
    manifests = [json.loads((folders[n] / "snapshot.json").read_text()) for n in ("old", "new")]
    assert [m["commit"] for m in manifests] == [old, new]
    assert [m["image_flag"] for m in manifests] == ["--limit", "--images"]  # read from each commit's --help
    for name, m in zip(("old", "new"), manifests):
        assert Path(m["robustness_file"]).is_relative_to(m["worktree"])  # the commit's code, not this checkout's
        assert not Path(m["worktree"]).parent.exists()  # the worktree and its temporary folder are gone
        assert {s["name"]: s["returncode"] for s in m["steps"]} == {"run": 0, "gate": int(name == "new"), "report": 0}
        provenance = json.loads((folders[name] / "run" / "provenance.json").read_text())
        assert provenance["cache"] == str(folders[name] / "cache")
        command = provenance["command"]
        assert command[command.index(m["image_flag"]) + 1] == "3"
    assert _git(repo, "worktree", "list").count("\n") == 0  # only the main checkout is left
    messages = _messages(co.compare(folders["old"], folders["new"]))
    assert "results.json: record efficientnet_lite0/clean/0: top1: 0.74 vs 0.69" in messages
    assert "gate.xml: tests.test_release_gate::test_accuracy: passed vs failure" in messages
    assert "report.html: text differs" in messages
    assert "provenance.json" not in messages  # the command (paths, --limit vs --images) is volatile
    assert "exit codes" in messages


def test_snapshot_of_the_same_commit_twice_agrees(fake_snapshots):
    folders = fake_snapshots[0]
    diff = co.compare(folders["old"], folders["again"])
    assert len(diff) == 0, _messages(diff)
    assert {"results.json", "provenance.json", "gate.xml", "report.html"} <= set(diff.checked)


def test_snapshot_removes_the_worktree_when_a_step_cannot_start(tmp_path):
    repo, _, _ = _fake_repo(tmp_path)
    (repo / "robustness" / "__init__.py").write_text("raise ImportError('broken commit')\n")
    _git(repo, "commit", "-q", "-am", "broken")
    with pytest.raises(co.SnapshotError, match="broken commit"):
        co.snapshot("HEAD", tmp_path / "broken", 2, repo=repo)
    manifest = json.loads((tmp_path / "broken" / "snapshot.json").read_text())
    assert not Path(manifest["worktree"]).parent.exists()
    assert _git(repo, "worktree", "list").count("\n") == 0
    with pytest.raises(co.SnapshotError, match="not empty"):
        co.snapshot("HEAD", tmp_path / "broken", 2, repo=repo)
    with pytest.raises(co.SnapshotError, match="no-such-rev"):
        co.snapshot("no-such-rev", tmp_path / "other", 2, repo=repo)


@pytest.mark.skipif(os.environ.get("ROBUSTNESS_COMPARE_REAL") != "1", reason="set ROBUSTNESS_COMPARE_REAL=1")
def test_real_snapshot_of_head(tmp_path):
    """The real main job of this repository's HEAD, tiny: 2 images, contrast only, the clean gate case."""
    gate = ["-mclean", "--robustness-images=2"]
    args = ["snapshot", "--rev", "HEAD", "--limit", "2", "--distortion", "contrast"] + [f"--gate-arg={g}" for g in gate]
    script = str(ROOT / "scripts" / "compare_outputs.py")
    result = subprocess.run(
        [sys.executable, script, *args, "--out", str(tmp_path / "s")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads((tmp_path / "s" / "run" / "results.json").read_text())
    assert {r["distortion"] for r in records} == {"clean", "contrast"} and all(r["n"] == 2 for r in records)
    diff = co.compare(tmp_path / "s", tmp_path / "s")
    assert len(diff) == 0 and "gate.xml" in diff.checked and "report.html" in diff.checked


def test_snapshot_removes_the_worktree_when_killed(tmp_path):
    """kill -TERM during the main job: the step is stopped, the worktree and its folder removed."""
    repo, _, _ = _fake_repo(tmp_path)
    main = repo / "robustness" / "__main__.py"
    slow = main.read_text().replace(
        'if args[0] == "run":', 'if args[0] == "run":\n    __import__("time").sleep(120)', 1
    )
    assert slow != main.read_text()
    main.write_text(slow)
    _git(repo, "commit", "-q", "-am", "a slow run")
    out = tmp_path / "killed"
    script = str(ROOT / "scripts" / "compare_outputs.py")
    command = [sys.executable, script, "snapshot", "--rev", "HEAD", "--out", str(out), "--repo", str(repo)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout.readline().startswith("[run]")  # the main job has started
        assert _git(repo, "worktree", "list").count("\n") == 1  # the main checkout and the snapshot's
        process.terminate()
        output = process.communicate(timeout=60)[0]
    finally:
        process.kill()
    assert process.returncode != 0, output
    manifest = json.loads((out / "snapshot.json").read_text())
    assert not Path(manifest["worktree"]).parent.exists()
    assert _git(repo, "worktree", "list").count("\n") == 0
