"""Parsers: on-disk dataset layouts -> manifests.

Each parser is a plain function ``(root, camera_regex) -> list of rows`` registered in
``PARSERS`` (timm-style), so adding a layout is one function. ``parse_dataset`` does the checks
that every layout shares (root exists, no empty split) and builds the manifest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa

from reidsearch.config import Layout
from reidsearch.data.manifest import SPLITS, make_manifest
from reidsearch.errors import DatasetError

Row = dict
Parser = Callable[[Path, "str | None"], list[Row]]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_CAMERA_REGEX = r"c(\d+)"
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_LATFPP_NAME = re.compile(r"^(\d+)_(\d+)")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: required folder is missing")
    return path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _pid_folders(folder: Path) -> list[Path]:
    return sorted(p for p in _require_dir(folder).iterdir() if p.is_dir())


def pid_from_name(name: str, numeric: bool) -> int:
    """A stable int for a person folder: its number, or (non-numeric names) a 48-bit hash."""
    if numeric:
        return int(name)
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=6).digest(), "big") + 1


def _all_numeric(names: Iterable[str]) -> bool:
    return all(re.fullmatch(r"-?\d+", n) for n in names)


def _parse_latfpp(root: Path, camera_regex: str | None = None) -> list[Row]:
    """``train/<pid>/<cam>_<angle>.png``, ``val/{query,gallery}/<pid>/...``; cameras 1-based."""
    folders = {
        "train": root / "train",
        "query": root / "val" / "query",
        "gallery": root / "val" / "gallery",
    }
    person_dirs = {split: _pid_folders(f) for split, f in folders.items()}
    numeric = _all_numeric(d.name for dirs in person_dirs.values() for d in dirs)
    rows = []
    for split, dirs in person_dirs.items():
        for person in dirs:
            pid = pid_from_name(person.name, numeric)
            for img in _images(person):
                m = _LATFPP_NAME.match(img.stem)
                if m is None or int(m.group(1)) < 1:
                    raise DatasetError(
                        f"{img}: cannot parse camera from file name (expected <cam>_<angle>.png, "
                        "camera counted from 1)"
                    )
                rows.append({"path": img, "pid": pid, "camid": int(m.group(1)) - 1, "split": split})
    return rows


def _market_rows(root: Path, folders: dict[str, str], example: str) -> list[Row]:
    rows = []
    for split, name in folders.items():
        for img in _images(_require_dir(root / name)):
            m = _MARKET_NAME.match(img.name)
            if m is None or int(m.group(2)) < 1:
                raise DatasetError(
                    f"{img}: cannot parse person and camera from the file name "
                    f"(expected e.g. {example})"
                )
            rows.append(
                {"path": img, "pid": int(m.group(1)), "camid": int(m.group(2)) - 1, "split": split}
            )
    return rows


_MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _parse_market1501(root: Path, camera_regex: str | None = None) -> list[Row]:
    """``bounding_box_train``, ``query``, ``bounding_box_test``; pid -1 junk, 0 distractor."""
    return _market_rows(root, _MARKET_FOLDERS, "0002_c1s1_000451_03.jpg")


def _parse_dukemtmc(root: Path, camera_regex: str | None = None) -> list[Row]:
    """Same folders and naming as Market-1501 (cameras 1..8)."""
    return _market_rows(root, _MARKET_FOLDERS, "0005_c2_f0046985.jpg")


_MSMT_LISTS = (
    ("list_train.txt", "train", "train"),
    ("list_val.txt", "train", "train"),
    ("list_query.txt", "query", "test"),
    ("list_gallery.txt", "gallery", "test"),
)


def _parse_msmt17(root: Path, camera_regex: str | None = None) -> list[Row]:
    """List files ``<pid>/<name>.jpg <pid>``; camera = third ``_`` field of the name (1-based)."""
    for _, _, folder in _MSMT_LISTS:
        _require_dir(root / folder)
    rows = []
    for list_name, split, folder in _MSMT_LISTS:
        list_file = root / list_name
        if not list_file.is_file():
            raise DatasetError(f"{list_file}: required list file is missing")
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            fields = Path(parts[0]).stem.split("_") if len(parts) == 2 else []
            if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]) or len(fields) < 3:
                raise DatasetError(
                    f"{list_file}:{lineno}: cannot parse {line.strip()!r} "
                    "(expected '<pid>/<pid>_<n>_<cam>_....jpg <pid>')"
                )
            if not fields[2].isdigit() or int(fields[2]) < 1:
                raise DatasetError(f"{list_file}:{lineno}: bad camera field {fields[2]!r}")
            rows.append(
                {
                    "path": f"{folder}/{parts[0]}",
                    "pid": int(parts[1]),
                    "camid": int(fields[2]) - 1,
                    "split": split,
                }
            )
    return rows


def _parse_generic(root: Path, camera_regex: str | None = None) -> list[Row]:
    """``{train,query,gallery}/<pid>/<image>``; the camera comes from a regex on the file name.

    Camera values are mapped to 0..n-1 in sorted order (numerically when all are numbers), so
    both 0- and 1-based numbering work.
    """
    pattern = camera_regex or DEFAULT_CAMERA_REGEX
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f"{root}: camera regex {pattern!r} is not valid: {exc}") from None
    if regex.groups < 1:
        raise DatasetError(f"{root}: camera regex {pattern!r} needs one capture group")
    person_dirs = {split: _pid_folders(root / split) for split in SPLITS}
    numeric = _all_numeric(d.name for dirs in person_dirs.values() for d in dirs)
    raw = []
    for split, dirs in person_dirs.items():
        for person in dirs:
            pid = pid_from_name(person.name, numeric)
            for img in _images(person):
                m = regex.search(img.name)
                if m is None or m.group(1) is None:
                    raise DatasetError(f"{img}: camera regex {pattern!r} does not match file name")
                raw.append((img, pid, m.group(1), split))
    cams = {c for _, _, c, _ in raw}
    ordered = sorted(cams, key=int) if _all_numeric(cams) else sorted(cams)
    index = {c: i for i, c in enumerate(ordered)}
    return [{"path": p, "pid": pid, "camid": index[c], "split": s} for p, pid, c, s in raw]


# one parser for each of reidsearch.config.LAYOUTS (tests/test_space.py checks it)
PARSERS: dict[Layout, Parser] = {
    "latfpp": _parse_latfpp,
    "market1501": _parse_market1501,
    "dukemtmc": _parse_dukemtmc,
    "msmt17": _parse_msmt17,
    "generic": _parse_generic,
}


def parse_dataset(root: str | Path, layout: str, camera_regex: str | None = None) -> pa.Table:
    """Parse the dataset folder ``root`` stored in ``layout`` into a manifest."""
    root = Path(root).expanduser()
    if layout not in PARSERS:
        raise DatasetError(f"{root}: unknown layout {layout!r}; known: {', '.join(PARSERS)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    root = root.resolve()
    rows = PARSERS[layout](root, camera_regex)
    present = {r["split"] for r in rows}
    for split in SPLITS:
        if split not in present:
            raise DatasetError(f"{root}: the {layout} dataset has no {split} images")
    return make_manifest(rows, root, layout)
