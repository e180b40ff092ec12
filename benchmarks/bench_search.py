"""Search efficiency: TPE + ASHA against random search without early stopping, same budget.

    .venv/bin/python benchmarks/bench_search.py [--seeds 0 1 2] [--random-trials 18]
        [--tpe-trials 36] [--epochs 8] [--reduction-factor 2] [--grace-period 1]
        [--at-trials 6 12 18]

Both run the quickstart's search space (synthetic data, tiny ViT, ``runner: trial_process``) on
an embedded local Ray. The budget is counted in trial-epochs (each epoch any trial trains).
Random search trains ``--random-trials`` trials to the end; TPE + ASHA gets more trials and
the same or a smaller budget, because ASHA stops the weak ones at its rungs. For each seed it
prints the best score (mAP) reached against the budget spent, from MLflow's per-epoch record.
Both curves are anytime curves, so one pair of runs answers for several budgets: at each budget
B (random search's first ``--at-trials`` trials' worth of trial-epochs, and its whole run) it
prints the share of B that TPE + ASHA needed to reach random search's best after B (the
issue's target: at most a third).

    .venv/bin/python benchmarks/bench_search.py --grid [--spaces quick wide]
        [--pairs random+none tpe+asha ...] [--seeds 0 1 2] [--budget 96] [--at-trials 6 12]
        [--results /tmp/bench_search_grid.jsonl] [--report-only]

``--grid`` compares searcher x scheduler pairs at equal trial-epoch budgets instead, on the
quickstart's space and a wider one (14 searched settings), on smaller synthetic data; see
``search_grid.py``. With ``REIDSEARCH_BENCH_LOCK=/path`` set, each search (both modes) holds
``fcntl.flock`` on that file while its Ray runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_startup import quickstart_variant, trial_histories  # noqa: E402
from search_grid import REFERENCE, SPACES, bench_lock, report, run_grid  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_by_budget(histories: list[list[tuple[int, int, float]]]) -> list[tuple[int, float]]:
    """(trial-epochs spent, best score so far) after each epoch, in the order they ended."""
    epochs = sorted(entry for history in histories for entry in history)
    curve, best = [], float("-inf")
    for spent, (_, _, value) in enumerate(epochs, start=1):
        best = max(best, value)
        curve.append((spent, best))
    return curve


def budget_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first budget at which the curve reaches ``target`` (None: never)."""
    return next((spent for spent, best in curve if best >= target), None)


def share_to_match(random_curve: list, tpe_curve: list, budget: int) -> float:
    """The share of ``budget`` TPE + ASHA needed to reach random search's best after ``budget``
    trial-epochs (inf: it never did)."""
    reached = budget_to_reach(tpe_curve, random_curve[budget - 1][1])
    return reached / budget if reached is not None else float("inf")


def run(
    method: str,
    seed: int,
    trials: int,
    epochs: int,
    concurrent: int,
    reduction: int = 2,
    grace: int = 1,
) -> list:
    from reidsearch.search.driver.search import run_search
    from reidsearch.search.space import load_search_space

    scheduler = (
        {"type": "asha", "grace_period": grace, "reduction_factor": reduction}
        if method == "tpe_asha"
        else {"type": "none"}
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        name = f"search-{method.replace('_', '-')}"
        space_file = quickstart_variant(
            folder,
            name,
            searcher="optuna" if method == "tpe_asha" else "random",
            seed=seed,
            trials=trials,
            max_concurrent=concurrent,
            scheduler=scheduler,
            resources={"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
            **{"fixed.epochs": epochs, "fixed.eval.baseline": False},
        )
        with bench_lock():
            try:
                run_search(load_search_space(space_file), address="local", verbose=0)
            finally:
                import ray

                ray.shutdown()  # before the lock is released
        return best_by_budget(trial_histories(folder, name, "epoch_score"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--random-trials", type=int, default=18)
    ap.add_argument("--tpe-trials", type=int, default=36)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--reduction-factor", type=int, default=2, help="ASHA's")
    ap.add_argument("--grace-period", type=int, default=1, help="ASHA's, in epochs")
    ap.add_argument(
        "--at-trials",
        type=int,
        nargs="+",
        default=[6, 12, 18],
        help="also compare at random search's budget after this many trials",
    )
    ap.add_argument("--grid", action="store_true", help="searcher x scheduler pairs")
    ap.add_argument("--spaces", nargs="+", choices=SPACES, default=list(SPACES))
    ap.add_argument(
        "--pairs", nargs="+", default=[REFERENCE, "tpe+asha"], help="searcher+scheduler"
    )
    ap.add_argument("--budget", type=int, default=96, help="trial-epochs per search (grid)")
    ap.add_argument("--results", default="/tmp/bench_search_grid.jsonl", help="grid: JSON lines")
    ap.add_argument("--report-only", action="store_true", help="grid: summarise --results")
    args = ap.parse_args()
    if args.grid or args.report_only:
        args.budgets = sorted({k * args.epochs for k in args.at_trials} | {args.budget})
        if args.report_only:
            from search_grid import load_results

            report(load_results(Path(args.results)), args.budgets, args.budget)
        else:
            run_grid(args)
        return
    budgets = sorted(
        {k * args.epochs for k in args.at_trials if k < args.random_trials}
        | {args.random_trials * args.epochs}
    )
    shares: dict[int, list[float]] = {budget: [] for budget in budgets}
    for seed in args.seeds:
        random_curve = run("random", seed, args.random_trials, args.epochs, args.concurrent)
        tpe_curve = run(
            "tpe_asha",
            seed,
            args.tpe_trials,
            args.epochs,
            args.concurrent,
            reduction=args.reduction_factor,
            grace=args.grace_period,
        )
        for budget in budgets:
            share = share_to_match(random_curve, tpe_curve, budget)
            shares[budget].append(share)
            print(
                f"seed {seed}: random best mAP {100 * random_curve[budget - 1][1]:.1f} after "
                f"{budget} trial-epochs; TPE+ASHA "
                + (
                    f"reached it after {round(share * budget)} ({share:.0%} of that budget)"
                    if share != float("inf")
                    else "never reached it"
                )
            )
        print(f"seed {seed}: TPE+ASHA best {100 * tpe_curve[-1][1]:.1f} after {tpe_curve[-1][0]}")
        for label, curve in (("random", random_curve), ("tpe_asha", tpe_curve)):
            steps = " ".join(f"{spent}:{100 * best:.1f}" for spent, best in curve)
            print(f"  {label} best mAP by budget: {steps}")
    for budget, values in shares.items():
        print(
            f"median share of random search's budget TPE+ASHA needed to match it at {budget} "
            f"trial-epochs: {statistics.median(values):.0%} over {len(values)} seed(s)"
        )


if __name__ == "__main__":
    main()
