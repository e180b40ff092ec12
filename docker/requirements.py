"""Print the pip requirements of a pyproject.toml: its dependencies, the extras asked for and,
with ``--build-system``, what building it needs.

Why: the image (docker/Dockerfile) installs every dependency of reidsearch without reidsearch
itself, from pyproject.toml alone, so that the layer holding the heavy packages is rebuilt only
when the dependencies change, and a node then installs the project's code (synced by the
cluster file, or copied in the image's app stage) with ``pip install --no-deps`` in seconds::

    python docker/requirements.py pyproject.toml --extra gpu --build-system > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement ("Faiss_GPU>=1" -> faiss-gpu)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str], build_system: bool = False) -> list[str]:
    """The requirements, in pyproject's order, each once; an unknown extra is an error."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data["project"]
    optional = project.get("optional-dependencies", {})
    found = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"{pyproject}: no extra {extra!r} (it has {sorted(optional)})")
        found += optional[extra]
    if build_system:
        found += data.get("build-system", {}).get("requires", [])
    own = requirement_name(project["name"])
    if any(requirement_name(r) == own for r in found):  # e.g. "reidsearch[cpu]" in an extra
        raise ValueError(f"{pyproject}: an extra names the project itself; list its packages")
    return list(dict.fromkeys(found))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyproject", type=Path)
    ap.add_argument("--extra", action="append", default=[], help="an extra to add (repeatable)")
    ap.add_argument("--build-system", action="store_true", help="add build-system.requires")
    args = ap.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extra, args.build_system)
    except (ValueError, KeyError, OSError) as exc:
        print(f"requirements.py: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
