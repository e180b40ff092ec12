"""The search's terminal output: the live table, one line per ended trial, no escape codes in a
log file, and (end to end) a whole search through the CLI in a few dozen lines."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("ray")

from reidsearch.search.driver.progress import (  # noqa: E402
    SearchProgress,
    format_duration,
    short_names,
)
from reidsearch.search.driver.trial_states import failure_reason  # noqa: E402
from tests.conftest import tiny_config_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trial(trial_id: str, status: str = "RUNNING", head=None, lr=None) -> SimpleNamespace:
    params = {"model.head": head, "optim.lr": lr}
    return SimpleNamespace(
        trial_id=trial_id,
        status=status,
        config={key: value for key, value in params.items() if value is not None},
        # Tune's last result of a trial that ended says done (not one Ctrl-C cut)
        run_metadata=SimpleNamespace(last_result={"done": True} if status == "TERMINATED" else {}),
        pickled_error_file=None,
        error_file=None,
    )


def _reporter(live: bool = False, mode: str = "max", total: int = 4):
    stream, clock = io.StringIO(), Clock()
    progress = SearchProgress(
        total=total,
        metric="mAP",
        mode=mode,
        max_epochs=8,
        param_keys=["model.head", "optim.lr"],
        stream=stream,
        live=live,
        clock=clock,
    )
    progress.setup()
    return progress, stream, clock


def _report(progress, trial, epoch: int, score: float) -> None:
    progress.on_trial_result(0, [], trial, {"epoch": epoch, "score": score})


def test_helpers():
    assert [format_duration(s) for s in (4.6, 185, 7620)] == ["5s", "3m05s", "2h07m"]
    names = short_names(["model.head", "optim.lr", "model.lr", "seed"])
    assert list(names.values()) == ["head", "optim.lr", "model.lr", "seed"]


def test_plain_mode_writes_one_line_per_ended_trial_and_a_periodic_progress_line(tmp_path):
    progress, stream, clock = _reporter()
    a = _trial("a", head="latf", lr=1e-3)
    b = _trial("b", head="latfpp", lr=2e-4)
    c = _trial("c", head="latf", lr=1e12)
    trials = [a, b, c]
    (tmp_path / "error.txt").write_text("Failure # 1\nTrainingDiverged: loss is NaN at epoch 1\n")
    c.error_file = str(tmp_path / "error.txt")
    start = stream.getvalue()
    assert start.startswith("search started: 4 trials of at most 8 epochs, mAP maximised")

    progress.on_step_end(1, trials)
    assert stream.getvalue() == start  # no progress line before a minute has passed
    _report(progress, a, 8, 0.2)
    _report(progress, b, 2, 0.1)
    clock.now += 61
    progress.on_step_end(2, trials)
    line = stream.getvalue()[len(start) :]
    assert line.startswith("progress: 0/4 trials done (3 running) | elapsed 1m01s")
    assert "best mAP 20.0 (a)" in line

    a.status = "TERMINATED"
    progress.on_trial_complete(3, trials, a)
    b.status = "TERMINATED"
    progress.on_trial_complete(4, trials, b)
    c.status = "ERROR"
    progress.on_trial_error(5, trials, c)
    progress.on_experiment_end(trials)
    lines = stream.getvalue().splitlines()
    assert lines[2] == (
        "trial a finished at epoch 8/8, mAP 20.0 (best so far) | head=latf lr=0.001 [1/4]"
    )
    assert lines[3] == "trial b stopped at epoch 2/8, mAP 10.0 | head=latfpp lr=0.0002 [2/4]"
    assert lines[4] == (
        "trial c failed: TrainingDiverged: loss is NaN at epoch 1 | head=latf lr=1e+12 [3/4]"
    )
    assert (
        lines[5] == "search stopped: 3/4 trials done (1 failed) | elapsed 1m01s | best mAP 20.0 (a)"
    )
    assert len(lines) == 6 and "\x1b" not in stream.getvalue()


def test_progress_line_estimates_the_time_left_from_the_work_done():
    progress, _, clock = _reporter(mode="min")
    a, b, c = _trial("a", "TERMINATED"), _trial("b"), _trial("c", "PENDING")
    _report(progress, a, 8, 0.3)
    _report(progress, b, 4, 0.2)  # half a trial's work, and the lower score (mode min)
    progress.on_trial_complete(0, [a, b, c], a)
    clock.now += 150
    # 1.5 trials' work in 150 s; 2.5 left -> 250 s
    assert progress.progress_line([a, b, c]) == (
        "1/4 trials done (1 running) | elapsed 2m30s | about 4m10s left | best mAP 20.0 (b)"
    )
    fresh, _, _ = _reporter()
    assert "left: ?" in fresh.progress_line([_trial("x")])
    # A trial this run started that Tune ended without completing it (Ctrl-C) is not done.
    cut = _trial("cut", "TERMINATED")
    cut.run_metadata.last_result = {"epoch": 2}
    assert fresh.progress_line([cut]).startswith("0/4 trials done (1 interrupted)")
    restored = _trial("old", "TERMINATED")  # finished in an earlier run of a resumed search
    restored.run_metadata.last_result = {"epoch": 8, "score": 0.1, "done": True}
    assert fresh.progress_line([restored]).startswith("1/4 trials done |")
    # Ctrl-C marks the trials it cuts TERMINATED, even one this run had not started yet.
    pending = _trial("pending", "TERMINATED")
    pending.run_metadata.last_result = {}
    assert fresh.progress_line([pending]).startswith("0/4 trials done (1 interrupted)")


def test_table_lists_running_trials_first_then_the_best_and_marks_the_best():
    progress, _, _ = _reporter()
    trials = [
        _trial("low", "TERMINATED", head="latf", lr=1e-3),
        _trial("run", head="latfpp"),  # optim.lr not sampled (a conditional parameter)
        _trial("high", "TERMINATED", head="latf", lr=2e-3),
    ]
    for trial, score in zip(trials, (0.1, 0.05, 0.3), strict=True):
        _report(progress, trial, 8, score)
    table = progress.table(trials)
    assert table[0].split() == ["trial", "state", "epoch", "head", "lr", "mAP"]
    assert [row.split()[0] for row in table[1:]] == ["run", "high", "low"]
    assert table[1].split() == ["run", "running", "8/8", "latfpp", "-", "5.0"]
    assert table[2].endswith("30.0 *") and not table[3].endswith("*")
    assert table[0].index("state") == table[1].index("running")  # aligned columns
    short = progress.table(trials, max_rows=2)
    assert len(short) == 4 and short[-1] == "... 1 more"


def test_terminal_mode_redraws_the_table_in_place_at_most_every_two_seconds():
    progress, stream, clock = _reporter(live=True)
    a, b = _trial("a", head="latf"), _trial("b", head="latfpp")
    start = stream.getvalue()
    progress.on_step_end(1, [a, b])
    first = stream.getvalue()[len(start) :]
    drawn = first.count("\n")  # the table (header and two rows) and the progress line
    assert drawn == 4 and "\x1b" not in first and "0/4 trials done (2 running)" in first
    clock.now += 1
    progress.on_step_end(2, [a, b])
    assert stream.getvalue() == start + first  # throttled
    clock.now += 2
    _report(progress, a, 3, 0.25)
    progress.on_step_end(3, [a, b])
    redraw = stream.getvalue()[len(start + first) :]
    assert redraw.startswith(f"\x1b[{drawn}F\x1b[J") and "3/8" in redraw
    a.status = "TERMINATED"
    progress.on_trial_complete(4, [a, b], a)
    event = stream.getvalue()[len(start + first + redraw) :]
    assert event.startswith(f"\x1b[{drawn}F\x1b[J" + "trial a stopped at epoch 3/8")
    progress.on_experiment_end([a, b])
    assert stream.getvalue().endswith(
        f"\x1b[{drawn}F\x1b[Jsearch stopped: 1/4 trials done (1 running) | elapsed 3s | "
        "best mAP 25.0 (a)\n"
    )


class Wrapper(Exception):
    """Like a RayTaskError: the remote exception is kept as ``.cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::run_trial() (pid=1)\n  Traceback ...")
        self.cause = cause


