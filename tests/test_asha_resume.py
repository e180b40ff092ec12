"""ASHA's rungs survive a driver restart (Tune restores the searcher, not the scheduler)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import pytest

pytest.importorskip("ray")

from ray.tune.schedulers import ASHAScheduler, TrialScheduler  # noqa: E402

from reidsearch.search.driver.schedulers import ResumableASHA  # noqa: E402

SETTINGS = {"time_attr": "epoch", "max_t": 4, "grace_period": 1, "reduction_factor": 2}


@dataclass(frozen=True)
class FakeTrial:  # what ASHA reads of a trial: its id
    trial_id: str


# (trial, epoch, mAP): four trials reach the first rung before the driver goes down, B is cut
# there; after the restart E arrives with a poor first epoch and B (restored as running, because
# Tune had not saved that it was stopped) reports again.
BEFORE = [("A", 1, 0.50), ("B", 1, 0.10), ("C", 1, 0.40), ("D", 1, 0.30), ("A", 2, 0.6)]
AFTER = [("E", 1, 0.05), ("B", 2, 0.2), ("C", 2, 0.45), ("E", 2, 0.5), ("D", 2, 0.1)]


def _feed(scheduler, events) -> list[str]:
    decisions = []
    for trial_id, epoch, value in events:
        decisions.append(
            scheduler.on_trial_result(None, FakeTrial(trial_id), {"epoch": epoch, "mAP": value})
        )
    return decisions


def _add(scheduler, trial_ids) -> None:
    for trial_id in trial_ids:
        scheduler.on_trial_add(None, FakeTrial(trial_id))


@pytest.mark.fault("fault")
def test_a_restored_asha_stops_what_an_uninterrupted_one_stops(tmp_path):
    def make(cls, name):
        extra = {"state_path": str(tmp_path / name)} if cls is ResumableASHA else {}
        return cls(metric="mAP", mode="max", **SETTINGS, **extra)

    uninterrupted = make(ResumableASHA, "one.json")
    _add(uninterrupted, "ABCDE")
    expected = _feed(uninterrupted, BEFORE + AFTER)
    assert expected[1] == TrialScheduler.STOP  # B is cut at the first rung
    assert expected[len(BEFORE)] == TrialScheduler.STOP  # so is E after the restart

    for cls, name in ((ResumableASHA, "two.json"), (ASHAScheduler, "")):
        scheduler = make(cls, name)
        pickled = pickle.dumps(scheduler)  # Tune keeps the scheduler as it was at the start
        _add(scheduler, "ABCD")
        assert _feed(scheduler, BEFORE) == expected[: len(BEFORE)]
        restored = pickle.loads(pickled)  # the driver died; `--resume` unpickles the start
        _add(restored, "ABCDE")
        after = _feed(restored, AFTER)
        if cls is ResumableASHA:
            assert after == expected[len(BEFORE) :]
            assert (tmp_path / name).is_file()
        else:  # Ray's own ASHA forgets its rungs: the same results are judged differently
            assert after != expected[len(BEFORE) :]
            assert after[0] == TrialScheduler.CONTINUE and after[1] == TrialScheduler.CONTINUE


def test_the_saved_rungs_must_match_the_scheduler(tmp_path):
    state = str(tmp_path / "asha.json")
    first = ResumableASHA(state_path=state, metric="mAP", mode="max", **SETTINGS)
    _add(first, "A")
    _feed(first, [("A", 1, 0.5)])
    other = ResumableASHA(
        state_path=state, metric="mAP", mode="max", **{**SETTINGS, "grace_period": 2}
    )
    with pytest.raises(ValueError, match="rungs do not match"):
        _add(other, "A")
