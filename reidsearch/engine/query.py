"""``reidsearch query``: find the people of some query images in a folder of images.

Why here and not only in evaluation: evaluation needs a parsed dataset with identities and
cameras; a user with a trained (or exported) model has just pictures. The model is either a
checkpoint (rebuilt in torch) or an exported ONNX file (run with onnxruntime, no checkpoint
needed); both take the same uint8 images, decoded exactly as the training cache decodes them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reidsearch.data.cache import _decode as decode_image  # the training pipeline's decode
from reidsearch.errors import ReidSearchError, first_line
from reidsearch.evaluation.plots import plot_ranked_list
from reidsearch.evaluation.retrieval import faiss_topk

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
Warn = Callable[[str], None]


def _warn(message: str) -> None:
    print(f"reidsearch: warning: {message}", file=sys.stderr, flush=True)


@dataclass
class Embedder:
    """uint8 ``N,H,W,3`` images at ``height x width`` -> L2-normalised float32 ``N,D``."""

    kind: str  # "torch" or "onnx"
    path: Path
    height: int
    width: int
    feature: str
    run: Callable[[np.ndarray], np.ndarray]

    def describe(self) -> str:
        size = f"{self.height}x{self.width}"
        return f"{self.path} ({self.kind}; feature {self.feature}, input {size})"


def _onnx_embedder(path: Path) -> Embedder:
    from reidsearch.engine.export import card_path, onnx_session

    session = onnx_session(path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    if (
        len(inputs) != 1
        or inputs[0].type != "tensor(uint8)"
        or len(shape) != 4
        or shape[3] != 3
        or not all(isinstance(v, int) for v in shape[1:3])
    ):
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise ReidSearchError(
            f"{path}: not a reidsearch ONNX model (inputs: {got}; expected one uint8 N,H,W,3)"
        )
    feature = "?"
    if card_path(path).is_file():
        try:
            feature = json.loads(card_path(path).read_text())["output"]["feature"]
        except (ValueError, KeyError, TypeError):
            pass  # the JSON is informative only; the graph itself carries the contract
    name, out_name = inputs[0].name, outputs[0].name
    return Embedder(
        "onnx", path, shape[1], shape[2], feature, lambda x: session.run([out_name], {name: x})[0]
    )


def _torch_embedder(path: Path) -> Embedder:
    import torch

    from reidsearch.engine.export import load_feature_net

    net, info = load_feature_net(path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(images).to(device)).float().cpu().numpy()

    return Embedder("torch", path, info.height, info.width, info.feature, run)


def open_model(path: str | Path) -> Embedder:
    """An ``.onnx`` file (onnxruntime) or a reidsearch checkpoint (model.pt / checkpoint.pt)."""
    path = Path(path)
    if not path.is_file():
        raise ReidSearchError(f"{path}: --model: no such file")
    return _onnx_embedder(path) if path.suffix.lower() == ".onnx" else _torch_embedder(path)


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (any depth), by suffix, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReidSearchError(f"{folder}: --gallery: no such folder")
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _decode_or_none(path: Path, height: int, width: int, warn: Warn | None) -> np.ndarray | None:
    try:
        return decode_image(path, height, width)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        if warn is None:
            raise ReidSearchError(f"{path}: not a readable image ({first_line(exc)})") from None
        warn(f"{path}: unreadable image, skipped ({first_line(exc)})")
        return None


def embed_images(
    model: Embedder, paths: Sequence[Path], *, batch_size: int = 64, warn: Warn | None = _warn
) -> tuple[list[Path], np.ndarray]:
    """(readable paths, their features), batch by batch so that a large gallery is never held
    decoded in memory; decoding runs in a few threads (PIL releases the GIL). ``warn=None``
    makes an unreadable image an error instead of a skip."""
    kept: list[Path] = []
    feats: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = list(
                pool.map(lambda p: _decode_or_none(p, model.height, model.width, warn), chunk)
            )
            batch = [(p, im) for p, im in zip(chunk, images, strict=True) if im is not None]
            if batch:
                kept.extend(p for p, _ in batch)
                run = model.run(np.stack([im for _, im in batch]))
                feats.append(np.asarray(run, dtype=np.float32))
    return kept, (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32))


def identity_of(path: Path, id_regex: re.Pattern[str] | None = None) -> str | None:
    """The identity a file name or folder says: the first group of ``id_regex`` searched in
    the path, or else the parent folder's name (the ``<pid>/<image>`` layouts)."""
    if id_regex is None:
        return path.parent.name or None
    found = id_regex.search(path.as_posix())
    if found is None:
        return None
    return found.group(1) if id_regex.groups else found.group(0)


