"""Check that the installed distributions are exactly the ones a constraints file pins.

    python .ci/check_versions.py .ci/constraints-lowest.txt

Reads ``name==version`` lines (comments and blank lines skipped), compares each with
``importlib.metadata.version(name)`` as PEP 440 versions (so ``2.13.0+cpu`` must match exactly,
local label included), prints one line per package and exits 1 naming every mismatch or missing
package. Used by the ``lowest`` nox session, so that a green ``lowest`` really ran the minimums.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version


def pinned(path: Path) -> dict[str, Version]:
    """``{name: version}`` for every ``name==version`` line of ``path``.

    Raises:
        ValueError: a requirement line that is not an exact ``==`` pin (naming the file and line).
    """
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise ValueError(f"{path}:{number}: {text!r} is not an exact name==version pin")
        pins[requirement.name] = Version(specifiers[0].version)
    return pins


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python .ci/check_versions.py CONSTRAINTS_FILE", file=sys.stderr)
        return 2
    path = Path(argv[0])
    problems = []
    for name, wanted in pinned(path).items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed (pinned {wanted})")
            continue
        print(f"{name}=={installed}" + ("" if installed == wanted else f"  (pinned {wanted})"))
        if installed != wanted:
            problems.append(f"{name}: installed {installed}, pinned {wanted}")
    if problems:
        print(f"{path}: the installed versions are not the pinned ones:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
