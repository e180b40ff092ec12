"""DDP semantics (reidsearch.engine.distributed) on 2 gloo processes against one-process math.

The CPU scenarios run once, in one pair of forked processes (a FileStore rendezvous, no ports;
forked, they inherit the imports), and the tests check what each rank saved. Convention under
test: the gradient that ``all_gather_with_grad`` gives the local slice is the sum over ranks of
their gradients, i.e. ``W`` times the gradient of the ranks' mean loss; DDP's averaging divides
it back. ``test_ddp_training.py`` runs the real training loop on a pair of ranks.
"""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from reidsearch.config import DDPConfig, LossConfig, TrialConfig
from reidsearch.engine.distributed import (
    all_gather_with_grad,
    mining_gather,
    scaled_lr,
    sync_batchnorm,
    wrap_ddp,
)
from reidsearch.errors import ConfigError
from reidsearch.modeling.heads import ReIDOutput
from reidsearch.modeling.losses import ReIDLoss, batch_hard_triplet

W, B, D = 2, 4, 3
MARGIN = 0.3
# (e): locally every identity is far from the others (per-rank loss 0), but rank 1's id 2 sits
# between rank 0's id-0 samples' neighbours: the hardest negatives are on the other rank.
SEPARATED = torch.tensor([0.0, 0.1, 10.0, 10.1, 0.2, 0.3, 20.0, 20.1]).view(-1, 1)
SEPARATED_LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
# (a'): rank 0 has P x K anchors, rank 1 only singletons (no valid anchor of its own).
LONELY_LABELS = torch.tensor([0, 0, 1, 1, 5, 6, 7, 8])
# Longer than any run here takes (seconds), shorter than forever; the process group's own
# timeout (60 s) turns a collective that one rank never joins into an error first.
JOIN_TIMEOUT_S = 180.0


def _global_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(W * B, D, generator=g),
        "weights": torch.randn(W, W * B, D, generator=g),
        "inputs": torch.randn(W * B, 5, generator=g),
        "labels": torch.tensor([0, 0, 1, 1, 2, 2, 0, 0]),
    }


def _rank_function(gathered: torch.Tensor, rank: int, weights: torch.Tensor) -> torch.Tensor:
    """A different loss of the gathered tensor on each rank (so the sum over ranks matters)."""
    return (gathered * weights[rank]).sum() + (rank + 1) * gathered.pow(2).sum() / 3


def _linear() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(5, D)


def _scenarios(rank: int) -> dict:
    data, mine = _global_data(), slice(rank * B, (rank + 1) * B)
    out: dict = {}
    # (a) forward and backward of the autograd all_gather
    x = data["x"][mine].clone().requires_grad_(True)
    gathered = all_gather_with_grad(x)
    _rank_function(gathered, rank, data["weights"]).backward()
    out["gathered"], out["x_grad"] = gathered.detach(), x.grad
    # (a') rank 1 has nothing to mine but must still join the backward all-reduce
    gather = mining_gather(DDPConfig(cross_rank_mining=True), W)
    x = data["x"][mine].clone().requires_grad_(True)
    labels = LONELY_LABELS[mine]
    cand, cand_labels = gather(x, labels)
    out["cand_labels"] = cand_labels
    batch_hard_triplet(x, labels, MARGIN, cand, cand_labels).backward()
    out["lonely_grad"] = x.grad
    # (b) cross-rank mining through ReIDLoss on a DDP-wrapped model
    model = wrap_ddp(_linear(), torch.device("cpu"), W)
    out["is_ddp"] = isinstance(model, nn.parallel.DistributedDataParallel)
    loss_fn = ReIDLoss(LossConfig(ce_weight=0.0, triplet_weight=1.0, triplet_margin=None), gather)
    embedding = model(data["inputs"][mine])
    total, _ = loss_fn(ReIDOutput(logits=[], embedding=embedding), data["labels"][mine])
    total.backward()
    out["loss"] = total.detach()
    out["param_grads"] = [p.grad.clone() for p in model.parameters()]
    # (e) per-rank mining (the default) against cross-rank mining
    local, labels = SEPARATED[mine], SEPARATED_LABELS[mine]
    out["per_rank"] = batch_hard_triplet(local, labels, MARGIN)
    out["cross_rank"] = batch_hard_triplet(local, labels, MARGIN, *gather(local, labels))
    return out


