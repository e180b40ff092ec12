"""Dataset manifests: one pyarrow table (path, pid, camid, split, label) per dataset.

Everything downstream (cache, sampler, evaluation) reads the manifest, never the folder layout, so
a parser is the only place that knows how a dataset is stored. Paths are relative to the root
kept in the schema metadata, so a manifest can be rebased onto another node's copy of the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reidsearch.errors import DatasetError, some_names

SPLITS = ("train", "query", "gallery")
MARKET_STYLE = ("market1501", "dukemtmc")  # layouts where pid 0 means "distractor"
JUNK_PID = -1
DISTRACTOR_PID = 0

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("pid", pa.int64()),
        ("camid", pa.int64()),
        ("split", pa.string()),
        ("label", pa.int64()),
    ]
)


def _columns(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, list]:
    keys = ("path", "pid", "camid", "split")
    if isinstance(rows, Mapping):
        missing = [k for k in keys if k not in rows]
        if missing:
            raise ValueError(f"manifest columns missing: {missing}")
        return {k: list(rows[k]) for k in keys}
    return {k: [row[k] for row in rows] for k in keys}


def _relative(path: Any, root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        p = p.relative_to(root)
    return PurePosixPath(*p.parts).as_posix()


def _train_labels(pid: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Train rows: 0..C-1 in order of sorted pid (so two parses of one folder agree); others -1."""
    is_train = split == "train"
    label = np.full(len(pid), -1, dtype=np.int64)
    if is_train.any():
        _, inverse = np.unique(pid[is_train], return_inverse=True)
        label[is_train] = inverse
    return label


def make_manifest(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], root: str | Path, layout: str
) -> pa.Table:
    """Build a manifest from rows (dicts) or columns; relabels train pids and sorts the rows.

    Train rows get ``label`` 0..C-1 in order of sorted pid (so two parses of one folder agree);
    other rows get -1. Rows are sorted by split (train, query, gallery) then path.
    """
    root = Path(root).expanduser().resolve()
    cols = _columns(rows)
    bad = sorted(set(cols["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown split names {bad}; expected {SPLITS}")
    paths = [_relative(p, root) for p in cols["path"]]
    pid = np.asarray(cols["pid"], dtype=np.int64)
    camid = np.asarray(cols["camid"], dtype=np.int64)
    split = np.asarray(cols["split"], dtype=object)
    label = _train_labels(pid, split)
    rank = np.array([SPLITS.index(s) for s in split], dtype=np.int64)
    order = sorted(range(len(paths)), key=lambda i: (rank[i], paths[i]))
    table = pa.table(
        {
            "path": pa.array([paths[i] for i in order], pa.string()),
            "pid": pa.array(pid[order], pa.int64()),
            "camid": pa.array(camid[order], pa.int64()),
            "split": pa.array([str(split[i]) for i in order], pa.string()),
            "label": pa.array(label[order], pa.int64()),
        },
        schema=SCHEMA,
    )
    return table.replace_schema_metadata({"root": str(root), "layout": layout})


def save_manifest(table: pa.Table, path: str | Path) -> Path:
    """Write the manifest as Parquet (root and layout travel in the schema metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def load_manifest(path: str | Path) -> pa.Table:
    """Read a Parquet manifest, checking that it has the manifest columns and metadata."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such manifest file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a Parquet manifest ({exc})") from None
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    meta = table.schema.metadata or {}
    if missing or b"root" not in meta:
        what = f"columns {missing}" if missing else "the 'root' metadata"
        raise DatasetError(f"{path}: not a reidsearch manifest (missing {what})")
    return table


def manifest_root(table: pa.Table) -> Path:
    """The absolute dataset folder that the manifest's relative paths start from."""
    meta = table.schema.metadata or {}
    if b"root" not in meta:
        raise ValueError("table has no 'root' metadata: not built by make_manifest")
    return Path(meta[b"root"].decode())


def manifest_layout(table: pa.Table) -> str:
    return (table.schema.metadata or {}).get(b"layout", b"").decode()


def with_root(table: pa.Table, root: str | Path) -> pa.Table:
    """The same manifest pointing at another copy of the dataset (e.g. on a worker node)."""
    meta = dict(table.schema.metadata or {})
    meta[b"root"] = str(Path(root).expanduser().resolve()).encode()
    return table.replace_schema_metadata(meta)


def drop_unreadable(table: pa.Table, paths: Sequence[str]) -> pa.Table:
    """The manifest without the rows of ``paths`` (images that cannot be decoded), order kept.

    Train labels are made dense again, so an identity whose every image was dropped leaves no
    empty class. A split that loses all its images is an error naming some of them.
    """
    gone = set(paths)
    names = table.column("path").to_pylist()
    keep = np.array([p not in gone for p in names], dtype=bool)
    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    for name in SPLITS:
        if (split == name).any() and not (keep & (split == name)).any():
            dropped = [p for p, s in zip(names, split, strict=True) if s == name]
            raise DatasetError(
                f"{manifest_root(table)}: every {name} image is unreadable ({some_names(dropped)})"
            )
    kept = table.filter(pa.array(keep))
    label = _train_labels(kept.column("pid").to_numpy(), split[keep])
    return kept.set_column(
        kept.schema.get_field_index("label"), "label", pa.array(label, pa.int64())
    )


def split_view(table: pa.Table, split: str) -> pa.Table:
    """The rows of one split (metadata kept)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return table.filter(pc.equal(table["split"], split))


def summarize(table: pa.Table) -> dict[str, Any]:
    """Per split: identities (junk and distractors not counted), images and cameras."""
    layout = manifest_layout(table)
    pid_all = table["pid"].to_numpy()
    split_all = np.asarray(table["split"].to_pylist(), dtype=object)
    cam_all = table["camid"].to_numpy()
    distractor = (
        (pid_all == DISTRACTOR_PID) if layout in MARKET_STYLE else np.zeros_like(pid_all, bool)
    )
    junk = pid_all == JUNK_PID
    real = ~(junk | distractor)
    splits = {}
    for name in SPLITS:
        m = split_all == name
        splits[name] = {
            "ids": int(len(np.unique(pid_all[m & real]))),
            "images": int(m.sum()),
            "cameras": int(len(np.unique(cam_all[m]))),
        }
    return {
        "layout": layout,
        "splits": splits,
        "junk": int(junk.sum()),
        "distractors": int(distractor.sum()),
    }


def format_summary(table: pa.Table) -> str:
    """A small text table for ``reidsearch data info``."""
    s = summarize(table)
    meta = table.schema.metadata or {}
    root = meta.get(b"root", b"?").decode()
    lines = [
        f"layout {s['layout'] or '?'}  root {root}",
        f"{'split':<8}{'ids':>8}{'images':>9}{'cameras':>9}",
    ]
    for name, row in s["splits"].items():
        lines.append(f"{name:<8}{row['ids']:>8}{row['images']:>9}{row['cameras']:>9}")
    lines.append(f"junk (pid -1): {s['junk']}  distractors (pid 0): {s['distractors']}")
    return "\n".join(lines)
