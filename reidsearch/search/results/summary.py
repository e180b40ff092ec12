"""What the parent run of a finished search records: the trials table (``leaderboard.json``),
the best trial and the analyses. Written once at the end (again after a resumed search ends:
files are replaced)."""

from __future__ import annotations

import json
from typing import Any

from reidsearch.engine.scoring import SCORE_KEY
from reidsearch.search.keys import BEST_FILE, BEST_TRIAL_TAG, FINISHED_STATUS
from reidsearch.search.results.analysis import leaderboard_rows, log_search_analysis
from reidsearch.search.space.params import ParamSpec


def log_search_summary(
    client: Any,
    parent_run_id: str,
    trials: dict[str, dict[str, Any]],
    params: list[ParamSpec],
    mode: str,
    full_epochs: int,
) -> None:
    """``trials`` is the tracker's state per trial id (status, score, epochs, searched)."""
    rows = leaderboard_rows(trials, mode, full_epochs)  # finished first: only they can be best
    best = next(
        (r for r in rows if r["score"] is not None and r["status"] == FINISHED_STATUS), None
    )
    if best is not None:
        client.log_metric(parent_run_id, SCORE_KEY, best["score"])
        client.set_tag(parent_run_id, BEST_TRIAL_TAG, best["trial_id"])
        client.log_text(parent_run_id, json.dumps(best, indent=1), BEST_FILE)
    log_search_analysis(  # the table and the analyses; never raises
        client, parent_run_id, trials, params, mode, full_epochs
    )
