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
    """Register ``cluster check`` and ``cluster on-premise`` on the top-level subparsers."""
    p = sub.add_parser("cluster", help="Ray cluster files (cluster.yaml)")
    cluster_sub = p.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    q = cluster_sub.add_parser(
        "check", help="validate a cluster file offline and check that a search space fits it"
    )
    q.add_argument("cluster", help="Ray cluster launcher YAML, e.g. cluster.yaml")
    q.add_argument("space", nargs="?", help="search-space YAML to check against the cluster")
    q.add_argument("--storage", help="as `run --storage`: overrides the space's storage_path")
    q.set_defaults(func=cmd_cluster_check)
    add_on_premise_command(cluster_sub)


def cmd_cluster_on_premise(args: argparse.Namespace) -> int:
    import yaml

    from reidsearch.search.cluster.on_premise import on_premise_config

    given = (("CPU", args.worker_cpus), ("GPU", args.worker_gpus))
    overrides = {k: v for k, v in given if v is not None}
    config = on_premise_config(
        args.cluster, args.head_ip, args.worker_ip or [], args.ssh_user, args.ssh_key,
        worker_type=args.worker_type, worker_resources=overrides,
    )
    text = yaml.safe_dump(config, sort_keys=False, width=100)
    header = f"# Made by `reidsearch cluster on-premise` from {args.cluster}: edit that file.\n"
    if args.output in (None, "-"):
        print(header + text, end="")
    else:
        from pathlib import Path

        Path(args.output).write_text(header + text)
        workers = len(config["provider"]["worker_ips"])
        print(f"{args.output}: the on-premise cluster file (the head and {workers} worker "
              f"machine(s)); start it with `ray up {args.output}`")
    return 0


def add_on_premise_command(cluster_sub: Any) -> None:
    q = cluster_sub.add_parser(
        "on-premise",
        help="the cluster file's commands on machines you have (Ray's local provider, over ssh)",
    )
    q.add_argument("cluster", help="the cloud cluster file, e.g. cluster.yaml")
    q.add_argument("--head-ip", required=True, help="address of the machine that becomes the head")
    q.add_argument("--worker-ip", action="append", help="a worker machine's address (repeat)")
    q.add_argument("--ssh-user", required=True, help="the user ssh logs in as on every machine")
    q.add_argument("--ssh-key", required=True, help="the private key that logs in (a path)")
    q.add_argument("--worker-type", help="node type whose resources the workers have "
                   "(default: the file's first worker type)")
    q.add_argument("--worker-cpus", type=int, help="CPUs of each worker machine")
    q.add_argument("--worker-gpus", type=int, help="GPUs of each worker machine")
    q.add_argument("-o", "--output", help="file to write (default: standard output)")
    q.set_defaults(func=cmd_cluster_on_premise)
