"""Extending a search: ``reidsearch run SPACE --resume --trials N`` raises its total to N.

Tune restores a search's trial count from its pickled state and cannot add trials on restore
(ray-project/ray issues 18847, 20886, 30223). ``ExtendableSearch`` is Tune's own
``SearchGenerator`` that, when restored, reads the total the driver wrote into the search's
record (``search_record``) and keeps creating trials up to it. The searcher inside it is
restored as Tune restores it, so it continues from everything it was told; finished trials
stay finished.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import SearchGenerator

from reidsearch.internals.ray_internals import raised_search_total
from reidsearch.search.driver.search_record import recorded_trials


class ExtendableSearch(SearchGenerator):
    """``SearchGenerator`` whose restored total is the one in the search's record."""

    def __init__(self, searcher: Any, experiment_dir: str) -> None:
        super().__init__(searcher)
        self._reidsearch_dir = experiment_dir

    def set_state(self, state: dict[str, Any]) -> None:
        total = recorded_trials(self._reidsearch_dir)
        super().set_state(state if total is None else raised_search_total(state, total))
