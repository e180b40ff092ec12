"""Searchers chosen in the space file (``searcher:``): each is Optuna's own sampler, seeded;
parallel TPE uses the constant liar; what a sampler cannot search is refused at load time with
one line; and each runs a real (tiny) Ray Tune search to the end with its sampler in the study."""

from __future__ import annotations

from pathlib import Path

import pytest

import reidsearch
from reidsearch.errors import ConfigError
from tests.conftest import tiny_space

NUMBERS = {
    "model.lam": {"type": "uniform", "low": 0.5, "high": 10.0},
    "loss.label_smoothing": {"type": "uniform", "low": 0.0, "high": 0.3},
}
HEAD = {"model.head": {"type": "choice", "values": ["latf", "latfpp"]}}
MARGIN_IF_TRIPLET = {
    "loss.triplet_weight": {"type": "choice", "values": [0.0, 1.0]},
    "loss.triplet_margin": {
        "type": "uniform",
        "low": 0.1,
        "high": 0.5,
        "when": "loss.triplet_weight > 0",
    },
}
# the same condition on a number (CMA-ES refuses choices anyway)
MARGIN_IF_MUCH_TRIPLET = {
    "loss.triplet_weight": {"type": "uniform", "low": 0.0, "high": 1.0},
    "loss.triplet_margin": {
        **MARGIN_IF_TRIPLET["loss.triplet_margin"],
        "when": "loss.triplet_weight > 0.5",
    },
}
SAMPLERS = {
    "tpe": "TPESampler",
    "optuna": "TPESampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "random": "RandomSampler",
}


def _space_file(folder: Path, **fields) -> Path:
    fields = {"search": dict(NUMBERS), "trials": 3, "seed": 5, **fields}
    return tiny_space(folder, fields.pop("name", "searchers"), **fields)


def _sampler(searcher) -> object:
    from reidsearch.internals.ray_internals import optuna_search_study

    return optuna_search_study(searcher).sampler


# ------------------------------------------------------------------------------ at load time


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_searcher_gets_its_own_seeded_optuna_sampler(tmp_path, name):
    from reidsearch.search.driver.searcher import build_searcher

    search = {**NUMBERS, **(HEAD if name != "cmaes" else {})}
    space = reidsearch.load_space(_space_file(tmp_path, searcher=name, search=search))
    assert space.searcher == ("tpe" if name == "optuna" else name)  # optuna: tpe's old name
    limiter = build_searcher(space, max_concurrent=2)
    limiter.searcher.suggest("t1")  # Tune gives the searcher its space; then it has a study
    assert type(_sampler(limiter.searcher)).__name__ == SAMPLERS[name]
    # seeded: a second searcher built from the same space suggests the same first point
    first = build_searcher(space, max_concurrent=2).searcher.suggest("x")
    assert build_searcher(space, max_concurrent=2).searcher.suggest("x") == first


