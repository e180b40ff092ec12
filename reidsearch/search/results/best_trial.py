"""The best trial of a search and its kept checkpoint, for ``reidsearch export --best``.

The tracker tags each trial run with the location of the checkpoint its score comes from
(``reidsearch.checkpoint``: a local path or an ``s3://`` / ``gs://`` URI in the Train storage),
so that the best model can be found from MLflow alone, on any machine that reaches the storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reidsearch.engine.checkpoint import CHECKPOINT_FILE
from reidsearch.errors import ReidSearchError
from reidsearch.search.keys import CHECKPOINT_TAG, FINISHED_STATUS
from reidsearch.search.results.leaderboard import fetch_leaderboard
from reidsearch.search.results.pareto import metric_value
from reidsearch.search.rules import best_first
from reidsearch.search.space.rules_of_metrics import parse_rule
from reidsearch.storage import is_uri, join, local_copy


def checkpoint_location(train_storage: str, checkpoint_path: str) -> str:
    """A location that finds the checkpoint again from another process or machine.

    Ray reports a checkpoint's path inside its storage filesystem: ``bucket/prefix/...`` for
    S3, without the scheme or the ``?query`` (e.g. an S3-compatible ``endpoint_override``), so
    the Train storage's scheme is put back in front and its query at the end, where
    ``storage.join`` keeps it.
    """
    if is_uri(checkpoint_path) or not is_uri(train_storage):
        return checkpoint_path
    base, question, query = train_storage.partition("?")
    return f"{base.split('://', 1)[0]}://{checkpoint_path}{question}{query}"


@dataclass
class BestTrial:
    run_id: str
    run_name: str
    search: str
    score: float
    score_epoch: float | None
    metric: str
    checkpoint: str  # the tagged checkpoint folder (path or URI)

    def source(self) -> dict[str, object]:
        """Provenance for the exported model's JSON."""
        return {
            "mlflow_run_id": self.run_id,
            "trial": self.run_name,
            "search": self.search,
            "score": self.score,
            "score_epoch": self.score_epoch,
            "metric": self.metric,
            "checkpoint_folder": self.checkpoint,
        }


def best_trial(
    tracking_uri: str, experiment: str | None, search: str | None, pick: str | None = None
) -> BestTrial:
    """The search's best finished trial by its score (the first objective), among the trials
    that meet ``pick`` (e.g. ``"cost.feature_bytes <= 4096"``) when given, and its checkpoint."""
    from mlflow.tracking import MlflowClient

    rule = parse_rule(pick, "--pick") if pick is not None else None
    board = fetch_leaderboard(tracking_uri, experiment, search=search, top=1_000_000)
    where = f"experiment {board.experiment!r}, search {', '.join(board.searches) or '-'}"
    scored = [r for r in board.rows if r["score"] is not None and r["status"] == FINISHED_STATUS]
    if not scored:
        raise ReidSearchError(f"{tracking_uri}: {where}: no finished trial has a score yet")
    if rule is not None:
        scored = [r for r in scored if rule.holds(metric_value(r, rule.metric))]
        if not scored:
            raise ReidSearchError(f"{where}: --pick: no finished trial has {rule}")
    row = min(scored, key=lambda r: best_first(r["score"], str(board.objective.mode)))
    tags = MlflowClient(tracking_uri=tracking_uri).get_run(row["run_id"]).data.tags
    location = tags.get(CHECKPOINT_TAG)
    name = row.get("trial") or row["run"]  # the Tune trial id, as the leaderboard shows
    if not location:
        raise ReidSearchError(
            f"{where}: best trial {name} has no {CHECKPOINT_TAG} tag (the trial is still "
            "running, or the search ran before checkpoints were recorded)"
        )
    return BestTrial(
        run_id=row["run_id"],
        run_name=name,
        search=row["search"],
        score=float(row["score"]),
        score_epoch=row["score_epoch"],
        metric=board.objective.metric,
        checkpoint=location,
    )


def fetch_checkpoint_file(location: str) -> Path:
    """A local ``checkpoint.pt`` of a checkpoint folder: itself when local, else downloaded
    once into this machine's cache (through ``pyarrow.fs``, as Ray reads its storage)."""
    return local_copy(join(location, CHECKPOINT_FILE), "--best checkpoint")
