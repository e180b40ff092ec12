"""The loaded search space: fixed settings plus searched parameters, and what a search asks of it
(a trial's resolved config, the grid, the Optuna define-by-run function, a readable summary).

Built and fully validated by :func:`reidsearch.search.space_loading.load_search_space`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reidsearch.config import ObjectiveConfig, ResourcesConfig, TrialConfig, with_overrides
from reidsearch.errors import ConfigError
from reidsearch.redact import mask_secrets
from reidsearch.search.space.choices import describe_sampler, describe_scheduler
from reidsearch.search.space.params import DefineByRun, ParamSpec, format_value
from reidsearch.search.space.rules_of_metrics import MetricRule
from reidsearch.search.space.schema import MlflowSettings, SchedulerSettings
from reidsearch.storage import absolute

__all__ = ["DEFAULT_STORAGE_PATH", "SearchSpace"]

DEFAULT_STORAGE_PATH = "reidsearch_runs"


@dataclass
class SearchSpace:
    """A loaded, fully validated search space (see :mod:`reidsearch.search.space`).

    ``fixed_config`` holds everything every trial shares, the objective and repeats included,
    so a trial's config (``resolve``) carries them too.
    """

    source: Path
    name: str
    description: str | None
    fixed: dict[str, Any]
    fixed_config: TrialConfig
    params: list[ParamSpec]
    searcher: Literal["tpe", "gp", "cmaes", "qmc", "nsga2", "random", "grid"]
    trials: int
    max_concurrent: int
    scheduler: SchedulerSettings
    seed: int
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    warm_start: list[str] = field(default_factory=list)  # earlier searches' folders or run ids
    objectives: list[ObjectiveConfig] = field(default_factory=list)  # [] or [score, ...]
    constraints: list[MetricRule] = field(default_factory=list)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    storage_path: str | None = None
    max_failures: int = 1

    # ---- convenience -------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    @property
    def objective(self) -> ObjectiveConfig:
        """The one score trials are ranked by (kept in ``fixed_config`` for the trials)."""
        return self.fixed_config.objective

    @property
    def all_objectives(self) -> list[ObjectiveConfig]:
        """Every objective, the score's first (one for a single-objective search)."""
        return self.objectives or [self.objective]

    @property
    def multi_objective(self) -> bool:
        return len(self.all_objectives) > 1

    @property
    def metric(self) -> str:
        return self.objective.metric

    @property
    def mode(self) -> str:
        return str(self.objective.mode)

    @property
    def repeats(self) -> int:
        """Seeds each configuration is trained with (side by side; scored by their mean)."""
        return self.fixed_config.repeats

    @property
    def resources(self) -> ResourcesConfig:
        """A trial's resources (the file's ``resources:``, kept in ``fixed_config.scaling``)."""
        return self.fixed_config.scaling

    def trial_epochs(self) -> int:
        """Epochs a trial runs when no scheduler stops it (ASHA's or HyperBand's ``max_t``
        caps it)."""
        epochs = self.fixed_config.epochs
        if self.scheduler.type in ("asha", "hyperband") and self.scheduler.max_t:
            return min(epochs, self.scheduler.max_t)
        return epochs

    @property
    def experiment(self) -> str:
        """MLflow experiment name (defaults to the search name)."""
        return self.mlflow.experiment or self.name

    def storage_root(self) -> str:
        """Where searches keep their results: ``storage_path`` as an ``s3://`` / ``gs://`` URI,
        or an absolute local folder (``./reidsearch_runs`` by default, from the cwd)."""
        return absolute(self.storage_path or DEFAULT_STORAGE_PATH)

    def with_data_root(self, root: str) -> SearchSpace:
        """A copy whose fixed settings read the dataset at ``root`` (the CLI's ``--data``)."""
        fixed = copy.deepcopy(self.fixed)
        fixed.setdefault("data", {})
        if not isinstance(fixed["data"], dict):
            fixed["data"] = {}
        fixed["data"]["root"] = str(root)
        fixed["data"].pop("synthetic", None)
        data = self.fixed_config.data.model_copy(update={"root": str(root), "synthetic": None})
        return dataclasses.replace(
            self, fixed=fixed, fixed_config=self.fixed_config.model_copy(update={"data": data})
        )

    def param(self, key: str) -> ParamSpec:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(key)

    def total_trials(self) -> int:
        """How many trials the search runs in all."""
        if self.searcher == "grid":
            return self.trials * len(self.grid())
        return self.trials

    # ---- resolution --------------------------------------------------------------------

    def resolve(self, params: dict[str, Any], where: str | None = None) -> TrialConfig:
        """Fixed settings plus flat dotted-key overrides, validated as a TrialConfig.

        Raises ConfigError (``FILE: [where: ]key: message``) when the result is invalid.
        """
        return with_overrides(self.fixed_config, params, str(self.source), where)

    # ---- searchers ---------------------------------------------------------------------

    def optuna_define_by_run(self) -> Callable[[Any], None]:
        """Define-by-run function for ``ray.tune.search.optuna.OptunaSearch(space=...)``.

        It calls ``trial.suggest_categorical / suggest_float(log=...) / suggest_int`` for each
        active parameter in order (inactive conditional parameters are skipped, so the fixed
        value applies) and returns None.
        """
        return DefineByRun(self.params)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the choice parameters, in file order (conditions respected)."""
        for p in self.params:
            if p.type != "choice":
                raise ConfigError(
                    f"{self.source}: search.{p.key}: searcher grid needs choice parameters, "
                    f"got {p.type}"
                )
        combos: list[dict[str, Any]] = [{}]
        for p in self.params:
            expanded: list[dict[str, Any]] = []
            for combo in combos:
                if p.when is not None and not p.when.holds(combo):
                    expanded.append(combo)
                else:
                    expanded.extend({**combo, p.key: v} for v in p.values)
            combos = expanded
        return combos

    # ---- reporting ---------------------------------------------------------------------

    def describe(self) -> str:
        """A multi-line summary of the resolved space (for ``reidsearch run --dry-run``), with
        credentials in its URIs masked."""
        c = self.fixed_config
        searched = set(self.keys)

        def fx(key: str, value: Any) -> str:
            return "<searched>" if key in searched else format_value(value)

        data = c.data
        if data.root is None:
            s = data.synthetic
            dataset = (
                f"synthetic {s.layout} ({s.ids} ids, {s.cameras} cameras, "
                f"{s.images_per_camera} images/camera, seed {s.seed})"
                if s is not None
                else "synthetic"
            )
        else:
            dataset = f"{data.layout} at {data.root}"
        unfreeze = c.optim.unfreeze
        lines = [f"search space {self.name}  ({self.source})"]
        if self.description:
            lines.append(f"  {self.description.strip()}")
        lines += [
            "fixed:",
            f"  data       {dataset}, {data.height}x{data.width}",
            f"  model      {c.model.backbone} "
            f"(pretrained {fx('model.pretrained', c.model.pretrained)}"
            + (f", depth {c.model.depth}" if c.model.depth else "")
            + f"), head {fx('model.head', c.model.head)}, lam {fx('model.lam', c.model.lam)}",
            f"  loss       ce {fx('loss.ce_weight', c.loss.ce_weight)}, "
            f"label_smoothing {fx('loss.label_smoothing', c.loss.label_smoothing)}, "
            f"triplet {fx('loss.triplet_weight', c.loss.triplet_weight)} "
            f"(margin {fx('loss.triplet_margin', c.loss.triplet_margin)})",
            f"  optim      {c.optim.name} lr {fx('optim.lr', c.optim.lr)}, "
            f"weight_decay {fx('optim.weight_decay', c.optim.weight_decay)}, "
            f"scheduler {c.optim.scheduler}, unfreeze "
            + (
                f"every {unfreeze.every} epochs (lr x{format_value(unfreeze.lr_mult)})"
                if unfreeze.enabled
                else "off"
            ),
            f"  batch      P={fx('sampler.p', c.sampler.p)} x K={fx('sampler.k', c.sampler.k)}, "
            f"epochs {c.epochs}, eval every {c.eval.period} (flip {c.eval.flip}, "
            f"rerank {c.eval.rerank}), seed {fx('seed', c.seed)}",
            f"searched ({len(self.params)}):",
        ]
        width = max((len(p.key) for p in self.params), default=0)
        for p in self.params:
            cond = f"  when {p.when}" if p.when else ""
            lines.append(f"  {p.key:<{width}}  {p.distribution()}{cond}")
        if not self.params:
            lines.append("  (nothing)")
        lines += [self._describe_objective(), self._describe_repeats()]
        if self.searcher == "grid":
            n = len(self.grid())
            lines.append(
                f"searcher: grid, {n} combination{'s' if n != 1 else ''} x {self.trials} "
                f"trial{'s' if self.trials != 1 else ''} each = {self.total_trials()} trials"
            )
        else:
            lines.append(f"searcher: {self._describe_sampler()}, {self.trials} trials")
        for i, point in enumerate(self.points_to_evaluate):
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in point.items())
            lines.append(f"  first point {i}: {shown}")
        lines.append(f"max_concurrent: {self.max_concurrent}")
        scheduler = describe_scheduler(self.scheduler, self.fixed_config)
        if self.multi_objective and self.scheduler.type == "asha":
            scheduler += "; on the front: a trial on its rung's Pareto front is never stopped"
        lines.append(scheduler)
        r = self.resources
        lines.append(
            f"resources per trial: {r.workers} worker{'s' if r.workers != 1 else ''} x "
            f"({format_value(r.cpus_per_worker)} CPU, {format_value(r.gpus_per_worker)} GPU)"
        )
        lines.append(
            f"mlflow: experiment {self.experiment}, tracking "
            f"{self.mlflow.tracking_uri or 'local sqlite store'}"
        )
        lines.append(f"storage: {self.storage_root()}, max_failures {self.max_failures}")
        return mask_secrets("\n".join(lines))

    @property
    def conditional(self) -> bool:
        """Whether some parameter is searched only under a condition (``when:``)."""
        return any(p.when is not None for p in self.params)

    def _describe_sampler(self) -> str:
        """The Optuna sampler ``build_searcher`` gives the searcher (random: the baseline)."""
        return describe_sampler(self.searcher, self.seed, self.trials, self.conditional)

    def _describe_objective(self) -> str:
        o = self.objective
        how = "best evaluated epoch" if o.reduce == "best" else "last evaluated epoch"
        if o.bound:
            end = "lower" if o.mode == "max" else "upper"
            how += f", {end} end of its 95% bootstrap interval"
        line = f"objective: {o.mode} {o.metric} ({how})"
        for other in self.all_objectives[1:]:
            at = "as measured" if other.is_cost else "at that epoch"
            line += f"; and {other.mode} {other.metric} ({at})"
        if self.multi_objective:
            line += ": a Pareto front"
        if self.constraints:
            line += "; constraints: " + ", ".join(str(rule) for rule in self.constraints)
        return line

    def _describe_repeats(self) -> str:
        n = self.repeats
        if n == 1:
            return "repeats: 1 (one seed per configuration)"
        return (
            f"repeats: {n} (seeds seed..seed+{n - 1} side by side per configuration, "
            "scored by their mean)"
        )