def _entry(rank: int, fn, store: str, results: str, device: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=W,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.save(fn(rank), Path(results) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(
    tmp: Path, fn, start_method: str = "fork", device: str = "cpu", timeout: float = JOIN_TIMEOUT_S
) -> list[dict]:
    """Run ``fn(rank)`` on 2 gloo ranks; what each returned, by rank. A rank's exception is
    raised here (``ProcessRaisedException``); ranks still running after ``timeout`` seconds
    are killed and the test fails as hung (a collective that waits forever, a deadlock)."""
    args = (fn, str(tmp / "store"), str(tmp), device)
    context = mp.start_processes(_entry, args=args, nprocs=W, start_method=start_method, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            alive = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
            pytest.fail(f"DDP ranks {alive} still running after {timeout:.0f} s: hung")
    return [torch.load(tmp / f"{r}.pt", weights_only=False) for r in range(W)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return _run(tmp_path_factory.mktemp("ddp"), _scenarios)


def test_all_gather_with_grad_forward_and_summed_backward(ranks):
    data = _global_data()
    x = data["x"].clone().requires_grad_(True)
    # One process: the sum of every rank's loss, each a function of the whole batch.
    sum(_rank_function(x, r, data["weights"]) for r in range(W)).backward()
    for r, saved in enumerate(ranks):
        assert torch.equal(saved["gathered"], data["x"])
        # = W * d(mean_s L_s)/dx_r: the factor DDP's averaging divides back
        assert torch.allclose(saved["x_grad"], x.grad[r * B : (r + 1) * B], atol=1e-5)


def test_without_process_group_gather_is_identity():
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x


def test_gradient_reaches_a_rank_without_anchors_of_its_own(ranks):
    data = _global_data()
    x = data["x"].clone().requires_grad_(True)
    labels = LONELY_LABELS
    # Rank 0's loss (mined against all 8); rank 1's is 0 but it ran the backward all-reduce.
    batch_hard_triplet(x[:B], labels[:B], MARGIN, x, labels).backward()
    assert torch.equal(ranks[0]["cand_labels"], labels)
    assert torch.equal(ranks[1]["cand_labels"], labels.roll(-B))  # own rows first
    for r, saved in enumerate(ranks):
        assert torch.allclose(saved["lonely_grad"], x.grad[r * B : (r + 1) * B], atol=1e-5)
    assert ranks[1]["lonely_grad"].abs().sum() > 0  # rank 0's negatives live on rank 1


def test_cross_rank_mining_equals_one_process_on_the_global_batch(ranks):
    data = _global_data()
    model = _linear()
    loss = batch_hard_triplet(model(data["inputs"]), data["labels"], margin=None)
    loss.backward()
    assert all(saved["is_ddp"] for saved in ranks)
    mean = sum(saved["loss"] for saved in ranks) / W
    assert mean.item() == pytest.approx(loss.item(), abs=1e-5)
    for saved in ranks:  # DDP averaged the ranks' gradients: those of the global mean loss
        for got, want in zip(saved["param_grads"], model.parameters(), strict=True):
            assert torch.allclose(got, want.grad, atol=1e-5)


def test_per_rank_mining_misses_the_other_ranks_hardest_negatives(ranks):
    per_rank = [saved["per_rank"].item() for saved in ranks]
    cross = sum(saved["cross_rank"] for saved in ranks) / W
    assert per_rank == [0.0, 0.0]
    # anchors (0, 0.1, 0.2, 0.3) of 8: hinge 0.2, 0.3, 0.3, 0.2 -> mean 1.0 / 8
    assert cross.item() == pytest.approx(1.0 / 8, abs=1e-5)
    one_process = batch_hard_triplet(SEPARATED, SEPARATED_LABELS, MARGIN)
    assert cross.item() == pytest.approx(one_process.item(), abs=1e-6)


@pytest.mark.parametrize(
    ("rule", "workers", "expected"),
    [
        ("none", 4, 3e-4),
        ("linear", 4, 12e-4),
        ("sqrt", 4, 6e-4),
        ("linear", 1, 3e-4),
        ("sqrt", 2, 3e-4 * math.sqrt(2)),
    ],
)
def test_scaled_lr(rule, workers, expected):
    assert scaled_lr(3e-4, DDPConfig(lr_scaling=rule), workers) == pytest.approx(expected)


def test_scaled_lr_rejects_no_workers():
    with pytest.raises(ValueError, match="world_size"):
        scaled_lr(1e-3, DDPConfig(), 0)


def test_defaults_are_off_and_do_nothing():
    cfg = TrialConfig().ddp
    assert (cfg.cross_rank_mining, cfg.sync_batchnorm, cfg.lr_scaling) == (False, False, "none")
    assert mining_gather(cfg, 4) is None
    assert mining_gather(DDPConfig(cross_rank_mining=True), 1) is None
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert sync_batchnorm(model, cfg, 4) is model
    assert sync_batchnorm(model, DDPConfig(sync_batchnorm=True), 1) is model
    assert isinstance(model[1], nn.BatchNorm1d)


def test_wrap_ddp_leaves_one_worker_and_frozen_models_alone():
    model = nn.Linear(3, 4)
    assert wrap_ddp(model, torch.device("cpu"), 1) is model
    model.requires_grad_(False)
    assert wrap_ddp(model, torch.device("cpu"), 2) is model


def test_sync_batchnorm_on_cpu_is_refused_up_front():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(ConfigError, match="^ddp.sync_batchnorm: .*GPUs only"):
        sync_batchnorm(model, DDPConfig(sync_batchnorm=True), 2)
    no_bn = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    assert sync_batchnorm(no_bn, DDPConfig(sync_batchnorm=True), 2) is no_bn


def test_sync_batchnorm_checks_every_batchnorm_that_torch_converts():
    """Named by their public classes (torch tests its private ``_BatchNorm`` base)."""
    from reidsearch.engine.distributed import _BATCH_NORMS

    base = nn.modules.batchnorm._BatchNorm
    kinds = {c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, base)}
    assert kinds == set(_BATCH_NORMS), f"torch changed nn's BatchNorm kinds: {kinds}"


def _sync_bn_scenario(rank: int) -> dict:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).cuda()
    model = sync_batchnorm(model, DDPConfig(sync_batchnorm=True), W)
    x = torch.randn(W * B, 3, generator=torch.Generator().manual_seed(4)).cuda()
    y = model(x[rank * B : (rank + 1) * B])
    bn = model[1]
    return {
        "synced": isinstance(bn, nn.SyncBatchNorm),
        "y": y.detach().cpu(),
        "mean": bn.running_mean.cpu(),
        "var": bn.running_var.cpu(),
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's SyncBatchNorm needs a GPU")
def test_sync_batchnorm_equals_batchnorm_on_the_global_batch(tmp_path):
    ranks = _run(tmp_path, _sync_bn_scenario, start_method="spawn", device="cuda")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    y = model(torch.randn(W * B, 3, generator=torch.Generator().manual_seed(4)))
    assert all(saved["synced"] for saved in ranks)
    assert torch.allclose(torch.cat([s["y"] for s in ranks]), y.detach(), atol=1e-5)
    for saved in ranks:
        assert torch.allclose(saved["mean"], model[1].running_mean, atol=1e-6)
        assert torch.allclose(saved["var"], model[1].running_var, atol=1e-5)
