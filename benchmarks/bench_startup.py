"""Trial start-up and the time between trials, on searches shaped like the quickstart.

Start-up: a trial's start -> its first training step, and its share of the trial's wall time.
Between trials: one trial's end -> the next trial's first step.

    .venv/bin/python benchmarks/bench_startup.py [--trials 4] [--epochs 2] [--concurrent 2]
    .venv/bin/python benchmarks/bench_startup.py --trials 80 --epochs 1 --small-data \\
        --runners trial_process --compare-with /tmp/old     # an older checkout, same run

Runs a search shaped like the quickstart (its model, data and resources; lr searched, no early
stopping) on an embedded local Ray with a throw-away MLflow store and storage, once per runner:
``ray_train`` (each trial a Ray Train run: controller + worker processes) and ``trial_process``
(the trial trains in its Tune trial process), one after the other in the same run. Per trial it
reads ``startup_s`` (MLflow: the trial function's start to the first training step), Tune's
``time_total_s`` (the trial function's start to its last report) and the time its
``outcome.json`` was written (the trial function's last act: the trial's end). A trial's first
step is then its end - ``time_total_s`` + ``startup_s``: if anything, late (Tune's total leaves
out the driver's turns between reports), so the gap below is never understated.

Between trials: with ``c`` trials at a time, the (c + i)-th trial to start took the slot of the
i-th trial to end; its gap is its first step - that end. ``--small-data`` scales the quickstart's
data down (0.2 s epochs), so that a search is mostly what happens between trials.
``--compare-with DIR`` measures the checkout in DIR (e.g. ``git worktree add /tmp/old HEAD``)
with the same arguments in the same run and prints both side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


RUNNERS = ("ray_train", "trial_process")
SMALL_DATA = {  # the quickstart's generator, 24 identities of 64x32 images: 0.2 s epochs
    "fixed.data.synthetic": {
        "layout": "latfpp",
        "ids": 24,
        "test_ids": 8,
        "images_per_camera": 2,
        "height": 64,
        "width": 32,
        "seed": 0,
    },
    "fixed.data.height": 64,
    "fixed.data.width": 32,
}


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


def _trial_runs(folder: Path, name: str) -> list:
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`reidsearch.kind` = 'trial'", max_results=5000
    )
    return [(client, run) for run in runs]


def trial_histories(folder: Path, name: str, metric: str) -> list[list[tuple[int, int, float]]]:
    """Per trial of the search, the (timestamp ms, epoch, value) of ``metric`` as MLflow
    recorded it (the search's own record: Tune's CSV loggers may be off)."""
    return [
        [(m.timestamp, m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]
        for client, run in _trial_runs(folder, name)
    ]


def _startups(folder: Path, name: str) -> dict[str, float]:
    """Each trial's ``startup_s`` (its first run's), by Tune trial id."""
    found = {}
    for client, run in _trial_runs(folder, name):
        history = client.get_metric_history(run.info.run_id, "startup_s")
        if history:
            found[run.data.tags["reidsearch.trial_id"]] = min(history, key=lambda m: m.step).value
    return found


def between_trials(trials: list[dict], concurrent: int) -> list[tuple[float, float, float]]:
    """(end, next first step, gap) per slot handed on: the i-th end to the (c + i)-th start."""
    ends = sorted(t["end"] for t in trials)
    firsts = sorted(t["first_step"] for t in trials)
    handed_on = zip(ends, firsts[concurrent:], strict=False)  # the last c ends hand on none
    return [(end, first, first - end) for end, first in handed_on]


def measure(
    trials: int, epochs: int, concurrent: int, runner: str, small: bool
) -> tuple[list[dict], float]:
    """Per trial: startup_s, time_total_s, its end and first step (seconds from the search's
    start); and the search's wall time (Ray start included)."""
    from reidsearch.search.driver.search import run_search
    from reidsearch.search.space import load_search_space
    from reidsearch.storage import join

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
            **(SMALL_DATA if small else {}),
        )
        t0, started = time.time(), time.perf_counter()
        plan, results = run_search(load_search_space(space_file), address="local", verbose=0)
        wall = time.perf_counter() - started
        startups = _startups(folder, "startup")
        rows = []
        for result in results:
            trial_id = result.metrics["trial_id"]
            outcome = join(plan.train_storage, f"train_{trial_id}", "outcome.json")
            if trial_id not in startups or not os.path.exists(outcome):
                continue
            end = os.stat(outcome).st_mtime - t0
            total, startup = float(result.metrics["time_total_s"]), startups[trial_id]
            first = end - total + startup
            rows.append({"startup": startup, "total": total, "end": end, "first_step": first})
        return rows, wall


