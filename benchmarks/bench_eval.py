"""Benchmark: exact evaluation vs a per-query argsort loop, and memory-bounded re-ranking.

    python benchmarks/bench_eval.py --queries 3368 --gallery 15913 --dim 768
    python benchmarks/bench_eval.py --device cuda --skip-rerank
    python benchmarks/bench_eval.py --skip-rerank --fastreid-cy DIR   # DIR: a built rank_cy

Needs only torch and numpy (no faiss). Features are random but identity-structured (identity
centre + noise), with Market-like pids and cameras and some junk, so rankings are not trivial.
The re-ranking runs in a child process of its own, so that its peak RSS (the child's
``ru_maxrss``: data and re-ranking, nothing else) is exact.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reidsearch.evaluation.metrics import evaluate  # noqa: E402
from reidsearch.evaluation.tensors import matmul_t  # noqa: E402


def make_data(num_q: int, num_g: int, dim: int, ids: int, cams: int, noise: float, seed: int):
    """Identity-structured, L2-normalised features with Market-like ids, cameras and junk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim)).astype(np.float32)
    cam_shift = 0.5 * rng.standard_normal((cams, dim)).astype(np.float32)
    q_pids = np.arange(num_q) % ids
    g_pids = rng.integers(0, ids, num_g)
    g_pids[rng.random(num_g) < 0.05] = -1  # junk
    q_cams, g_cams = rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)

    def feats(pids: np.ndarray, cam: np.ndarray) -> np.ndarray:
        x = centres[np.maximum(pids, 0)] + cam_shift[cam]
        x += noise * rng.standard_normal(x.shape).astype(np.float32)
        x[pids < 0] = rng.standard_normal((int((pids < 0).sum()), dim))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def loop_reference(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """Straightforward per-query evaluation: argsort each full row, mask, accumulate."""
    sims = qf @ gf.T
    aps, inps, cmc, valid = [], [], np.zeros(max_rank), 0
    for i in range(len(q_pids)):
        order = np.argsort(-sims[i], kind="stable")
        keep = (g_pids[order] != -1) & ~(
            (g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])
        )
        match = (g_pids[order] == q_pids[i])[keep]
        if not match.any():
            continue
        valid += 1
        hits = np.flatnonzero(match) + 1
        aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
        inps.append(len(hits) / hits[-1])
        cmc[hits[0] - 1 :] += 1
    return {"mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)), "cmc": cmc / valid}


class PeakRSS:
    """Peak resident memory of this process, sampled (ru_maxrss only ever grows)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize()
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> PeakRSS:
        self.base = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, best_cpu = wall, cpu
    return out, best, best_cpu


def interleaved(fn, ref, repeats: int):
    """``fn`` timed in pairs with ``ref``, interleaved, so both see the same machine load (the
    dev machines are shared). Returns fn's result, its median wall and CPU seconds, ref's median
    wall and the median of the per-pair ratios fn / ref."""
    walls, cpus, rwalls, ratios, out = [], [], [], [], None
    for _ in range(repeats):
        out, wall, cpu = timed(fn)
        _, rwall, _ = timed(ref)
        walls.append(wall)
        cpus.append(cpu)
        rwalls.append(rwall)
        ratios.append(wall / rwall)
    med = np.median
    return out, float(med(walls)), float(med(cpus)), float(med(rwalls)), float(med(ratios))


def fastreid_eval(rank_cy, q_t, g_t, qp, gp, qc, gc):
    """fast-reid's evaluation as its evaluator runs it: the cosine distance matrix (here from
    the same numpy matmul as ours) and its Cython ``evaluate_cy`` (argsort per row, then loops),
    on the gallery without junk (fast-reid's dataset loaders drop pid -1). Returns a callable
    giving its mAP."""
    keep = np.flatnonzero(gp != -1)
    g_k = g_t[torch.from_numpy(keep)].contiguous()

    def run() -> float:
        dist = 1.0 - matmul_t(q_t, g_k).numpy()
        _, all_ap, _ = rank_cy.evaluate_cy(dist, qp, gp[keep], qc, gc[keep], 50)
        return float(np.mean(all_ap))

    return run


def reference_rerank(q: torch.Tensor, g: torch.Tensor):
    """The re-ranking through its device-neutral torch code (the GPU's; on a CPU before issue
    24): the row-wise matmul + top-k neighbour pass, torch's sets and query expansion."""
    from reidsearch.evaluation import rerank
    from reidsearch.evaluation.tensors import single_thread

    workers = torch.get_num_threads()
    with torch.inference_mode(), single_thread(q.device.type == "cpu"):
        dist = rerank._FeatureDistance(torch.cat([q, g]))
        return rerank._rerank(
            dist, len(q), 20, 6, 0.3, 1024, 1 << 23, workers=workers, cpu_paths=False
        )


def rerank_child(args) -> None:
    """One re-ranking in this (child) process: print a JSON line, save every 97th row."""
    from reidsearch.evaluation.rerank import re_rank

    device = torch.device(args.device)
    qf, gf, qp, gp, qc, gc = make_data(
        args.queries, args.gallery, args.dim, args.ids, args.cameras, args.noise, 0
    )
    q_t, g_t = torch.from_numpy(qf).to(device), torch.from_numpy(gf).to(device)
    if args.rerank_child == "new":
        fn = lambda: re_rank(q_t, g_t)  # noqa: E731
    else:
        fn = lambda: reference_rerank(q_t, g_t)  # noqa: E731
    with PeakRSS() as mem:
        dist, wall, cpu = timed(fn)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cuda = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    dist = torch.as_tensor(dist).cpu()
    np.save(args.rerank_out, dist[::97].numpy())
    rr = evaluate(None, None, qp, gp, qc, gc, distmat=dist)
    keys = ("wall", "cpu", "maxrss", "sampled", "start", "cuda", "mAP", "rank1")
    values = (wall, cpu, maxrss, mem.peak, mem.base, cuda, rr["mAP"], rr["rank1"])
    print(json.dumps(dict(zip(keys, values, strict=True))))


def run_rerank_child(mode: str, out: str) -> dict:
    """This script again, as a child re-ranking the same data (``rerank_child``)."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--rerank-child", mode, "--rerank-out", out]
    run = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if run.returncode != 0:
        raise SystemExit(f"re-ranking child ({mode}) failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def with_path(path: str, q, g, qp, gp, qc, gc):
    """evaluate() with its counting path forced (``ranking.chunk_ranks(path=...)``)."""
    from reidsearch.evaluation import metrics

    real = metrics.chunk_ranks
    metrics.chunk_ranks = lambda *a: real(*a[:4], path)
    try:
        return evaluate(q, g, qp, gp, qc, gc)
    finally:
        metrics.chunk_ranks = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--ids", type=int, default=751)
    ap.add_argument("--cameras", type=int, default=6)
    ap.add_argument("--noise", type=float, default=2.2, help="per-image noise vs identity centre")
    ap.add_argument(
        "--hard-noise",
        type=float,
        default=4.0,
        help="noise of the second ('hard', first-epoch-like) features; 0 skips them",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-rerank", action="store_true")
    ap.add_argument("--skip-loop", action="store_true", help="skip the slow reference loop")
    ap.add_argument(
        "--paths",
        nargs="*",
        default=[],
        choices=("compact", "dense", "sorted", "keys"),
        help="also time evaluate() with each of these counting paths forced (the CPU default "
        "is keys since issue 24, sorted before it; compact/dense are the GPU's)",
    )
    ap.add_argument(
        "--rerank-reference",
        action="store_true",
        help="also re-rank through the device-neutral torch code (row-wise neighbour pass, the "
        "CPU's before issue 24), in a child process of its own",
    )
    ap.add_argument(
        "--fastreid-cy",
        metavar="DIR",
        help="a folder with fast-reid's rank_cy built (its fastreid/evaluation/rank_cylib): "
        "time its evaluation (distance matrix + Cython) against evaluate() in the same run",
    )
    ap.add_argument("--rerank-child", choices=("new", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--rerank-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rerank_child:
        rerank_child(args)
        return
    rank_cy = None
    if args.fastreid_cy:
        sys.path.insert(0, str(Path(args.fastreid_cy).resolve()))
        import rank_cy

    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    kinds = [("easy", args.noise)] + ([("hard", args.hard_noise)] if args.hard_noise else [])
    for kind, noise in reversed(kinds):  # the easy features stay for the sections below
        qf, gf, qp, gp, qc, gc = make_data(
            args.queries, args.gallery, args.dim, args.ids, args.cameras, noise, 0
        )
        q_t, g_t = torch.from_numpy(qf).to(device), torch.from_numpy(gf).to(device)
        evaluate(q_t[:64], g_t, qp[:64], gp, qc[:64], gc)  # warm-up
        res, wall, cpu, mwall, ratio = interleaved(
            lambda q=q_t, g=g_t, a=(qp, gp, qc, gc): evaluate(q, g, *a),
            lambda q=q_t, g=g_t: matmul_t(q, g),
            args.repeats,
        )
        print(
            f"(a) evaluate(), {kind} features (noise {noise}): {wall:.3f} s wall ({cpu:.2f} s CPU)"
            f"  mAP {res['mAP']:.4f}  rank1 {res['rank1']:.4f}  mINP {res['mINP']:.4f}  "
            f"valid {res['num_valid_queries']}/{res['num_queries']}"
        )
        print(
            f"(a0) the query x gallery matmul alone: {mwall:.3f} s; evaluate() = {ratio:.2f}x "
            f"({kind}; median of {args.repeats} interleaved pairs)"
        )
        if rank_cy is not None:
            fr_map, fwall, _, ewall, fratio = interleaved(
                fastreid_eval(rank_cy, q_t, g_t, qp, gp, qc, gc),
                lambda q=q_t, g=g_t, a=(qp, gp, qc, gc): evaluate(q, g, *a),
                args.repeats,
            )
            print(
                f"(a2) fast-reid (distance matrix + Cython evaluate_cy): {fwall:.3f} s = "
                f"{fratio:.2f}x evaluate() ({kind}; median of {args.repeats} interleaved pairs, "
                f"evaluate() {ewall:.3f} s); its mAP {fr_map:.4f} (|diff| "
                f"{abs(fr_map - res['mAP']):.1e})"
            )
    for path in args.paths:
        forced, pwall, _ = timed(
            lambda p=path: with_path(p, q_t, g_t, qp, gp, qc, gc), args.repeats
        )
        assert forced["mAP"] == res["mAP"] and (forced["cmc"] == res["cmc"]).all()
        print(
            f"(a1) counting path {path}: {pwall:.3f} s = {pwall / wall:.2f}x evaluate() "
            "(same metrics)"
        )
    from reidsearch.evaluation.bootstrap import query_intervals

    for seeds in (1, 3):  # the 95% intervals every evaluation adds (3 = repeats: 3)
        _, bwall, _ = timed(lambda n=seeds: query_intervals([res["per_query"]] * n), args.repeats)
        print(
            f"(a') bootstrap intervals, {seeds} seed(s) x {res['num_valid_queries']} queries x "
            f"1000 resamples: {bwall:.3f} s wall = {bwall / wall:.1%} of (a)"
        )
    if not args.skip_loop:
        ref, lwall, lcpu = timed(lambda: loop_reference(qf, gf, qp, gp, qc, gc))
        print(f"(b) per-query argsort loop: {lwall:.3f} s wall ({lcpu:.2f} s CPU)")
        print(
            f"    speed-up {lwall / wall:.1f}x; |mAP diff| {abs(ref['mAP'] - res['mAP']):.2e}, "
            f"max |CMC diff| {np.abs(ref['cmc'] - res['cmc']).max():.2e}"
        )
    if not args.skip_rerank:
        with tempfile.TemporaryDirectory() as tmp:
            modes = ["new"] + (["reference"] if args.rerank_reference else [])
            runs = {m: run_rerank_child(m, os.path.join(tmp, f"{m}.npy")) for m in modes}
            rows = {m: np.load(os.path.join(tmp, f"{m}.npy")) for m in modes}
        new = runs["new"]
        line = (
            f"(c) re-ranking: {new['wall']:.2f} s wall ({new['cpu']:.1f} s CPU), peak RSS "
            f"{new['maxrss'] / 2**30:.2f} GiB (its process's ru_maxrss; sampled during the "
            f"re-ranking {new['sampled'] / 2**30:.2f} GiB, {new['start'] / 2**30:.2f} at its start)"
        )
        if device.type == "cuda":
            line += f", peak CUDA {new['cuda'] / 2**30:.2f} GiB"
        print(line)
        feats = torch.cat([q_t, g_t])
        block = min(1024, len(feats))
        picks = np.linspace(0, len(feats) - block, 3).astype(int)
        _, nwall, _ = timed(lambda: [matmul_t(feats[a : a + block], feats) for a in picks])
        full = nwall / (3 * block) * len(feats)
        print(
            f"(c0') the (Q+G) x (Q+G) matmul alone, from 3 blocks of {block} rows in this run: "
            f"{full:.2f} s; re-ranking = {new['wall'] / full:.2f}x of it"
        )
        print(f"    re-ranked mAP {new['mAP']:.4f} rank1 {new['rank1']:.4f}")
        if "reference" in runs:
            ref = runs["reference"]
            same = float(np.abs(rows["reference"] - rows["new"]).max())
            print(
                f"(c0) re-ranking through the device-neutral torch code (row-wise neighbour "
                f"pass): {ref['wall']:.2f} s wall ({ref['cpu']:.1f} s CPU), peak RSS "
                f"{ref['maxrss'] / 2**30:.2f} GiB; (c) = {new['wall'] / ref['wall']:.2f}x of it, "
                f"max |diff| {same:.1e} (every 97th query row)"
            )


if __name__ == "__main__":
    main()
