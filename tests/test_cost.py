"""``cost.*``: what a trial's model costs, checked against independent computations (a saved
file's size, parameters found by perturbing them one by one) and reported once per trial."""

from __future__ import annotations

import torch

from reidsearch.config import TrialConfig
from reidsearch.engine.cost import measure_cost, search_ms_per_query
from reidsearch.engine.trainer import TrainContext, train
from reidsearch.modeling import build_model
from reidsearch.objective import COST_UNITS
from tests.conftest import tiny_config_dict


def _model(**overrides):
    cfg = TrialConfig.model_validate(tiny_config_dict(**overrides))
    torch.manual_seed(0)
    model = build_model(cfg.model, 16, (cfg.data.height, cfg.data.width))
    return cfg, model


def _used_by_perturbing(model, cfg) -> int:
    """Parameters whose change changes the retrieval feature: each tensor nudged in turn."""
    x = torch.randn(
        2, 3, cfg.data.height, cfg.data.width, generator=torch.Generator().manual_seed(1)
    )
    model.eval()
    with torch.no_grad():
        base = model.extract(x, cfg.model.feature)
        used = 0
        for p in model.parameters():
            saved = p.detach().clone()
            p.add_(torch.randn_like(p) * 0.5 + 0.5)
            if not torch.allclose(model.extract(x, cfg.model.feature), base, atol=1e-7):
                used += p.numel()
            p.copy_(saved)
    return used


def test_space_costs_are_exact(tmp_path):
    for head in ("latf", "latfpp"):
        cfg, model = _model(**{"model.head": head, "eval.cost_gallery": 500})
        cost = measure_cost(model, cfg, torch.device("cpu"), repeats=1)
        assert set(cost) == set(COST_UNITS)
        x = torch.randn(1, 3, cfg.data.height, cfg.data.width)
        dim = model.extract(x, cfg.model.feature).shape[-1]
        assert cost["cost.feature_dim"] == dim == model.feature_dim()
        assert cost["cost.feature_bytes"] == 4 * dim and cost["cost.feature_bytes_fp16"] == 2 * dim
        total = sum(p.numel() for p in model.parameters())
        assert cost["cost.params_backbone"] + cost["cost.params_head"] == total
        assert cost["cost.params_inference"] == _used_by_perturbing(model, cfg)
        assert cost["cost.params_inference"] < total  # the classifiers train only
        saved = tmp_path / f"{head}.pt"
        torch.save(model.state_dict(), saved)
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        assert cost["cost.model_bytes"] == weights  # the file adds its format's few kB
        assert weights < saved.stat().st_size < weights + 64 * 1024
        assert cost["cost.search_gallery"] == 500
        for timed in ("cost.images_per_s", "cost.latency_ms", "cost.search_ms"):
            assert cost[timed] > 0, timed


def test_la_tf_plus_plus_is_cheaper_than_la_tf_in_space():
    """The seed's claim, in exact quantities: one classifier instead of one per row."""
    costs = {}
    for head in ("latf", "latfpp"):
        cfg, model = _model(**{"model.head": head, "eval.cost_gallery": 100})
        costs[head] = measure_cost(model, cfg, torch.device("cpu"), repeats=1)
    assert costs["latfpp"]["cost.params_head"] < costs["latf"]["cost.params_head"]
    assert costs["latfpp"]["cost.model_bytes"] < costs["latf"]["cost.model_bytes"]


def test_search_time_grows_with_the_gallery():
    small = min(search_ms_per_query(64, 1_000, repeats=3) for _ in range(2))
    large = min(search_ms_per_query(64, 100_000, repeats=3) for _ in range(2))
    assert large > 5 * small  # exact search scans the whole gallery (measured: ~50-100x)


def test_training_reports_the_cost_once_on_evaluated_epochs():
    cfg = TrialConfig.model_validate(
        tiny_config_dict(epochs=3, **{"eval.period": 2, "eval.cost_gallery": 200})
    )
    reports: list = []
    train(cfg, lambda m, p: reports.append(m), ctx=TrainContext(device=torch.device("cpu")))
    evaluated = [m for m in reports if "mAP" in m]
    assert [int(m["epoch"]) for m in evaluated] == [2, 3]
    assert not any(key.startswith("cost.") for key in reports[0])  # not evaluated: no cost
    first, last = ({k: m[k] for k in COST_UNITS} for m in evaluated)
    assert first == last  # measured once (timings too), the same on every evaluated epoch
    none = TrialConfig.model_validate(tiny_config_dict(epochs=1, **{"eval.cost_gallery": 0}))
    out = train(none, lambda m, p: None, ctx=TrainContext(device=torch.device("cpu")))
    assert not any(key.startswith("cost.") for key in out)
