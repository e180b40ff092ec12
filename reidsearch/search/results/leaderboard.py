"""The leaderboard: the trials of one search (by default the latest), read back from MLflow and
sorted by the search's own objective, with the score's interval and the rows that cannot be
told apart from the best."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from reidsearch.config import ObjectiveConfig
from reidsearch.engine.scoring import SCORE_EPOCH_KEY, SCORE_KEY, interval_keys, objective_key
from reidsearch.search.keys import (
    CONSTRAINTS_TAG,
    FINISHED_STATUS,
    KIND_TAG,
    OBJECTIVE_TAG,
    OBJECTIVES_TAG,
    PARENT_TAG,
    SCORED_PREFIX,
    SEARCHED_PREFIX,
    STOPPED_EARLY_TAG,
    TRIAL_TAG,
)
from reidsearch.search.results.pareto import metric_value, order_front
from reidsearch.search.results.searches import find_searches, search_label
from reidsearch.search.results.store import existing_store
from reidsearch.search.rules import board_rank
from reidsearch.search.space.rules_of_metrics import parse_rule


@dataclass
class Leaderboard:
    """Rows of trials, best first, and what they were ranked by."""

    experiment: str
    searches: list[str]  # the searches shown (their folder names), newest first
    objective: ObjectiveConfig
    rows: list[dict[str, Any]] = field(default_factory=list)
    untrained: dict[str, float] = field(default_factory=dict)  # mean untrained mAP per search
    objectives: list[ObjectiveConfig] = field(default_factory=list)  # several: a front
    constraints: list[str] = field(default_factory=list)

    def to_frame(self) -> Any:
        """The rows as a pandas DataFrame, one row per trial, best first (index: rank from 1),
        for a notebook: ``scored`` becomes ``scored_<metric>`` columns and ``params``
        ``searched.<key>`` columns (MLflow's names), the searched values as numbers where they
        are numbers (MLflow keeps params as text)."""
        import pandas as pd

        flat = [
            {
                **{k: v for k, v in row.items() if k not in ("scored", "params")},
                **{f"{SCORED_PREFIX}{k}": v for k, v in row["scored"].items()},
                **{f"{SEARCHED_PREFIX}{k}": _number(v) for k, v in row["params"].items()},
            }
            for row in self.rows
        ]
        frame = pd.DataFrame(flat)
        frame.index = pd.RangeIndex(1, len(flat) + 1, name="rank")
        return frame


def _row(run: Any, label: str) -> dict[str, Any]:
    metrics = dict(run.data.metrics)
    scored = {
        key[len(SCORED_PREFIX) :]: value
        for key, value in metrics.items()
        if key.startswith(SCORED_PREFIX)
    }
    return {
        "run": run.info.run_name,
        "trial": run.data.tags.get(TRIAL_TAG, run.info.run_name),  # the Tune trial id
        "run_id": run.info.run_id,
        "status": run.info.status,
        "stopped_early": run.data.tags.get(STOPPED_EARLY_TAG) == "True",
        "search": label,
        "score": metrics.get(SCORE_KEY),
        "score_epoch": metrics.get(SCORE_EPOCH_KEY),
        "scored": scored,  # the metrics of the epoch the score comes from
        "cost": {k: v for k, v in metrics.items() if k.startswith("cost.")},
        "untrained_mAP": metrics.get("untrained_mAP"),
        "params": {
            k[len(SEARCHED_PREFIX) :]: v
            for k, v in run.data.params.items()
            if k.startswith(SEARCHED_PREFIX)
        },
    }


def _interval(row: dict[str, Any], objective: ObjectiveConfig) -> tuple[float, float] | None:
    low, high = (row["scored"].get(key) for key in interval_keys(objective.metric))
    return None if low is None or high is None else (low, high)


def mark_indistinguishable(rows: list[dict[str, Any]], objective: ObjectiveConfig) -> None:
    """``tied``: the row's 95% interval of the objective's metric overlaps the best finished
    row's, so the data cannot tell it apart from the best (the best row is marked too)."""
    best = next(
        (r for r in rows if r["score"] is not None and r["status"] == FINISHED_STATUS), None
    )
    best_interval = _interval(best, objective) if best else None
    for row in rows:
        interval = _interval(row, objective)
        row["tied"] = bool(
            best_interval
            and interval
            and interval[0] <= best_interval[1]
            and best_interval[0] <= interval[1]
        )


def order_rows(rows: list[dict[str, Any]], objective: ObjectiveConfig) -> None:
    """Sort in place by ``rules.board_rank`` (finished trials first: only they can be best;
    failed ones last, where their status marks them) and mark the rows tied with the best."""
    rows.sort(key=lambda r: (*board_rank(r["status"], r["score"], objective.mode), r["run"]))
    mark_indistinguishable(rows, objective)


def fetch_leaderboard(
    tracking_uri: str,
    experiment: str | None,
    *,
    search: str | None = None,
    all_searches: bool = False,
    top: int = 10,
) -> Leaderboard:
    """The trials of the newest search of ``experiment`` (default: the newest experiment), or of
    ``search`` (its folder name or parent run id), or of every search (``all_searches``),
    sorted by the objective of the newest search shown."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=existing_store(tracking_uri))
    found, shown = find_searches(client, tracking_uri, experiment, search, all_searches)
    objective = ObjectiveConfig()
    if shown and OBJECTIVE_TAG in shown[0].data.tags:
        objective = ObjectiveConfig.model_validate(json.loads(shown[0].data.tags[OBJECTIVE_TAG]))
    rows: list[dict[str, Any]] = []
    for parent in shown:
        trials = client.search_runs(
            [found.experiment_id],
            filter_string=(
                f"tags.`{KIND_TAG}` = 'trial' and tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
            ),
            max_results=50_000,
        )
        rows.extend(_row(run, search_label(parent)) for run in trials)
    tags = shown[0].data.tags if shown else {}
    objectives = [
        ObjectiveConfig.model_validate(o) for o in json.loads(tags.get(OBJECTIVES_TAG, "[]"))
    ]
    constraints = json.loads(tags.get(CONSTRAINTS_TAG, "[]"))
    order_rows(rows, objective)
    if len(objectives) > 1 or constraints:
        rules = [parse_rule(text, CONSTRAINTS_TAG) for text in constraints]
        order_front(rows, objectives or [objective], rules)
    untrained: dict[str, list[float]] = {}
    for row in rows:
        if row["untrained_mAP"] is not None:
            untrained.setdefault(row["search"], []).append(row["untrained_mAP"])
    return Leaderboard(
        experiment=found.name,
        searches=[search_label(p) for p in shown],
        objective=objective,
        rows=rows[:top],
        untrained={label: sum(v) / len(v) for label, v in untrained.items()},
        objectives=objectives,
        constraints=constraints,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _score_text(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if metric == "loss" else f"{100 * value:.1f}"


def format_leaderboard(board: Leaderboard) -> str:
    """A plain-text table: the objective first, then the score epoch's metrics and the
    searched values; ``~`` marks rows whose interval overlaps the best row's."""
    objective, rows = board.objective, board.rows
    where = f"experiment {board.experiment!r}, search {', '.join(board.searches) or '-'}"
    if not rows:
        return f"Leaderboard of {where}: no trials"
    keys = sorted({k for row in rows for k in row["params"]})
    several = len(board.searches) > 1
    bound = " lower bound" if objective.bound and objective.mode == "max" else ""
    bound = " upper bound" if objective.bound and objective.mode == "min" else bound
    score_name = f"{objective.metric}{bound} ({objective.reduce})"
    others = board.objectives[1:]
    front = bool(others or board.constraints)
    header = ["#", *(["front"] if front else []), score_name, "95% CI", "", *_names(others)]
    header += ["trial", "status", "epoch"]
    header += ["mAP", "rank-1", "rank-5", "mINP", *(["search"] if several else []), *keys]
    table = [header]
    for n, row in enumerate(rows, 1):
        m = row["scored"]
        interval = _interval(row, objective)
        table.append(
            [
                str(n),
                *([_front_text(row)] if front else []),
                _score_text(row["score"], objective.metric),
                f"{_pct(interval[0])}-{_pct(interval[1])}" if interval else "-",
                "~" if row["tied"] else "",
                *[_value_text(row, o) for o in others],
                row.get("trial") or row["run"],  # short: the run name also lists the values
                _status(row),
                "-" if row["score_epoch"] is None else f"{row['score_epoch']:.0f}",
                _pct(m.get("mAP")),
                _pct(m.get("rank1")),
                _pct(m.get("rank5")),
                _pct(m.get("mINP")),
                *([row["search"]] if several else []),
                *[_short(row["params"].get(k, "-")) for k in keys],
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        f"Leaderboard of {where}: sorted by {score_name}, {objective.mode}imised; every row "
        "shows the epoch its score comes from (in %); ~ = its 95% interval overlaps the best's"
    ]
    if front:
        lines.append(front_legend(board))
    for r in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for label, value in board.untrained.items():
        lines.append(
            f"untrained model (same data, random init): mAP {_pct(value)}% "
            f"(mean over the trials of {label})"
        )
    return "\n".join(lines)


def _status(row: dict[str, Any]) -> str:
    """``stopped`` only for trials ASHA ended early: a failed trial also ran short, but failed."""
    if row["status"] == "FINISHED" and row["stopped_early"]:
        return "stopped"
    return row["status"].lower()


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}"


def _number(value: Any) -> Any:
    """A param's text as an int or float where it is one (``"8.0"`` -> 8.0), else as it is."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def front_legend(board: Leaderboard) -> str:
    """What the front column says, and the constraints."""
    names = ", ".join(f"{o.metric} ({o.mode})" for o in board.objectives) or board.objective.metric
    text = f"front: Pareto rank over {names} (1 = no trial is better in all)"
    if board.constraints:
        text += f"; ! = breaks a constraint ({'; '.join(board.constraints)}), ranked after"
    return text


def _names(objectives: list[ObjectiveConfig]) -> list[str]:
    return [f"{o.metric} ({o.mode})" for o in objectives]


def _front_text(row: dict[str, Any]) -> str:
    if row.get("breaks"):
        return "!"
    return "-" if row.get("front") is None else str(row["front"])


def _value_text(row: dict[str, Any], objective: ObjectiveConfig) -> str:
    value = metric_value(row, objective_key(objective))
    if value is None:
        return "-"
    return f"{value:.4g}" if objective.is_cost or objective.metric == "loss" else _pct(value)
