"""Searcher x scheduler pairs at equal trial-epoch budgets (issue 21), for ``bench_search.py
--grid``.

Each run is one search on an embedded local Ray, stopped once ``--budget`` trial-epochs have
been reported (a Tune stopper; random search with no scheduler spends exactly that with
``budget / epochs`` trials, the other pairs get three times as many trials to spend it on).
Its anytime curve (best mAP after each trial-epoch, from MLflow) is appended to ``--results``
as one JSON line, so a grid can be run in pieces (runs already there are skipped) and read
again with ``--report-only``. For each pair and seed, the share of budget B that the pair
needed to reach random search's best after B (random + none, same space and seed) is read off
the two curves; a pair that never reached it within its run counts as infinite.

With ``REIDSEARCH_BENCH_LOCK=/path`` set, every search holds ``fcntl.flock`` on that file from
before Ray starts until after it is shut down, so searches never share the machine's cores
with another Ray that takes the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_startup import quickstart_variant, trial_histories

SEARCHERS = ("tpe", "gp", "qmc", "cmaes", "random")
SCHEDULERS = ("asha", "hyperband", "median", "none")
REFERENCE = "random+none"
SPACES = ("quick", "wide")

# The grid's data: the quickstart's synthetic generator, smaller (64x32 images, 72 training
# and 24 query/gallery identities), so that a 96 trial-epoch search takes about a minute and a
# half on 2 busy cores. The trial cost measurement (eval.cost_gallery) is off: not a score.
GRID_FIXED: dict[str, Any] = {
    "fixed.data.synthetic": {
        "layout": "latfpp",
        "ids": 96,
        "test_ids": 24,
        "images_per_camera": 3,
        "height": 64,
        "width": 32,
        "seed": 0,
    },
    "fixed.data.height": 64,
    "fixed.data.width": 32,
    "fixed.eval.baseline": False,
    "fixed.eval.cost_gallery": 0,
}

# The quickstart's six searched settings (search_spaces/quickstart.yaml), and eight more.
QUICK_SPACE: dict[str, Any] = {
    "model.head": {"type": "choice", "values": ["latf", "latfpp"]},
    "model.lam": {"type": "uniform", "low": 0.5, "high": 10.0},
    "loss.label_smoothing": {"type": "uniform", "low": 0.0, "high": 0.3},
    "loss.triplet_weight": {"type": "choice", "values": [0.0, 1.0]},
    "loss.triplet_margin": {
        "type": "uniform",
        "low": 0.1,
        "high": 0.6,
        "when": "loss.triplet_weight > 0",
    },
    "optim.lr": {"type": "loguniform", "low": 2.0e-4, "high": 2.0e-3},
}
WIDE_SPACE: dict[str, Any] = {
    **QUICK_SPACE,
    "model.neck": {"type": "choice", "values": ["bottleneck", "bnneck"]},
    "model.feature": {"type": "choice", "values": ["default", "fused_rows", "global", "cls"]},
    "loss.row_reduction": {"type": "choice", "values": ["mean", "sum"]},
    "optim.weight_decay": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-2},
    "optim.warmup_epochs": {"type": "int", "low": 0, "high": 2},
    "sampler.p": {"type": "choice", "values": [4, 8, 16]},
    "sampler.k": {"type": "choice", "values": [2, 4]},
    "data.augment.erasing_p": {"type": "uniform", "low": 0.0, "high": 0.6},
}


def space_for(space: str, searcher: str) -> dict[str, Any]:
    """The searched settings; samplers that refuse conditional parameters (gp, qmc, cmaes) get
    ``triplet_margin`` unconditional (drawn, and unused, when the triplet weight is 0)."""
    search = {"quick": QUICK_SPACE, "wide": WIDE_SPACE}[space]
    if searcher in ("tpe", "random"):
        return search
    return {key: {k: v for k, v in d.items() if k != "when"} for key, d in search.items()}


@contextlib.contextmanager
def bench_lock():
    """``fcntl.flock`` on ``$REIDSEARCH_BENCH_LOCK`` (nothing when it is unset)."""
    path = os.environ.get("REIDSEARCH_BENCH_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _budget_stopper(budget: int):
    from ray.tune import Stopper

    class BudgetStopper(Stopper):
        """Ends the search once ``budget`` evaluated epochs have been reported (Tune hands a
        trial's last result over twice: once as it comes, once as the trial ends)."""

        def __init__(self) -> None:
            self.seen: set[tuple[str, int]] = set()

        def __call__(self, trial_id: str, result: dict) -> bool:
            if "epoch_score" in result:
                self.seen.add((trial_id, result.get("training_iteration")))
            return False

        def stop_all(self) -> bool:
            return len(self.seen) >= budget

    return BudgetStopper()


def run_pair(space: str, pair: str, seed: int, budget: int, epochs: int) -> list:
    """One search of ``pair`` ("searcher+scheduler") on ``space``, stopped at ``budget``
    trial-epochs: its curve [(trial-epochs, best mAP)], cut at the budget."""
    import ray
    from bench_search import best_by_budget
    from ray import tune

    from reidsearch.search.driver.search import run_search
    from reidsearch.search.space import load_search_space

    searcher, scheduler = pair.split("+")
    trials = budget // epochs * (1 if scheduler == "none" else 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        name = f"grid-{space}-{searcher}-{scheduler}"
        space_file = quickstart_variant(
            folder,
            name,
            searcher=searcher,
            seed=seed,
            trials=trials,
            max_concurrent=2,
            scheduler={"type": scheduler},  # the schema's defaults for that type
            resources={"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
            search=space_for(space, searcher),
            **{"fixed.epochs": epochs, **GRID_FIXED},
        )
        loaded = load_search_space(space_file)  # a sampler's refusal surfaces here
        real_run_config = tune.RunConfig

        class WithBudget(real_run_config):  # what the search builds, with the stopper added
            def __post_init__(self) -> None:
                self.stop = _budget_stopper(budget)
                super().__post_init__()

        with bench_lock():
            tune.RunConfig = WithBudget
            try:
                run_search(loaded, address="local", verbose=0)
            finally:
                tune.RunConfig = real_run_config
                ray.shutdown()
        return best_by_budget(trial_histories(folder, name, "epoch_score"))[:budget]


def load_results(path: Path) -> dict[tuple[str, str, int], list]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["space"], r["pair"], r["seed"]): [tuple(p) for p in r["curve"]] for r in rows}


