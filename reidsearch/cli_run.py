"""``reidsearch run``: a search, its resume, and how an interrupted one says so."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from reidsearch.cli_cluster import check_run_cluster
from reidsearch.errors import ReidSearchError
from reidsearch.redact import (
    MASK,
    mask_secrets,
)  # for what is printed; connections use the real URI
from reidsearch.storage import data_folder


def cmd_run(args: argparse.Namespace) -> int:
    from reidsearch.search.space import load_search_space

    space = load_search_space(args.space)
    if args.data is not None:
        space = space.with_data_root(data_folder(args.data))
    if args.storage is not None:
        space = dataclasses.replace(space, storage_path=args.storage)
    if args.trials is not None and not args.resume:
        space = dataclasses.replace(space, trials=args.trials)
    if args.cluster is not None:  # before Ray starts (the driver checks it once Ray is up)
        check_run_cluster(space, args)
    if args.dry_run:
        from reidsearch.search.driver.plan import plan_search

        plan = plan_search(
            space, address=args.address, tracking_uri=args.tracking_uri, resume=args.resume
        )
        print(space.describe())
        print(plan.describe())
        return 0
    from reidsearch.search.driver.search import run_search
    from reidsearch.search.results.leaderboard import fetch_leaderboard, format_leaderboard

    plan, results = run_search(
        space,
        address=args.address,
        tracking_uri=args.tracking_uri,
        resume=args.resume,
        cluster_file=args.cluster,
        trials=args.trials,
        verbose=1 if args.verbose else 0,
        progress=not args.verbose,
    )
    from reidsearch.search.rules import ended
    from reidsearch.storage import basename

    done = sum(ended(r.error is not None, r.metrics) for r in results)
    if done < space.total_trials():  # Ctrl-C: Tune stopped, saved its state and returned
        print(
            f"reidsearch: search interrupted with {done} of {space.total_trials()} trials "
            f"done; {resume_advice(args)}",
            file=sys.stderr,
        )
        return 130
    board = fetch_leaderboard(
        plan.tracking_uri, plan.experiment, search=basename(plan.experiment_dir), top=args.top
    )
    print(format_leaderboard(board))
    from reidsearch.search.results.ui_view import DEFAULT_UI, search_view, ui_base

    view = search_view(plan.tracking_uri, plan.experiment, basename(plan.experiment_dir))
    if ui_base(plan.tracking_uri) == DEFAULT_UI:  # a local store: its UI is `reidsearch ui`
        print(f"\nreview it: reidsearch ui --tracking-uri {mask_secrets(plan.tracking_uri)}")
    print(f"the trials in MLflow, best first: {mask_secrets(view.url(ui_base(plan.tracking_uri)))}")
    if results.num_errors == len(results):
        from reidsearch.errors import first_line
        from reidsearch.search.trial.failures import user_error_behind

        error = results.errors[0] if results.errors else RuntimeError("unknown")
        cause = user_error_behind(error)
        first = str(cause) if cause is not None else first_line(error)
        raise ReidSearchError(
            f"all {len(results)} trials failed (first: {first}); logs in {plan.experiment_dir}"
        )
    return 0


def _resume_command(args: argparse.Namespace) -> str:
    """The ``run`` command that continues this search: the same options, plus ``--resume``."""
    words = ["reidsearch", "run", str(args.space)]
    for option in ("data", "storage", "tracking_uri", "cluster", "address"):
        value = getattr(args, option)
        if value is not None:
            words += [f"--{option.replace('_', '-')}", mask_secrets(str(value))]
    return " ".join([*words, "--resume"])


def resume_advice(args: argparse.Namespace) -> str:
    """``continue it with: <command>``, saying so when credentials in it are masked: the line
    is printed, so it cannot carry them, and pasted as is the command would fail."""
    command = _resume_command(args)
    if MASK in command:
        return (
            f"continue it with: {command} (fill in the {MASK} parts: credentials are not printed)"
        )
    return f"continue it with: {command}"


def add_run_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a search space (Ray Tune + Optuna + ASHA, MLflow)")
    p.add_argument("space", help="search-space YAML, e.g. search_spaces/quickstart.yaml")
    p.add_argument(
        "--address",
        help="Ray cluster address; default: the Ray already running on this machine (a "
        "`ray up` head node), else an embedded local Ray; 'local' always starts a private one",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db)",
    )
    p.add_argument("--data", help="dataset folder (overrides fixed.data.root)")
    p.add_argument(
        "--storage",
        help="where results and checkpoints go (overrides storage_path): a folder, or an "
        "s3:// / gs:// URI on a cluster of several nodes",
    )
    p.add_argument("--resume", action="store_true", help="resume the latest run of this space")
    p.add_argument(
        "--trials",
        type=int,
        help="how many trials in all (overrides trials:); with --resume, raises the search's "
        "total to this many, finished or not: the searcher continues from what it learned",
    )
    p.add_argument(
        "--cluster",
        help="the cluster file, to size concurrency by the cluster's maximum size (default: "
        "$REIDSEARCH_CLUSTER_FILE, or ~/ray_bootstrap_config.yaml on a `ray up` head)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the resolved space and resources; start nothing",
    )
    p.add_argument("--top", type=int, default=10, help="rows of the final leaderboard")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's full output (Tune's tables, worker logs) instead of the compact live table",
    )
    p.set_defaults(func=cmd_run)
