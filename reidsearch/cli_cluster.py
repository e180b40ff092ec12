"""``reidsearch cluster check``: a Ray cluster file validated offline, and a search space
checked against the largest cluster it can grow to."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def cmd_cluster_check(args: argparse.Namespace) -> int:
    from reidsearch.search.cluster.cluster_file import (
        check_space_against_cluster_file,
        load_cluster_file,
    )

    cluster = load_cluster_file(args.cluster)
    print(f"{args.cluster}: a valid Ray cluster file (provider {cluster.provider})")
    for name, node in cluster.node_types.items():
        res = ", ".join(f"{k} {v:g}" for k, v in node.resources.items())
        count = "head" if name == cluster.head_type else f"{node.min_workers}..{node.max_workers}"
        print(f"  {name:<16} {count:<6} {res}")
    total = ", ".join(f"{k} {v:g}" for k, v in cluster.max_resources().items())
    mix = " + ".join(f"{c} {n}" for n, c in cluster.node_counts().items() if c)
    print(f"  maximum size ({cluster.max_workers} worker nodes at most): {mix}; {total}")
    if args.space is not None:
        from reidsearch.search.space import load_search_space

        space = load_search_space(args.space)
        if args.storage is not None:
            space = dataclasses.replace(space, storage_path=args.storage)
        fits = check_space_against_cluster_file(cluster, space)
        shape = ", ".join(f"{v:g} {k}" for k, v in space.resources.worker_resources().items())
        print(
            f"{args.space}: fits; a trial is {space.resources.workers} worker(s) of {shape}; "
            f"{fits} trials fit at once (max_concurrent {space.max_concurrent})"
        )
    return 0


def check_run_cluster(space: Any, args: argparse.Namespace) -> None:
    """``run --cluster FILE``: the named file, and whether a trial fits it, before Ray starts."""
    from reidsearch.search.driver.preflight import check_cluster_file

    check_cluster_file(space, args.cluster, address=args.address)


def add_cluster_commands(sub: Any) -> None:
    """Register ``cluster check`` on the top-level subparsers."""
    p = sub.add_parser("cluster", help="Ray cluster files (cluster.yaml)")
    cluster_sub = p.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    q = cluster_sub.add_parser(
        "check", help="validate a cluster file offline and check that a search space fits it"
    )
    q.add_argument("cluster", help="Ray cluster launcher YAML, e.g. cluster.yaml")
    q.add_argument("space", nargs="?", help="search-space YAML to check against the cluster")
    q.add_argument("--storage", help="as `run --storage`: overrides the space's storage_path")
    q.set_defaults(func=cmd_cluster_check)