def _tpe_points(sampler, running: int) -> list[dict]:
    """Four finished trials, then ``running`` trials asked at once (none told)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for x in (0.1, 0.2, 0.8, 0.9):
        study.enqueue_trial({"x": x})
        trial = study.ask()
        study.tell(trial, -((trial.suggest_float("x", 0, 1) - 0.85) ** 2))
    asked = [study.ask() for _ in range(running)]
    return [{"x": t.suggest_float("x", 0, 1)} for t in asked]


def test_parallel_tpe_uses_the_constant_liar(tmp_path):
    """Our TPE suggests what Optuna's TPE with the constant liar suggests for trials asked
    while others run, not what it suggests without it (concurrent trials kept apart)."""
    from optuna.samplers import TPESampler

    from reidsearch.search.driver.samplers import build_sampler
    from reidsearch.search.space.choices import startup_trials

    space = reidsearch.load_space(_space_file(tmp_path, searcher="tpe", trials=12, seed=3))
    options = {"seed": 3, "n_startup_trials": startup_trials(12), "multivariate": True}
    ours = _tpe_points(build_sampler(space), running=4)
    assert ours == _tpe_points(TPESampler(constant_liar=True, **options), running=4)
    assert ours != _tpe_points(TPESampler(constant_liar=False, **options), running=4)


def test_tpe_models_conditional_parameters_in_their_subspaces(tmp_path):
    """A conditional parameter is modelled (``group``), not drawn at random: TPE says so by
    not warning that it falls back to independent sampling."""
    import logging

    import optuna

    from reidsearch.search.driver.samplers import build_sampler

    space = reidsearch.load_space(
        _space_file(tmp_path, searcher="tpe", trials=6, search=MARGIN_IF_TRIPLET)
    )
    assert "grouped for conditional parameters" in space.describe()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(space))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    optuna.logging.get_logger("optuna").addHandler(handler)
    try:
        define = space.optuna_define_by_run()
        for i in range(12):
            trial = study.ask()
            define(trial)
            study.tell(trial, trial.params.get("loss.triplet_margin", 0.0) + 0.01 * i)
    finally:
        optuna.logging.get_logger("optuna").removeHandler(handler)
    assert not [r for r in records if "independent" in r.getMessage()]
    assert {t.params["loss.triplet_weight"] for t in study.trials} == {0.0, 1.0}


@pytest.mark.fault("bad_input")
@pytest.mark.parametrize(
    ("searcher", "search", "key", "words"),
    [
        ("cmaes", {**NUMBERS, **HEAD}, "search.model.head", "cannot search a choice"),
        ("cmaes", MARGIN_IF_MUCH_TRIPLET, "search.loss.triplet_margin", "conditional"),
        ("gp", MARGIN_IF_TRIPLET, "search.loss.triplet_margin", "conditional"),
        ("qmc", MARGIN_IF_TRIPLET, "search.loss.triplet_margin", "conditional"),
        ("bayes", NUMBERS, "searcher", "tpe"),
    ],
)
def test_what_a_sampler_cannot_search_is_refused_in_one_line(
    tmp_path, searcher, search, key, words
):
    path = _space_file(tmp_path, searcher=searcher, search=search)
    with pytest.raises(ConfigError) as caught:
        reidsearch.load_space(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ") and words in message
    assert "\n" not in message


@pytest.mark.fault("bad_input")
def test_the_cli_refuses_cmaes_on_a_choice_with_exit_2(tmp_path, capsys):
    from reidsearch.cli import main

    path = _space_file(tmp_path, searcher="cmaes", search={**NUMBERS, **HEAD})
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: search.model.head: searcher cmaes" in err[0]


def test_a_single_valued_choice_is_no_choice_for_cmaes(tmp_path):
    one = {"model.head": {"type": "choice", "values": ["latfpp"]}}
    space = reidsearch.load_space(
        _space_file(tmp_path, searcher="cmaes", search={**NUMBERS, **one})
    )
    assert space.searcher == "cmaes"


# ---------------------------------------------------------------------- real searches (Ray)


@pytest.mark.parametrize("name", ["tpe", "gp", "cmaes", "qmc", "random"])
def test_each_searcher_runs_a_real_search_to_the_end(search_ray, tmp_path, name):
    from optuna.trial import TrialState

    from reidsearch.search.driver.searcher import PruneAwareOptunaSearch

    search = {**NUMBERS, **(HEAD if name in ("tpe", "gp", "qmc", "random") else {})}
    path = _space_file(tmp_path, searcher=name, search=search, name=f"s-{name}")
    plan, results = reidsearch.run_search(reidsearch.load_space(path), verbose=0)
    assert len(results) == 3 and not results.errors
    searcher = PruneAwareOptunaSearch(max_epochs=1)
    searcher.restore_from_dir(plan.experiment_dir)  # the searcher state Tune saved
    assert type(_sampler(searcher)).__name__ == SAMPLERS[name]
    study_trials = _study_trials(searcher)
    assert [t.state for t in study_trials] == [TrialState.COMPLETE] * 3
    told = dict(sorted((t.params["model.lam"], t.value) for t in study_trials))
    ran = dict(sorted((r.config["model.lam"], r.metrics["score"]) for r in results))
    assert list(told) == list(ran)  # Optuna was told each trial's own score
    assert list(told.values()) == pytest.approx(list(ran.values()))


def _study_trials(searcher) -> list:
    from reidsearch.internals.ray_internals import optuna_search_study

    return optuna_search_study(searcher).trials
