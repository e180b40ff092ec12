"""Search-space YAML: shipped spaces, Optuna define-by-run, grid, resolve,
the objective and repeats, and the one function that applies dotted overrides."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

import reidsearch
from reidsearch.config import (
    LAYOUTS,
    OBJECTIVE_METRICS,
    ObjectiveConfig,
    TrialConfig,
    with_overrides,
)
from reidsearch.errors import ConfigError
from reidsearch.search.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
SHIPPED = ["latfpp", "quickstart", "table1"]

BASE = """\
name: t
fixed:
  epochs: 4
  model: {backbone: vit_tiny_patch16_224, depth: 2}
search:
  model.head: {type: choice, values: [latf, latfpp]}
  model.lam: {type: uniform, low: 0.5, high: 10.0}
  optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
  sampler.k: {type: int, low: 2, high: 8, step: 2}
  loss.triplet_weight: {type: choice, values: [0.0, 1.0]}
  loss.triplet_margin: {type: uniform, low: 0.1, high: 0.6, when: "loss.triplet_weight > 0"}
trials: 5
max_concurrent: 2
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str) -> SearchSpace:
    return reidsearch.load_space(write(tmp_path, text))


# --------------------------------------------------------------------------- shipped spaces


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_describes_and_resolves(name: str) -> None:
    space = reidsearch.load_space(SPACES / f"{name}.yaml")
    assert space.name == name
    assert isinstance(space.fixed_config, TrialConfig)
    text = space.describe()
    assert name in text and "objective: max mAP" in text
    for p in space.params:
        assert p.key in text
    # the fixed settings alone, every first point and every grid combination resolve
    assert space.resolve({}) == space.fixed_config
    for point in space.points_to_evaluate:
        cfg = space.resolve(point)
        for key, value in point.items():
            section, field = key.split(".")
            assert getattr(getattr(cfg, section), field) == value
    if space.searcher == "grid":
        for combo in space.grid():
            space.resolve(combo)


def test_latfpp_space_matches_the_paper() -> None:
    space = reidsearch.load_space(SPACES / "latfpp.yaml")
    c = space.fixed_config
    assert c.data.layout == "latfpp" and c.data.root
    assert (c.data.height, c.data.width) == (224, 224)
    assert c.model.backbone == "vit_base_patch16_224" and c.model.pretrained
    assert c.optim.name == "adam" and c.optim.lr == 3e-4 and c.optim.weight_decay == 5e-4
    assert c.optim.unfreeze.enabled and c.optim.unfreeze.every == 2
    assert c.optim.unfreeze.lr_mult == 0.8
    assert (c.sampler.p, c.sampler.k, c.epochs, c.eval.flip) == (8, 4, 30, False)
    assert space.keys == [
        "model.head",
        "model.lam",
        "loss.label_smoothing",
        "loss.triplet_weight",
        "loss.triplet_margin",
        "optim.lr",
    ]
    assert space.param("loss.triplet_margin").when is not None
    assert (space.trials, space.max_concurrent) == (24, 4)
    assert space.scheduler.type == "asha"
    assert (space.scheduler.grace_period, space.scheduler.reduction_factor) == (5, 2)
    assert space.scheduler.max_t == 30
    assert space.resources.gpus_per_worker == 1 and space.resources.cpus_per_worker == 8
    assert space.fixed_config.scaling == space.resources
    la_tf, la_tfpp = (space.resolve(p) for p in space.points_to_evaluate)
    assert la_tf.model.head == "latf" and la_tf.loss.triplet_weight == 0
    assert la_tf.loss.label_smoothing == 0
    assert la_tfpp.model.head == "latfpp" and la_tfpp.loss.triplet_weight > 0
    assert la_tfpp.loss.label_smoothing > 0


def test_quickstart_is_small_and_synthetic() -> None:
    space = reidsearch.load_space(SPACES / "quickstart.yaml")
    c = space.fixed_config
    assert c.data.root is None and c.data.synthetic is not None
    assert (c.data.synthetic.ids, c.data.height, c.data.width) == (160, 128, 64)
    assert c.model.depth == 2 and not c.model.pretrained
    assert c.epochs == 8 and (space.trials, space.max_concurrent) == (6, 2)
    assert space.resources.gpus_per_worker == 0 and space.resources.cpus_per_worker == 1
    assert space.scheduler.max_t == 8 and c.eval.baseline
    lr = space.param("optim.lr")
    assert (lr.type, lr.low, lr.high) == ("loguniform", 2e-4, 2e-3)


