"""Warm start: a new study is told the trials of earlier searches (real Optuna journals, a real
MLflow store, and one real search), only those that are trials of the new space."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("ray")
optuna = pytest.importorskip("optuna")

from optuna.distributions import FloatDistribution  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402

import reidsearch  # noqa: E402
from reidsearch.errors import ReidSearchError  # noqa: E402
from reidsearch.search.driver.search_record import write_search_record  # noqa: E402
from reidsearch.search.driver.warm_start import earlier_trials  # noqa: E402
from reidsearch.search.results.study import study_name, study_storage  # noqa: E402
from tests.conftest import tiny_space  # noqa: E402


def _space(folder: Path, **fields) -> Path:
    return tiny_space(folder, "warm", epochs=2, **fields)


def _earlier_search(folder: Path, space) -> str:
    """An earlier search's folder: its record and its study, with trials in and out of the new
    space (lam up to 20 there, and one trial with a key the new space does not search)."""
    where = str(folder / "earlier-20261201-120000")
    Path(where).mkdir(parents=True)
    write_search_record(where, "sqlite:///unused.db", "warm", space)
    study = optuna.create_study(
        storage=study_storage(where), study_name=study_name(where), direction="maximize"
    )
    lam = FloatDistribution(0.5, 20.0)
    for value, score in ((2.0, 0.31), (4.0, 0.42), (8.0, 0.38), (15.0, 0.5)):
        study.add_trial(
            create_trial(params={"model.lam": value}, distributions={"model.lam": lam}, value=score)
        )
    study.add_trial(
        create_trial(
            params={"model.lam": 6.0},
            distributions={"model.lam": lam},
            state=TrialState.PRUNED,
            intermediate_values={1: 0.1},
        )
    )
    wider = {"model.lam": lam, "optim.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    study.add_trial(
        create_trial(params={"model.lam": 3.0, "optim.lr": 1e-3}, distributions=wider, value=0.4)
    )
    return where


def test_the_trials_of_earlier_searches_that_fit_are_told(tmp_path):
    space = reidsearch.load_space(_space(tmp_path))
    folder = _earlier_search(tmp_path, space)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    told, skipped = earlier_trials(dataclasses.replace(space, warm_start=[folder]), uri)
    assert skipped == 2  # lam 15 is outside 0.5..10; the lr trial has a key this space lacks
    assert [(t.params["model.lam"], t.state, t.value) for t in told] == [
        (2.0, TrialState.COMPLETE, 0.31),
        (4.0, TrialState.COMPLETE, 0.42),
        (8.0, TrialState.COMPLETE, 0.38),
        (6.0, TrialState.PRUNED, None),
    ]
    assert told[3].intermediate_values == {1: 0.1}
    assert told[0].distributions["model.lam"] == FloatDistribution(0.5, 10.0)  # the new space's

    # By its MLflow parent run id too.
    from mlflow.tracking import MlflowClient

    from reidsearch.search.keys import EXPERIMENT_DIR_TAG

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("warm")
    run_id = client.create_run(experiment, tags={EXPERIMENT_DIR_TAG: folder}).info.run_id
    by_id, _ = earlier_trials(dataclasses.replace(space, warm_start=[run_id]), uri)
    assert [t.params for t in by_id] == [t.params for t in told]


@pytest.mark.fault("bad_input")
def test_an_earlier_search_of_another_objective_or_nothing_is_one_line(tmp_path):
    space = reidsearch.load_space(_space(tmp_path))
    folder = _earlier_search(tmp_path, space)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other = reidsearch.load_space(_space(tmp_path, objective={"metric": "rank1"}))
    cases = (
        (dataclasses.replace(other, warm_start=[folder]), "searched another objective"),
        (dataclasses.replace(space, warm_start=["0123abcd"]), "neither a search folder nor"),
        (dataclasses.replace(space, warm_start=[str(tmp_path)]), "has no Optuna study"),
    )
    for warm, words in cases:
        with pytest.raises(ReidSearchError) as err:
            earlier_trials(warm, uri)
        assert words in str(err.value) and "\n" not in str(err.value)


def test_a_warm_started_search_begins_with_what_they_learned(search_ray, tmp_path, capsys):
    from reidsearch.search.keys import STUDY_FILE
    from reidsearch.search.results.state_files import state_path

    space = reidsearch.load_space(_space(tmp_path))
    folder = _earlier_search(tmp_path, space)
    plan, results = reidsearch.run_search(_space(tmp_path, warm_start=[folder]))
    assert results.num_errors == 0
    out = capsys.readouterr().out
    assert "warm start: the study was told 4 trial(s) of 1 earlier search(es); 2 skipped" in out
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(state_path(plan.experiment_dir, STUDY_FILE))
    )
    study = optuna.load_study(study_name=Path(plan.experiment_dir).name, storage=storage)
    warm = [t for t in study.trials if "warm_start" in t.user_attrs]
    own = [t for t in study.trials if "warm_start" not in t.user_attrs]
    assert len(warm) == 4 and [t.number for t in warm] == [0, 1, 2, 3]  # told before it asked
    assert len(own) == 2 and all(t.state == TrialState.COMPLETE for t in own)
    board = reidsearch.leaderboard(plan.tracking_uri, search=Path(plan.experiment_dir).name)
    assert len(board.rows) == 2  # the leaderboard is the search's own trials