@dataclass
class Match:
    rank: int
    similarity: float
    path: Path
    identity: str | None


@dataclass
class QueryResult:
    query: Path
    identity: str | None
    matches: list[Match]
    picture: Path | None = None


@dataclass
class QueryReport:
    model: str
    gallery: Path
    gallery_size: int
    skipped: int
    id_rule: str
    results: list[QueryResult] = field(default_factory=list)


def _picture_path(out: Path, index: int, count: int) -> Path:
    return out if count == 1 else out.with_name(f"{out.stem}_{index}{out.suffix}")


def run_query(
    queries: Sequence[str | Path],
    gallery: str | Path,
    model: str | Path,
    *,
    top: int = 10,
    out: str | Path | None = None,
    id_regex: str | None = None,
    batch_size: int = 64,
    warn: Warn = _warn,
) -> QueryReport:
    """Embed the gallery and the queries, retrieve by inner product (FAISS) and draw each
    query's ranked list (green border: same identity as the query by ``identity_of``)."""
    if top < 1 or batch_size < 1:
        raise ReidSearchError(f"--top {top} / --batch-size {batch_size}: must be at least 1")
    pattern = None
    if id_regex is not None:
        try:
            pattern = re.compile(id_regex)
        except re.error as exc:
            raise ReidSearchError(f"--id-regex {id_regex!r}: not a regex ({exc})") from None
    query_paths = [Path(q) for q in queries]
    for q in query_paths:
        if not q.is_file():
            raise ReidSearchError(f"{q}: no such query image")
    files = find_images(gallery)
    if not files:
        raise ReidSearchError(f"{gallery}: --gallery: no image files in it")
    embedder = open_model(model)
    _, qf = embed_images(embedder, query_paths, batch_size=batch_size, warn=None)
    paths, gf = embed_images(embedder, files, batch_size=batch_size, warn=warn)
    if not paths:
        raise ReidSearchError(f"{gallery}: --gallery: none of its {len(files)} images is readable")
    scores, indices = faiss_topk(qf, gf, top)
    report = QueryReport(
        model=embedder.describe(),
        gallery=Path(gallery),
        gallery_size=len(paths),
        skipped=len(files) - len(paths),
        id_rule=f"--id-regex {id_regex}" if id_regex else "the parent folder's name",
    )
    for i, q in enumerate(query_paths):
        qid = identity_of(q, pattern)
        matches = [
            Match(rank + 1, float(s), paths[j], identity_of(paths[j], pattern))
            for rank, (s, j) in enumerate(zip(scores[i], indices[i], strict=True))
            if j >= 0
        ]
        result = QueryResult(q, qid, matches)
        if out is not None:
            result.picture = _picture_path(Path(out), i + 1, len(query_paths))
            images = [decode_image(m.path, embedder.height, embedder.width) for m in matches]
            same = [qid is not None and m.identity == qid for m in matches]
            plot_ranked_list(
                decode_image(q, embedder.height, embedder.width), images, same, result.picture
            )
        report.results.append(result)
    return report


def format_report(report: QueryReport) -> str:
    """The ranked matches of every query as plain text: rank, similarity, identity, path."""
    skipped = f" ({report.skipped} unreadable, skipped)" if report.skipped else ""
    lines = [
        f"model: {report.model}",
        f"gallery: {report.gallery}: {report.gallery_size} images{skipped}",
    ]
    for result in report.results:
        lines.append(f"query {result.query} (identity {result.identity or '?'}):")
        lines.append(f"  {'rank':>4}  {'similarity':>10}  {'identity':<10}  path")
        for m in result.matches:
            lines.append(
                f"  {m.rank:>4}  {m.similarity:>10.4f}  {(m.identity or '?'):<10}  {m.path}"
            )
        if result.picture is not None:
            lines.append(
                f"  ranked list: {result.picture} (green border: same identity as the query, "
                f"by {report.id_rule})"
            )
    return "\n".join(lines)
