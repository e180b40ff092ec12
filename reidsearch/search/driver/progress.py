"""What a running search prints: one live table and one line per finished, stopped or failed trial.

Ray Tune's own reporter prints a full result table per trial and the Ray workers' log lines
reach the driver too: hundreds of lines for a six-trial search. :class:`SearchProgress` replaces
both (``reidsearch run --verbose`` keeps Ray's output). On a terminal it redraws a compact table
in place; in a log file (stdout not a terminal) it writes only plain lines, never escape codes:
the trial events and a progress line whose period grows with the search's age.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from ray.tune import Callback

from reidsearch.engine.scoring import SCORE_KEY
from reidsearch.internals.ray_internals import (
    driver_log_printer,
    set_driver_log_printer,
    trial_last_result,
)
from reidsearch.search.driver.trial_states import failure_reason, trial_ended
from reidsearch.search.rules import best_first, stopped_early
from reidsearch.search.space.trials import trial_params

REDRAW_EVERY_S = 2.0  # the live table, on a terminal
PROGRESS_EVERY_S = 60.0  # the plain progress line at first; later every tenth of the elapsed time
_ERASE_UP = "\x1b[{n}F\x1b[J"  # to the start of the line n lines up, then clear below
ENDED = ("finished", "stopped", "failed")  # the states of a trial that is done


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``: short enough for a one-line progress report."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's last part (``optim.lr`` -> ``lr``) where no other key shares it."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {
        key: part if last.count(part) == 1 else key for key, part in zip(keys, last, strict=True)
    }


class SearchProgress(Callback):
    """A Tune callback that reports the search compactly (see the module's docstring).

    ``total`` is the number of trials the search runs, ``max_epochs`` the length of a trial that
    no scheduler stops (one that ends sooner was stopped early, e.g. by ASHA).
    """

    def __init__(
        self,
        *,
        total: int,
        metric: str,
        mode: str,
        max_epochs: int,
        param_keys: Sequence[str] = (),
        stream: IO[str] | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = {"total": total, "metric": metric, "mode": mode, "max_epochs": max_epochs}
        self._settings["param_keys"] = list(param_keys)
        self.total, self.metric, self.mode, self.max_epochs = total, metric, mode, max_epochs
        self.param_keys = list(param_keys)
        self.stream = stream or sys.stdout
        if live is None:
            live = self.stream.isatty() and os.environ.get("TERM", "") != "dumb"
        self.live = live
        self.clock = clock
        self.start = clock()
        self._results: dict[str, dict[str, Any]] = {}  # last result seen per trial
        self._ended: dict[str, str] = {}  # finished / stopped / failed
        self._done_before = 0  # trials already done when this run began (a resumed search)
        self._seen_first_step = False
        self._drawn = 0  # lines of the live table now on the terminal
        self._last_draw = -1e9
        self._last_line = self.start

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (tuner.pkl); a stream does not pickle,
        # and a resumed search starts its clock and its terminal afresh.
        return self._settings

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # ------------------------------------------------------------------ what a trial shows
    def _result(self, trial: Any) -> dict[str, Any]:
        known = self._results.get(trial.trial_id)
        if known is not None:
            return known
        restored = trial_last_result(trial)
        return restored if isinstance(restored, dict) else {}

    def _state(self, trial: Any) -> str:
        if trial.trial_id in self._ended:
            return self._ended[trial.trial_id]
        status = str(trial.status)
        if status == "TERMINATED":  # not completed in this run: restored, or interrupted
            return self._end_state(trial) if trial_ended(trial) else "interrupted"
        return {"ERROR": "failed"}.get(status, status.lower())

    def _end_state(self, trial: Any) -> str:
        epoch = self._result(trial).get("epoch")
        return "stopped" if stopped_early(epoch, self.max_epochs) else "finished"

    def _score(self, trial: Any) -> float | None:
        score = self._result(trial).get(SCORE_KEY)
        return None if score is None else float(score)

    def _score_text(self, score: float | None) -> str:
        if score is None:
            return "-"
        return f"{score:.4f}" if self.metric == "loss" else f"{100 * score:.1f}"

    def _epoch_text(self, trial: Any) -> str:
        epoch = self._result(trial).get("epoch")
        return f"{'-' if epoch is None else int(epoch)}/{self.max_epochs}"

    def _keys(self, trials: Iterable[Any]) -> list[str]:
        keys = list(self.param_keys)
        for trial in trials:
            keys += [k for k in trial_params(trial.config) if k not in keys]
        return keys

    def _best(self, trials: Sequence[Any]) -> Any | None:
        scored = [t for t in trials if self._score(t) is not None]
        return min(scored, key=lambda t: best_first(self._score(t), self.mode), default=None)

    # ------------------------------------------------------------------------ the lines
    def progress_line(self, trials: Sequence[Any], final: bool = False) -> str:
        """Trials done of total, elapsed time, an estimate of the time left, the best so far."""
        states = [self._state(t) for t in trials]
        done = sum(s in ENDED for s in states)
        parts = [f"{done}/{self.total} trials done"]
        counts = {state: states.count(state) for state in ("running", "failed", "interrupted")}
        extra = [f"{count} {state}" for state, count in counts.items() if count]
        if extra:
            parts[0] += f" ({', '.join(extra)})"
        elapsed = self.clock() - self.start
        parts.append(f"elapsed {format_duration(elapsed)}")
        left = self.time_left(trials, elapsed)
        if done < self.total and not final:
            if left is None:
                parts.append("left: ?")
            else:
                parts.append(f"about {format_duration(left)} left" if left >= 1 else "finishing")
        best = self._best(trials)
        if best is not None:
            score = self._score_text(self._score(best))
            parts.append(f"best {self.metric} {score} ({best.trial_id})")
        return " | ".join(parts)

    def time_left(self, trials: Sequence[Any], elapsed: float) -> float | None:
        """Elapsed time per trial's worth of work done in this run, times the work left (a
        running trial counts by its epochs); None before any epoch ended."""
        finished = sum(self._state(t) in ENDED for t in trials)
        partial = sum(
            min(1.0, int(self._result(t).get("epoch", 0)) / max(1, self.max_epochs))
            for t in trials
            if self._state(t) == "running"
        )
        work_done = finished - self._done_before + partial
        if work_done <= 0 or elapsed <= 0:
            return None
        return elapsed / work_done * max(0.0, self.total - finished - partial)

    def event_line(self, trial: Any, trials: Sequence[Any], reason: str = "") -> str:
        """The one line written when a trial ends."""
        state = self._state(trial)
        names = short_names(self._keys([trial]))
        params = trial_params(trial.config)
        values = " ".join(f"{names[k]}={_value_text(params[k])}" for k in names if k in params)
        line = f"trial {trial.trial_id} {state}"
        if self._result(trial).get("epoch") is not None:
            line += f" at epoch {self._epoch_text(trial)}"
        score = self._score(trial)
        if score is not None:
            line += f", {self.metric} {self._score_text(score)}"
            best = self._best(trials)
            if best is not None and best.trial_id == trial.trial_id:
                line += " (best so far)"
        if reason:
            line += f": {reason.removeprefix(f'trial {trial.trial_id}: ')}"
        done = sum(self._state(t) in ENDED for t in trials)
        tail = f" | {values}" if values else ""
        return f"{line}{tail} [{done}/{self.total}]"

    def table(self, trials: Sequence[Any], max_rows: int | None = None) -> list[str]:
        """The live table: running trials first, then the ended ones best first."""
        keys = self._keys(trials)
        names = short_names(keys)
        best = self._best(trials)

        def order(t: Any) -> tuple:
            return (self._state(t) in ENDED, *best_first(self._score(t), self.mode))

        rows = [["trial", "state", "epoch", *names.values(), self.metric]]
        for t in sorted(trials, key=order):
            params = trial_params(t.config)
            mark = " *" if best is not None and t.trial_id == best.trial_id else ""
            rows.append(
                [
                    t.trial_id,
                    self._state(t),
                    self._epoch_text(t),
                    *(_value_text(params.get(k)) for k in keys),
                    self._score_text(self._score(t)) + mark,
                ]
            )
        hidden = 0
        if max_rows is not None and len(rows) - 1 > max_rows:
            hidden, rows = len(rows) - 1 - max_rows, rows[: max_rows + 1]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        if hidden:
            lines.append(f"... {hidden} more")
        return lines

    # ---------------------------------------------------------------------- the output
    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _erase(self) -> str:
        drawn, self._drawn = self._drawn, 0
        return _ERASE_UP.format(n=drawn) if drawn else ""

    def _redraw(self, trials: Sequence[Any], before: str = "") -> None:
        size = shutil.get_terminal_size()
        lines = [*self.table(trials, max_rows=max(3, size.lines - 5)), self.progress_line(trials)]
        lines = [line[: max(20, size.columns - 1)] for line in lines]  # no wrapping: erasable
        text = self._erase() + before + "".join(f"{line}\n" for line in lines)
        self._drawn = len(lines)
        self._last_draw = self.clock()
        self._write(text)

    def _event(self, line: str, trials: Sequence[Any]) -> None:
        if self.live:
            self._redraw(trials, before=f"{line}\n")
        else:
            self._write(f"{line}\n")

    # ------------------------------------------------------------------ Tune's callbacks
    def setup(self, stop: Any = None, num_samples: Any = None, **info: Any) -> None:
        self.start = self._last_line = self.clock()  # Ray's start-up is not the search's time
        goal = "maximised" if self.mode == "max" else "minimised"
        self._write(
            f"search started: {self.total} trials of at most {self.max_epochs} epochs, "
            f"{self.metric} {goal}\n"
        )

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._seen_first_step:  # a resumed search: its old trials are not this run's work
            self._seen_first_step = True
            self._done_before = sum(str(t.status) in ("TERMINATED", "ERROR") for t in trials)
        now = self.clock()
        if self.live:
            if now - self._last_draw >= REDRAW_EVERY_S:
                self._redraw(trials)
        elif now - self._last_line >= max(PROGRESS_EVERY_S, (now - self.start) / 10):
            self._last_line = now
            self._write(f"progress: {self.progress_line(trials)}\n")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._results[trial.trial_id] = dict(result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended[trial.trial_id] = self._end_state(trial)
        self._event(self.event_line(trial, trials), trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended[trial.trial_id] = "failed"
        self._event(self.event_line(trial, trials, reason=failure_reason(trial)), trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        verb = "done" if sum(self._state(t) in ENDED for t in trials) >= self.total else "stopped"
        self._write(self._erase() + f"search {verb}: {self.progress_line(trials, final=True)}\n")


class _DropMessages(logging.Filter):
    """Drops the log records that repeat what :class:`SearchProgress` already said."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def _drop_raylet_notes() -> None:
    """Drop the raylet's note that it started more worker processes than it expected: Ray
    prints it to the driver even without worker logs (``log_to_driver=False``), and it only
    says that the machine is busy. Every other raylet message (e.g. a task that cannot be
    scheduled) still prints. A no-op where Ray's internals differ."""
    original = driver_log_printer()
    if original is None or getattr(original, "_reidsearch", False):
        return

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        lines = [
            line
            for line in data.get("lines", [])
            if not (data.get("pid") == "raylet" and "worker processes have been started" in line)
        ]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    print_to_stdstream._reidsearch = True  # type: ignore[attr-defined]
    set_driver_log_printer(print_to_stdstream)


def quiet_search_output() -> None:
    """Silence what the driver process itself would print besides :class:`SearchProgress`:
    Tune's own reporter (the legacy engine prints nothing at verbose 0; the new one prints its
    experiment box anyway), its trial tracebacks and end-of-run list of failed trials (each
    failure is one event line), Optuna's and MLflow's INFO lines, the raylet's startup note,
    and Ray's colour codes where the output is not a terminal. Ray's warnings are lowered by
    ``init_ray``; the one that trials wait for resources stays (it explains a stuck search)."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ["RAY_COLOR_PREFIX"] = "0"
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _DropMessages) for f in tune_logger.filters):
        tune_logger.addFilter(_DropMessages("Trials did not complete"))
    logging.getLogger("ray.tune.execution.insufficient_resources_manager").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    _drop_raylet_notes()
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:  # pragma: no cover - optuna is a dependency of the search
        pass
