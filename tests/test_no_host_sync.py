"""The training step never makes the host wait for the device.

On a GPU, ``.item()``, ``bool(tensor)``, ``.cpu()``, boolean-mask indexing or a blocking copy
from the host stalls the CPU until the GPU queue drains, every step. CUDA's own detector
(``torch.cuda.set_sync_debug_mode``) needs a GPU, so on CPU the tensor methods that would sync
are patched to raise while the trainer's real epoch loop runs; only the end-of-epoch
``check_finite`` (one read per epoch) may read a tensor. On a GPU machine the last test runs the
same steps under CUDA's detector.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import reidsearch.engine.optim as optim_module
import reidsearch.engine.seed_run as seed_run
from reidsearch.data.augment import BatchAugment
from reidsearch.engine.data import prepare_data
from reidsearch.engine.step import LossWatch, TrainingDiverged


class HostSync(AssertionError):
    """A host-device sync inside the training step."""


_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
_SHAPES = ("nonzero", "masked_select")  # data-dependent output shapes: the host must wait
_TENSOR = {name: getattr(torch.Tensor, name) for name in (*_READS, *_SHAPES, "__getitem__", "to")}
_TORCH = {name: getattr(torch, name) for name in (*_SHAPES, "as_tensor", "tensor")}
_armed = [False]


def _method(name: str):
    def method(self, *args, **kwargs):
        if _armed[0]:
            raise HostSync(f"Tensor.{name}() in the training step waits for the device")
        return _TENSOR[name](self, *args, **kwargs)

    return method


def _ours() -> bool:
    """Whether the caller of the patched function is not torch or timm itself: their
    ``.to(device)`` / ``torch.tensor(..., device=)`` in a step move device tensors to where they
    already are (no copy), or run once (optimiser state on the first step)."""
    caller = sys._getframe(2).f_globals.get("__name__", "")
    return not caller.startswith(("torch", "timm"))


def _function(name: str):
    def function(*args, **kwargs):
        copies = kwargs.get("device") is not None and _ours()
        if _armed[0] and (name in _SHAPES or copies):
            raise HostSync(f"torch.{name}() in the training step waits for the device")
        return _TORCH[name](*args, **kwargs)

    return function


def _getitem(self, index):
    parts = index if isinstance(index, tuple) else (index,)
    if _armed[0] and any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
        raise HostSync("boolean-mask indexing (a data-dependent shape) in the training step")
    return _TENSOR["__getitem__"](self, index)


def _to(self, *args, **kwargs):
    device = kwargs.get("device")
    device = device or next((a for a in args if isinstance(a, (str, torch.device))), None)
    blocking = device is not None and not kwargs.get("non_blocking", False)
    if _armed[0] and blocking and _ours():
        raise HostSync(f"blocking Tensor.to({device!r}) in the training step")
    return _TENSOR["to"](self, *args, **kwargs)


@contextlib.contextmanager
def refuse_host_syncs() -> Iterator[None]:
    """Inside the block, the tensor operations that make the host wait for the device raise."""
    with pytest.MonkeyPatch.context() as patch:
        for name in (*_READS, *_SHAPES):
            patch.setattr(torch.Tensor, name, _method(name))
        for name in _TORCH:
            patch.setattr(torch, name, _function(name))
        patch.setattr(torch.Tensor, "__getitem__", _getitem)
        patch.setattr(torch.Tensor, "to", _to)
        _armed[0] = True
        try:
            yield
        finally:
            _armed[0] = False


@contextlib.contextmanager
def allowed() -> Iterator[None]:
    """The one read per epoch, inside a guarded block."""
    armed, _armed[0] = _armed[0], False
    try:
        yield
    finally:
        _armed[0] = armed


@pytest.fixture(scope="module")
def data(tiny_config):
    return prepare_data(tiny_config().data)


def _run(cfg, data):
    run = seed_run.SeedRun(cfg, cfg.seed, data, rank=0, world_size=1, device=torch.device("cpu"))
    augment = BatchAugment(
        cfg.data.height,
        cfg.data.width,
        run.model.mean,
        run.model.std,
        train=True,
        flip_p=cfg.data.augment.flip_p,
        pad=cfg.data.augment.pad,
        erasing_p=cfg.data.augment.erasing_p,
    )
    return run, seed_run.ImageSource(data, torch.device("cpu")), augment


def _epoch_end_read_allowed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The one read per epoch: ``check_finite`` at the end of the loop."""
    calls: list[int] = []
    real = seed_run.check_finite

    def check_finite(sums: torch.Tensor, epoch: int) -> None:
        calls.append(epoch)
        with allowed():
            real(sums, epoch)

    monkeypatch.setattr(seed_run, "check_finite", check_finite)
    return calls


