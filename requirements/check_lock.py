"""Exit 1 when a lock file no longer fits its .txt input: a package the input (or a file it includes with -r)
names is missing from the lock, or pinned outside the input's range. It reads the files, not the installed
environment, so a package installed by hand cannot hide a stale lock. `make setup` runs it; `make lock` fixes it.

    python requirements/check_lock.py requirements/dev.txt:requirements/dev.lock [...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)


def requirements_in(path: Path) -> list[Requirement]:
    found: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            found += requirements_in(path.parent / line.split(maxsplit=1)[1])
        elif not line.startswith("-"):
            found.append(Requirement(line))
    return found


def pins_in(path: Path) -> dict[str, Version]:
    return {canonicalize_name(name): Version(version) for name, version in PIN.findall(path.read_text())}


def problems(requirements: Path, lock: Path) -> list[str]:
    pinned = pins_in(lock)
    found = []
    for requirement in requirements_in(requirements):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            found.append(f"{requirement} ({requirements}) is not in {lock}")
        elif not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement} ({requirements}) but {lock} pins {version}")
    return found


def main(pairs: list[str]) -> int:
    found = []
    for pair in pairs:
        requirements, lock = pair.split(":")
        found += problems(Path(requirements), Path(lock))
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        print("the lock files do not fit requirements/*.txt: run make lock", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
