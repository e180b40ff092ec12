"""Training throughput (images/s) of one step loop: reidsearch's input pipeline vs a PIL reference.

One step = forward, ReIDLoss (label-smoothed CE + batch-hard triplet), backward, optimiser step,
as in ``reidsearch.engine.trainer.train``. Three pipelines are measured in the same run, on the
same model and optimiser:

* ``model only``: random tensors already on the device (upper bound, no input pipeline);
* ``reidsearch``: the decoded uint8 cache (``prepare_data`` -> ``build_image_cache``), P x K
  batches from ``PKSampler``, the trainer's ``ImageSource`` (whole cache on the GPU when it fits),
  ``BatchAugment`` on the device;
* ``reference``: a torch ``DataLoader`` over a ``Dataset`` that opens every image with PIL and
  applies torchvision transforms (Resize bicubic, flip, Pad + RandomCrop, ToTensor, Normalize,
  RandomErasing), ``--workers`` processes, pinned memory on CUDA.

``--input-only`` adds rows for the two input pipelines alone (no model), to show their ceiling.
The dataset is the synthetic market1501 layout (``generate_synthetic``, 128x64 source images by
default) written to a temporary folder and resized to ``--height x --width`` by the cache.

Run from the repository root (the package need not be installed)::

    python benchmarks/bench_train.py                      # ViT-B/16, 224x224
    python benchmarks/bench_train.py --compile --steps 200
    python benchmarks/bench_train.py --backbone vit_tiny_patch16_224 --depth 2 \
        --height 128 --width 64 --p 4 --k 4 --steps 5 --warmup 1 --ids 40        # CPU smoke

Needs torch, torchvision, timm, numpy, pyarrow, pillow and pydantic (pyyaml comes with timm):
``main`` parses a synthetic dataset (pyarrow) from a ``DataConfig`` (pydantic). The pieces
above it import neither: ``benchmarks/gpu_check.py`` reuses them on machines that have only
torch and timm. Nothing here imports ray, mlflow, optuna or faiss (checked at the end).

Notes: the step is the trainer's own (``reidsearch.engine.step``: ``StepInputs`` feeding
``train_step``, the losses summed by ``LossWatch``; no host-device sync inside). The
reference's workers prefetch during warm-up, so use enough ``--steps`` (the default 100 is >>
workers * prefetch_factor batches).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reidsearch.data.augment import BatchAugment  # noqa: E402
from reidsearch.data.sampler import PKSampler  # noqa: E402
from reidsearch.engine.optim import build_optimizer, fused_adam  # noqa: E402
from reidsearch.engine.step import (  # noqa: E402
    ImageSource,
    LossWatch,
    StepInputs,
    epoch_generator,
    train_step,
)
from reidsearch.modeling import (  # noqa: E402
    ReIDLoss,
    ReIDModel,
    backbone_token_grid,
    build_backbone,
    build_head,
)

Batch = tuple[torch.Tensor, torch.Tensor]
Step = Callable[[torch.Tensor, torch.Tensor], None]


class PKBatches:
    """``n`` P x K index batches over as many sampler epochs as needed (a batch_sampler)."""

    def __init__(self, labels: np.ndarray, p: int, k: int, n: int, seed: int = 0) -> None:
        self.sampler = PKSampler(labels, p, k, seed=seed)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[list[int]]:
        made, epoch = 0, 0
        while True:
            self.sampler.set_epoch(epoch)
            for batch in self.sampler:
                if made == self.n:
                    return
                yield [int(i) for i in batch]
                made += 1
            epoch += 1


class PILReIDDataset(Dataset):
    """Reference input: open each train image with PIL and apply torchvision transforms."""

    def __init__(self, paths: list[Path], labels: np.ndarray, transform: Callable) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as im:
            image = im.convert("RGB")
        return self.transform(image), int(self.labels[i])


def reference_transform(height: int, width: int, mean: tuple, std: tuple) -> T.Compose:
    """The usual re-ID recipe, with the same parameters as ``BatchAugment(train=True)``."""
    return T.Compose(
        [
            T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=0.5),
            T.Pad(10),
            T.RandomCrop((height, width)),
            T.ToTensor(),
            T.Normalize(mean, std),
            T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0),
        ]
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    name: str,
    batches: Iterator[Batch],
    step: Step | None,
    warmup: int,
    steps: int,
    device: torch.device,
) -> dict:
    """``warmup`` untimed, then ``steps`` timed iterations; ``step=None``: input only."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        images, labels = next(batches)
        if step is not None:
            step(images, labels)
    sync(device)
    seen = 0
    started = time.perf_counter()
    for _ in range(steps):
        images, labels = next(batches)
        if step is not None:
            step(images, labels)
        seen += len(images)
    sync(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "name": name,
        "images_per_s": seen / elapsed,
        "step_ms": 1000.0 * elapsed / steps,
        "peak_gib": peak,
    }


