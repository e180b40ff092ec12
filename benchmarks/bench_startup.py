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


def quickstart_variant(folder: Path, name: str, **fields) -> Path:
    """The quickstart space with a throw-away MLflow store and storage under ``folder``;
    ``fields`` replace top-level keys, dotted ``fixed.*`` keys set the trial config."""
    space = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    space.update(
        name=name,
        points_to_evaluate=[],
        storage_path=str(folder / "runs"),
        mlflow={"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": name},
    )
    for key, value in fields.items():
        if key.startswith("fixed."):
            node = space["fixed"]
            *parents, last = key.split(".")[1:]
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        else:
            space[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))  # search order matters (`when`)
    return path


def trial_histories(folder: Path, name: str, metric: str) -> list[list[tuple[int, int, float]]]:
    """Per trial of the search, the (timestamp ms, epoch, value) of ``metric`` as MLflow
    recorded it (the search's own record: Tune's CSV loggers may be off)."""
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.`reidsearch.kind` = 'trial'")
    return [
        [(m.timestamp, m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]
        for run in runs
    ]


def measure(
    trials: int, epochs: int, concurrent: int, runner: str
) -> tuple[list[tuple[float, float]], float]:
    """(startup_s, time_total_s) per trial, and the search's wall time (Ray start included)."""
    from reidsearch.search.driver.search import run_search
    from reidsearch.search.space import load_search_space

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        space_file = quickstart_variant(
            folder,
            "startup",
            trials=trials,
            max_concurrent=concurrent,
            scheduler={"type": "none"},
            resources={"workers": 1, "cpus_per_worker": 1, "runner": runner},
            search={"optim.lr": {"type": "loguniform", "low": 2.0e-4, "high": 2.0e-3}},
            **{"fixed.epochs": epochs, "fixed.eval.baseline": False},
        )
        started = time.perf_counter()
        _, results = run_search(load_search_space(space_file), address="local", verbose=0)
        wall = time.perf_counter() - started
        startups = sorted(h[0][2] for h in trial_histories(folder, "startup", "startup_s") if h)
        totals = sorted(float(result.metrics["time_total_s"]) for result in results)
        return list(zip(startups, totals, strict=False)), wall  # medians pair up, not trials


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
        for startup, total in rows:
            print(f"{runner}: start-up {startup:.1f} s; trial wall time {total:.1f} s")
        medians[runner] = (
            statistics.median(r[0] for r in rows),
            statistics.median(r[1] for r in rows),
            statistics.median(r[0] for r in rows) / statistics.median(r[1] for r in rows),
            wall,
        )
    for runner, (startup, total, share, wall) in medians.items():
        print(
            f"{runner}: median start-up {startup:.1f} s per trial of {total:.1f} s "
            f"({share:.0%} of the trial's wall time); whole search {wall:.0f} s"
        )


if __name__ == "__main__":
    main()
