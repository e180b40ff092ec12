"""The parent run's "what mattered": the leaderboard table and Optuna's analyses, rebuilt from
the tracker's trial records and read back from a real (sqlite) MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("optuna")

from PIL import Image  # noqa: E402

from reidsearch.search.results.analysis import build_study, log_search_analysis  # noqa: E402
from reidsearch.search.space.params import Condition, ParamSpec  # noqa: E402

PARAMS = [
    ParamSpec("model.head", "choice", values=("latf", "latfpp")),
    ParamSpec("model.lam", "uniform", low=0.5, high=10.0),
    ParamSpec("loss.triplet_weight", "choice", values=(0.0, 1.0)),
    ParamSpec(
        "loss.triplet_margin",
        "uniform",
        low=0.1,
        high=0.6,
        when=Condition("loss.triplet_weight", ">", 0),
    ),
    ParamSpec("optim.lr", "loguniform", low=1e-5, high=1e-3, log=True),
]
FULL_EPOCHS = 10


def _trials(n: int = 8) -> dict[str, dict]:
    """``n`` finished trials whose score follows lam (strong) and not lr (scrambled), one of
    them stopped early, plus a failed trial without a score."""
    trials = {}
    for i in range(n):
        lam = 0.5 + 9.5 * i / max(n - 1, 1)
        searched = {
            "model.head": ("latf", "latfpp")[i % 2],
            "model.lam": lam,
            "loss.triplet_weight": (0.0, 1.0)[(i // 2) % 2],
            "optim.lr": 10 ** (-5 + 2 * ((i * 5) % n) / max(n - 1, 1)),
        }
        if searched["loss.triplet_weight"] > 0:
            searched["loss.triplet_margin"] = 0.1 + 0.05 * ((i * 3) % n)
        score = 0.3 + 0.05 * lam + 0.001 * ((i * 3) % 4)
        trials[f"t{i:02d}"] = {
            "run_id": f"run{i}",
            "searched": searched,
            "score": score,
            "score_epoch": 4 if i == 0 else FULL_EPOCHS,
            "scored": {"mAP": score, "rank1": score + 0.1},
            "status": "FINISHED",
            "last_epoch": 4 if i == 0 else FULL_EPOCHS,  # t00 stopped early by ASHA
        }
    trials["failed"] = {
        "run_id": "runx",
        "searched": {"model.head": "latf", "model.lam": 5.0, "loss.triplet_weight": 0.0},
        "score": None,
        "status": "FAILED",
        "last_epoch": 1,
    }
    return trials


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment = client.create_experiment(
        "analysis", artifact_location=(folder / "artifacts").as_uri()
    )
    return client, experiment


def _parent(store) -> str:
    client, experiment = store
    return client.create_run(experiment, run_name="search").info.run_id


def _download(client, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst)))


def _table(client, run_id: str, dst: Path) -> list[dict]:
    table = json.loads(_download(client, run_id, "leaderboard.json", dst).read_text())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def test_leaderboard_pictures_and_importances(store, tmp_path):
    client, _ = store
    run_id = _parent(store)
    trials = _trials()
    logged = log_search_analysis(client, run_id, trials, PARAMS, "max", FULL_EPOCHS)
    assert "leaderboard.json" in logged and "analysis/importances.json" in logged

    rows = _table(client, run_id, tmp_path / "a")
    assert len(rows) == len(trials)  # one row per trial, the failed one included
    by_id = {row["trial_id"]: row for row in rows}
    for trial_id, entry in trials.items():
        expected, got = entry["score"], by_id[trial_id]["score"]
        assert got is None if expected is None else got == pytest.approx(expected)
        assert by_id[trial_id]["param.model.lam"] == pytest.approx(entry["searched"]["model.lam"])
    assert rows[0]["trial_id"] == "t07" and rows[-1]["trial_id"] == "failed"  # best first
    assert by_id["t00"]["stopped_early"] and not by_id["t07"]["stopped_early"]
    assert by_id["t07"]["rank1"] == pytest.approx(trials["t07"]["score"] + 0.1)
    assert by_id["t00"]["param.loss.triplet_margin"] is None  # not used by that trial

    names = {a.path for a in client.list_artifacts(run_id, "analysis")}
    pictures = {
        "analysis/param_importances.png",
        "analysis/optimization_history.png",
        *(f"analysis/slice_{p.key}.png" for p in PARAMS),
    }
    assert pictures <= names and pictures <= set(logged)
    for path in pictures:
        with Image.open(_download(client, run_id, path, tmp_path / "p")) as image:
            assert image.format == "PNG" and image.size[0] > 100

    info = json.loads(_download(client, run_id, "analysis/importances.json", tmp_path).read_text())
    importances = info["importances"]
    assert set(importances) == {p.key for p in PARAMS}  # the conditional margin included
    assert importances["model.lam"] > importances["optim.lr"]
    assert importances["model.lam"] == max(importances.values())
    assert info["trials"] == 8 and info["stopped_early_included"] == 1
    metrics = client.get_run(run_id).data.metrics
    assert metrics["importance.model.lam"] == pytest.approx(importances["model.lam"])

    # A resumed search logs again: the table is replaced, not appended to.
    log_search_analysis(client, run_id, trials, PARAMS, "max", FULL_EPOCHS)
    assert len(_table(client, run_id, tmp_path / "b")) == len(trials)


def test_study_from_records():
    study = build_study(_trials(), PARAMS, "min", FULL_EPOCHS)
    assert study.direction.name == "MINIMIZE" and len(study.trials) == 8  # no failed trial
    margins = [t for t in study.trials if "loss.triplet_margin" in t.params]
    assert len(margins) == 4  # a conditional parameter only where it was used
    assert study.trials[0].distributions["optim.lr"].log
    assert study.trials[0].user_attrs == {"trial_id": "t00", "stopped_early": True}
    # Without the space (or with a value outside it), distributions come from what was seen.
    assert len(build_study(_trials(), None, "max").trials) == 8


def test_one_trial_skips_the_analyses(store, tmp_path):
    client, _ = store
    run_id = _parent(store)
    trials = {"t00": _trials(1)["t00"]}
    logged = log_search_analysis(client, run_id, trials, PARAMS, "max", FULL_EPOCHS)
    assert logged == ["leaderboard.json", "analysis/importances.json"]
    assert len(_table(client, run_id, tmp_path)) == 1
    info = json.loads(_download(client, run_id, "analysis/importances.json", tmp_path).read_text())
    assert "at least 2" in info["note"]
    assert not [m for m in client.get_run(run_id).data.metrics if m.startswith("importance.")]


def test_a_failing_analysis_never_fails_the_search(capsys):
    assert log_search_analysis(object(), "run", _trials(), PARAMS, "max") == []
    err = capsys.readouterr().err
    assert err.count("reidsearch: warning:") == 2 and len(err.strip().splitlines()) == 2