def reid_model(
    backbone_name: str, size: tuple[int, int], num_classes: int, head: str = "latfpp", **kwargs
) -> ReIDModel:
    """A random-init (never downloaded) timm ViT + head, as ``build_model`` builds it."""
    backbone = build_backbone(backbone_name, size, **kwargs)
    rows, _ = backbone_token_grid(backbone)
    return ReIDModel(backbone, build_head(head, backbone.embed_dim, rows, num_classes))


@dataclass
class Recipe:
    """The LA-TF++ recipe's optimiser and loss settings: what ``build_optimizer`` and
    ``ReIDLoss`` read from ``OptimConfig`` / ``LossConfig`` (plain fields, no pydantic)."""

    name: str = "adam"
    lr: float = 3e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    ce_weight: float = 1.0
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0
    triplet_margin: float | None = 0.3
    row_reduction: str = "mean"
    triplet_feature: str = "retrieval"


def trainer_step(model: nn.Module, bf16: bool, watch: LossWatch) -> Step:
    """The trainer's step (``SeedRun.train_epoch`` without the lr plan): ``train_step`` with
    fused Adam on a GPU, the loss parts summed on the device by ``watch``."""
    recipe = Recipe()
    optimizer = build_optimizer(recipe, model)  # type: ignore[arg-type]
    loss_fn = ReIDLoss(recipe)  # type: ignore[arg-type]

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        watch.add(train_step(model, loss_fn, optimizer, images, labels, bf16=bf16))

    return step


def random_batches(p: int, k: int, size: tuple[int, int], device: torch.device) -> Iterator[Batch]:
    """Model only: one random batch already on the device, P x K labels, forever."""
    labels = torch.arange(p, device=device).repeat_interleave(k)
    x = torch.randn(p * k, 3, *size, device=device)
    while True:
        yield x, labels


def cache_batches(
    inputs: StepInputs, labels: np.ndarray, p: int, k: int, n: int, seed: int
) -> Iterator[Batch]:
    """The trainer's input path: P x K batches, ``StepInputs`` (cache rows and labels in one
    non-blocking copy, gather from the device cache, augmentation on the device with a device
    generator)."""
    generator = epoch_generator(seed, 0, 0, inputs.source.device)
    for index in PKBatches(labels, p, k, n, seed):
        yield inputs(index, generator)


