"""The Python API, for notebooks and scripts: what the commands do, returning objects instead of
printing them. Each function is a thin wrapper over the function its command calls, so the two
cannot drift apart; torch, ray and mlflow are imported only inside the functions.

    import reidsearch

    space = reidsearch.load_space("search_spaces/quickstart.yaml")
    plan, results = reidsearch.run_search(space)
    reidsearch.leaderboard(plan.tracking_uri, plan.experiment).to_frame()
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray import tune

    from reidsearch.config import TrialConfig
    from reidsearch.search.driver.plan import SearchPlan
    from reidsearch.search.results.best_trial import BestTrial
    from reidsearch.search.results.leaderboard import Leaderboard
    from reidsearch.search.space import SearchSpace

__all__ = ["best_trial", "evaluate", "leaderboard", "load_space", "run_search", "train"]


def load_space(path: str | Path) -> SearchSpace:
    """Load and validate a search-space YAML file, as ``reidsearch run`` does before Ray starts
    (a :class:`~reidsearch.errors.ConfigError` names the file and key of any problem)."""
    from reidsearch.search.space import load_search_space

    return load_search_space(path)


def run_search(
    space: SearchSpace | str | Path,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    verbose: int = 0,
    progress: bool = False,
    cluster_file: str | None = None,
    trials: int | None = None,
) -> tuple[SearchPlan, tune.ResultGrid]:
    """Run (or ``resume``) a search, as ``reidsearch run``: returns its plan (``tracking_uri``,
    ``experiment``, ``experiment_dir``) and Tune's results.

    ``address``: a Ray cluster (default: the Ray running on this machine, else an embedded one;
    ``"local"`` always a private one). ``progress`` prints the compact live table, ``verbose``
    Tune's own output instead. ``trials`` overrides the space's ``trials``; with ``resume`` it
    raises a search's total (finished or not) to that many.
    """
    from reidsearch.search.driver.search import run_search as run

    if isinstance(space, (str, Path)):
        space = load_space(space)
    return run(
        space,
        address=address,
        tracking_uri=tracking_uri,
        resume=resume,
        verbose=verbose,
        progress=progress,
        cluster_file=cluster_file,
        trials=trials,
    )


def leaderboard(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    *,
    search: str | None = None,
    all_searches: bool = False,
    top: int = 10,
) -> Leaderboard:
    """The trials of a search, best first, as ``reidsearch leaderboard`` shows them: ``.rows``
    (a list of dicts) or ``.to_frame()`` (a pandas DataFrame).

    Default: the newest search of the newest experiment in ``tracking_uri`` (default:
    ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``); ``search`` is a search's folder name or
    parent run id.
    """
    from reidsearch.search.results.leaderboard import fetch_leaderboard

    return fetch_leaderboard(
        _tracking_uri(tracking_uri), experiment, search=search, all_searches=all_searches, top=top
    )


def best_trial(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    search: str | None = None,
    pick: str | None = None,
) -> BestTrial:
    """The best finished trial of a search by its score (among those meeting ``pick``, e.g.
    ``"cost.feature_bytes <= 4096"``) and the location of its kept checkpoint, as
    ``reidsearch export --best`` finds it; pass it to :func:`evaluate`."""
    from reidsearch.search.results.best_trial import best_trial as find

    return find(_tracking_uri(tracking_uri), experiment, search, pick=pick)


def train(
    config: str | Path | TrialConfig,
    *,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None,
    data: str | Path | None = None,
    layout: str | None = None,
    epochs: int | None = None,
    output: str | Path | None = None,
    name: str | None = None,
    address: str | None = None,
    no_ray: bool = False,
) -> dict[str, Any]:
    """Train one config, as ``reidsearch train``: a trial config file, a search space (its
    ``fixed:`` part with its resources) or a ``TrialConfig``, with these settings overridden.

    Ray Train runs it (DDP over ``workers``), or this process without Ray (``no_ray``). Returns
    ``score``, the ``epoch`` it comes from, ``path`` (the model, for :func:`evaluate`) and the
    ``config`` trained. The same ``name`` and ``output`` resume an earlier run.
    """
    from reidsearch.search.driver.train_run import train_trial

    return train_trial(
        config,
        name=name,
        address=address,
        no_ray=no_ray,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        data=None if data is None else str(data),
        layout=layout,
        epochs=epochs,
        output=None if output is None else str(output),
    )


def evaluate(
    checkpoint: str | Path | BestTrial,
    *,
    data: str | Path | None = None,
    layout: str | None = None,
    rerank: bool | None = None,
    flip: bool | None = None,
    feature: str | None = None,
    use_camera: bool | None = None,
    retrieval: str | None = None,
    out: str | Path = "reidsearch_eval",
) -> dict[str, float]:
    """Score a checkpoint on its dataset (or ``data``), as ``reidsearch eval``: returns the
    metrics (``mAP``, ``rank1``, ``rank5``, ``rank10``, ``mINP``, ...) and writes the CMC and
    ranked-list pictures to ``out``.

    ``checkpoint``: a ``model.pt`` / ``checkpoint.pt`` or its folder, or a :func:`best_trial`
    (its kept checkpoint, downloaded once when it is in s3:// / gs:// storage). ``rerank``,
    ``flip``, ``use_camera`` and ``retrieval`` left None are the checkpoint's own ``eval:``.
    """
    from reidsearch.engine.run_local import evaluate_checkpoint
    from reidsearch.search.results.best_trial import BestTrial, fetch_checkpoint_file
    from reidsearch.storage import data_folder

    if isinstance(checkpoint, BestTrial):
        checkpoint = fetch_checkpoint_file(checkpoint.checkpoint)
    return evaluate_checkpoint(
        Path(checkpoint),
        data=None if data is None else data_folder(str(data)),
        layout=layout,
        rerank=rerank,
        flip=flip,
        feature=feature,
        out_dir=Path(out),
        use_camera=use_camera,
        retrieval=retrieval,
    )


def _tracking_uri(uri: str | None) -> str:
    """The commands' default store: ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``."""
    from reidsearch.search.results.store import default_tracking_uri

    return uri or default_tracking_uri()
