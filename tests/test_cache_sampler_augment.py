"""Decoded-image cache, P x K sampler and batched augmentation."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidsearch.data import cache as cache_mod
from reidsearch.data.augment import BatchAugment
from reidsearch.data.cache import build_image_cache
from reidsearch.data.parsers import parse_dataset
from reidsearch.data.sampler import PKSampler
from reidsearch.errors import ConfigError, DatasetError
from tests.conftest import write_tiny_market


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_market(tmp_path_factory.mktemp("market"))


def test_cache_matches_pil_and_is_reused(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    table = parse_dataset(dataset, "market1501")
    cache = build_image_cache(table, 32, 16, cache_dir=tmp_path)
    assert len(cache) == table.num_rows and cache.images.shape == (table.num_rows, 32, 16, 3)
    for i in (0, table.num_rows - 1):
        with Image.open(dataset / table["path"][i].as_py()) as im:
            ref = np.asarray(im.convert("RGB").resize((16, 32), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(cache.images[i], ref)
    batch = cache.batch([2, 0])
    assert batch.dtype == torch.uint8 and batch.shape == (2, 32, 16, 3)
    assert torch.equal(batch[1], torch.from_numpy(np.array(cache.images[0])))

    mtime = cache.path.stat().st_mtime_ns

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "_decode", no_decode)
    again = build_image_cache(table, 32, 16, cache_dir=tmp_path)
    assert again.path == cache.path and cache.path.stat().st_mtime_ns == mtime
    # No temporary files left behind: the cache, its build record and its lock file.
    stem = cache.path.with_suffix("")
    assert sorted(tmp_path.iterdir()) == [stem.with_suffix(s) for s in (".json", ".lock", ".npy")]
    record = json.loads(cache.path.with_suffix(".json").read_text())
    assert record["images"] == table.num_rows and record["pid"] == os.getpid()
    monkeypatch.undo()
    other = build_image_cache(table, 24, 12, cache_dir=tmp_path)  # another size: another file
    assert other.path != cache.path and other.images.shape[1:3] == (24, 12)


def test_concurrent_builders_decode_the_dataset_once(
    dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    """Trials starting together on one node wait for the first builder instead of decoding
    the same images again (the file lock), and all get the same cache."""
    table = parse_dataset(dataset, "market1501")
    decoded: list[str] = []
    real_decode = cache_mod._decode

    def counting_decode(path, height, width):
        decoded.append(str(path))
        time.sleep(0.002)  # long enough for the other builders to arrive while it works
        return real_decode(path, height, width)

    monkeypatch.setattr(cache_mod, "_decode", counting_decode)
    with ThreadPoolExecutor(max_workers=4) as pool:
        caches = list(pool.map(lambda _: build_image_cache(table, 32, 16, tmp_path, 1), range(4)))
    assert len(decoded) == table.num_rows == len(set(decoded))
    assert {c.path for c in caches} == {caches[0].path}
    for other in caches[1:]:
        np.testing.assert_array_equal(other.images, caches[0].images)


@pytest.mark.fault("bad_input")
def test_cache_unreadable_image(dataset: Path, tmp_path: Path) -> None:
    table = parse_dataset(dataset, "market1501")
    broken = tmp_path / "data"
    import shutil

    shutil.copytree(dataset, broken)
    victim = broken / table["path"][3].as_py()
    victim.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=str(victim)):
        build_image_cache(parse_dataset(broken, "market1501"), 32, 16, cache_dir=tmp_path / "c")
    # Nothing half-written is left: only the (empty) lock file of the failed build.
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".lock"]


def _labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))


def test_sampler_pk_batches() -> None:
    labels = _labels()
    s = PKSampler(labels, p=3, k=4, seed=1)
    batches = list(s)
    # One epoch covers the images about once: K-chunks per identity (counts 1..10, K=4 ->
    # 1+1+1+1+1+1+1+2+2+2 = 13 chunks), P chunks a batch.
    assert len(batches) == len(s) == 13 // 3
    for b in batches:
        assert len(b) == 12
        ids = labels[b].reshape(3, 4)
        assert len(set(ids[:, 0])) == 3 and (ids == ids[:, :1]).all()
    rich = np.flatnonzero(np.bincount(labels)[labels] >= 4)  # images of ids with >= K images
    drawn = [x for b in batches for x in b if x in set(rich.tolist())]
    assert len(drawn) == len(set(drawn))  # chunks of one epoch never repeat an image
    seen = {int(x) for b in batches for x in labels[b]}
    assert len(seen) >= 7
    with pytest.raises(ConfigError):
        PKSampler(labels, p=11, k=2)


def test_sampler_ranks_disjoint_and_deterministic() -> None:
    labels = _labels()
    ranks = [PKSampler(labels, p=2, k=2, seed=3, rank=r, world_size=2) for r in range(2)]
    # K=2 chunks: 1+1+1+2+2+3+3+4+4+5 = 26 -> 13 batches of P=2 -> 6 per rank.
    assert len(ranks[0]) == len(ranks[1]) == 6
    a, b = (list(r) for r in ranks)
    assert not {tuple(x) for x in a} & {tuple(x) for x in b}
    assert a == list(PKSampler(labels, p=2, k=2, seed=3, rank=0, world_size=2))
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != a
    sparse = np.arange(4)  # one image per identity: a single chunk of P=4, but 4 ranks
    many = [PKSampler(sparse, p=4, k=2, rank=r, world_size=4) for r in range(4)]
    assert all(len(m) == 1 for m in many)  # more ranks than batches: still one step each


def test_sampler_state_round_trip() -> None:
    labels = _labels()
    s = PKSampler(labels, p=2, k=3, seed=7)
    s.set_epoch(4)
    it = iter(s)
    first = [next(it), next(it)]
    state = s.state_dict()
    rest = list(it)
    resumed = PKSampler(labels, p=2, k=3, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)
    assert list(resumed) == rest
    s.set_epoch(4)
    assert list(s) == first + rest  # a finished epoch iterates again from its start


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(n: int = 4, h: int = 16, w: int = 8) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def _plain(x: torch.Tensor) -> torch.Tensor:
    x = x.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_augment_eval_is_plain_normalisation() -> None:
    x = _images()
    out = BatchAugment(16, 8, MEAN, STD, train=False)(x)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 16, 8)
    torch.testing.assert_close(out, _plain(x))
    resized = BatchAugment(32, 12, MEAN, STD, train=False)(x)
    assert resized.shape == (4, 3, 32, 12)


def test_augment_train_ops() -> None:
    x = _images()
    flip = BatchAugment(16, 8, MEAN, STD, flip_p=1.0, pad=0, erasing_p=0.0)
    torch.testing.assert_close(flip(x), _plain(x).flip(-1))
    crop = BatchAugment(16, 8, MEAN, STD, flip_p=0.0, pad=3, erasing_p=0.0)
    out = crop(x, torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 16, 8)
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2).float(), (3, 3, 3, 3))
    for i in range(4):  # every sample is some window of its padded image
        windows = padded[i].unfold(1, 16, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4)
        norm = (windows / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        assert ((norm - out[i]).abs().amax(dim=(2, 3, 4)) < 1e-5).any()
    erase = BatchAugment(16, 8, MEAN, STD, flip_p=0.0, pad=0, erasing_p=1.0)
    erased = erase(x, torch.Generator().manual_seed(2))
    changed = (erased != _plain(x)).flatten(1).any(1)
    assert changed.all() and (erased == 0).flatten(1).any(1).all()


def test_augment_deterministic_with_generator() -> None:
    x = _images(8, 20, 10)
    aug = BatchAugment(16, 8, MEAN, STD)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert a.shape == (8, 3, 16, 8)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
