"""The search end to end: real local Ray Tune + Optuna + ASHA, a real MLflow store.

Trials train in their Tune process (``runner: trial_process``, seconds to start) unless a test
is about Ray Train's own behaviour (the diverged-trial tests: one attempt, resume skips it);
Ray Train trials are also covered by test_ray_train, the drills and the cluster tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from tests.conftest import tiny_config_dict  # noqa: E402

RAY_TRAIN = {"workers": 1, "cpus_per_worker": 1, "runner": "ray_train"}


def _write_space(path: Path, **fields) -> Path:
    fixed = tiny_config_dict(epochs=2)
    space = {
        "name": path.stem,
        "fixed": fixed,
        "resources": {"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
        "max_concurrent": 2,
        "seed": 0,
        "storage_path": str(path.parent / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{path.parent / 'mlflow.db'}"},
    }
    space.update(fields)
    path.write_text(yaml.safe_dump(space))
    return path


def _trial_runs(uri: str, experiment: str):
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("reidsearch.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("reidsearch.kind") == "trial"]
    return client, parents, children


def test_optuna_search_logs_parent_and_child_runs_to_mlflow(search_ray, tmp_path):
    import reidsearch

    space_file = _write_space(
        tmp_path / "e2e.yaml",
        trials=3,
        search={
            "model.lam": {"type": "uniform", "low": 0.5, "high": 10.0},
            "model.head": {"type": "choice", "values": ["latf", "latfpp"]},
        },
        points_to_evaluate=[{"model.lam": 8.0, "model.head": "latf"}],
        fixed=tiny_config_dict(epochs=2, **{"eval.baseline": True}),
        scheduler={"type": "none"},
    )
    plan, results = reidsearch.run_search(reidsearch.load_space(space_file), verbose=0)
    assert len(results) == 3 and not results.errors
    client, parents, children = _trial_runs(plan.tracking_uri, "e2e")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    trial_ids = {c.data.tags["reidsearch.trial_id"] for c in children}
    assert parent.data.tags.get("best_trial") in trial_ids
    configs = {Path(r.path).name: r.config for r in results}
    assert {"model.lam": 8.0, "model.head": "latf"} in configs.values()  # the enqueued point
    for child in children:
        config = configs[child.data.tags["reidsearch.trial_id"]]
        # The run name reads: head, searched values, then the trial id.
        assert child.info.run_name.startswith(f"{config['model.head']} lam=")
        assert child.info.run_name.endswith(f" · {child.data.tags['reidsearch.trial_id']}")
        # Params are exactly what Optuna suggested, and the resolved config agrees.
        assert float(child.data.params["searched.model.lam"]) == pytest.approx(config["model.lam"])
        assert child.data.params["model.head"] == config["model.head"]
        assert child.data.tags["head"] == config["model.head"]
        history = client.get_metric_history(child.info.run_id, "mAP")
        assert [m.step for m in history] == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "pictures")}
        assert "pictures/cmc.png" in artifacts
        assert any(a.startswith("pictures/ranked_list_") for a in artifacts)
        config_artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "config")}
        assert "config/resolved_config.json" in config_artifacts
        assert child.info.status == "FINISHED"
    table_file = mlflow.artifacts.download_artifacts(  # the parent run's table of trials
        run_id=parent.info.run_id,
        artifact_path="leaderboard.json",
        dst_path=str(tmp_path),
        tracking_uri=plan.tracking_uri,
    )
    table = json.loads(Path(table_file).read_text())
    summary = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len(summary) == 3 and summary[0]["score"] == max(row["score"] for row in summary)

    from reidsearch.search.results.leaderboard import format_leaderboard

    for child in children:  # the untrained model was scored once, before training
        assert 0 < child.data.metrics["untrained_mAP"] < 1
    board = format_leaderboard(reidsearch.leaderboard(plan.tracking_uri, "e2e", top=5))
    assert "untrained model" in board and board.count("finished") == 3

    # --resume of the finished search re-runs nothing and adds no MLflow runs.
    again, resumed = reidsearch.run_search(
        reidsearch.load_space(space_file), resume=True, verbose=0
    )
    assert again.experiment_dir == plan.experiment_dir
    assert len(resumed) == 3 and not resumed.errors
    _, parents_after, children_after = _trial_runs(plan.tracking_uri, "e2e")
    assert [p.info.run_id for p in parents_after] == [parent.info.run_id]
    assert sorted(c.info.run_id for c in children_after) == sorted(c.info.run_id for c in children)
    for child in children_after:
        history = client.get_metric_history(child.info.run_id, "mAP")
        assert [m.step for m in history] == [1, 2]  # no duplicated epochs


def test_asha_stops_a_bad_trial_early(search_ray, tmp_path):
    import reidsearch

    # Grid order puts the two learning configurations first; the two that cannot learn
    # (a vanishing learning rate) reach the first rung later and are cut there.
    space_file = _write_space(
        tmp_path / "asha.yaml",
        searcher="grid",
        max_concurrent=2,
        fixed=tiny_config_dict(epochs=4),
        search={"optim.lr": {"type": "choice", "values": [3e-3, 1e-3, 1e-9, 1e-10]}},
        objective={"metric": "loss", "mode": "min"},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    plan, results = reidsearch.run_search(reidsearch.load_space(space_file), verbose=0)
    epochs = {r.config["grid_point"]["optim.lr"]: r.metrics["epoch"] for r in results}
    assert epochs[3e-3] == 4 or epochs[1e-3] == 4
    assert min(epochs[1e-9], epochs[1e-10]) < 4, epochs
    _, _, children = _trial_runs(plan.tracking_uri, "asha")
    assert any(c.data.tags.get("stopped_early") == "True" for c in children)
    from reidsearch.search.results.leaderboard import format_leaderboard

    board = reidsearch.leaderboard(plan.tracking_uri, "asha", top=10)
    assert len(board.rows) == 4 and "stopped" in format_leaderboard(board)
    scores = [row["score"] for row in board.rows]
    assert scores == sorted(scores)  # a loss objective: lowest first


def test_prune_aware_searcher_tells_optuna_pruned_for_early_stopped_trials():
    import optuna

    from reidsearch.internals.ray_internals import optuna_search_study
    from reidsearch.search.driver.searcher import PruneAwareOptunaSearch

    def space(trial):
        trial.suggest_float("x", 0, 1)

    searcher = PruneAwareOptunaSearch(
        space=space,
        metric="mAP",
        mode="max",
        seed=0,
        max_epochs=4,
    )
    for trial_id, last_epoch in (("a", 4), ("b", 1)):
        searcher.suggest(trial_id)
        for epoch in range(1, last_epoch + 1):
            searcher.on_trial_result(
                trial_id, {"mAP": 0.1 * epoch, "training_iteration": epoch, "epoch": epoch}
            )
        searcher.on_trial_complete(trial_id, {"mAP": 0.1 * last_epoch, "epoch": last_epoch})
    searcher.suggest("c")
    searcher.on_trial_result("c", {"diverged": 1.0})  # no score in it: ignored, no KeyError
    searcher.on_trial_complete("c", None, error=True)
    states = [t.state for t in optuna_search_study(searcher).trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    ]


@pytest.mark.fault("fault")
def test_a_diverging_trial_fails_once_and_the_run_exits_non_zero(search_ray, tmp_path, capsys):
    from reidsearch.cli import main

    space_file = _write_space(
        tmp_path / "nan.yaml",
        searcher="grid",
        scheduler={"type": "none"},
        fixed=tiny_config_dict(epochs=2, **{"optim.name": "sgd"}),
        search={"optim.lr": {"type": "choice", "values": [1e12]}},
        max_failures=2,
        resources=RAY_TRAIN,
    )
    assert main(["run", str(space_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "all 1 trials failed" in err[-1] and "NaN or infinite" in err[-1]
    _, _, children = _trial_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "nan")
    assert [c.info.status for c in children] == ["FAILED"]
    # Not retried: the trial's Ray Train run made a single attempt.
    train_runs = list((tmp_path / "runs").glob("nan-*/train/train_*"))
    assert len(train_runs) == 1


@pytest.mark.fault("fault")
def test_a_diverged_trial_fails_with_its_reason_the_search_goes_on_and_resume_skips_it(
    search_ray, tmp_path, capsys, monkeypatch
):
    from reidsearch.cli import main

    # Tune saves its state at every step: a save between the finished trial's last report and
    # its return must not lose its `done` (`KeepDoneInState`), else the resume says interrupted.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")

    space_file = _write_space(
        tmp_path / "halfnan.yaml",
        searcher="grid",
        max_concurrent=1,
        scheduler={"type": "none"},
        fixed=tiny_config_dict(epochs=2, **{"optim.name": "sgd"}),
        search={"optim.lr": {"type": "choice", "values": [1e12, 1e-3]}},
        resources=RAY_TRAIN,
    )
    assert main(["run", str(space_file)]) == 0  # one trial diverged: the other one finished
    assert "NaN or infinite" in capsys.readouterr().out  # the failure line gives its reason
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, _, children = _trial_runs(uri, "halfnan")
    runs = {c.data.params["optim.lr"]: c for c in children}
    diverged, learned = runs[str(1e12)], runs[str(1e-3)]
    assert diverged.info.status == "FAILED" and learned.info.status == "FINISHED"
    assert "NaN or infinite" in diverged.data.tags["reidsearch.failure"]
    outcomes = {
        json.loads(path.read_text())["status"]: path.parent
        for path in (tmp_path / "runs").glob("halfnan-*/train/train_*/outcome.json")
    }
    assert set(outcomes) == {"diverged", "finished"}

    def files(folder: Path) -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}

    before_resume = {status: files(folder) for status, folder in outcomes.items()}

    # --resume re-runs failed trials, but not one that diverged: it would diverge again.
    assert main(["run", str(space_file), "--resume"]) == 0
    _, _, after = _trial_runs(uri, "halfnan")
    assert sorted(c.info.run_id for c in after) == sorted(c.info.run_id for c in children)
    for before in children:
        now = client.get_run(before.info.run_id)
        assert (now.info.status, now.info.end_time) == (before.info.status, before.info.end_time)
    # Neither Train run was touched: no new attempt, checkpoint or outcome.
    assert {status: files(folder) for status, folder in outcomes.items()} == before_resume
    history = client.get_metric_history(learned.info.run_id, "epoch")
    assert [m.step for m in history] == [1, 2]