def test_table1_grid_is_the_four_loss_combinations() -> None:
    space = reidsearch.load_space(SPACES / "table1.yaml")
    assert space.searcher == "grid"
    combos = space.grid()
    pairs = {(c["loss.label_smoothing"], c["loss.triplet_weight"]) for c in combos}
    assert len(combos) == 4
    assert pairs == {(0.0, 0.0), (0.1, 0.0), (0.0, 1.0), (0.1, 1.0)}
    assert space.total_trials() == 4 * space.trials
    assert all(space.resolve(c).model.head == "latf" for c in combos)  # the report ran LA-TF


# --------------------------------------------------------------------------- defaults / resolve


def test_defaults(tmp_path: Path) -> None:
    space = reidsearch.load_space(write(tmp_path, "search: {}\n", name="my-search.yaml"))
    assert space.name == "my-search"
    assert space.searcher == "tpe" and space.metric == "mAP" and space.mode == "max"
    assert space.experiment == "my-search"
    assert space.scheduler.type == "asha" and space.scheduler.max_t == TrialConfig().epochs
    root = Path(space.storage_root())
    assert root.is_absolute() and root.name == "reidsearch_runs"
    assert space.params == [] and space.points_to_evaluate == []
    assert "(nothing)" in space.describe()


@pytest.mark.parametrize("value", ["none", "null", "{type: none}"])
def test_scheduler_none_shorthands(tmp_path: Path, value: str) -> None:
    space = load_text(tmp_path, f"scheduler: {value}\n")
    assert space.scheduler.type == "none"
    assert "scheduler: none" in space.describe()


def test_with_data_root_replaces_synthetic_data() -> None:
    space = reidsearch.load_space(SPACES / "quickstart.yaml")
    real = space.with_data_root("/data/mine")
    assert real.fixed_config.data.root == "/data/mine"
    assert real.fixed_config.data.synthetic is None
    assert real.resolve({"model.head": "latf"}).data.root == "/data/mine"
    assert space.fixed_config.data.root is None  # original untouched
    assert "latfpp at /data/mine" in real.describe()


def test_loss_objective_defaults_to_min(tmp_path: Path) -> None:
    space = load_text(tmp_path, "objective: {metric: loss}\n")
    assert space.mode == "min"


def test_objective_and_repeats_are_copied_into_every_trial_config(tmp_path: Path) -> None:
    space = load_text(
        tmp_path,
        """\
        fixed: {seed: 7}
        objective: {metric: rank1, reduce: last, bound: true}
        repeats: 3
        search:
          model.lam: {type: uniform, low: 1, high: 2}
        """,
    )
    assert space.objective == ObjectiveConfig(metric="rank1", mode="max", reduce="last", bound=True)
    assert space.fixed_config.objective == space.objective
    assert (space.metric, space.mode, space.repeats) == ("rank1", "max", 3)
    assert space.fixed_config.repeats == 3 and space.fixed_config.seed == 7
    cfg = space.resolve({"model.lam": 1.5})
    assert cfg.repeats == 3 and cfg.objective.reduce == "last" and cfg.objective.bound
    text = space.describe()
    assert "objective: max rank1 (last evaluated epoch, lower end of its 95% bootstrap" in text
    assert "repeats: 3 (seeds seed..seed+2 side by side" in text
    assert space.with_data_root("/data/x").repeats == 3  # a copy keeps them


def test_objective_and_repeats_defaults(tmp_path: Path) -> None:
    space = load_text(tmp_path, "objective: {metric: mINP, mode: min, bound: true}\n")
    assert space.objective.reduce == "best" and space.repeats == 1
    assert space.fixed_config.repeats == 1
    text = space.describe()
    assert "objective: min mINP (best evaluated epoch, upper end of its 95%" in text
    assert "repeats: 1 (one seed per configuration)" in text