def summarize(rows: list[dict], wall: float, concurrent: int) -> dict:
    gaps = [gap for _, _, gap in between_trials(rows, concurrent)]
    return {
        "startup": statistics.median(r["startup"] for r in rows),
        "total": statistics.median(r["total"] for r in rows),
        "wall": wall,
        "gap": statistics.median(gaps) if gaps else None,
        "max_gap": max(gaps) if gaps else None,
        "gaps": len(gaps),
    }


def _other_checkout(code: Path, argv: list[str]) -> dict:
    """This benchmark's figures for the checkout in ``code`` (its own process and Ray)."""
    import ray

    ray.shutdown()  # this run's Ray: two at once would share the cores (and confuse Ray Train)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "PYTHONPATH": str(code)}  # Ray's workers import it too
        command = [sys.executable, __file__, *argv, "--code", str(code), "--json", out.name]
        subprocess.run(command, check=True, env=env)
        return json.loads(Path(out.name).read_text())


def _argv_without_compare(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--compare-with":
            skip = True
        elif not arg.startswith("--compare-with="):
            kept.append(arg)
    return kept


def _print_runner(label: str, runner: str, rows: list[dict], concurrent: int) -> None:
    for row in sorted(rows, key=lambda r: r["end"]):
        print(
            f"{label}{runner}: start-up {row['startup']:.2f} s; "
            f"trial wall time {row['total']:.2f} s"
        )
    for end, first, gap in between_trials(rows, concurrent):
        print(
            f"{label}{runner}: between trials {gap:.2f} s: a trial ended at {end:.2f} s, "
            f"the next one's first step at {first:.2f} s"
        )


def _print_summary(label: str, runner: str, f: dict) -> None:
    print(
        f"{label}{runner}: median start-up {f['startup']:.2f} s per trial of "
        f"{f['total']:.2f} s ({f['startup'] / f['total']:.0%} of the trial's wall time); "
        f"whole search {f['wall']:.1f} s"
    )
    if f["gap"] is not None:
        print(
            f"{label}{runner}: median between trials {f['gap']:.2f} s (max {f['max_gap']:.2f} s, "
            f"{f['gaps']} gaps): a trial's end to the next one's first step"
        )


def _print_side_by_side(args: argparse.Namespace, mine: dict, other: dict) -> None:
    print(
        f"side by side ({args.trials} trials of {args.epochs} epochs, {args.concurrent} at a "
        "time): median / max between trials; whole search"
    )
    for runner in mine:
        for where, f in (("this checkout", mine[runner]), (args.compare_with, other[runner])):
            gap = "-" if f["gap"] is None else f"{f['gap']:.2f} s / {f['max_gap']:.2f} s"
            print(f"  {runner}, {where}: {gap}; {f['wall']:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    ap.add_argument("--small-data", action="store_true", help="0.2 s epochs (see above)")
    ap.add_argument("--compare-with", type=Path, help="another checkout, measured after this one")
    ap.add_argument("--code", type=Path, help=argparse.SUPPRESS)  # the checkout measured
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # figures for --compare-with
    args = ap.parse_args()
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
    label = f"[{args.code}] " if args.code is not None else ""
    import reidsearch

    print(f"{label}measuring {Path(reidsearch.__file__).parent}", flush=True)
    figures = {}
    for runner in args.runners:
        rows, wall = measure(args.trials, args.epochs, args.concurrent, runner, args.small_data)
        if not rows:
            raise SystemExit(f"{runner}: no trial reported startup_s")
        _print_runner(label, runner, rows, args.concurrent)
        figures[runner] = summarize(rows, wall, args.concurrent)
    for runner, f in figures.items():
        _print_summary(label, runner, f)
    if args.json is not None:
        args.json.write_text(json.dumps(figures))
    if args.compare_with is not None:
        other = _other_checkout(args.compare_with, _argv_without_compare(sys.argv[1:]))
        _print_side_by_side(args, figures, other)


if __name__ == "__main__":
    main()
