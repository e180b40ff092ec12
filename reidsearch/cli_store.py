"""``reidsearch store backup|restore``: the head's MLflow tracking store (an sqlite file) copied
to a bucket while the server runs, and put back by the next head's set-up before the server
starts, so that ``ray down`` loses no runs (``search.cluster.tracking_store``)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_store_backup(args: argparse.Namespace) -> int:
    from reidsearch.search.cluster.tracking_store import backup_store

    print(backup_store(args.db, args.to).line())
    return 0


def cmd_store_restore(args: argparse.Namespace) -> int:
    from reidsearch.search.cluster.tracking_store import restore_store

    print(restore_store(args.source, args.db))
    return 0


def add_store_commands(sub: Any) -> None:
    """Register ``store backup`` and ``store restore`` on the top-level subparsers."""
    p = sub.add_parser(
        "store", help="the MLflow tracking store (sqlite): back it up to a bucket, restore it"
    )
    store_sub = p.add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    q = store_sub.add_parser(
        "backup",
        help="copy a live sqlite tracking store (consistent while the server writes) to a URI",
    )
    q.add_argument("--db", required=True, help="the MLflow server's sqlite file")
    q.add_argument(
        "--to", required=True, help="where the copy goes: s3://, gs:// or a local file path"
    )
    q.set_defaults(func=cmd_store_backup)
    q = store_sub.add_parser(
        "restore",
        help="put a backup at --db before the MLflow server starts (never over an existing "
        "store; no backup yet: nothing to do)",
    )
    q.add_argument(
        "--from", dest="source", required=True, help="the backup: s3://, gs:// or a local path"
    )
    q.add_argument("--db", required=True, help="the sqlite file the MLflow server will use")
    q.set_defaults(func=cmd_store_restore)
