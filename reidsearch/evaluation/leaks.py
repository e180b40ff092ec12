"""Query images that are byte-identical to gallery images (a leak that inflates every metric)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path


def _digest(path: str | Path) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def find_query_gallery_leaks(
    q_paths: Sequence[str | Path], g_paths: Sequence[str | Path]
) -> list[tuple[str, str]]:
    """All (query, gallery) pairs of byte-identical files.

    Sizes are compared first so only files whose size occurs on both sides are hashed.
    """
    g_by_size: dict[int, list[str]] = {}
    for p in g_paths:
        g_by_size.setdefault(os.path.getsize(p), []).append(str(p))
    digests: dict[str, bytes] = {}

    def digest(p: str) -> bytes:
        if p not in digests:
            digests[p] = _digest(p)
        return digests[p]

    pairs: list[tuple[str, str]] = []
    for q in map(str, q_paths):
        same_size = g_by_size.get(os.path.getsize(q))
        if not same_size:
            continue
        dq = digest(q)
        pairs.extend((q, g) for g in same_size if digest(g) == dq)
    return pairs


def leak_warning(pairs: list[tuple[str, str]], num_queries: int) -> str | None:
    """The user-facing warning for ``pairs``, or None when there is no leak."""
    leaked = len({q for q, _ in pairs})
    if not leaked:
        return None
    return (
        f"{leaked} of {num_queries} query images are byte-identical to gallery images "
        f"(e.g. {pairs[0][0]} == {pairs[0][1]}); metrics on this split are inflated"
    )