def test_failure_reason_finds_the_divergence_behind_rays_wrappers(tmp_path):
    from reidsearch.engine.trainer import TrainingDiverged

    trial = _trial("t")
    trial.pickled_error_file = str(tmp_path / "error.pkl")
    diverged = TrainingDiverged("trial t: loss is NaN or infinite at epoch 1; stopped")
    (tmp_path / "error.pkl").write_bytes(pickle.dumps(Wrapper(diverged)))
    assert failure_reason(trial) == "trial t: loss is NaN or infinite at epoch 1; stopped"
    (tmp_path / "error.pkl").write_bytes(pickle.dumps(Wrapper(OSError("disk full\nmore"))))
    assert failure_reason(trial) == "OSError: disk full"
    assert "error.txt" in failure_reason(_trial("none"))
    leaky = OSError("cannot write s3://AKID:SECRETKEY@bucket/runs")  # printed and logged: masked
    (tmp_path / "error.pkl").write_bytes(pickle.dumps(Wrapper(leaky)))
    assert failure_reason(trial) == "OSError: cannot write s3://***:***@bucket/runs"


def test_the_reporter_survives_tunes_pickling_of_its_callbacks():
    progress, _, _ = _reporter()
    copy = pickle.loads(pickle.dumps(progress))
    assert copy.total == 4 and copy.param_keys == ["model.head", "optim.lr"]
    assert copy.stream is sys.stdout


