"""The score at its edges in real searches (Ray Tune, Optuna, MLflow): evaluation every second
epoch with and without ASHA, objectives that tie across epochs and trials, and ``--resume`` from
another working directory. Everywhere: the score, its epoch, the kept checkpoint, its pictures and
the exported model are one epoch's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from reidsearch.cli import main  # noqa: E402
from reidsearch.search.keys import CHECKPOINT_TAG  # noqa: E402
from tests.conftest import tiny_config_dict, tiny_space  # noqa: E402


def _space(folder: Path, name: str, fixed: dict, **fields) -> Path:
    fields.setdefault("mlflow", None)  # the store the test passes to run_search
    return tiny_space(folder, name, fixed=fixed, **fields)


def _run(path: Path, uri: str | None = None) -> tuple:
    import reidsearch

    plan, results = reidsearch.run_search(path, tracking_uri=uri, progress=False)
    assert results.num_errors == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=plan.tracking_uri)
    board = reidsearch.leaderboard(
        plan.tracking_uri, plan.experiment, search=Path(plan.experiment_dir).name, top=10
    )
    return plan, client, board


def _steps(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _check_kept_checkpoint(client, row: dict) -> Path:
    """The trial's checkpoint tag names an existing checkpoint of its score's epoch, and the
    MLflow pictures came from that checkpoint."""
    run = client.get_run(row["run_id"])
    kept = Path(run.data.tags[CHECKPOINT_TAG])
    epoch = int(row["score_epoch"])
    assert kept.name == f"epoch_{epoch:04d}", kept
    assert (kept / "checkpoint.pt").is_file()
    import torch

    state = torch.load(kept / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == epoch and state["scored_here"]
    pictures = {a.path for a in client.list_artifacts(row["run_id"], "pictures")}
    assert "pictures/cmc.png" in pictures
    # The trial's cost, logged once, at its score's epoch, as the checkpoint measured it.
    for key in ("cost.feature_bytes", "cost.latency_ms"):
        logged = [(m.step, m.value) for m in client.get_metric_history(row["run_id"], key)]
        assert logged == [(epoch, state["metrics"][key])], key
    return kept


@pytest.mark.parametrize("scheduler", ["none", "asha"])
def test_evaluation_every_second_epoch_finishes_and_logs_only_evaluated_epochs(
    search_ray, tmp_path, scheduler
):
    fixed = tiny_config_dict(epochs=4, **{"eval.period": 2})
    rungs = {"type": "asha", "grace_period": 2, "reduction_factor": 2}
    settings = {"scheduler": rungs if scheduler == "asha" else {"type": "none"}}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, client, board = _run(_space(tmp_path, "sparse", fixed, **settings), uri)
    assert len(board.rows) == 2
    for row in board.rows:
        run_id = row["run_id"]
        # Training metrics every epoch; retrieval metrics and the epoch's score only where
        # evaluated: epochs 2 and 4 (no zeros logged for 1 and 3).
        last = max(_steps(client, run_id, "loss"))
        assert set(_steps(client, run_id, "loss")) == set(range(1, last + 1))
        evaluated = {e for e in (2, 4) if e <= last}
        for key in ("mAP", "rank1", "epoch_score", "num_valid_queries"):
            assert set(_steps(client, run_id, key)) == evaluated, key
        assert row["score_epoch"] in evaluated
        _check_kept_checkpoint(client, row)


def test_tied_scores_keep_the_scores_epoch_and_export_best_exports_it(search_ray, tmp_path):
    # An lr too small to move the ranks: rank-10 ties across every epoch and both trials. The
    # scorer keeps the first of tied epochs; the kept checkpoint must be that one, not the last.
    fixed = tiny_config_dict(epochs=3, **{"optim.lr": 1e-9, "optim.warmup_epochs": 0})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = _space(tmp_path, "ties", fixed, objective={"metric": "rank10"})
    plan, client, board = _run(path, uri)
    tied = 0
    for row in board.rows:
        history = _steps(client, row["run_id"], "rank10")
        best = max(history.values())
        tied += sum(value == best for value in history.values()) > 1
        assert row["score_epoch"] == min(e for e, v in history.items() if v == best)
        _check_kept_checkpoint(client, row)
    assert tied == 2, "the objective did not tie: the test does not test ties"
    assert board.rows[0]["score"] == board.rows[1]["score"]  # across trials too

    out = tmp_path / "best.onnx"
    assert main(["export", "--best", "--tracking-uri", uri, "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    best = board.rows[0]
    assert card["source"]["mlflow_run_id"] == best["run_id"]
    assert card["source"]["epoch"] == best["score_epoch"]
    assert card["source"]["score"] == pytest.approx(best["score"])
    assert card["max_abs_diff"] <= 1e-4  # the ONNX model's features are the checkpoint's


def test_resume_from_another_folder_continues_in_the_searchs_own_store(
    search_ray, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir(), other.mkdir()
    path = _space(tmp_path, "moved", tiny_config_dict(epochs=1), trials=1)
    monkeypatch.chdir(first)  # the default store: ./mlflow.db, here
    plan, _, board = _run(path)
    assert plan.tracking_uri == f"sqlite:///{first.resolve()}/mlflow.db"
    capsys.readouterr()

    monkeypatch.chdir(other)
    assert main(["run", str(path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resuming in the search's own MLflow store {plan.tracking_uri}" in out
    assert board.rows[0]["trial"] in out  # the leaderboard, read from that store
    assert not (other / "mlflow.db").exists()

    elsewhere = f"sqlite:///{other}/elsewhere.db"
    for extra, says in (
        (["--tracking-uri", elsewhere], f"logs to the MLflow store {plan.tracking_uri}, not"),
        (["--data", str(other)], "this search trains on synthetic-latfpp, not"),
    ):
        assert main(["run", str(path), "--resume", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (other / "elsewhere.db").exists()
