"""Several objectives: the space's rules, the Pareto ranks (against their definition), and one
real multi-objective search (NSGA-II, accuracy against feature bytes) from Optuna to the board
and to ``export --best --pick``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import reidsearch
from reidsearch.errors import ConfigError
from reidsearch.search.results.pareto import dominates, front_ranks
from tests.conftest import tiny_space

TWO = [{"metric": "mAP"}, {"metric": "cost.feature_bytes"}]


def _space(folder: Path, **fields) -> Path:
    search = {
        "model.head": {"type": "choice", "values": ["latf", "latfpp"]},
        "model.lam": {"type": "uniform", "low": 0.5, "high": 10.0},
    }
    fields = {"objective": TWO, "searcher": "nsga2", "trials": 4, "scheduler": "none",
              "search": search, **fields}
    return tiny_space(folder, "front", **fields)


def test_front_ranks_meet_their_definition():
    rng = random.Random(0)
    for _ in range(20):
        modes = [rng.choice(["max", "min"]) for _ in range(rng.randint(2, 3))]
        points = [[rng.randint(0, 4) for _ in modes] for _ in range(rng.randint(1, 12))]
        ranks = front_ranks(points, modes)
        for i, rank in enumerate(ranks):
            same = [j for j, r in enumerate(ranks) if r == rank]
            assert not any(dominates(points[j], points[i], modes) for j in same)
            if rank > 1:  # something on the front before it dominates it
                before = [j for j, r in enumerate(ranks) if r == rank - 1]
                assert any(dominates(points[j], points[i], modes) for j in before)
    assert front_ranks([[1, 5], [2, 6], [0, 4], [1, 6]], ["max", "min"]) == [1, 1, 1, 2]
    assert front_ranks([[1, 5], [2, 4], [1, 4], [0, 9]], ["max", "min"]) == [3, 1, 2, 4]


def test_hypervolume_counts_the_dominated_area():
    from reidsearch.search.results.front_summary import hypervolume

    rng = random.Random(2)
    for _ in range(30):
        points = [[rng.randint(0, 9), rng.randint(0, 9)] for _ in range(rng.randint(1, 6))]
        # Independently: the unit cells of [0, 10)^2 some point is at or below in both.
        cells = sum(
            any(x <= a and y <= b for x, y in points) for a in range(10) for b in range(10)
        )
        assert hypervolume(points, ["min", "min"], [10, 10]) == cells
        flipped = [[-x, y] for x, y in points]  # the first objective maximised
        assert hypervolume(flipped, ["max", "min"], [-10, 10]) == cells


@pytest.mark.fault("bad_input")
@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"objective": [{"metric": "cost.latency_ms"}, {"metric": "mAP"}]}, "first objective"),
        ({"searcher": "cmaes", "search": {}}, "searcher: cmaes searches one objective"),
        ({"scheduler": "hyperband"}, "scheduler: hyperband compares trials on one score"),
        ({"objective": [{"metric": "mAP"}, {"metric": "mAP"}]}, "mAP is listed twice"),
        ({"objective": [{"metric": "mAP"}, {"metric": "rank1", "reduce": "last"}]}, "reduce"),
        ({"constraints": ["latency < 3"]}, "'latency' is not a metric"),
        ({"constraints": ["cost.latency_ms == 3"]}, "is not '<metric> <op> <number>'"),
    ],
)
def test_what_several_objectives_cannot_do_is_one_line(tmp_path, fields, words):
    path = _space(tmp_path, **fields)
    with pytest.raises(ConfigError) as err:
        reidsearch.load_space(path)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(path))


def test_a_multi_objective_search_from_optuna_to_the_board_and_the_pick(
    search_ray, tmp_path, capsys
):
    import optuna

    from reidsearch.cli import main
    from reidsearch.search.keys import STUDY_FILE
    from reidsearch.search.results.state_files import state_path

    path = _space(tmp_path, constraints=["cost.latency_ms <= 100000"])
    space = reidsearch.load_space(path)
    assert "a Pareto front" in space.describe()
    plan, results = reidsearch.run_search(path)
    assert results.num_errors == 0
    board = reidsearch.leaderboard(plan.tracking_uri, search=Path(plan.experiment_dir).name)
    rows = board.rows
    assert len(rows) == 4 and all(r["front"] is not None and not r["breaks"] for r in rows)
    # What Optuna was told is what the board shows: [score, feature bytes] per trial.
    journal = state_path(plan.experiment_dir, STUDY_FILE)
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(journal)
    )
    study = optuna.load_study(study_name=Path(plan.experiment_dir).name, storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    told = [v for values in sorted(tuple(t.values) for t in study.trials) for v in values]
    shown = [v for values in sorted(tuple(r["values"]) for r in rows) for v in values]
    assert told == pytest.approx(shown)
    assert all(t.user_attrs["reidsearch.constraints"][0] <= 0 for t in study.trials)
    # The board's front ranks are the front of those values; front 1 first.
    assert [r["front"] for r in rows] == sorted(r["front"] for r in rows)
    assert [r["front"] for r in rows] == [
        sorted(front_ranks([r["values"] for r in rows], ["max", "min"]))[i] for i in range(4)
    ]
    text = reidsearch.search.results.leaderboard.format_leaderboard(board)
    assert "front: Pareto rank over mAP (max), cost.feature_bytes (min)" in text
    # The parent run: each trial's front as a metric (the MLflow view sorts by it), the
    # hypervolume after each trial, Optuna's Pareto-front picture.
    from mlflow.tracking import MlflowClient

    from reidsearch.search.results.ui_view import search_view

    client = MlflowClient(tracking_uri=plan.tracking_uri)
    for row in rows:
        assert client.get_run(row["run_id"]).data.metrics["front"] == row["front"]
    parent = client.get_run(client.get_run(rows[0]["run_id"]).data.tags["mlflow.parentRunId"])
    history = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert all(a.value <= b.value for a, b in zip(history, history[1:], strict=False))
    pictures = {a.path for a in client.list_artifacts(parent.info.run_id, "front")}
    assert pictures == {"front/pareto_front.png"}
    view = search_view(plan.tracking_uri, search=Path(plan.experiment_dir).name)
    assert view.state["orderByKey"] == "metrics.`front`" and view.state["orderByAsc"]

    # A model from the front: the best score among the trials with small features.
    small = min(r["cost"]["cost.feature_bytes"] for r in rows)
    meets = [r for r in rows if r["cost"]["cost.feature_bytes"] <= small]
    best = max(meets, key=lambda r: r["score"])
    out = tmp_path / "picked.onnx"
    args = ["export", "--best", "--tracking-uri", plan.tracking_uri, "--out", str(out)]
    capsys.readouterr()
    assert main([*args, "--pick", f"cost.feature_bytes <= {small:g}"]) == 0
    source = json.loads(out.with_suffix(".json").read_text())["source"]
    assert source["mlflow_run_id"] == best["run_id"]
    assert main([*args, "--pick", "cost.feature_bytes <= 1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pick: no finished trial has cost.feature_bytes <= 1" in err[0]