def test_quiet_search_output_drops_only_the_raylet_startup_note(monkeypatch):
    from reidsearch.internals.ray_internals import driver_log_printer, set_driver_log_printer
    from reidsearch.search.driver.progress import quiet_search_output

    printed = []
    original = driver_log_printer()
    set_driver_log_printer(lambda d, p: printed.append(d))
    try:
        for name in ("RAY_AIR_NEW_OUTPUT", "TUNE_PRINT_ALL_TRIAL_ERRORS", "RAY_COLOR_PREFIX"):
            monkeypatch.setenv(name, "1")  # restored (unset) after the test
        monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
        quiet_search_output()
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # Tune's new engine: a box at verbose 0
        assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"
        note = "WARNING: 8 PYTHON worker processes have been started on node: x"
        printer = driver_log_printer()
        printer({"pid": "raylet", "lines": [note]}, False)
        printer({"pid": "raylet", "lines": ["task cannot be scheduled"]}, False)
        assert [d["lines"] for d in printed] == [["task cannot be scheduled"]]
    finally:
        set_driver_log_printer(original)


def test_a_search_through_the_cli_prints_a_short_plain_log(tmp_path):
    """Three trials, their one-line events, the progress and the leaderboard: under 30 lines,
    no escape codes, in a file (stdout and stderr redirected, as in a batch job)."""
    space = {
        "name": "plainlog",
        "fixed": tiny_config_dict(epochs=2),
        "search": {"model.lam": {"type": "uniform", "low": 0.5, "high": 10.0}},
        "trials": 3,
        "max_concurrent": 2,
        "scheduler": {"type": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
        "seed": 0,
        "storage_path": str(tmp_path / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    (tmp_path / "plainlog.yaml").write_text(yaml.safe_dump(space))
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "reidsearch.cli", "run", "plainlog.yaml", "--address", "local"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            timeout=600,
        )
    text = log.read_text()
    lines = text.splitlines()
    assert done.returncode == 0, text
    assert len(lines) < 30, text
    assert "\x1b" not in text
    finished = [line for line in lines if line.startswith("trial ") and " finished at " in line]
    assert len(finished) == 3, text
    assert any(line.startswith("search done: 3/3 trials done") for line in lines), text
    assert "Leaderboard of experiment 'plainlog'" in text and "review it:" in text
    assert "RayTrainWorker" not in text and "TrainController" not in text
