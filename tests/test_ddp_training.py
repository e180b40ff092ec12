"""The real training loop (``train()``) on 2 gloo CPU ranks, end to end, with the ``ddp:``
options on the tiny config of conftest (a few seconds); the process set-up is test_ddp's."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from reidsearch.config import TrialConfig
from reidsearch.data.sampler import PKSampler
from reidsearch.engine.data import PreparedData, prepare_data
from reidsearch.engine.optim import lr_factor
from reidsearch.engine.trainer import TrainContext, train
from reidsearch.errors import ConfigError
from tests.test_ddp import W, _run

# --- end to end: the real training loop on 2 CPU ranks ------------------------------------------
# Each run: the tiny config of conftest (2-block 64-wide ViT, synthetic data, P x K = 8 x 4),
# one epoch, the same data and seed; only the ``ddp:`` section differs.
TRAINING_RUNS = {
    "cross_linear": {"cross_rank_mining": True, "lr_scaling": "linear"},
    "per_rank_linear": {"cross_rank_mining": False, "lr_scaling": "linear"},
    "cross_sqrt": {"cross_rank_mining": True, "lr_scaling": "sqrt"},
}


def _tiny(**ddp) -> TrialConfig:
    from tests.conftest import tiny_config_dict

    return TrialConfig.model_validate(tiny_config_dict(epochs=1, ddp=ddp))


def _training_scenarios(rank: int, data: PreparedData) -> dict:
    """``train()`` of each of TRAINING_RUNS, then with sync_batchnorm, on this rank."""
    import reidsearch.engine.trainer as trainer

    made = []

    class RecordedSeedRun(trainer.SeedRun):  # rank 1's weights and each rank's own losses
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.own_losses: list[list[float]] = []
            made.append(self)

        def train_epoch(self, *args, **kwargs):
            sums, seen = super().train_epoch(*args, **kwargs)
            self.own_losses.append(sums.tolist())
            return sums, seen

    trainer.SeedRun = RecordedSeedRun  # in this forked rank only
    ctx = TrainContext(rank=rank, world_size=W, device=torch.device("cpu"))
    out: dict = {}
    for name, ddp in TRAINING_RUNS.items():
        reports: list = []
        train(_tiny(**ddp), lambda m, p, into=reports: into.append((m, p)), ctx=ctx, data=data)
        run = made.pop()
        out[name] = {
            "own_losses": run.own_losses,
            "metrics": [m for m, _ in reports],
            "payloads": [p is not None for _, p in reports],
            "params": {n: p.detach().clone() for n, p in run.model.named_parameters()},
        }
    try:
        train(_tiny(sync_batchnorm=True), lambda m, p: None, ctx=ctx, data=data)
    except Exception as err:  # noqa: BLE001 - the test checks which error, and its message
        out["sync_bn_error"] = (type(err), str(err))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[list[dict], PreparedData]:
    data = prepare_data(_tiny().data)  # once, in the parent: the forked ranks inherit it
    scenarios = functools.partial(_training_scenarios, data=data)
    return _run(tmp_path_factory.mktemp("ddp_train"), scenarios), data


def test_training_scales_the_lr_by_the_rule(trained):
    ranks, data = trained
    cfg = _tiny()
    # The epoch's reported lr: after the epoch's last scheduler step, on each rank's share of
    # the global batches (half of them each).
    steps = len(PKSampler(data.train_labels, cfg.sampler.p, cfg.sampler.k, world_size=W))
    factor = lr_factor(cfg.optim, cfg.epochs, steps, cfg.model.depth)(steps)
    for saved in ranks:
        linear, sqrt = saved["cross_linear"]["metrics"][0], saved["cross_sqrt"]["metrics"][0]
        assert linear["lr"] == pytest.approx(W * cfg.optim.lr * factor, rel=1e-9)
        assert sqrt["lr"] == pytest.approx(math.sqrt(W) * cfg.optim.lr * factor, rel=1e-9)


def test_training_keeps_the_ranks_weights_identical(trained):
    ranks, _ = trained
    for name in TRAINING_RUNS:
        # The ranks trained on different batches (their own losses differ) ...
        assert ranks[0][name]["own_losses"] != ranks[1][name]["own_losses"]
        # ... yet DDP's averaged gradients left them with the same weights, bit for bit.
        first, second = (saved[name]["params"] for saved in ranks)
        assert first.keys() == second.keys()
        for key, value in first.items():
            assert torch.equal(value, second[key]), f"{name}: {key} differs between the ranks"
    # and the weights did train (same start, other lr: other weights)
    linear, sqrt = ranks[0]["cross_linear"]["params"], ranks[0]["cross_sqrt"]["params"]
    assert not all(torch.equal(value, sqrt[key]) for key, value in linear.items())


def test_training_reports_every_rank_and_evaluates_on_rank_0(trained):
    ranks, _ = trained
    for name in TRAINING_RUNS:
        zero, one = ranks[0][name], ranks[1][name]
        assert [m["epoch"] for m in zero["metrics"]] == [m["epoch"] for m in one["metrics"]] == [1]
        assert zero["payloads"] == [True] and one["payloads"] == [False]
        assert zero["metrics"][0]["mAP"] > 0 and "mAP" not in one["metrics"][0]


def test_the_reported_loss_is_the_mean_over_ranks_not_rank_0s_share(trained):
    ranks, _ = trained
    for name in TRAINING_RUNS:
        own = [saved[name]["own_losses"][0] for saved in ranks]  # (total, ce, triplet) per rank
        assert own[0] != own[1]
        for saved in ranks:  # every rank reports the same epoch losses: the ranks' mean
            reported = saved[name]["metrics"][0]
            for i, key in enumerate(("loss", "ce", "triplet")):
                assert reported[key] == pytest.approx((own[0][i] + own[1][i]) / W, rel=1e-6)


def test_cross_rank_mining_changes_the_trained_triplet_loss(trained):
    ranks, _ = trained
    for saved in ranks:  # same data, seed and lr: only the mining differs
        cross = saved["cross_linear"]["metrics"][0]["triplet"]
        per_rank = saved["per_rank_linear"]["metrics"][0]["triplet"]
        assert math.isfinite(cross) and math.isfinite(per_rank)
        # Mining over both ranks' batches finds farther positives and nearer negatives: at equal
        # weights each anchor's hinge can only grow (measured: ~1.22 against ~1.12).
        assert cross > per_rank * 1.02


def test_sync_batchnorm_on_cpu_workers_is_a_one_line_config_error(trained):
    ranks, _ = trained
    for saved in ranks:  # every rank raised it, before any collective (no rank left waiting)
        assert "sync_bn_error" in saved, "sync_batchnorm on CPU workers trained instead"
        kind, message = saved["sync_bn_error"]
        assert kind is ConfigError
        assert message.startswith("ddp.sync_batchnorm: ") and "GPUs only" in message
        assert "\n" not in message
