"""What the parent run of a finished search records: the trials table, the best trial, the
analyses. Written once at the end (again after a resumed search ends: files are replaced)."""

from __future__ import annotations

import json
from typing import Any

from reidsearch.engine.scoring import SCORE_EPOCH_KEY, SCORE_KEY
from reidsearch.search.analysis import log_search_analysis
from reidsearch.search.params import ParamSpec


def log_search_summary(
    client: Any,
    parent_run_id: str,
    trials: dict[str, dict[str, Any]],
    params: list[ParamSpec],
    mode: str,
    full_epochs: int,
) -> None:
    """``trials`` is the tracker's state per trial id (status, score, epochs, searched)."""
    rows = [
        {
            "trial_id": trial_id,
            "status": entry.get("status", "UNKNOWN"),
            SCORE_KEY: entry.get("score"),
            SCORE_EPOCH_KEY: entry.get("score_epoch"),
            "epochs": entry["last_epoch"],
            **{f"param.{k}": v for k, v in entry["searched"].items()},
        }
        for trial_id, entry in trials.items()
    ]
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (r[SCORE_KEY] is None, sign * (r[SCORE_KEY] or 0.0)))
    client.log_text(parent_run_id, json.dumps(rows, indent=1), "summary/trials.json")
    best = next((r for r in rows if r[SCORE_KEY] is not None), None)
    if best is not None:
        client.log_metric(parent_run_id, SCORE_KEY, best[SCORE_KEY])
        client.set_tag(parent_run_id, "best_trial", best["trial_id"])
        client.log_text(parent_run_id, json.dumps(best, indent=1), "summary/best.json")
    log_search_analysis(  # never raises: an analysis must not fail the search
        client, parent_run_id, trials, params, mode, full_epochs
    )
