"""Trial start-up: trial start -> first training step, and its share of each trial's wall time.

    .venv/bin/python benchmarks/bench_startup.py [--trials 4] [--epochs 2] [--concurrent 2]

Runs a search shaped like the quickstart (its model, data and resources; lr searched, no early
stopping) on an embedded local Ray with a throw-away MLflow store and storage, once per runner:
``ray_train`` (each trial a Ray Train run: controller + worker processes) and ``trial_process``
(the trial trains in its reused Tune process), one after the other in the same run. Per trial it
reads ``startup_s`` (reported with the first epoch: the trial function's start to the first
training step) and Tune's ``time_total_s`` (the trial's whole wall time), and prints the median
start-up and its share of the trial for each runner.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


RUNNERS = ("ray_train", "trial_process")


def write_space(folder: Path, trials: int, epochs: int, concurrent: int, runner: str) -> Path:
    space = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    space.update(
        name="startup",
        searcher="optuna",
        trials=trials,
        max_concurrent=concurrent,
        scheduler={"type": "none"},
        points_to_evaluate=[],
        storage_path=str(folder / "runs"),
        mlflow={"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "startup"},
    )
    space["resources"]["runner"] = runner
    space["fixed"]["epochs"] = epochs
    space["fixed"]["eval"]["baseline"] = False
    space["search"] = {"optim.lr": {"type": "loguniform", "low": 2.0e-4, "high": 2.0e-3}}
    path = folder / "startup.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def measure(
    trials: int, epochs: int, concurrent: int, runner: str
) -> tuple[list[tuple[float, float]], float]:
    """(startup_s, time_total_s) per trial, and the search's wall time (Ray start included)."""
    from reidsearch.search.driver import run_search
    from reidsearch.search.space import load_search_space

    with tempfile.TemporaryDirectory() as tmp:
        space = load_search_space(write_space(Path(tmp), trials, epochs, concurrent, runner))
        started = time.perf_counter()
        _, results = run_search(space, address="local", verbose=0)
        wall = time.perf_counter() - started
        rows = []
        for result in results:
            frame = result.metrics_dataframe
            startup = frame["startup_s"].dropna()
            if len(startup):
                rows.append((float(startup.iloc[0]), float(result.metrics["time_total_s"])))
        return rows, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    args = ap.parse_args()
    medians = {}
    for runner in args.runners:
        rows, wall = measure(args.trials, args.epochs, args.concurrent, runner)
        if not rows:
            raise SystemExit(f"{runner}: no trial reported startup_s")
        for n, (startup, total) in enumerate(rows):
            print(f"{runner} trial {n}: start-up {startup:.1f} s of {total:.1f} s")
        medians[runner] = (
            statistics.median(r[0] for r in rows),
            statistics.median(r[1] for r in rows),
            statistics.median(r[0] / r[1] for r in rows),
            wall,
        )
    for runner, (startup, total, share, wall) in medians.items():
        print(
            f"{runner}: median start-up {startup:.1f} s per trial of {total:.1f} s "
            f"({share:.0%} of the trial's wall time); whole search {wall:.0f} s"
        )


if __name__ == "__main__":
    main()
