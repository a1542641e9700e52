"""Is this checkout installed with everything the tests need? (.ci/run asks before running pip.)

Exit 0 when modelhost is installed in editable mode from this checkout and every requirement
of ``modelhost[all,dev]`` in pyproject.toml (with the extras they name) is installed at a
version it allows; 3 when only the editable install points elsewhere (another checkout);
1 otherwise. pip takes 10-40 s to resolve and rebuild an install that is already right, and
the README's test command runs it on every call; a fresh machine still gets the full install.
"""

from __future__ import annotations

import json
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("all", "dev")


def requirements(project: dict[str, Any], extras: tuple[str, ...]) -> list[str]:
    """The project's requirements with ``extras``, its own extras (``modelhost[...]``)
    expanded."""
    name = project["name"]
    found = list(project.get("dependencies", []))
    for extra in extras:
        for text in project["optional-dependencies"][extra]:
            if text.startswith(f"{name}["):
                inner = tuple(text[len(name) + 1:text.index("]")].split(","))
                found += requirements({**project, "dependencies": []}, inner)
            else:
                found.append(text)
    return found


def satisfied(text: str) -> bool:
    """``text`` is installed at an allowed version, and so are its extras' requirements."""
    from packaging.requirements import Requirement

    wanted = Requirement(text)
    if wanted.marker and not wanted.marker.evaluate({"extra": ""}):
        return True
    try:
        version = metadata.version(wanted.name)
    except metadata.PackageNotFoundError:
        return False
    if not wanted.specifier.contains(version, prereleases=True):
        return False
    for extra in wanted.extras:
        for needed in map(Requirement, metadata.requires(wanted.name) or []):
            marker = needed.marker
            if marker and marker.evaluate({"extra": extra}) \
                    and not marker.evaluate({"extra": ""}) and not satisfied(str(needed)):
                return False
    return True


def installed_here() -> bool:
    """modelhost is an editable install of this very checkout."""
    try:
        origin = json.loads(metadata.distribution("modelhost").read_text("direct_url.json")
                            or "{}")
    except metadata.PackageNotFoundError:
        return False
    return bool(origin.get("dir_info", {}).get("editable")) and origin.get("url") == ROOT.as_uri()


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    try:
        if not all(satisfied(text) for text in requirements(project, EXTRAS)):
            return 1
    except ImportError:  # no packaging module yet: a fresh environment
        return 1
    return 0 if installed_here() else 3


if __name__ == "__main__":
    sys.exit(main())