@pytest.fixture
def fused_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adam as it runs on a GPU: fused, its step counters on the device. The unfused CPU Adam
    reads its (CPU) step counter with ``.item()``, which is no device sync on a CPU."""
    monkeypatch.setattr(optim_module, "fused_adam", lambda model: True)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"loss.triplet_margin": None, "optim.grad_clip": 1.0},
        {"optim.name": "sgd", "model.head": "latf", "loss.row_reduction": "sum"},
    ],
    ids=["adam-triplet", "soft-margin-clip", "sgd-latf"],
)
def test_an_epoch_of_training_steps_reads_nothing_back(
    tiny_config, data, monkeypatch, fused_on_cpu, overrides
):
    cfg = tiny_config(epochs=2, **overrides)
    run, source, augment = _run(cfg, data)
    run.watch.every = 2  # the periodic NaN check runs inside the guarded epoch too
    run.prepare_epoch(0)
    run.train_epoch(0, data, source, augment, bf16=False)  # warm-up: optimiser state, caches
    reads = _epoch_end_read_allowed(monkeypatch)
    run.prepare_epoch(1)
    assert len(run.sampler) >= 4
    with refuse_host_syncs():
        sums, seen = run.train_epoch(1, data, source, augment, bf16=False)
    assert reads == [1]
    assert seen == len(run.sampler) * cfg.sampler.p * cfg.sampler.k
    assert torch.isfinite(sums).all() and sums[0] > 0


def test_the_guard_catches_a_read_added_to_the_step(tiny_config, data, monkeypatch, fused_on_cpu):
    cfg = tiny_config(epochs=2)
    run, source, augment = _run(cfg, data)
    run.prepare_epoch(0)
    run.train_epoch(0, data, source, augment, bf16=False)
    real_step = seed_run.train_step

    def step_that_logs(*args, **kwargs):
        parts = real_step(*args, **kwargs)
        print(parts["total"].item())  # what someone might add to log the loss
        return parts

    monkeypatch.setattr(seed_run, "train_step", step_that_logs)
    _epoch_end_read_allowed(monkeypatch)
    run.prepare_epoch(1)
    with refuse_host_syncs(), pytest.raises(HostSync, match="item"):
        run.train_epoch(1, data, source, augment, bf16=False)


@pytest.mark.parametrize(
    "code",
    [
        lambda x: bool(x.sum() > 0),
        lambda x: x[x > 0],
        lambda x: torch.as_tensor(np.arange(3), device=x.device),
        lambda x: torch.rand(3).to(x.device),
        lambda x: x.tolist(),
    ],
    ids=["bool", "mask-index", "as_tensor-device", "blocking-to", "tolist"],
)
def test_the_guard_knows_the_usual_syncs(code):
    x = torch.randn(4)
    with refuse_host_syncs(), pytest.raises(HostSync):
        code(x)


def test_a_nan_stops_the_epoch_early_with_the_trainers_message():
    watch = LossWatch(torch.device("cpu"), every=2)
    watch.reset(epoch=4)
    nan = {"total": torch.tensor(float("nan")), "ce": torch.tensor(1.0), "triplet": torch.zeros(())}
    fine = {"total": torch.tensor(1.0), "ce": torch.tensor(1.0), "triplet": torch.zeros(())}
    watch.add(nan)  # step 1
    watch.add(fine)  # step 2: snapshot taken
    watch.add(fine)  # step 3
    with pytest.raises(TrainingDiverged, match="the loss became NaN or infinite in epoch 5"):
        watch.add(fine)  # step 4: the snapshot of step 2 is read


def test_the_watch_sums_the_parts():
    watch = LossWatch(torch.device("cpu"), every=3)
    for epoch in (0, 1):
        watch.reset(epoch)
        for i in range(7):
            watch.add(
                {
                    "total": torch.tensor(i + 1.0),
                    "ce": torch.tensor(1.0),
                    "triplet": torch.tensor(0.5),
                }
            )
        torch.testing.assert_close(watch.sums, torch.tensor([28.0, 7.0, 3.5]))


def _rank_with_a_nan_on_rank_1(rank: int, store: str, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        watch = LossWatch(torch.device("cpu"), every=2)
        watch.reset(epoch=0)
        bad = float("nan") if rank == 1 else 1.0
        steps = 0
        try:
            for value in (bad, 1.0, 1.0, 1.0, 1.0, 1.0):
                steps += 1
                one = torch.tensor(value)
                watch.add({"total": one, "ce": one, "triplet": torch.zeros(())})
        except TrainingDiverged as exc:
            Path(out, f"{rank}.txt").write_text(f"{steps} {exc}")
    finally:
        dist.destroy_process_group()


def test_under_ddp_every_rank_stops_at_the_same_step(tmp_path):
    """Rank 1 diverges, rank 0 does not: both stop at step 4 (the snapshot is all-reduced), so
    neither is left waiting in a collective for the other."""
    args = (str(tmp_path / "store"), str(tmp_path))
    mp.start_processes(_rank_with_a_nan_on_rank_1, args=args, nprocs=2, start_method="fork")
    for rank in (0, 1):
        text = (tmp_path / f"{rank}.txt").read_text()
        assert text == "4 the loss became NaN or infinite in epoch 1", (rank, text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync detector needs a GPU")
def test_cuda_steps_under_the_sync_detector(tiny_config, data, monkeypatch):
    cfg = tiny_config(epochs=2)
    device = torch.device("cuda")
    run = seed_run.SeedRun(cfg, cfg.seed, data, rank=0, world_size=1, device=device)
    augment = BatchAugment(cfg.data.height, cfg.data.width, run.model.mean, run.model.std)
    source = seed_run.ImageSource(data, device)
    run.watch.every = 2
    run.prepare_epoch(0)
    run.train_epoch(0, data, source, augment, bf16=True)
    run.prepare_epoch(1)
    monkeypatch.setattr(seed_run, "check_finite", lambda sums, epoch: None)  # once per epoch
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums, _ = run.train_epoch(1, data, source, augment, bf16=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sums).all()
