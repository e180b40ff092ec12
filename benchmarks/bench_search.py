"""Search efficiency: TPE + ASHA against random search without early stopping, same budget.

    .venv/bin/python benchmarks/bench_search.py [--seeds 0 1 2] [--random-trials 6]
        [--tpe-trials 12] [--epochs 8] [--reduction-factor 2]

Both run the quickstart's search space (synthetic data, tiny ViT, ``runner: trial_process``) on
an embedded local Ray. The budget is counted in trial-epochs (each epoch any trial trains).
Random search trains ``--random-trials`` trials to the end; TPE + ASHA gets more trials and
the same or a smaller budget, because ASHA stops the weak ones at its rungs. For each seed it
prints the best score (mAP) reached against the budget spent, from MLflow's per-epoch record,
and the share of random search's budget TPE + ASHA needed to reach random search's final best
(the issue's target: at most a third).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_startup import quickstart_variant, trial_histories  # noqa: E402

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


def run(
    method: str, seed: int, trials: int, epochs: int, concurrent: int, reduction: int = 2
) -> list:
    from reidsearch.search.driver import run_search
    from reidsearch.search.space import load_search_space

    scheduler = (
        {"type": "asha", "grace_period": 1, "reduction_factor": reduction}
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
        run_search(load_search_space(space_file), address="local", verbose=0)
        return best_by_budget(trial_histories(folder, name, "epoch_score"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--random-trials", type=int, default=6)
    ap.add_argument("--tpe-trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--reduction-factor", type=int, default=2, help="ASHA's (grace period 1)")
    args = ap.parse_args()
    shares = []
    for seed in args.seeds:
        random_curve = run("random", seed, args.random_trials, args.epochs, args.concurrent)
        tpe_curve = run(
            "tpe_asha", seed, args.tpe_trials, args.epochs, args.concurrent, args.reduction_factor
        )
        budget, target = random_curve[-1]
        reached = budget_to_reach(tpe_curve, target)
        print(
            f"seed {seed}: random best mAP {100 * target:.1f} after {budget} trial-epochs; "
            f"TPE+ASHA best {100 * tpe_curve[-1][1]:.1f} after {tpe_curve[-1][0]}, "
            + (
                f"reached random's best after {reached} ({reached / budget:.0%} of its budget)"
                if reached is not None
                else "did not reach random's best"
            )
        )
        for label, curve in (("random", random_curve), ("tpe_asha", tpe_curve)):
            steps = " ".join(f"{spent}:{100 * best:.1f}" for spent, best in curve)
            print(f"  {label} best mAP by budget: {steps}")
        shares.append(reached / budget if reached is not None else float("inf"))
    print(
        f"median share of random search's budget TPE+ASHA needed to match it: "
        f"{statistics.median(shares):.0%} over {len(shares)} seed(s)"
    )


if __name__ == "__main__":
    main()
