"""The private part of Tune that extending a search relies on (``raised_search_total`` in
``reidsearch.internals.ray_internals``): the keys of ``SearchGenerator``'s saved state. It
fails loudly, naming what changed, when a Ray release changes them (test_private_apis.py has
the others; this file keeps that one under 400 lines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")

from tests.test_private_apis import _expect  # noqa: E402


def _generator(tmp_path: Path | None = None):
    from optuna.samplers import RandomSampler
    from ray.tune.search import SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    from reidsearch.search.driver.extend import ExtendableSearch

    def space(trial):
        trial.suggest_float("x", 0, 1)

    searcher = OptunaSearch(space=space, metric="m", mode="max", sampler=RandomSampler(seed=0))
    if tmp_path is None:
        return SearchGenerator(searcher)
    return ExtendableSearch(searcher, str(tmp_path))


def _finished_state() -> dict:
    from ray.tune.experiment import Experiment

    generator = _generator()
    generator.add_configurations([Experiment("e", lambda config: None, num_samples=2)])
    while generator.next_trial() is not None:
        pass
    return generator.get_state()


def test_tune_search_generator_state_keeps_its_total_and_finished_flag() -> None:
    from reidsearch.internals.ray_internals import raised_search_total

    state = _finished_state()
    keys = {"total_samples", "finished", "counter"}
    _expect(keys <= set(state), "ray", "SearchGenerator.get_state", f"keys are {sorted(state)}")
    restored = _generator()
    restored.set_state(state)
    assert restored.is_finished() and restored.total_samples == 2
    restored.set_state(raised_search_total(state, 4))
    ok = not restored.is_finished() and restored.total_samples == 4
    _expect(ok, "ray", "SearchGenerator.set_state", "ignores total_samples / finished")
    assert raised_search_total(state, 1)["total_samples"] == 2  # never fewer


def test_an_extendable_search_reads_its_total_from_the_search_record(tmp_path: Path) -> None:
    from reidsearch.search.keys import SEARCH_RECORD_FILE, STATE_DIR

    state = _finished_state()
    extendable = _generator(tmp_path)
    extendable.set_state(state)  # no record (an older search): restored as saved
    assert extendable.is_finished()
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / SEARCH_RECORD_FILE).write_text(json.dumps({"trials": 3}))
    extendable.set_state(state)
    assert not extendable.is_finished() and extendable.total_samples == 3
    # The one attribute it adds is not one Tune's SearchGenerator uses.
    plain = _generator()
    added = set(vars(extendable)) - set(vars(plain))
    assert added == {"_reidsearch_dir"}
    clash = added & set(dir(type(plain)))
    _expect(not clash, "ray", f"SearchGenerator {sorted(clash)}", "ours overwrite it")
