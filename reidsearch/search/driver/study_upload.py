"""Keeps the bucket's copy of a search's study journal current (``results.study``): after
every trial that ends and when the search ends, so that ``--resume`` and ``reidsearch
dashboard`` on another machine find the study as far as the driver got."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from reidsearch.search.results.study import upload_journal


class StudyUpload(Callback):
    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        upload_journal(self.experiment_dir)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        upload_journal(self.experiment_dir)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        upload_journal(self.experiment_dir)
