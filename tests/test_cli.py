"""The command line as a user meets it: help, one-line errors, dry runs, train --no-ray + eval."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reidsearch import cli
from reidsearch.cli import main
from tests.conftest import tiny_config_dict

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reidsearch.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=300,
    )


def _commands(parser: argparse.ArgumentParser, above: tuple[str, ...] = ()) -> list[tuple]:
    """Every (sub)command the parser really has, as argv prefixes (``("data", "info")``)."""
    found = []
    for action in parser._actions:  # argparse keeps its subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(*above, name), *_commands(sub, (*above, name))]
    return found


def _help(capsys, *argv: str) -> str:
    """``reidsearch ARGV --help`` as the console script runs it (``cli:main``): its output,
    after checking that it exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_and_each_has_help(capsys):
    commands = _commands(cli.build_parser())
    assert {"export", "query", "cluster"} <= {c[0] for c in commands}
    for command in commands:  # each under its parent's help, as a row of the command list
        row = re.compile(rf"^ {{4}}{command[-1]}(\s|$)", re.M)
        assert row.search(_help(capsys, *command[:-1])), command
        assert _help(capsys, *command).startswith(f"usage: reidsearch {' '.join(command)}")


@pytest.mark.fault("bad_input")
def test_malformed_search_space_fails_fast_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "fixed": {"model": {"lam": 8.0}},
                "search": {"model.lamda": {"type": "uniform", "low": 0, "high": 1}},
            }
        )
    )
    started = time.perf_counter()
    out = _cli("run", str(bad))
    elapsed = time.perf_counter() - started
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert str(bad) in lines[0] and "model.lamda" in lines[0]
    assert elapsed < 2.0, elapsed


@pytest.mark.fault("bad_input")
def test_missing_files_and_bad_layouts_are_one_line_errors(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert main(["data", "info", str(tmp_path / "missing"), "--layout", "market1501"]) == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    bad_config = tmp_path / "trial.yaml"
    bad_config.write_text("model:\n  head: vit\n")
    assert main(["train", str(bad_config), "--no-ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("reidsearch: error: ") for line in err)
    assert str(tmp_path / "missing") in err[1]
    assert f"{bad_config}: model.head" in err[3]


def test_dry_run_prints_the_resolved_space_without_starting_ray(tmp_path):
    out = _cli("run", str(REPO / "search_spaces" / "quickstart.yaml"), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "model.lam" in out.stdout and "concurrency" in out.stdout
    assert not list(tmp_path.iterdir())  # nothing written


def test_synth_then_data_info(tmp_path, capsys):
    root = tmp_path / "market"
    assert main(["synth", str(root), "--layout", "market1501", "--ids", "6", "--cameras", "3"]) == 0
    assert (
        main(
            [
                "data",
                "info",
                str(root),
                "--layout",
                "market1501",
                "--save",
                str(tmp_path / "m.parquet"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "train" in out and "gallery" in out and (tmp_path / "m.parquet").is_file()


def test_train_without_ray_then_eval_the_best_checkpoint(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(epochs=2)))
    assert (
        main(["train", str(config), "--no-ray", "--output", str(tmp_path / "runs"), "--name", "t"])
        == 0
    )
    best = tmp_path / "runs" / "t" / "best" / "model.pt"
    assert best.is_file() and (tmp_path / "runs" / "t" / "best" / "cmc.png").is_file()
    train_out = capsys.readouterr().out
    assert "epoch   2" in train_out and "img/s" in train_out
    assert main(["eval", "--checkpoint", str(best), "--out", str(tmp_path / "eval"), "--flip"]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "valid queries 32" in out  # 16 ids x 2 cameras
    pictures = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert "cmc.png" in pictures and any(p.startswith("ranked_list_") for p in pictures)
    # Training again under the same name resumes: nothing left to do, history kept.
    assert (
        main(["train", str(config), "--no-ray", "--output", str(tmp_path / "runs"), "--name", "t"])
        == 0
    )
    assert "resuming t from epoch 2" in capsys.readouterr().out
    # ...but not under other model settings: that would silently mix two experiments.
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(tiny_config_dict(epochs=2, **{"model.lam": 1.0})))
    assert (
        main(["train", str(changed), "--no-ray", "--output", str(tmp_path / "runs"), "--name", "t"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other model settings" in err[0]


def test_relative_paths_in_a_config_are_made_absolute(tmp_path, monkeypatch):
    from reidsearch.config import TrialConfig

    monkeypatch.chdir(tmp_path)
    cfg = TrialConfig.model_validate(
        {"data": {"root": "data/market"}, "model": {"weights": "w.safetensors"}}
    )
    assert cfg.data.root == str(tmp_path / "data" / "market")
    assert cfg.model.weights == str(tmp_path / "w.safetensors")


def test_train_accepts_a_search_space_and_trains_its_fixed_settings(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "fixed": tiny_config_dict(epochs=3),
                "search": {"model.lam": {"type": "uniform", "low": 1.0, "high": 2.0}},
            }
        )
    )
    assert (
        main(
            [
                "train",
                str(space),
                "--no-ray",
                "--epochs",
                "1",
                "--output",
                str(tmp_path / "runs"),
                "--name",
                "s",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch   1" in out and "epoch   2" not in out  # --epochs overrides fixed.epochs
    assert (tmp_path / "runs" / "s" / "best" / "model.pt").is_file()
