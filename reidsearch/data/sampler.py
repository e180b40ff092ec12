"""P x K identity sampler (P identities, K images each) for triplet loss, DDP-aware.

Why a batch sampler and not a per-sample one: batch-hard triplet needs every batch to hold K
images of each of its P identities, and DDP needs every rank to take the same number of steps.
The global batch list of an epoch depends only on (seed, epoch), so a resumed run replays it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from reidsearch.errors import ConfigError


class PKSampler:
    """Yields lists of ``p * k`` indices into ``labels``: P distinct identities x K images.

    One epoch covers the training images about once, as in torchreid's identity sampler: each
    identity's shuffled images are cut into chunks of K (identities with fewer than K images
    are drawn with replacement), and each batch takes one chunk from P identities that still
    have chunks left. Rank ``r`` of ``world_size`` takes global batches r, r + world_size, ...
    so ranks never share a batch.
    """

    def __init__(
        self,
        labels: np.ndarray,
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("labels must be a non-empty 1-D array")
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be >= 1 (got p={p}, k={k})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.ids, inverse = np.unique(labels, return_inverse=True)
        if len(self.ids) < p:
            raise ConfigError(
                f"sampler.p: {p} identities per batch but the training split has only "
                f"{len(self.ids)}"
            )
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(self.ids)))[:-1]
        self._members = np.split(order, bounds)  # indices of each identity's images
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._position = 0  # batches of the current epoch already yielded (for resuming)
        chunks = sum(max(1, len(m) // k) for m in self._members)
        per_epoch = max(chunks // p, world_size)
        self._global_batches = per_epoch // world_size * world_size

    def __len__(self) -> int:
        """Batches per rank per epoch (equal on every rank)."""
        return self._global_batches // self.world_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._position = 0

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every rank's batches of ``epoch``, in order (a function of seed and epoch only)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        queues: list[list[np.ndarray]] = []
        for members in self._members:
            if len(members) < self.k:
                shuffled = rng.choice(members, self.k, replace=True)
            else:
                shuffled = rng.permutation(members)
            n_chunks = len(shuffled) // self.k
            queues.append([shuffled[c * self.k : (c + 1) * self.k] for c in range(n_chunks)])
        batches = []
        while len(batches) < self._global_batches:
            alive = np.flatnonzero([len(q) > 0 for q in queues])
            if len(alive) >= self.p:
                chosen = rng.choice(alive, self.p, replace=False)
                picks = [queues[i].pop() for i in chosen]
            else:  # identities ran out of chunks (or more ranks than batches): draw fresh ones
                chosen = rng.choice(len(queues), self.p, replace=False)
                picks = [
                    rng.choice(self._members[i], self.k, replace=len(self._members[i]) < self.k)
                    for i in chosen
                ]
            batches.append([int(x) for pick in picks for x in pick])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.global_batches()[self.rank :: self.world_size][: len(self)]
        start = self._position if self._position < len(mine) else 0
        for i in range(start, len(mine)):
            self._position = i + 1
            yield mine[i]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._position = int(state["position"])
