"""What the front-respecting ASHA (several objectives) saves, and what it gets wrong.

A multi-objective search (mAP against feature bytes, LA-TF and LA-TF++ heads) runs every trial
to its full length (scheduler none). Each trial's learning curve is then replayed, in the order
the trials started, through the real ``FrontASHA`` (the rule ``scheduler: asha`` uses with
several objectives) and through Ray's single-objective ASHA on the score alone, as if they had
decided: which trials each would have stopped, the trial-epochs saved, and how many stopped
trials ended on the final Pareto front of the full-length runs (the rule's mistakes).

    .venv/bin/python benchmarks/bench_front_asha.py --trials 12 --epochs 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reidsearch.objective import ObjectiveConfig  # noqa: E402
from reidsearch.search.driver.front_asha import FrontASHA  # noqa: E402
from reidsearch.search.results.pareto import front_ranks  # noqa: E402
from tests.conftest import tiny_config_dict  # noqa: E402

OBJECTIVES = [ObjectiveConfig(metric="mAP"), ObjectiveConfig(metric="cost.feature_bytes")]


def run_search(folder: Path, trials: int, epochs: int, seed: int) -> tuple[str, str]:
    import reidsearch

    space = {
        "name": "front-bench",
        "fixed": tiny_config_dict(epochs=epochs, **{"eval.use_camera": False}),
        "search": {
            "model.head": {"type": "choice", "values": ["latf", "latfpp"]},
            "model.lam": {"type": "uniform", "low": 0.5, "high": 10.0},
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
        },
        "objective": [o.model_dump(include={"metric"}) for o in OBJECTIVES],
        "searcher": "random",
        "scheduler": "none",
        "trials": trials,
        "max_concurrent": 2,
        "seed": seed,
        "resources": {"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
        "storage_path": str(folder / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"},
    }
    path = folder / "front.yaml"
    path.write_text(yaml.safe_dump(space))
    plan, _ = reidsearch.run_search(path)
    return plan.tracking_uri, Path(plan.experiment_dir).name


def curves(uri: str, search: str) -> list[tuple[str, list[float], float]]:
    """(trial, score after each epoch, feature bytes) per trial, in start order."""
    from mlflow.tracking import MlflowClient

    import reidsearch

    client = MlflowClient(tracking_uri=uri)
    rows = reidsearch.leaderboard(uri, search=search, top=10_000).rows
    runs = sorted((client.get_run(r["run_id"]) for r in rows), key=lambda r: r.info.start_time)
    out = []
    for run in runs:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "score")}
        scores = [history[e] for e in sorted(history)]
        out.append((run.info.run_name, scores, run.data.metrics["cost.feature_bytes"]))
    return out


def replay(decide, trials: list[tuple[str, list[float], float]]) -> dict[str, int]:
    """The epoch each trial would have been stopped at (its length when never)."""
    stopped = {}
    for name, scores, cost in trials:
        stopped[name] = len(scores)
        for epoch, score in enumerate(scores, 1):
            result = {"epoch": epoch, "score": score, "score_epoch": epoch}
            if decide(name, {**result, "mAP": score, "cost.feature_bytes": cost}) == "STOP":
                stopped[name] = epoch
                break
    return stopped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--reduction-factor", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from ray.tune.schedulers import ASHAScheduler

    with tempfile.TemporaryDirectory() as tmp:
        uri, search = run_search(Path(tmp), args.trials, args.epochs, args.seed)
        trials = curves(uri, search)
        front = FrontASHA(
            objectives=OBJECTIVES,
            grace_period=1,
            reduction_factor=args.reduction_factor,
            max_t=args.epochs,
            state_path=str(Path(tmp) / "front.json"),
        )
        asha = ASHAScheduler(
            time_attr="epoch",
            metric="score",
            mode="max",
            max_t=args.epochs,
            grace_period=1,
            reduction_factor=args.reduction_factor,
        )

        def by_front(name: str, result: dict) -> str:
            return front.on_trial_result(None, SimpleNamespace(trial_id=name), result)

        def by_score(name: str, result: dict) -> str:
            trial = SimpleNamespace(trial_id=name)
            if result["epoch"] == 1:
                asha.on_trial_add(None, trial)
            return asha.on_trial_result(None, trial, result)

        finals = [[scores[-1], cost] for _, scores, cost in trials]
        ranks = front_ranks(finals, ["max", "min"])
        on_front = {t[0] for t, r in zip(trials, ranks, strict=True) if r == 1}
        full = sum(len(scores) for _, scores, _ in trials)
        print(
            f"{len(trials)} trials of {args.epochs} epochs ({full} trial-epochs); "
            f"{len(on_front)} on the final front of mAP x feature bytes"
        )
        for label, decide in (("front ASHA", by_front), ("ASHA on mAP alone", by_score)):
            stopped = replay(decide, trials)
            cut = {n for n, e in stopped.items() if e < args.epochs}
            used = sum(stopped.values())
            wrong = len(cut & on_front)
            print(
                f"{label}: stopped {len(cut)} trial(s), {used} of {full} trial-epochs "
                f"({1 - used / full:.0%} saved); {wrong} of them ended on the final front "
                f"({wrong / max(1, len(cut)):.0%} of its stops)"
            )


if __name__ == "__main__":
    main()