def test_resources_override_fixed_scaling(tmp_path: Path) -> None:
    space = load_text(
        tmp_path,
        """\
        fixed: {scaling: {workers: 2, cpus_per_worker: 3}}
        resources: {gpus_per_worker: 0.5}
        """,
    )
    assert space.resources.workers == 2 and space.resources.cpus_per_worker == 3
    assert space.resources.gpus_per_worker == 0.5
    assert space.resolve({}).scaling.gpus_per_worker == 0.5


def test_resolve_applies_dotted_overrides_and_validates(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    space = reidsearch.load_space(path)
    cfg = space.resolve({"model.head": "latf", "model.lam": 2.5, "sampler.k": 6})
    assert (cfg.model.head, cfg.model.lam, cfg.sampler.k) == ("latf", 2.5, 6)
    assert cfg.model.depth == 2 and cfg.epochs == 4  # fixed settings kept
    assert space.fixed_config.model.lam == 8.0  # not mutated
    with pytest.raises(ConfigError) as err:
        space.resolve({"model.lam": -1.0})
    assert str(err.value).startswith(f"{path}: model.lam: ")
    with pytest.raises(ConfigError, match=r": model\.lamda: not a TrialConfig setting"):
        space.resolve({"model.lamda": 1.0})
    with pytest.raises(ConfigError, match=r"loss: .*nothing to train"):
        space.resolve({"loss.ce_weight": 0.0, "loss.triplet_weight": 0.0})


def test_with_overrides_is_the_one_way_and_names_source_where_and_key() -> None:
    base = TrialConfig()
    cfg = with_overrides(base, {"model.lam": 2.5, "optim.unfreeze.every": 3})
    assert (cfg.model.lam, cfg.optim.unfreeze.every) == (2.5, 3)
    assert base.model.lam == 8.0  # not mutated
    cases = [
        ({"model.lamda": 1.0}, "f.yaml: p.0: model.lamda: not a TrialConfig setting"),
        ({"model.lam.x": 1.0}, "f.yaml: p.0: model.lam.x: not a TrialConfig setting"),
        ({"model.lam": -1.0}, "f.yaml: p.0: model.lam: Input should be greater than or equal"),
        (
            {"loss.ce_weight": 0.0},
            "f.yaml: p.0: loss: ce_weight and triplet_weight are both 0: nothing to train",
        ),
    ]
    for overrides, start in cases:
        with pytest.raises(ConfigError) as err:
            with_overrides(base, overrides, "f.yaml", "p.0")
        assert str(err.value).startswith(start), str(err.value)
        assert "\n" not in str(err.value) and "Value error" not in str(err.value)
    on_disk = base.model_copy(update={"data": base.data.model_copy(update={"root": "/d"})})
    on_disk = on_disk.model_copy(
        update={"data": on_disk.data.model_copy(update={"synthetic": None})}
    )
    with pytest.raises(ConfigError, match=r"^<overrides>: data\.synthetic\.ids: parent setting"):
        with_overrides(on_disk, {"data.synthetic.ids": 5})


def test_resolve_and_probes_share_the_override_errors(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "points_to_evaluate: [{model.lam: 0.5}]\n")
    space = reidsearch.load_space(path)
    with pytest.raises(ConfigError) as err:
        space.resolve({"model.lam": 20.0, "model.dropout": 1.0}, where="points_to_evaluate.3")
    assert str(err.value).startswith(f"{path}: points_to_evaluate.3: model.dropout: ")
    bad = write(tmp_path, "search: {model.dropout: {type: choice, values: [0.1, 1.0]}}\n", "b.yaml")
    with pytest.raises(ConfigError) as err:
        reidsearch.load_space(bad)
    assert str(err.value).startswith(f"{bad}: search.model.dropout: value 1.0 is rejected: ")


# --------------------------------------------------------------------------- one list of names


def test_every_layout_has_a_parser_and_the_space_ranks_by_the_config_metrics(tmp_path) -> None:
    from reidsearch.data.parsers import PARSERS

    assert tuple(PARSERS) == LAYOUTS
    for metric in OBJECTIVE_METRICS:
        assert load_text(tmp_path, f"objective: {{metric: {metric}}}\n").metric == metric


# --------------------------------------------------------------------------- optuna / grid


def test_define_by_run_with_real_optuna(tmp_path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_text(tmp_path, BASE)
    define = space.optuna_define_by_run()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    seen_active = seen_inactive = False
    for i in range(30):
        trial = study.ask()
        assert define(trial) is None
        params = trial.params
        assert params["model.head"] in ("latf", "latfpp")
        assert 0.5 <= params["model.lam"] <= 10.0
        assert 1e-5 <= params["optim.lr"] <= 1e-3
        assert params["sampler.k"] in (2, 4, 6, 8)
        assert params["loss.triplet_weight"] in (0.0, 1.0)
        if params["loss.triplet_weight"] > 0:
            seen_active = True
            assert 0.1 <= params["loss.triplet_margin"] <= 0.6
        else:
            seen_inactive = True
            assert "loss.triplet_margin" not in params
        active = [p.key for p in space.params if p.when is None or p.when.holds(params)]
        assert list(params) == active
        space.resolve(params)
        study.tell(trial, float(i % 7))
    assert seen_active and seen_inactive
    # picklable (Ray checkpoints its searcher)
    assert pickle.loads(pickle.dumps(define)).params == space.params


def test_define_by_run_follows_enqueued_points(tmp_path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    text = BASE + (
        "points_to_evaluate:\n"
        "  - {model.head: latf, model.lam: 8.0, loss.triplet_weight: 0.0}\n"
        "  - {loss.triplet_weight: 1.0, loss.triplet_margin: 0.3}\n"
    )
    space = load_text(tmp_path, text)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    define = space.optuna_define_by_run()
    first, second = study.ask(), study.ask()
    define(first)
    define(second)
    assert first.params["model.head"] == "latf" and first.params["model.lam"] == 8.0
    assert "loss.triplet_margin" not in first.params
    assert second.params["loss.triplet_margin"] == 0.3


def test_ray_optuna_search_accepts_define_by_run(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune.search.optuna")
    from ray.tune.search.optuna import OptunaSearch

    space = load_text(tmp_path, BASE + "points_to_evaluate: [{model.head: latf}]\n")
    searcher = OptunaSearch(
        space=space.optuna_define_by_run(),
        metric=space.metric,
        mode=space.mode,
        points_to_evaluate=space.points_to_evaluate,
        seed=space.seed,
    )
    config = searcher.suggest("trial_1")
    assert config["model.head"] == "latf"  # flat dotted keys, first point first
    assert set(config) <= set(space.keys)
    space.resolve(config)


def test_grid_respects_conditions(tmp_path: Path) -> None:
    space = load_text(
        tmp_path,
        """\
        searcher: grid
        trials: 2
        search:
          model.head: {type: choice, values: [latf, latfpp]}
          loss.triplet_weight: {type: choice, values: [0.0, 1.0]}
          loss.triplet_margin: {type: choice, values: [0.2, 0.4], when: "loss.triplet_weight > 0"}
        """,
    )
    combos = space.grid()
    assert len(combos) == 2 * (1 + 2)
    assert {"model.head": "latf", "loss.triplet_weight": 0.0} in combos
    assert all(("loss.triplet_margin" in c) == (c["loss.triplet_weight"] > 0) for c in combos)
    assert space.total_trials() == 12 and space.trials == 2
    assert "grid, 6 combinations x 2 trials each = 12 trials" in space.describe()


def test_grid_rejected_for_optuna_space_with_ranges(tmp_path: Path) -> None:
    space = load_text(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"search\.model\.lam: searcher grid needs choice"):
        space.grid()


def test_word_condition(tmp_path: Path) -> None:
    space = load_text(
        tmp_path,
        """\
        search:
          model.head: {type: choice, values: [latf, latfpp]}
          model.lam: {type: uniform, low: 1, high: 2, when: "model.head == latfpp"}
        """,
    )
    condition = space.param("model.lam").when
    assert condition.holds({"model.head": "latfpp"})
    assert not condition.holds({"model.head": "latf"})
