"""One command for a bare GPU machine: does everything a GPU trial touches work, and how fast?

Needs only torch, timm (with the torchvision and pillow it installs) and numpy. It imports the
parts of reidsearch that need neither pydantic nor pyarrow (``modeling``, ``evaluation``,
``data.augment``, ``data.sampler``, ``engine.step`` / ``optim`` / ``distributed``) and never
ray, mlflow or optuna; FAISS is used when it imports. Models are random-init (no download)::

    python benchmarks/gpu_check.py                        # ViT-B/16 + latfpp, bf16, on cuda
    python benchmarks/gpu_check.py --smoke --device cpu   # the same checks, tiny, < 1 min

Per image size (224x224 and 256x128; 64x64 and 64x32 with ``--smoke``) it trains with the
trainer's own step and input path and prints training images/s of (a) the full GPU data path
(uint8 cache on the device, P x K batches, augmentation on the device, ``train_step``), (b) a
model-only loop on pre-made device tensors (the reference, same run, same model), their ratio,
and (c) a PIL + torch DataLoader path; then runs a few steps under
``torch.cuda.set_sync_debug_mode("error")`` (no host-device sync in the step), and extracts
features and evaluates them on the device at Market scale (12,936 train images, 3,368 queries x
15,913 gallery), against the seconds of one training epoch. Then torch and FAISS in one process
(versions, CUDA builds, FAISS's top-k against torch's; ``--expect-faiss-gpu``: no FAISS GPU
fails), FAISS GPU retrieval (skipped without faiss-gpu) and a 2-process NCCL DDP step (skipped
with fewer than 2 GPUs). Each check prints one line; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_train import (  # noqa: E402
    Batch,
    PILReIDDataset,
    Step,
    cache_batches,
    loader_batches,
    random_batches,
    reference_transform,
    reid_model,
    sync,
    timed,
    trainer_step,
)
from gpu_check_retrieval import faiss_check, rerank_check  # noqa: E402

from reidsearch.data.augment import BatchAugment  # noqa: E402
from reidsearch.engine.distributed import wrap_ddp  # noqa: E402
from reidsearch.engine.step import (  # noqa: E402
    ImageSource,
    LossWatch,
    StepInputs,
    TrainingDiverged,
    check_finite,
)
from reidsearch.evaluation.features import extract_features  # noqa: E402
from reidsearch.evaluation.metrics import evaluate  # noqa: E402
from reidsearch.modeling import ReIDModel  # noqa: E402

MARKET = {"train": 12_936, "ids": 751, "query": 3_368, "gallery": 15_913, "test_ids": 750}
SMOKE = {"train": 256, "ids": 16, "query": 48, "gallery": 192, "test_ids": 16}
NOT_ON_BARE_MACHINES = ("ray", "mlflow", "optuna", "pydantic", "pyarrow")
K = 4  # images per identity in a P x K batch
failures: list[str] = []


def report(name: str, ok: bool, line: str) -> None:
    print(f"{name}: {line}" if ok else f"{name}: FAILED: {line}", flush=True)
    if not ok:
        failures.append(name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default; cpu if there is none) or cpu")
    ap.add_argument("--model", default=None, help="timm ViT (vit_base_patch16_224; smoke: tiny)")
    ap.add_argument("--depth", type=int, default=None, help="keep the first N blocks (smoke: 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per pipeline (50)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per pipeline (5)")
    ap.add_argument("--batch", type=int, default=None, help="images per step, P x 4 (64)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (<= 8)")
    ap.add_argument("--smoke", action="store_true", help="tiny model and sizes, a few steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--expect-faiss-gpu", action="store_true", help="fail without FAISS on a GPU")
    return ap.parse_args(argv)


def resolve(args: argparse.Namespace) -> torch.device:
    """The device, with a clear line when CUDA is missing (then the smoke settings: the full
    run takes hours on a CPU), and the defaults of the chosen mode."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: --device {args.device}: CUDA is not available (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}); falling back to --device cpu --smoke"
        )
        device, args.smoke = torch.device("cpu"), True
    smoke = args.smoke
    defaults = {
        "model": "vit_tiny_patch16_224" if smoke else "vit_base_patch16_224",
        "depth": 4 if smoke else None,
        "steps": 3 if smoke else 50,
        "warmup": 1 if smoke else 5,
        "batch": 16 if smoke else 64,
        "workers": 1 if smoke else min(8, os.cpu_count() or 1),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.scale = SMOKE if smoke else MARKET
    args.sizes = [(64, 64), (64, 32)] if smoke else [(224, 224), (256, 128)]
    return device


def make_images(n: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``n`` uint8 images tiled from a small random pool: a cache-sized array in a second."""
    pool = rng.integers(0, 256, (min(64, n), *size, 3), dtype=np.uint8)
    return pool[np.arange(n) % len(pool)]


def write_jpegs(folder: Path, n: int, rng: np.random.Generator) -> list[Path]:
    """Market-sized (128x64) JPEG files for the PIL reference path."""
    paths = []
    for i, image in enumerate(make_images(n, (128, 64), rng)):
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=95)
    return paths


def train_check(
    args: argparse.Namespace,
    size: tuple[int, int],
    device: torch.device,
    bf16: bool,
    rng: np.random.Generator,
    tmp: Path,
) -> tuple[ReIDModel, float]:
    """Throughput of (a) the full GPU path, (b) model only, (c) PIL + DataLoader; the sync check.
    Returns the model and the seconds of one training epoch at the run's scale."""
    tag, scale = f"[{size[0]}x{size[1]}]", args.scale
    p, n = max(1, args.batch // K), args.warmup + args.steps
    model = reid_model(args.model, size, scale["ids"], depth=args.depth).to(device).train()
    watch = LossWatch(device)
    step = trainer_step(model, bf16, watch)
    labels = np.sort(np.arange(scale["train"]) % scale["ids"])
    source = ImageSource(make_images(scale["train"], size, rng), device)
    augment = BatchAugment(*size, model.mean, model.std, train=True)
    inputs = StepInputs(source, np.arange(scale["train"]), labels, augment)

    def run(name: str, batches: Iterator[Batch]) -> float:
        return timed(name, batches, step, args.warmup, args.steps, device)["images_per_s"]

    ref = run("model only", random_batches(p, K, size, device))
    full = run("full", cache_batches(inputs, labels, p, K, n, args.seed))
    where = "cache on the device" if source.on_device is not None else "cache on the host"
    report(f"{tag} train", True, f"(a) full GPU data path ({where}): {full:10,.1f} img/s")
    report(f"{tag} train", True, f"(b) model only (pre-made device tensors): {ref:10,.1f} img/s")
    report(f"{tag} train", True, f"(a) / (b): {full / ref:.2f}")
    paths = write_jpegs(tmp, min(scale["train"], 64 if args.smoke else 1024), rng)
    files = [paths[i % len(paths)] for i in range(scale["train"])]
    transform = reference_transform(*size, model.mean, model.std)
    dataset = PILReIDDataset(files, labels, transform)
    batches = loader_batches(dataset, labels, p, K, n, args.seed, args.workers, device)
    pil = run("reference", batches)
    workers = f"{args.workers} worker{'s' if args.workers != 1 else ''}"
    line = f"(c) PIL + DataLoader ({workers}): {pil:10,.1f} img/s; (a) / (c): "
    report(f"{tag} train", True, line + f"{full / pil:.2f}")
    check_finite(watch.sums, 0)  # raises TrainingDiverged: a NaN in bf16 is a failure
    sync_check(tag, step, watch, cache_batches(inputs, labels, p, K, 5, args.seed), device)
    return model, scale["train"] / full


def sync_check(
    tag: str, step: Step, watch: LossWatch, batches: Iterator[Batch], device: torch.device
) -> None:
    """Five full-path steps (the NaN snapshot and its read included) under CUDA's detector."""
    if device.type != "cuda":
        report(f"{tag} sync", True, "skipped (CUDA only; tests/test_no_host_sync.py on CPU)")
        return
    watch.reset(0)
    watch.every = 2
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images, labels in batches:
            step(images, labels)
    except TrainingDiverged:
        raise
    except RuntimeError as exc:  # what the detector raises
        report(f"{tag} sync", False, f"a step waits for the device: {str(exc).splitlines()[0]}")
        return
    finally:
        torch.cuda.set_sync_debug_mode("default")
    report(f"{tag} sync", True, "5 steps under set_sync_debug_mode('error'): no host-device sync")


def eval_check(
    args: argparse.Namespace,
    model: ReIDModel,
    size: tuple[int, int],
    device: torch.device,
    rng: np.random.Generator,
    epoch_s: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query + gallery features as a trial extracts them (host cache -> device, autocast) and
    the metrics on the device, against the seconds of one training epoch."""
    tag, scale = f"[{size[0]}x{size[1]}]", args.scale
    nq, ng = scale["query"], scale["gallery"]
    pool = make_images(256, size, rng)
    augment = BatchAugment(*size, model.mean, model.std, train=False)

    def batches(n: int) -> Iterator[torch.Tensor]:
        for start in range(0, n, 128):
            rows = np.arange(start, min(n, start + 128)) % len(pool)
            yield augment(torch.from_numpy(pool[rows]).to(device, non_blocking=True))

    model.eval()
    started = time.perf_counter()
    qf, gf = (extract_features(model.extract, batches(n), device=device) for n in (nq, ng))
    qf, gf = qf.to(device), gf.to(device)  # where a trial's metrics run
    sync(device)
    t_feat = time.perf_counter() - started
    q_pids = rng.integers(0, scale["test_ids"], nq)
    q_cams = rng.integers(0, 6, nq)
    g_pids = np.concatenate([q_pids, rng.integers(-1, scale["test_ids"], ng - nq)])
    g_cams = np.concatenate([(q_cams + 1) % 6, rng.integers(0, 6, ng - nq)])
    ids = (q_pids, g_pids, q_cams, g_cams)
    started = time.perf_counter()
    result = evaluate(qf, gf, *ids, device=device)
    sync(device)
    t_metrics = time.perf_counter() - started
    cpu = ""
    if device.type != "cpu":  # the reference: the same metrics on the host
        started = time.perf_counter()
        evaluate(qf.cpu(), gf.cpu(), *ids, device="cpu")
        cpu = f" (on the cpu: {time.perf_counter() - started:.2f} s)"
    ok = result["num_valid_queries"] == nq and 0.0 <= result["mAP"] <= 1.0
    total = t_feat + t_metrics
    report(
        f"{tag} eval",
        ok,
        f"{nq:,} x {ng:,}: features {t_feat:.2f} s ({(nq + ng) / t_feat:,.0f} img/s), metrics "
        f"on {device.type} {t_metrics:.2f} s{cpu}; eval {total:.2f} s vs a training epoch of "
        f"{scale['train']:,} images {epoch_s:.2f} s = {total / epoch_s:.2f} epochs "
        f"(valid queries {result['num_valid_queries']}, mAP {result['mAP']:.3f})",
    )
    return qf, gf


def torch_faiss_check(args: argparse.Namespace, device: torch.device) -> None:
    """torch and FAISS in one process, as in a trial: versions, CUDA builds, CUDA libraries loaded,
    and FAISS's exact top-k on torch's features scoring as torch's float64 top-k, rank by rank."""
    try:
        import faiss
    except ImportError as exc:
        report("torch+faiss", not args.expect_faiss_gpu, f"skipped (faiss does not import: {exc})")
        return
    wheel = (importlib.metadata.packages_distributions().get("faiss") or ["faiss"])[0]
    gpu_build = hasattr(faiss, "StandardGpuResources")
    on_gpu = gpu_build and device.type == "cuda" and faiss.get_num_gpus() > 0
    line = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), {wheel} "
    line += f"{faiss.__version__} ({'GPU build' if gpu_build else 'NO GPU support: a CPU wheel'})"
    if args.expect_faiss_gpu and not on_gpu:
        report("torch+faiss", False, f"{line}; --expect-faiss-gpu but no FAISS GPU index here")
        return
    nq, ng, dim = args.scale["query"], args.scale["gallery"], 64 if args.smoke else 768
    gen = torch.Generator(device=device).manual_seed(args.seed)
    q, g = (F.normalize(torch.randn(n, dim, device=device, generator=gen), dim=1) for n in (nq, ng))
    scores = q.double() @ g.double().T
    want = scores.topk(min(100, ng), dim=1).values
    index = faiss.IndexFlatIP(dim)
    index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index) if on_gpu else index
    index.add(g.float().cpu().numpy())
    ids = torch.from_numpy(index.search(q.float().cpu().numpy(), want.shape[1])[1]).to(device)
    valid = bool(((ids >= 0) & (ids < ng)).all())
    gap = float((scores.gather(1, ids.clamp(0, ng - 1)) - want).abs().max())
    text = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    libs = ", ".join(sorted(set(re.findall(r"lib(?:cudart|cublas)\.so\.\d+", text)))) or "none"
    where = "GpuIndexFlatIP" if on_gpu else "IndexFlatIP on the cpu"
    line += f"; {where}: top-{want.shape[1]} of {nq:,} x {ng:,} scores as torch's top-k, max "
    line += f"|diff| {gap:.1e}; CUDA libraries loaded: {libs}"
    report("torch+faiss", valid and gap < 1e-3, line)


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One rank: three bf16 DDP steps of the run's model, then a checksum of its weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    try:
        torch.manual_seed(args.seed)  # the same initial weights on both ranks
        size = args.sizes[-1]
        model = reid_model(args.model, size, 16, depth=args.depth).to(device).train()
        step = trainer_step(wrap_ddp(model, device, world), True, LossWatch(device))
        torch.manual_seed(args.seed + 1 + rank)  # each rank its own batch
        batch = next(random_batches(max(1, args.batch // K), K, size, device))
        started = time.perf_counter()
        for _ in range(3):
            step(*batch)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        sums = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(sums, checksum)
        if rank == 0:
            same = all(bool(s == sums[0]) for s in sums)
            Path(out).write_text(f"{seconds:.3f} {int(same)}")
    finally:
        dist.destroy_process_group()


def ddp_check(args: argparse.Namespace, device: torch.device) -> None:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        report("DDP", True, f"skipped (needs 2 GPUs, {gpus} here)")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        out = str(Path(tmp) / "rank0.txt")
        torch.multiprocessing.spawn(_ddp_worker, args=(2, port, args, out), nprocs=2)
        seconds, same = Path(out).read_text().split()
    line = f"2 x NCCL, 3 bf16 steps in {float(seconds):.2f} s; weights identical on both ranks"
    report("DDP", same == "1", line if same == "1" else "the ranks' weights differ")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve(args)
    started = time.perf_counter()
    bf16 = device.type == "cuda"
    if bf16:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
        where = f"{name}, {torch.cuda.device_count()} GPU(s), CUDA {torch.version.cuda}"
    else:
        where = f"{os.cpu_count()} CPUs"
    p = max(1, args.batch // K)
    print(
        f"gpu_check: torch {torch.__version__} on {device} ({where}) | {args.model} "
        f"(depth {args.depth or 'full'}) + latfpp, random init | batch {p * K} (P={p} x K={K}) "
        f"| bf16={bf16} | {args.warmup} + {args.steps} steps per pipeline",
        flush=True,
    )
    rng = np.random.default_rng(args.seed)
    features = None
    for size in args.sizes:
        tag = f"[{size[0]}x{size[1]}]"
        try:
            with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
                model, epoch_s = train_check(args, size, device, bf16, rng, Path(tmp))
            features = eval_check(args, model, size, device, rng, epoch_s)
        except Exception as exc:  # one size failing should not hide the other's figures
            report(tag, False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        finally:
            model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    checks = [
        ("torch+faiss", torch_faiss_check, (args, device)),
        ("faiss GPU", faiss_check, None if features is None else (report, *features)),
        ("re-ranking", rerank_check, None if features is None else (report, *features)),
        ("DDP", ddp_check, (args, device)),
    ]
    for name, check, inputs in checks:
        if inputs is None:
            report(name, False, "not run: no features (the evaluation failed)")
            continue
        try:
            check(*inputs)
        except Exception as exc:
            report(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    heavy = sorted(m for m in NOT_ON_BARE_MACHINES if m in sys.modules)
    absent = f"none of {', '.join(NOT_ON_BARE_MACHINES)} loaded"
    report("imports", not heavy, f"loaded {', '.join(heavy)}" if heavy else absent)
    seconds = time.perf_counter() - started
    verdict = f"{len(failures)} FAILED ({', '.join(failures)})" if failures else "all passed"
    print(f"gpu_check: {verdict} in {seconds:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
