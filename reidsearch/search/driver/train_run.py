"""One training run, as ``reidsearch train`` and ``reidsearch.train`` do it: a trial config (a
file, a search space's ``fixed:`` part, or a ``TrialConfig``), the command's overrides, then
Ray Train (``single_trial``) or this process without Ray (``engine.run_local``).

Imports no ray, torch or mlflow at the top: a ``no_ray`` run on a bare GPU machine needs none
of Ray, and the runner is imported only once chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reidsearch.config import TrialConfig, read_yaml, trial_config_from_dict, with_overrides
from reidsearch.search.space.loading import refuse_cpu_sync_batchnorm
from reidsearch.storage import data_folder

# The run's options and the settings they override (the CLI's flags have the same names).
TRAIN_OVERRIDES = {
    "workers": "scaling.workers",
    "gpus_per_worker": "scaling.gpus_per_worker",
    "cpus_per_worker": "scaling.cpus_per_worker",
    "epochs": "epochs",
    "layout": "data.layout",
    "output": "output_dir",
    "data": "data.root",
}
DEFAULT_OUTPUT = "reidsearch_runs"


def read_train_config(path: str | Path) -> TrialConfig:
    """A trial config file, or a search space's fixed settings with its resources (a space is
    recognised by its ``fixed:`` key), so that one trial of a space can be trained alone."""
    raw = read_yaml(path)
    if "fixed" in raw:
        from reidsearch.search.space import load_search_space

        return load_search_space(path).fixed_config
    return trial_config_from_dict(raw, str(path))


def train_config(
    config: str | Path | TrialConfig, *, no_ray: bool = False, **options: Any
) -> TrialConfig:
    """The config ``train_trial`` trains: ``config`` with ``options`` (the keys of
    ``TRAIN_OVERRIDES``; None leaves the config's setting) applied, checked before Ray starts.

    ``workers`` > 1 also sets ``scaling.runner: ray_train``: ``train`` always runs on Ray Train
    (or in this process), a space's ``runner: trial_process`` only concerns searches, and it
    would refuse the second worker.
    """
    unknown = sorted(set(options) - set(TRAIN_OVERRIDES))
    if unknown:
        raise TypeError(f"train_trial: unknown option(s) {', '.join(unknown)}")
    if isinstance(config, TrialConfig):
        base, source = config, "<config>"
    else:
        base, source = read_train_config(config), str(config)
    if options.get("data") is not None:  # checked once the config reads well, as before
        options["data"] = data_folder(str(options["data"]))
    overrides = {TRAIN_OVERRIDES[key]: value for key, value in options.items() if value is not None}
    if (options.get("workers") or 1) > 1:
        overrides["scaling.runner"] = "ray_train"
    cfg = with_overrides(base, overrides) if overrides else base
    if cfg.ddp.sync_batchnorm and not no_ray:  # without Ray: one process, no SyncBatchNorm
        where = f"{source}: ddp.sync_batchnorm"
        refuse_cpu_sync_batchnorm(cfg.scaling, where, "scaling.gpus_per_worker (--gpus-per-worker)")
    return cfg


def train_trial(
    config: str | Path | TrialConfig,
    *,
    name: str | None = None,
    address: str | None = None,
    no_ray: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Train one config; returns the run's ``score``, the ``epoch`` it comes from, the ``path``
    of the exported model (what ``reidsearch eval`` reads) and the ``config`` trained.

    ``options`` are the keys of ``TRAIN_OVERRIDES`` (see ``train_config``). ``name`` defaults
    to the config file's stem (a run of the same name and output resumes).
    """
    cfg = train_config(config, no_ray=no_ray, **options)
    stem = "train" if isinstance(config, TrialConfig) else Path(config).stem
    output = Path(cfg.output_dir or DEFAULT_OUTPUT).expanduser().resolve()
    if no_ray:
        from reidsearch.engine.run_local import train_locally

        best = train_locally(cfg, output, name=name or stem)
    else:
        from reidsearch.search.driver.single_trial import train_on_ray

        best = train_on_ray(cfg, output, name=name or stem, address=address)
    return {**best, "config": cfg}
