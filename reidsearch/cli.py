"""``reidsearch`` command line: run | train | eval | leaderboard | ui | synth | data info |
cluster check | store backup/restore.

Heavy imports (torch, ray, mlflow) happen inside the commands, so ``--help`` and validation of
a malformed file answer at once. User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from reidsearch import __version__
from reidsearch.cli_cluster import add_cluster_commands
from reidsearch.cli_model import add_model_commands
from reidsearch.cli_run import add_run_command
from reidsearch.cli_store import add_store_commands
from reidsearch.config import LAYOUTS, RETRIEVALS
from reidsearch.errors import ReidSearchError
from reidsearch.redact import mask_secrets  # for what is printed; connections use the real URI
from reidsearch.storage import data_folder


# --------------------------------------------------------------------------------- commands
def cmd_synth(args: argparse.Namespace) -> int:
    from reidsearch.data.synthetic import generate_synthetic

    summary = generate_synthetic(
        Path(args.out),
        layout=args.layout,
        ids=args.ids,
        test_ids=args.test_ids,
        cameras=args.cameras,
        images_per_camera=args.images_per_camera,
        height=args.height,
        width=args.width,
        seed=args.seed,
    )
    print(f"wrote a synthetic {args.layout} dataset to {args.out}")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from reidsearch.data.manifest import format_summary, save_manifest
    from reidsearch.data.parsers import parse_dataset

    table = parse_dataset(Path(args.root), args.layout, camera_regex=args.camera_regex)
    print(format_summary(table))
    if args.save:
        save_manifest(table, Path(args.save))
        print(f"manifest written to {args.save}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from reidsearch.search.driver.train_run import TRAIN_OVERRIDES, train_trial

    options = {key: getattr(args, key, None) for key in TRAIN_OVERRIDES}
    best = train_trial(
        args.config, name=args.name, address=args.address, no_ray=args.no_ray, **options
    )
    objective = best["config"].objective
    print(
        f"score ({objective.metric}, {objective.reduce} epoch) {best['score']:.4f} "
        f"at epoch {best['epoch']}; model written to {mask_secrets(str(best['path']))}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from reidsearch.engine.run_local import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        Path(args.checkpoint),
        data=data_folder(args.data) if args.data is not None else None,
        layout=args.layout,
        rerank=args.rerank,
        flip=args.flip,
        feature=args.feature,
        out_dir=Path(args.out),
        use_camera=args.use_camera,
        retrieval=args.retrieval,
    )
    print(
        f"mAP {100 * metrics['mAP']:.2f} | rank-1 {100 * metrics['rank1']:.2f} | "
        f"rank-5 {100 * metrics['rank5']:.2f} | rank-10 {100 * metrics['rank10']:.2f} | "
        f"mINP {100 * metrics['mINP']:.2f} | valid queries "
        f"{int(metrics['num_valid_queries'])}"
    )
    print(f"pictures written to {args.out}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from reidsearch.search.results.dashboard import search_study
    from reidsearch.search.results.store import default_tracking_uri

    study = search_study(args.tracking_uri or default_tracking_uri(), args.experiment, args.search)
    base = f"http://{args.host}:{args.port}"
    print(f"{study.label}: its Optuna study on {study.url(base)} ({study.journal})", flush=True)
    run_server(study.storage(), host=args.host, port=args.port)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from reidsearch.search.results.leaderboard import fetch_leaderboard, format_leaderboard
    from reidsearch.search.results.store import default_tracking_uri

    board = fetch_leaderboard(
        args.tracking_uri or default_tracking_uri(),
        args.experiment,
        search=args.search,
        all_searches=args.all,
        top=args.top,
    )
    print(format_leaderboard(board))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from reidsearch.search.results.store import default_tracking_uri, existing_store
    from reidsearch.search.results.ui_view import search_view

    uri = existing_store(args.tracking_uri or default_tracking_uri())

    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    try:  # the newest search (or --search), as a leaderboard in the runs table
        view = search_view(uri, args.experiment, args.search)
        print(f"{view.name}, best first: {view.url(f'http://{host}:{args.port}')}")
    except ReidSearchError as error:
        if args.search is not None:
            raise
        print(f"no search to show yet ({mask_secrets(str(error))})")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    print(f"MLflow UI on http://{args.host}:{args.port} ({mask_secrets(uri)})", flush=True)
    os.execv(sys.executable, command)
    return 0  # pragma: no cover


# ----------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reidsearch",
        description="Hyperparameter search for transformer person re-ID (ViT + LA-TF/LA-TF++) "
        "on Ray Tune + Optuna, tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"reidsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_run_command(sub)

    p = sub.add_parser("train", help="train one trial config on Ray Train (DDP on N workers)")
    p.add_argument("config", help="trial config YAML, or a search space (its fixed: settings)")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--data", help="dataset folder (overrides data.root)")
    p.add_argument("--layout", choices=LAYOUTS)
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--out",
        "--output",
        dest="output",
        help="folder the best model is written to (default reidsearch_runs)",
    )
    p.add_argument("--name", help="run name (default: the config's file name)")
    p.add_argument(
        "--address",
        help="Ray cluster address (default: a Ray running on this machine, else an embedded "
        "one; 'local' always starts a private one)",
    )
    p.add_argument(
        "--no-ray",
        action="store_true",
        help="train in this process without Ray (one device; e.g. a bare GPU box)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: mAP, CMC, mINP, pictures")
    p.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        required=True,
        help="model.pt / checkpoint.pt or its folder",
    )
    p.add_argument("--data", help="dataset folder (default: the checkpoint config's dataset)")
    p.add_argument("--layout", choices=LAYOUTS)
    # Unset evaluation settings are the checkpoint's own (its config's eval: section), so that
    # eval re-scores a trial as its search scored it.
    own = "(default: the checkpoint's eval.{})"
    p.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        help=f"k-reciprocal re-ranking (20/6/0.3) {own.format('rerank')}",
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help=f"flip test-time augmentation {own.format('flip')}",
    )
    p.add_argument("--feature", help="test-time feature of the head (default: the config's)")
    p.add_argument(
        "--use-camera",
        action=argparse.BooleanOptionalAction,
        help="drop same-camera matches; --no-use-camera (or --no-camera) keeps them, for "
        f"datasets without usable camera ids {own.format('use_camera')}",
    )
    p.add_argument("--no-camera", dest="use_camera", action="store_false", help=argparse.SUPPRESS)
    p.add_argument(
        "--retrieval",
        choices=RETRIEVALS,
        help="what ranks CMC/rank-k: FAISS lists or the exact counting (auto: FAISS on a GPU); "
        f"mAP/mINP are always exact {own.format('retrieval')}",
    )
    p.add_argument("--out", default="reidsearch_eval", help="folder for the PNG pictures")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("leaderboard", help="print the best trials of a search from MLflow")
    p.add_argument("--experiment", help="MLflow experiment (default: the newest)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--search", help="a search's folder name (e.g. quickstart-20261125-101500) or run id"
    )
    which.add_argument("--all", action="store_true", help="every search of the experiment")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--tracking-uri")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser(
        "ui", help="start the MLflow UI (bound to 127.0.0.1) and print a search's leaderboard link"
    )
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment", help="MLflow experiment (default: the newest)")
    p.add_argument("--search", help="a search's folder name or run id (default: the newest)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser(
        "dashboard", help="start optuna-dashboard (127.0.0.1) on a search's study, live"
    )
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment", help="MLflow experiment (default: the newest)")
    p.add_argument("--search", help="a search's folder name or run id (default: the newest)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("synth", help="generate a synthetic re-ID dataset in a chosen layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--layout", choices=LAYOUTS, default="latfpp")
    p.add_argument("--ids", type=int, default=40, help="train identities")
    p.add_argument("--test-ids", type=int, help="query/gallery identities (default: --ids)")
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--images-per-camera", type=int, default=4)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    q = data_sub.add_parser("info", help="parse a dataset folder and print its statistics")
    q.add_argument("root")
    q.add_argument("--layout", choices=LAYOUTS, required=True)
    q.add_argument("--camera-regex", help="generic layout: regex with one group for the camera")
    q.add_argument("--save", help="also write the manifest as Parquet to this file")
    q.set_defaults(func=cmd_data_info)

    add_cluster_commands(sub)
    add_model_commands(sub)
    add_store_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ReidSearchError as err:
        print(f"reidsearch: error: {mask_secrets(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reidsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
