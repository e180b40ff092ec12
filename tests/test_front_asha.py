"""The multi-objective ASHA on hand-made learning curves: what it stops, what it keeps (never
a trial on its rung's front), and that a resumed search remembers its rungs."""

from __future__ import annotations

import random
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from reidsearch.objective import ObjectiveConfig
from reidsearch.search.driver.front_asha import FrontASHA, keeps
from reidsearch.search.results.pareto import front_ranks

OBJECTIVES = [ObjectiveConfig(metric="mAP"), ObjectiveConfig(metric="cost.feature_bytes")]
STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE


def _scheduler(tmp_path, **kw) -> FrontASHA:
    settings = {"grace_period": 1, "reduction_factor": 2, "max_t": 4} | kw
    return FrontASHA(objectives=OBJECTIVES, state_path=str(tmp_path / "rungs.json"), **settings)


def _report(scheduler, trial_id: str, epoch: int, m_ap: float, feature_bytes: float) -> str:
    result = {
        "epoch": epoch,
        "score": m_ap,
        "score_epoch": epoch,  # improving every epoch: each epoch is the score's
        "mAP": m_ap,
        "cost.feature_bytes": feature_bytes,
    }
    return scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id), result)


def test_it_stops_only_what_the_rung_dominates_clearly(tmp_path):
    front = _scheduler(tmp_path)
    assert front._rung_epochs == [1, 2]
    assert _report(front, "a", 1, 0.50, 256) == GO  # alone at the rung
    assert _report(front, "b", 1, 0.40, 1024) == STOP  # a is better and cheaper
    assert _report(front, "c", 1, 0.60, 1024) == GO  # the most accurate: on the front
    # The cheapest is on the front although its mAP is the rung's worst: ASHA on mAP alone
    # would stop it (it is not in the top half by mAP).
    assert _report(front, "d", 1, 0.30, 64) == GO
    assert _report(front, "e", 1, 0.45, 512) == STOP  # dominated by a; fronts 1,1,1,2,2
    assert _report(front, "a", 2, 0.55, 256) == GO
    assert _report(front, "c", 2, 0.52, 1024) == STOP  # at rung 2, a dominates c now
    assert _report(front, "a", 3, 0.56, 256) == GO  # between rungs: no decision


def test_a_trial_on_its_rungs_front_is_never_stopped():
    rng = random.Random(1)
    for _ in range(200):
        vectors = [[rng.random(), rng.choice([64, 256, 1024])] for _ in range(rng.randint(1, 9))]
        rf = rng.choice([2, 3, 4])
        if front_ranks(vectors, ["max", "min"])[-1] == 1:
            assert keeps(vectors, ["max", "min"], rf)


def test_a_resumed_search_remembers_the_rungs_and_the_stopped(tmp_path):
    first = _scheduler(tmp_path)
    _report(first, "a", 1, 0.50, 256)
    assert _report(first, "b", 1, 0.40, 1024) == STOP
    again = _scheduler(tmp_path)  # a restarted driver: the same state file
    assert _report(again, "b", 1, 0.40, 1024) == STOP  # stopped stays stopped
    assert _report(again, "f", 1, 0.35, 2048) == STOP  # judged against a and b, as before
