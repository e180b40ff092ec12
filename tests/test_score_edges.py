"""The score at its edges, without Ray: sparse evaluation, a run resumed at its last epoch,
settings a search may not vary, and ``eval`` scoring a checkpoint as its run scored it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from reidsearch.cli import main
from reidsearch.engine.scoring import EPOCH_SCORE_KEY, KEEP_KEY, SCORE_KEY
from reidsearch.engine.trainer import TrainContext, format_epoch, train
from reidsearch.errors import ConfigError
from tests.conftest import tiny_config_dict

RETRIEVAL = ("mAP", "rank1", "rank5", "rank10", "mINP", "num_valid_queries")


@pytest.fixture(scope="module")
def sparse_run():
    """Three epochs evaluated every second one (epochs 2 and 3: the last is always)."""
    from reidsearch.config import TrialConfig

    cfg = TrialConfig.model_validate(tiny_config_dict(epochs=3, **{"eval.period": 2}))
    reports: list = []
    ctx = TrainContext(device=torch.device("cpu"))
    last = train(cfg, lambda m, p: reports.append((dict(m), p)), ctx=ctx)
    return cfg, reports, last


def test_unevaluated_epochs_report_training_metrics_only(sparse_run):
    _, reports, _ = sparse_run
    assert [int(m["epoch"]) for m, _ in reports] == [1, 2, 3]
    first, _ = reports[0]
    # Not evaluated: no retrieval metric at all (not zeros), no score yet, no checkpoint.
    assert not set(RETRIEVAL) & set(first)
    assert SCORE_KEY not in first and EPOCH_SCORE_KEY not in first and reports[0][1] is None
    assert first["loss"] > 0 and first["images_per_s"] > 0
    assert "mAP     -" in format_epoch(first)
    for metrics, payload in reports[1:]:  # evaluated: everything, and a checkpoint
        assert set(RETRIEVAL) <= set(metrics) and payload is not None
        assert metrics[KEEP_KEY] in (0.0, metrics["epoch"])


def test_a_run_resumed_at_its_last_epoch_returns_its_last_report(sparse_run):
    cfg, reports, last = sparse_run
    state = reports[-1][1].state  # the final epoch's checkpoint
    again: list = []
    result = train(cfg, lambda m, p: again.append(m), resume=state, data=reports[-1][1].data)
    assert again == []  # nothing left to train
    assert result == last and result[SCORE_KEY] == last[SCORE_KEY]


def test_the_kept_rank_names_the_scores_epoch(sparse_run):
    _, reports, last = sparse_run
    ranked = {int(m["epoch"]): m[KEEP_KEY] for m, _ in reports if KEEP_KEY in m}
    best = max(ranked, key=ranked.get)
    assert ranked[best] == best == int(last["score_epoch"])


def _space(tmp_path: Path, **fields) -> Path:
    space = {
        "name": "edges",
        "fixed": tiny_config_dict(epochs=4),
        "search": {"model.lam": {"type": "uniform", "low": 0.5, "high": 10.0}},
        "trials": 2,
        "storage_path": str(tmp_path / "runs"),
    }
    for key, value in fields.items():
        if key.startswith("fixed."):
            space["fixed"].setdefault("eval", {})[key.split(".")[-1]] = value
        else:
            space[key] = value
    path = tmp_path / "edges.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize(
    ("key", "dist"),
    [
        ("epochs", {"type": "int", "low": 2, "high": 4}),
        ("eval.period", {"type": "choice", "values": [1, 2]}),
    ],
)
def test_the_trial_length_and_evaluation_period_cannot_be_searched(tmp_path, key, dist):
    from reidsearch.search.space import load_search_space

    path = _space(tmp_path, search={key: dist})
    with pytest.raises(ConfigError) as err:
        load_search_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}: search.{key}: not searchable") and "\n" not in message


def test_asha_with_sparse_evaluation_is_allowed_where_every_rung_is_evaluated(tmp_path):
    from reidsearch.search.space import load_search_space
    from reidsearch.search.space.loading import asha_rungs

    assert asha_rungs(1, 2.0, 4) == [1, 2, 4] and asha_rungs(2, 2.0, 8) == [2, 4, 8]
    assert asha_rungs(1, 1.5, 3) == [1, 2, 3]  # 1.5 and 2.25 are decided at epochs 2 and 3
    rungs = {"type": "asha", "grace_period": 2, "reduction_factor": 2}
    space = load_search_space(_space(tmp_path, scheduler=rungs, **{"fixed.period": 2}))
    assert space.scheduler.grace_period == 2
    path = _space(tmp_path, scheduler={"type": "asha"}, **{"fixed.period": 2})
    with pytest.raises(ConfigError) as err:
        load_search_space(path)
    assert "compares trials at epoch 1, which is not evaluated" in str(err.value)


def test_eval_scores_a_checkpoint_with_its_own_evaluation_settings(tmp_path, capsys):
    from reidsearch.engine.checkpoint import load_checkpoint
    from reidsearch.engine.run_local import evaluate_checkpoint

    own = {"eval.flip": True, "eval.use_camera": False, "eval.retrieval": "exact"}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(epochs=1, **own)))
    # `--out` is train's name for its folder too (`--output` still works)
    assert main(["train", str(config), "--no-ray", "--out", str(tmp_path / "runs")]) == 0
    best = tmp_path / "runs" / "tiny" / "best" / "model.pt"
    scored = load_checkpoint(best)["metrics"]  # what the run scored its epoch with
    again = evaluate_checkpoint(best, out_dir=tmp_path / "eval")
    for key in RETRIEVAL:
        assert again[key] == pytest.approx(scored[key], abs=1e-9), key
    # Same-camera matches kept (use_camera False): every query has all its matches.
    with_camera = evaluate_checkpoint(best, use_camera=True, out_dir=tmp_path / "eval")
    assert with_camera["mAP"] != pytest.approx(scored["mAP"], abs=1e-9)
    # The CLI's names: --model is --checkpoint, --no-camera is --no-use-camera.
    capsys.readouterr()
    assert main(["eval", "--model", str(best), "--use-camera", "--out", str(tmp_path / "e")]) == 0
    assert f"mAP {100 * with_camera['mAP']:.2f}" in capsys.readouterr().out
    assert main(["eval", "--model", str(best), "--no-camera", "--out", str(tmp_path / "e")]) == 0
    assert f"mAP {100 * scored['mAP']:.2f}" in capsys.readouterr().out
