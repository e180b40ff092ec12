"""Keeps the bucket's copy of a search's study journal current (``results.study``): after
every trial that ends and when the search ends, so that ``--resume`` and ``reidsearch
dashboard`` on another machine find the study as far as the driver got.

The copies after trials run in a background thread (``background.py``), never in Tune's event
loop: one queued copy stands for every trial that ends before it starts (it copies the journal
as it is then; Optuna reads a journal whose last line is cut short as if that line were not
there yet). The search's end waits for them and copies once more.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from reidsearch.search.driver.background import BackgroundWriter
from reidsearch.search.results.study import upload_journal


class StudyUpload(Callback):
    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir
        self._writer: BackgroundWriter | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_writer"] = None  # Tune pickles its callbacks: no thread, queue or lock
        return state

    def _upload_soon(self) -> None:
        if getattr(self, "_writer", None) is None:  # (pickled before it existed)
            self._writer = BackgroundWriter("reidsearch-study-upload")
        self._writer.submit(upload_journal, self.experiment_dir, key="journal")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._upload_soon()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._upload_soon()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if getattr(self, "_writer", None) is not None:
            self._writer.close()
        upload_journal(self.experiment_dir)
