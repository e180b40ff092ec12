"""One score per run: the reduce rules, the confidence bound, seeds combined, and the trainer's
reports (score, its epoch, the kept checkpoint) following the objective."""

from __future__ import annotations

import numpy as np
import pytest

from reidsearch.config import QUERY_METRICS, ObjectiveConfig
from reidsearch.engine.scoring import Scorer, combine_seeds
from reidsearch.evaluation.bootstrap import query_intervals


def _epoch(map_value: float, low: float | None = None, high: float | None = None) -> dict:
    low = map_value - 0.05 if low is None else low
    high = map_value + 0.05 if high is None else high
    return {"mAP": map_value, "mAP_ci_low": low, "mAP_ci_high": high, "loss": 1.0 - map_value}


def _scores(objective: ObjectiveConfig, epochs: list[dict]) -> list[tuple[float, int, bool]]:
    scorer = Scorer(objective)
    out = []
    for epoch, metrics in enumerate(epochs, 1):
        moved = scorer.update(epoch, metrics)
        out.append((scorer.score, scorer.epoch, moved))
    return out


def test_reduce_best_keeps_the_best_epoch_and_last_follows_the_latest():
    epochs = [_epoch(0.2), _epoch(0.5), _epoch(0.4)]
    best = _scores(ObjectiveConfig(reduce="best"), epochs)
    assert best == [(0.2, 1, True), (0.5, 2, True), (0.5, 2, False)]
    last = _scores(ObjectiveConfig(reduce="last"), epochs)
    assert last == [(0.2, 1, True), (0.5, 2, True), (0.4, 3, True)]


def test_minimised_loss_and_the_pessimistic_bound():
    epochs = [_epoch(0.2), _epoch(0.5), _epoch(0.4)]
    loss = _scores(ObjectiveConfig(metric="loss"), epochs)  # mode defaults to min for loss
    assert [s[:2] for s in loss] == [(0.8, 1), (0.5, 2), (0.5, 2)]
    # The lucky epoch (high mean, wide interval) loses to the steady one under bound: true.
    lucky, steady = _epoch(0.6, low=0.30, high=0.9), _epoch(0.5, low=0.45, high=0.55)
    bounded = _scores(ObjectiveConfig(bound=True), [lucky, steady])
    assert bounded[-1][:2] == (0.45, 2)
    assert _scores(ObjectiveConfig(bound=False), [lucky, steady])[-1][:2] == (0.6, 1)
    # Minimising a query metric under bound: the upper end is the pessimistic one.
    worst = _scores(ObjectiveConfig(mode="min", bound=True), [lucky, steady])
    assert worst[-1][:2] == (0.55, 2)


def test_a_nan_epoch_never_becomes_the_score():
    scorer = Scorer(ObjectiveConfig(reduce="last"))
    assert scorer.update(1, _epoch(0.3))
    assert not scorer.update(2, _epoch(float("nan")))
    assert (scorer.score, scorer.epoch) == (0.3, 1)


def test_the_scorer_state_survives_a_checkpoint():
    scorer = Scorer(ObjectiveConfig())
    scorer.update(1, _epoch(0.3))
    again = Scorer(ObjectiveConfig(), scorer.state_dict())
    assert not again.update(2, _epoch(0.2)) and again.report() == {"score": 0.3, "score_epoch": 1}


def test_combine_seeds_gives_means_spread_and_the_joint_interval():
    rng = np.random.default_rng(0)
    per_query = [
        {
            m: rng.uniform(size=50) if m in ("mAP", "mINP") else rng.integers(0, 2, 50) * 1.0
            for m in QUERY_METRICS
        }
        for _ in range(3)
    ]
    metrics = [
        {**{m: float(pq[m].mean()) for m in QUERY_METRICS}, "num_valid_queries": 50}
        for pq in per_query
    ]
    combined = combine_seeds(metrics, per_query, seed=7)
    means = [m["mAP"] for m in metrics]
    assert combined["mAP"] == pytest.approx(np.mean(means))
    assert combined["mAP_std"] == pytest.approx(np.std(means, ddof=1))
    low, high = query_intervals(per_query, seed=7)["mAP"]
    assert (combined["mAP_ci_low"], combined["mAP_ci_high"]) == (low, high)
    assert low < combined["mAP"] < high
    single = combine_seeds(metrics[:1], per_query[:1], seed=7)
    assert "mAP_std" not in single and single["mAP"] == metrics[0]["mAP"]


def test_repeats_train_seeds_side_by_side_and_report_their_mean(tiny_config):
    from reidsearch.engine.data import prepare_data
    from reidsearch.engine.trainer import train

    one = tiny_config(epochs=1)
    data = prepare_data(one.data)
    reports: dict[int, list] = {1: [], 2: []}
    for seed in (0, 1):
        train(
            one.model_copy(update={"seed": seed}), lambda m, p: reports[1].append((m, p)), data=data
        )
    both = tiny_config(epochs=1, repeats=2)
    train(both, lambda m, p: reports[2].append((m, p)), data=data)
    (m0, _), (m1, _) = reports[1]
    (m, payload) = reports[2][0]
    # Each seed trains exactly as it would alone; the run reports their mean and spread.
    assert m["mAP"] == pytest.approx((m0["mAP"] + m1["mAP"]) / 2, abs=1e-9)
    assert m["mAP_std"] == pytest.approx(abs(m0["mAP"] - m1["mAP"]) / np.sqrt(2), abs=1e-9)
    assert m["loss"] == pytest.approx((m0["loss"] + m1["loss"]) / 2, rel=1e-5)
    assert m["score"] == m["mAP"] and m["score_epoch"] == 1
    assert [r["seed"] for r in payload.state["runs"]] == [0, 1]
    assert payload.state["scored_here"]