def run_grid(args) -> None:
    results = Path(args.results)
    done = load_results(results)
    for seed in args.seeds:
        for space in args.spaces:
            for pair in [REFERENCE, *[p for p in args.pairs if p != REFERENCE]]:
                if (space, pair, seed) in done:
                    continue
                started = time.perf_counter()
                try:
                    curve = run_pair(space, pair, seed, args.budget, args.epochs)
                except Exception as exc:  # a refused space (cmaes on choices), a failed search
                    print(f"grid {space} {pair} seed {seed}: skipped ({exc})", flush=True)
                    continue
                wall = time.perf_counter() - started
                with results.open("a") as out:
                    row = {"space": space, "pair": pair, "seed": seed, "curve": curve}
                    out.write(json.dumps({**row, "wall_s": round(wall)}) + "\n")
                print(
                    f"grid {space} {pair} seed {seed}: best mAP {100 * curve[-1][1]:.1f} after "
                    f"{curve[-1][0]} trial-epochs ({wall:.0f} s)",
                    flush=True,
                )
    report(load_results(results), args.budgets, args.budget)


def _pct(share: float) -> str:
    return "never" if math.isinf(share) else f"{share:.0%}"


def report(done: dict, budgets: list[int], limit: int) -> None:
    """Per space and pair: the median share (and its range over seeds) at each budget."""
    from bench_search import share_to_match

    spaces = sorted({s for s, _, _ in done}, key=lambda s: SPACES.index(s))
    for space in spaces:
        pairs = sorted({p for s, p, _ in done if s == space}, key=lambda p: (p != REFERENCE, p))
        for pair in pairs:
            seeds = sorted(
                seed
                for s, p, seed in done
                if s == space and p == pair and (space, REFERENCE, seed) in done
            )
            if not seeds:
                print(f"grid {space} {pair}: no seed with a random + none run")
                continue
            cells = []
            for budget in (b for b in budgets if b <= limit):
                shares = []
                for seed in seeds:
                    reference, curve = done[(space, REFERENCE, seed)], done[(space, pair, seed)]
                    if budget > len(reference):
                        continue
                    if pair == REFERENCE:  # where random search first reached its own best
                        target = reference[budget - 1][1]
                        shares.append(next(b for b, v in reference if v >= target) / budget)
                    else:
                        shares.append(share_to_match(reference, curve, budget))
                if shares:
                    cells.append(
                        f"{budget}: {_pct(statistics.median(shares))} "
                        f"({', '.join(_pct(s) for s in shares)})"
                    )
            best = statistics.median(100 * done[(space, pair, seed)][-1][1] for seed in seeds)
            print(
                f"grid {space} {pair} over {len(seeds)} seed(s) {seeds}: median share of "
                f"random's budget to reach random's best (per seed) at "
                + "; ".join(cells)
                + f" trial-epochs; own best mAP (median) {best:.1f}",
                flush=True,
            )
