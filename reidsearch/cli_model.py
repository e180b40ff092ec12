"""``reidsearch export`` and ``reidsearch query``: take a trained model out of reidsearch.

``export`` writes a checkpoint (or a search's best trial, found through MLflow) as ONNX, checked
against torch with onnxruntime; ``query`` finds query images in a folder of images with a
checkpoint or an exported ONNX file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reidsearch.errors import ReidSearchError


def cmd_export(args: argparse.Namespace) -> int:
    from reidsearch.engine.export import card_path, export_checkpoint

    if not args.best and (args.search or args.experiment or args.tracking_uri or args.pick):
        raise ReidSearchError("--search/--experiment/--tracking-uri/--pick go with --best")
    source = None
    if args.best:
        from reidsearch.search.results.best_trial import best_trial, fetch_checkpoint_file
        from reidsearch.search.results.store import default_tracking_uri

        uri = args.tracking_uri or default_tracking_uri()
        best = best_trial(uri, args.experiment, args.search, pick=args.pick)
        print(
            f"best trial {best.run_name} of {best.search}: {best.metric} {best.score:.4f} "
            f"(checkpoint {best.checkpoint})",
            flush=True,
        )
        checkpoint = fetch_checkpoint_file(best.checkpoint)
        source = best.source()
    else:
        checkpoint = Path(args.checkpoint)
    card = export_checkpoint(
        checkpoint, Path(args.out), exporter=args.exporter, flip=args.flip, source=source
    )
    inp, out = card["input"], card["output"]
    print(
        f"wrote {args.out}: input {inp['name']} uint8 N x {inp['height']} x {inp['width']} x 3 "
        f"(RGB), output {out['name']} float32 N x {out['dim']} ({out['feature']}, L2-normalised"
        f"{', flip TTA' if out['flip_tta'] else ''}); {card['exporter']} exporter, onnxruntime "
        f"max |diff| vs torch {card['max_abs_diff']:.1e}"
    )
    print(f"wrote {card_path(args.out)}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from reidsearch.engine.query import format_report, run_query

    report = run_query(
        args.images,
        args.gallery,
        args.model,
        top=args.top,
        out=args.out,
        id_regex=args.id_regex,
        batch_size=args.batch_size,
    )
    print(format_report(report))
    return 0


def add_model_commands(sub: Any) -> None:
    """Register ``export`` and ``query`` on the top-level subparsers."""
    p = sub.add_parser(
        "export", help="write a model as ONNX (checked against torch with onnxruntime)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="model.pt (train/eval) or a search's checkpoint.pt")
    which.add_argument(
        "--best", action="store_true", help="the best trial of a search (from MLflow)"
    )
    p.add_argument("--tracking-uri", help="with --best (default: as `reidsearch leaderboard`)")
    p.add_argument("--experiment", help="with --best: MLflow experiment (default: the newest)")
    p.add_argument("--search", help="with --best: a search's folder name or run id (newest)")
    p.add_argument(
        "--pick",
        help="with --best: the best among the trials meeting a rule, e.g. "
        '"cost.feature_bytes <= 4096" (a model from the front)',
    )
    p.add_argument("--out", default="model.onnx", help="ONNX file; its JSON goes beside it")
    p.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="torch's torch.export-based exporter (default) or the legacy TorchScript one",
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test-time augmentation inside the graph (default: the trial's eval.flip)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("query", help="find query images in a folder of images (FAISS top-k)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image(s)")
    p.add_argument("--gallery", required=True, help="folder of images (searched recursively)")
    p.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        required=True,
        help="model.pt / checkpoint.pt, or an .onnx export",
    )
    p.add_argument("--top", type=int, default=10, help="matches per query")
    p.add_argument(
        "--out",
        default="ranked.png",
        help="ranked-list picture (several queries: NAME_1.png, NAME_2.png, ...)",
    )
    p.add_argument(
        "--id-regex",
        help="identity of an image for the picture's green/red borders: the first group of "
        "this regex in its path (default: its parent folder's name), e.g. '/(\\d{4})_c' for "
        "Market-1501 names",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_query)
