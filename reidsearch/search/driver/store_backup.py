"""Backs up the head's MLflow store to the bucket as a search goes (``cluster.tracking_store``):
after every trial that ends and when the search ends, so that ``ray down`` loses at most what
the last few seconds wrote.

The copy runs in one background thread, never in Tune's event loop (which waits on nothing of
storage per event): a request while a copy runs asks for one more copy after it, however many
trials end meanwhile. The search's end waits for its last copy (bounded), and so does the exit
of a driver interrupted before Tune could end the search. A copy that fails prints one warning
line; the search goes on.
"""

from __future__ import annotations

import atexit
import sys
import threading
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from reidsearch.errors import first_line
from reidsearch.redact import mask_secrets
from reidsearch.search.cluster.tracking_store import backup_store, settings_from_env

FINAL_WAIT_S = 300.0  # the search's end waits this long for its last copy at most


def store_backups() -> list[Callback]:
    """The backup callback when the head's set-up asked for it (``REIDSEARCH_MLFLOW_DB`` and
    ``REIDSEARCH_MLFLOW_BACKUP``), else none."""
    settings = settings_from_env()
    return [TrackingStoreBackup(*settings)] if settings else []


def _warn(line: str) -> None:
    print(f"reidsearch: warning: {mask_secrets(line)}", file=sys.stderr, flush=True)


class CoalescingWorker:
    """Runs ``job`` in a background thread on request; requests that arrive while it runs make
    one more run after it (the newest state is all that matters), never a queue."""

    def __init__(self, job: Callable[[], None]) -> None:
        self._job = job
        self._lock = threading.Lock()
        self._pending = False
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def request(self) -> None:
        """Ask for a run that starts after this call; returns at once."""
        with self._lock:
            self._pending = True
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="reidsearch-store-backup", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._thread = None
                    self._idle.set()
                    return
                self._pending = False
            self._job()

    def wait(self, timeout: float) -> bool:
        """Wait until every requested run has finished; False if ``timeout`` passed first."""
        return self._idle.wait(timeout)


class TrackingStoreBackup(Callback):
    """Tune callback: copies the tracking store ``db`` to ``to`` off the event loop."""

    def __init__(
        self,
        db: str,
        to: str,
        *,
        backup: Callable[[str, str], Any] = backup_store,
        final_wait_s: float = FINAL_WAIT_S,
    ) -> None:
        self.db, self.to = db, to
        self.backup = backup
        self.final_wait_s = final_wait_s
        self._worker: CoalescingWorker | None = None
        self._last_warning: str | None = None
        self._armed = False  # an exit hook waits for the last copy

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the search (tuner.pkl): no thread, lock or hook.
        state = self.__dict__.copy()
        state.update(_worker=None, _last_warning=None, _armed=False)
        return state

    def setup(self, **info: Any) -> None:
        # A resumed search backs up the store this machine's set-up names now.
        self.db, self.to = settings_from_env() or (self.db, self.to)
        if not self._armed:
            atexit.register(self._at_exit)
            self._armed = True

    def _copy(self) -> None:
        try:
            self.backup(self.db, self.to)
        except Exception as exc:  # noqa: BLE001 - any failure: warn, the search goes on
            why = first_line(exc)
            line = f"MLflow store backup to {self.to} failed ({why}); the search goes on"
            if line != self._last_warning:  # the same failure after every trial: once
                _warn(line)
            self._last_warning = line
        else:
            self._last_warning = None

    def request_backup(self) -> CoalescingWorker:
        """Copy the store soon, in the background (what every trial's end does)."""
        if self._worker is None:
            self._worker = CoalescingWorker(self._copy)
        self._worker.request()
        return self._worker

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.request_backup()  # completed, or stopped early by the scheduler

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.request_backup()

    def finish(self, timeout: float) -> bool:
        """One last copy, after everything written so far; wait up to ``timeout`` for it."""
        if self.request_backup().wait(timeout):
            return True
        _warn(
            f"MLflow store backup to {self.to} still running after {timeout:.0f} s; "
            "the copy there may miss the last trials"
        )
        return False

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Also after Ctrl-C: Tune stops the trials, saves and ends the search here.
        if self._armed:
            atexit.unregister(self._at_exit)
            self._armed = False
        if self.finish(self.final_wait_s) and self._last_warning is None:
            print(f"reidsearch: MLflow store backed up to {mask_secrets(self.to)}", flush=True)

    def _at_exit(self) -> None:
        """The driver exits without the search's end (a second Ctrl-C, an error in Tune).

        Registered in ``setup``, before the tracker's background writer starts (at the first
        trial), so it runs after that writer's own exit hook has flushed the last writes (exit
        hooks run last registered first). The copy runs here: no new thread starts at exit."""
        print(f"reidsearch: backing up the MLflow store to {mask_secrets(self.to)}", flush=True)
        if self._worker is not None and not self._worker.wait(self.final_wait_s):
            return  # a copy still hangs: no second one beside it
        self._copy()