def loader_batches(
    dataset: Dataset,
    labels: np.ndarray,
    p: int,
    k: int,
    n: int,
    seed: int,
    workers: int,
    device: torch.device,
) -> Iterator[Batch]:
    """The reference: PIL + torchvision transforms in ``workers`` DataLoader processes."""
    loader = DataLoader(
        dataset,
        batch_sampler=PKBatches(labels, p, k, n, seed),
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for images, targets in loader:
        yield images.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def print_results(results: list[dict]) -> None:
    print(f"{'pipeline':<26} {'images/s':>10} {'step ms':>9} {'peak GPU GiB':>13}")
    for r in results:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{r['name']:<26} {r['images_per_s']:>10,.1f} {r['step_ms']:>9.2f} {peak:>13}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--depth", type=int, default=None, help="keep only the first N blocks")
    ap.add_argument("--head", default="latfpp", choices=("latf", "latfpp"))
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--p", type=int, default=16, help="identities per batch")
    ap.add_argument("--k", type=int, default=4, help="images per identity")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per pipeline")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per pipeline")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for cuda"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--ids", type=int, default=751, help="synthetic train identities")
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--images-per-camera", type=int, default=4)
    ap.add_argument("--source-size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--input-only", action="store_true", help="also time the inputs without model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    height, width, batch = args.height, args.width, args.p * args.k
    total = args.warmup + args.steps

    # pydantic and pyarrow only here: the functions above run without them (gpu_check.py)
    from reidsearch.config import DataConfig
    from reidsearch.data.manifest import manifest_root
    from reidsearch.data.synthetic import generate_synthetic
    from reidsearch.engine.data import prepare_data

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp) / "market1501"
        t0 = time.perf_counter()
        generate_synthetic(
            root,
            layout="market1501",
            ids=args.ids,
            test_ids=2,
            cameras=args.cameras,
            images_per_camera=args.images_per_camera,
            height=args.source_size[0],
            width=args.source_size[1],
            seed=args.seed,
        )
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        data_cfg = DataConfig(
            layout="market1501",
            root=str(root),
            height=height,
            width=width,
            cache_dir=str(Path(tmp) / "cache"),
        )
        data = prepare_data(data_cfg)
        t_cache = time.perf_counter() - t0
        n_train = len(data.train_index)

        model = reid_model(
            args.backbone, (height, width), data.num_classes, args.head, depth=args.depth
        )
        model = model.to(device).train()
        forward: nn.Module = torch.compile(model) if args.compile else model  # type: ignore[assignment]
        step = trainer_step(forward, bf16, LossWatch(device))
        fused = device.type == "cuda" and fused_adam(model)
        n_params = sum(p.numel() for p in model.parameters())

        print(
            f"torch {torch.__version__} | device {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + f" | {args.backbone} depth={len(model.blocks)} head={args.head} "
            f"params={n_params / 1e6:.1f}M | {height}x{width} | batch {batch} "
            f"(P={args.p} x K={args.k}) | bf16={bf16} compile={args.compile} fused_adam={fused}"
        )
        print(
            f"data: {n_train} train images of {data.num_classes} ids, generated in {t_gen:.1f} s; "
            f"parse + cache ({data.cache.images.nbytes / 2**30:.2f} GiB) in {t_cache:.1f} s "
            f"({len(data.cache) / max(t_cache, 1e-9):,.0f} images/s); "
            f"warmup {args.warmup} + {args.steps} timed steps per pipeline"
        )

        # reidsearch: the trainer's ImageSource + StepInputs (BatchAugment on the device).
        source = ImageSource(data, device)
        augment = BatchAugment(height, width, model.mean, model.std, train=True)
        inputs = StepInputs(source, data.train_index, data.train_labels, augment)
        pk = (args.p, args.k, total, args.seed)

        # reference: PIL + torchvision transforms in DataLoader workers.
        paths = data.manifest.column("path").to_pylist()
        train_paths = [manifest_root(data.manifest) / paths[i] for i in data.train_index]
        transform = reference_transform(height, width, model.mean, model.std)
        dataset = PILReIDDataset(train_paths, data.train_labels, transform)

        def ours() -> Iterator[Batch]:
            return cache_batches(inputs, data.train_labels, *pk)

        def reference() -> Iterator[Batch]:
            return loader_batches(dataset, data.train_labels, *pk, args.workers, device)

        pipelines: list[tuple[str, Callable[[], Iterator[Batch]]]] = [
            ("model only", lambda: random_batches(args.p, args.k, (height, width), device)),
            ("reidsearch", ours),
        ]
        if not args.skip_reference:
            pipelines.append((f"reference ({args.workers} workers)", reference))
        results = [timed(n, make(), step, args.warmup, args.steps, device) for n, make in pipelines]
        if args.input_only:  # the two input pipelines alone, without the model
            for name, make in pipelines[1:]:
                results.append(
                    timed(f"{name} input only", make(), None, args.warmup, args.steps, device)
                )

    if source.on_device is not None:
        where = f"cache on the GPU, {source.on_device.nbytes / 2**30:.2f} GiB of the peak"
    elif device.type == "cuda":
        where = "cache on the host, pinned copies per batch"
    else:
        where = "cache memory-mapped on the host"
    print()
    print_results(results)
    print()
    upper, ours_ips = results[0]["images_per_s"], results[1]["images_per_s"]
    print(f"reidsearch / model only: {ours_ips / upper:.2f} ({where})")
    if not args.skip_reference:
        ref_ips = results[2]["images_per_s"]
        print(f"reidsearch / reference: {ours_ips / ref_ips:.2f}x")
        print(f"reference / model only: {ref_ips / upper:.2f}")
    heavy = sorted(m for m in ("ray", "mlflow", "optuna", "faiss") if m in sys.modules)
    if heavy:
        print(f"warning: imported {', '.join(heavy)}")


if __name__ == "__main__":
    main()
