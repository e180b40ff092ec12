"""Safe defaults on a cluster: servers bound to the head's loopback (reached through the port
forward), Ray's auth on, and files loaded without running pickled code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def _commands(cluster: dict) -> list[str]:
    keys = ("setup_commands", "head_setup_commands", "head_start_ray_commands")
    keys += ("worker_setup_commands", "worker_start_ray_commands")
    return [" ".join(str(c).split()) for key in keys for c in cluster.get(key) or []]


def test_the_cluster_file_serves_mlflow_and_the_dashboard_on_loopback_only():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    commands = _commands(cluster)
    servers = [c for c in commands if "mlflow server" in c]
    heads = [c for c in commands if "ray start --head" in c]
    assert servers and heads
    for command in servers:
        assert re.search(r"--host[ =]127\.0\.0\.1\b", command), command
    for command in heads:
        assert "--dashboard-host=127.0.0.1" in command, command
    for command in commands:
        assert "0.0.0.0" not in command, command
        if "ray start" in command:  # Ray's own token auth on every node
            assert "RAY_AUTH_MODE=token" in command, command
    text = (REPO / "cluster.yaml").read_text().lower()
    assert not re.search(r"(secret|password)\s*[:=]\s*\S+", text)  # placeholders, no secrets


def test_the_mlflow_ui_command_binds_loopback_by_default():
    from reidsearch.cli import build_parser

    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"


def test_every_torch_load_in_the_package_refuses_pickled_code():
    calls = []
    for path in (REPO / "reidsearch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((path.name, keywords.get("weights_only")))
    assert calls and all(flag == "True" for _, flag in calls), calls


class _Payload:  # unpickling this would run code of the pickle's choosing
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.fault("bad_input")
def test_a_checkpoint_with_pickled_code_is_refused_in_one_line(tmp_path, capsys):
    from reidsearch.engine.checkpoint import load_checkpoint
    from reidsearch.errors import ReidSearchError

    bad = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "trap": _Payload()}, bad)
    with pytest.raises(ReidSearchError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert "this ran" not in capsys.readouterr().out
