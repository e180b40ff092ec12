"""Searches started before ``reidsearch.search`` was sorted into role folders still resume.

Tune pickles a search's searcher, scheduler, callbacks and trainable by module path; the old
paths are kept importable by ``reidsearch.search.moved``. Two checks: the objects pickled by the
code of before the move (``tests/data/legacy_search_objects.pkl``, written at commit a05054e)
load as today's classes and work; and a search whose pickles name the old paths, interrupted
half-way, resumes to the end.
"""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from tests.conftest import tiny_config_dict  # noqa: E402
from tests.test_search_e2e import _trial_runs, _write_space  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "data" / "legacy_search_objects.pkl"

LOAD_LEGACY = f"""
import pickle, sys
with open({str(LEGACY)!r}, "rb") as f:
    objects = pickle.load(f)
for name, obj in sorted(objects.items()):
    kind = obj if name == "trainable" else type(obj[0] if name == "params" else obj)
    print(name, kind.__module__ + "." + kind.__qualname__)
searcher = objects["searcher"].searcher  # ConcurrencyLimiter -> PruneAwareOptunaSearch
point = searcher.suggest("t-1")
print("suggested", point["model.head"], point["loss.triplet_weight"], sorted(point))
print("asha", objects["scheduler"]._state_path)
print("tracker", objects["tracker"].experiment, objects["tracker"].full_epochs)
"""


def test_objects_pickled_under_the_old_paths_load_as_todays_classes():
    """In a fresh interpreter, as a resumed search's driver would."""
    out = subprocess.run(
        [sys.executable, "-c", LOAD_LEGACY], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    s = "reidsearch.search"
    assert lines["tracker"].startswith("legacy 8")
    assert lines["searcher"] == "ray.tune.search.concurrency_limiter.ConcurrencyLimiter"
    assert lines["scheduler"] == f"{s}.driver.schedulers.ResumableASHA"
    assert lines["keep_done"] == f"{s}.driver.trial_states.KeepDoneInState"
    assert lines["progress"] == f"{s}.driver.progress.SearchProgress"
    assert lines["trainable"] == f"{s}.trial.trainable.run_trial"
    assert lines["params"] == f"{s}.space.params.ParamSpec"
    # The revived Optuna study proposes the space's first enqueued point (LA-TF, no triplet
    # loss, so no margin), lr drawn by TPE.
    assert lines["suggested"] == (
        "latf 0.0 ['loss.label_smoothing', 'loss.triplet_weight', 'model.head', 'model.lam', "
        "'optim.lr']"
    )
    assert lines["asha"].endswith("asha_state.json")


def test_every_old_path_imports_and_finds_its_names():
    from reidsearch.search import moved

    for old in moved.MOVED:
        module = importlib.import_module(old)
        assert module.__name__ == old
        with pytest.raises(AttributeError, match="moved"):
            module.no_such_name  # noqa: B018
    assert importlib.import_module(f"{moved._S}.tracking").MLflowSearchTracker.__module__ == (
        "reidsearch.search.driver.tracker"
    )


def _old_paths() -> dict:
    """Today's classes and functions that Tune pickles, with the module each had before."""
    from reidsearch.search.driver.schedulers import ResumableASHA
    from reidsearch.search.driver.searcher import PruneAwareOptunaSearch
    from reidsearch.search.driver.tracker import MLflowSearchTracker
    from reidsearch.search.driver.trial_states import KeepDoneInState
    from reidsearch.search.space.params import Condition, DefineByRun, ParamSpec
    from reidsearch.search.trial.trainable import run_trial

    s = "reidsearch.search"
    return {
        PruneAwareOptunaSearch: f"{s}.driver",
        run_trial: f"{s}.driver",
        MLflowSearchTracker: f"{s}.tracking",
        ResumableASHA: f"{s}.schedulers",
        KeepDoneInState: f"{s}.trial_outcome",
        ParamSpec: f"{s}.params",
        DefineByRun: f"{s}.params",
        Condition: f"{s}.params",
    }


def _interrupt_after_first_trial(storage: Path) -> threading.Thread:
    """Ctrl-C, as a user would, once one trial has ended (only while Tune's handler is on)."""

    def watch() -> None:
        deadline = time.time() + 600
        while time.time() < deadline:
            states = list(storage.glob("*/reidsearch/mlflow_runs.json"))
            if states and '"FINISHED"' in states[0].read_text():
                handler = signal.getsignal(signal.SIGINT)
                if getattr(handler, "__name__", "") == "signal_interrupt_tune_run":
                    signal.raise_signal(signal.SIGINT)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_search_pickled_under_the_old_paths_resumes(search_ray, tmp_path, monkeypatch):
    import reidsearch

    space_file = _write_space(
        tmp_path / "legacy.yaml",
        trials=3,
        max_concurrent=1,
        fixed=tiny_config_dict(epochs=2),
        search={"model.lam": {"type": "uniform", "low": 0.5, "high": 10.0}},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    # The first run pickles as the code before the move did: by the old module paths.
    for obj, old in _old_paths().items():
        importlib.import_module(old)  # (cloudpickle pickles by reference only what is imported)
        monkeypatch.setattr(obj, "__module__", old)
    watcher = _interrupt_after_first_trial(tmp_path / "runs")
    first_plan, _ = reidsearch.run_search(space_file)
    watcher.join(timeout=5)
    monkeypatch.undo()
    for old in set(_old_paths().values()):
        sys.modules.pop(old, None)  # the resume finds them afresh, through the finder
    pickled = (Path(first_plan.experiment_dir) / "tuner.pkl").read_bytes()
    for old in ("reidsearch.search.tracking", "reidsearch.search.schedulers"):
        assert old.encode() in pickled
    assert b"reidsearch.search.driver.tracker" not in pickled
    _, parents, children = _trial_runs(first_plan.tracking_uri, "legacy")
    assert parents[0].info.status == "KILLED", "the first run was not interrupted"
    assert sum(c.info.status == "FINISHED" for c in children) < 3

    second_plan, results = reidsearch.run_search(space_file, resume=True)
    assert second_plan.experiment_dir == first_plan.experiment_dir
    assert len(results) == 3 and not results.errors
    _, parents, children = _trial_runs(first_plan.tracking_uri, "legacy")
    assert len(parents) == 1 and len(children) == 3
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parents[0].info.status == "FINISHED"
