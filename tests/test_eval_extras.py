"""Leak check, pictures, feature extraction and top-k retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reidsearch.evaluation import extract_features, find_query_gallery_leaks, leak_warning
from reidsearch.evaluation.plots import GREEN, RED, plot_cmc, plot_ranked_list
from reidsearch.evaluation.retrieval import faiss_topk


def test_leaks_find_byte_identical_pairs(tmp_path) -> None:
    (tmp_path / "q").mkdir()
    (tmp_path / "g").mkdir()
    payloads = {"a": b"x" * 100, "b": b"y" * 100, "c": b"z" * 50}
    q = []
    for name, data in payloads.items():
        (tmp_path / "q" / f"{name}.png").write_bytes(data)
        q.append(str(tmp_path / "q" / f"{name}.png"))
    g = []
    for name, data in [
        ("a1", b"x" * 100),
        ("a2", b"x" * 100),
        ("b", b"y" * 99 + b"Y"),
        ("c", b"z" * 50),
        ("d", b"w" * 7),
    ]:
        (tmp_path / "g" / f"{name}.png").write_bytes(data)
        g.append(str(tmp_path / "g" / f"{name}.png"))
    pairs = find_query_gallery_leaks(q, g)
    assert sorted(pairs) == sorted([(q[0], g[0]), (q[0], g[1]), (q[2], g[3])])
    msg = leak_warning(pairs, len(q))
    assert msg is not None and msg.startswith("2 of 3 query images are byte-identical")
    assert leak_warning([], 3) is None


def _png(path) -> Image.Image:
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(path)
    img.load()
    return img


def test_plot_cmc_writes_png(tmp_path) -> None:
    path = plot_cmc(np.linspace(0.6, 1.0, 50), tmp_path / "sub" / "cmc.png", title="CMC test")
    img = _png(path)
    assert img.size[0] >= 300 and img.size[1] >= 200


def test_ranked_list_borders(tmp_path) -> None:
    rng = np.random.default_rng(0)
    query = rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)
    gallery = [rng.integers(0, 255, (80, 40, 3), dtype=np.uint8) for _ in range(10)]
    matches = [True, False] * 5
    path = plot_ranked_list(
        query, gallery, matches, tmp_path / "rl.png", height=128, width=64, border=4
    )
    img = np.asarray(_png(path).convert("RGB"))
    cell_w, gap = 64 + 8, 8
    assert img.shape == (136, cell_w * 11 + gap, 3)
    for i, ok in enumerate(matches):
        x0 = cell_w + gap + i * cell_w
        for y, x in [(1, x0 + 1), (134, x0 + 30), (60, x0 + 2), (60, x0 + cell_w - 2)]:
            assert tuple(img[y, x]) == (GREEN if ok else RED)
    with pytest.raises(ValueError):
        plot_ranked_list(query, gallery, matches[:3], tmp_path / "bad.png")


def test_extract_features_flip_and_normalise() -> None:
    torch.manual_seed(0)
    weight = torch.randn(3 * 4 * 6, 5)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ weight

    batches = [torch.randn(3, 3, 4, 6), torch.randn(2, 3, 4, 6)]
    plain = extract_features(fn, batches)
    assert plain.shape == (5, 5) and plain.dtype == torch.float32
    torch.testing.assert_close(plain.norm(dim=1), torch.ones(5))
    flipped = extract_features(fn, batches, flip=True)
    x = torch.cat(batches)
    expected = fn(x) + fn(torch.flip(x, dims=[3]))
    torch.testing.assert_close(flipped, expected / expected.norm(dim=1, keepdim=True))
    assert not torch.equal(plain, flipped)


def test_faiss_topk_matches_exact_ranking() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((20, 8)).astype(np.float32)
    g = rng.standard_normal((300, 8)).astype(np.float32)
    scores, idx = faiss_topk(q, g, 10)
    assert scores.shape == idx.shape == (20, 10) and idx.dtype == np.int64
    expected = np.argsort(-(q @ g.T), axis=1)[:, :10]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ g.T, expected, 1), rtol=1e-5)
    s2, i2 = faiss_topk(torch.from_numpy(q), torch.from_numpy(g), 500)
    assert i2.shape == (20, 300)


def test_torch_fallback_without_faiss(monkeypatch) -> None:
    from reidsearch.evaluation import retrieval

    monkeypatch.setattr(retrieval, "_faiss", lambda: None)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((5, 4)).astype(np.float32)
    g = rng.standard_normal((50, 4)).astype(np.float32)
    _, idx = retrieval.faiss_topk(q, g, 7)
    np.testing.assert_array_equal(idx, np.argsort(-(q @ g.T), axis=1)[:, :7])
