"""Which images a synthetic dataset holds, and where each layout puts them on disk.

Why a module of its own: the identity/camera/split bookkeeping and the file naming of every
supported layout (latfpp, market1501, dukemtmc, msmt17, generic) are independent of how the
pixels are rendered, and the parser tests read them as the ground truth of each layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidsearch.data.manifest import SPLITS


@dataclass
class Record:
    """One image to write: who, which camera, which split, and how it will be named."""

    split: str
    pid: int  # pid as written on disk (-1 junk, 0 distractor for Market-style)
    cam: int  # 0-based
    k: int  # index of the image within (person, camera): the "angle" of latfpp
    person: int  # row of the appearance table
    kind: str = "normal"  # normal | junk | distractor


def sample_records(
    ids: int, test_ids: int, cameras: int, per_cam: int, market: bool, rng: np.random.Generator
) -> list[Record]:
    """Every image of the dataset in write order; Market-style adds distractors and junk."""
    recs = []
    for i in range(ids):
        for cam in range(cameras):
            recs += [Record("train", i + 1, cam, k, i) for k in range(per_cam)]
    for j in range(test_ids):
        for cam in range(cameras):
            for k in range(per_cam):
                query = k == 0 if per_cam > 1 else cam == 0
                recs.append(Record("query" if query else "gallery", ids + j + 1, cam, k, ids + j))
    if market:
        extra = max(2, test_ids // 4)
        person = ids + test_ids
        for n in range(extra):  # distractors: people seen nowhere else
            recs.append(
                Record("gallery", 0, int(rng.integers(cameras)), n, person + n, "distractor")
            )
        for n in range(extra):  # junk: bad crops of anyone
            who = int(rng.integers(ids + test_ids + extra))
            recs.append(Record("gallery", -1, int(rng.integers(cameras)), n, who, "junk"))
    return recs


def _name_latfpp(r: Record, width: int) -> str:
    folder = "train" if r.split == "train" else f"val/{r.split}"
    return f"{folder}/{r.pid:0{width}d}/{r.cam + 1}_{r.k + 1}.png"


def _name_market(r: Record, frame: int) -> str:
    folder = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    pid = "-1" if r.pid == -1 else f"{r.pid:04d}"
    return f"{folder[r.split]}/{pid}_c{r.cam + 1}s1_{frame:06d}_{r.k % 100:02d}.jpg"


def _name_duke(r: Record, frame: int) -> str:
    folder = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    pid = "-1" if r.pid == -1 else f"{r.pid:04d}"
    return f"{folder[r.split]}/{pid}_c{r.cam + 1}_f{frame:07d}.jpg"


def _name_msmt(r: Record, frame: int) -> str:
    return f"{r.pid:04d}/{r.pid:04d}_{frame:03d}_{r.cam + 1:02d}_0303morning_{frame:04d}_0.jpg"


def _name_generic(r: Record, frame: int) -> str:
    return f"{r.split}/p{r.pid:04d}/{r.pid:04d}_c{r.cam + 1}_{frame:04d}.png"


def layout_paths(layout: str, recs: list[Record], ids: int, test_ids: int) -> list[str]:
    """Relative file path of each record in ``layout``; msmt17 renumbers ``recs`` pids in place."""
    if layout == "latfpp":
        width = max(3, len(str(ids + test_ids)))
        return [_name_latfpp(r, width) for r in recs]
    if layout == "msmt17":  # train pids 0.., test pids 0.. (separate numbering, like MSMT17)
        for r in recs:
            r.pid = r.pid - 1 if r.split == "train" else r.pid - ids - 1
        folder = {"train": "train", "query": "test", "gallery": "test"}
        return [f"{folder[r.split]}/{_name_msmt(r, n)}" for n, r in enumerate(recs)]
    namer: Callable[[Record, int], str] = {
        "market1501": _name_market,
        "dukemtmc": _name_duke,
        "generic": _name_generic,
    }[layout]
    return [namer(r, n) for n, r in enumerate(recs)]


def write_msmt_lists(out: Path, recs: list[Record], paths: list[str]) -> None:
    """Train persons' last image goes to ``list_val.txt`` (parsed back into train)."""
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    count: dict[int, int] = {}
    last: dict[int, int] = {}
    for n, r in enumerate(recs):
        if r.split == "train":
            count[r.pid] = count.get(r.pid, 0) + 1
            last[r.pid] = n
    for n, (r, p) in enumerate(zip(recs, paths, strict=True)):
        name = r.split
        if r.split == "train" and last[r.pid] == n and count[r.pid] > 1:
            name = "val"
        lists[name].append(f"{p.split('/', 1)[1]} {r.pid}")
    for name, lines in lists.items():
        (out / f"list_{name}.txt").write_text("".join(line + "\n" for line in lines))


def expected_counts(layout: str, recs: list[Record], out: Path) -> dict[str, Any]:
    """Per-split ids/images/cameras that parsing the written dataset must find."""
    splits = {}
    for split in SPLITS:
        rs = [r for r in recs if r.split == split]
        splits[split] = {
            "ids": len({r.pid for r in rs if r.kind == "normal"}),
            "images": len(rs),
            "cameras": len({r.cam for r in rs}),
        }
    return {
        "root": str(out),
        "layout": layout,
        "splits": splits,
        "junk": sum(r.kind == "junk" for r in recs),
        "distractors": sum(r.kind == "distractor" for r in recs),
    }
