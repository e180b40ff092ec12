"""First-use roughness: searches started in the same second, ``train --workers 2`` on the
quickstart space, SyncBatchNorm on CPU workers refused in one line before Ray, and a resume
command whose credentials are masked. None of these tests starts Ray."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reidsearch
from reidsearch.errors import ConfigError
from reidsearch.search.driver.plan import (
    claim_experiment_dir,
    latest_experiment_dir,
    plan_search,
)
from reidsearch.search.driver.train_run import train_config

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
NOON = time.mktime((2026, 12, 3, 12, 0, 0, 0, 0, -1))  # 2026-12-03 12:00:00, local time


def _space(tmp_path: Path, storage: str | None = None):
    path = tmp_path / "x.yaml"
    path.write_text(
        f"name: x\nstorage_path: {storage or tmp_path / 'runs'}\n"
        "search: {model.lam: {type: uniform, low: 1, high: 2}}\n"
    )
    return reidsearch.load_space(path)


# ------------------------------------------------------------- one folder per search
def test_the_plan_names_the_folder_by_the_clock(tmp_path):
    space = _space(tmp_path)
    plan = plan_search(
        space, address="local", tracking_uri="sqlite:///x.db", resume=False, now=NOON
    )
    assert plan.experiment_dir == str(tmp_path / "runs" / "x-20261203-120000")
    assert not (tmp_path / "runs").exists()  # the plan creates nothing (--dry-run prints it)


@pytest.mark.parametrize("uri", [False, True], ids=["local", "uri"])
def test_searches_started_in_the_same_second_get_their_own_folders(tmp_path, uri):
    root = f"file://{tmp_path / 'runs'}" if uri else str(tmp_path / "runs")
    space = _space(tmp_path, root)
    claimed = []
    for _ in range(3):  # three `reidsearch run` of one space, planned in the same second
        plan = plan_search(
            space, address="local", tracking_uri="sqlite:///x.db", resume=False, now=NOON
        )
        claimed.append(claim_experiment_dir(plan.experiment_dir))
    stamp = "x-20261203-120000"
    assert [name.rsplit("/", 1)[-1] for name in claimed] == [stamp, f"{stamp}-2", f"{stamp}-3"]
    assert all((tmp_path / "runs" / name.rsplit("/", 1)[-1]).is_dir() for name in claimed)


def test_a_claimed_uri_keeps_its_query_at_the_end():
    from reidsearch.search.driver.plan import numbered

    assert numbered("s3://b/runs/x-1-2?region=eu", 2) == "s3://b/runs/x-1-2-2?region=eu"
    assert numbered("/r/x-1-2", 1) == "/r/x-1-2"


def test_resume_finds_the_newest_folder_suffixes_included(tmp_path):
    space = _space(tmp_path)
    runs = tmp_path / "runs"
    names = ["x-20261203-120000", "x-20261203-120000-2", "x-20261203-120000-9"]
    names += ["x-20261203-120000-10", "x-20261203-115959-11", "x-other-20261203-130000"]
    for name in names:
        (runs / name).mkdir(parents=True)
    assert latest_experiment_dir(space) == str(runs / "x-20261203-120000-10")
    (runs / "x-20261203-120001").mkdir()
    assert latest_experiment_dir(space) == str(runs / "x-20261203-120001")


# ------------------------------------------------------------- reidsearch train
def test_train_workers_2_on_the_quickstart_space_runs_on_ray_train():
    cfg = train_config(QUICKSTART, workers=2)
    assert (cfg.scaling.workers, cfg.scaling.runner) == (2, "ray_train")


def test_train_workers_1_keeps_the_spaces_runner():
    cfg = train_config(QUICKSTART, workers=1)
    assert (cfg.scaling.workers, cfg.scaling.runner) == (1, "trial_process")
    assert train_config(QUICKSTART).scaling.runner == "trial_process"


def test_train_refuses_sync_batchnorm_on_cpu_workers(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("ddp: {sync_batchnorm: true}\nscaling: {gpus_per_worker: 0}\n")
    with pytest.raises(ConfigError) as err:
        train_config(path, workers=2)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ddp.sync_batchnorm: ") and "GPU" in msg, msg
    assert "\n" not in msg
    train_config(path, workers=1)  # one worker: SyncBatchNorm changes nothing
    train_config(path, workers=2, gpus_per_worker=1)


@pytest.mark.fault("bad_input")
def test_the_train_command_refuses_it_in_one_line_before_ray(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("ddp: {sync_batchnorm: true}\n")
    out = subprocess.run(
        [sys.executable, "-m", "reidsearch", "train", str(path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: ddp.sync_batchnorm: " in lines[0], out.stderr


# ------------------------------------------------------------- the resume command
def _run_args(**options) -> argparse.Namespace:
    values = dict(space="s.yaml", data=None, storage=None, tracking_uri=None)
    values |= dict(cluster=None, address=None)
    return argparse.Namespace(**(values | options))


def test_a_resume_command_with_masked_credentials_says_to_fill_them_in():
    from reidsearch.cli_run import resume_advice

    line = resume_advice(_run_args(storage="s3://KEY:SECRET@bucket/runs"))
    assert "SECRET" not in line and "***" in line
    assert "reidsearch run s.yaml --storage s3://***:***@bucket/runs --resume" in line
    assert "fill in" in line
    plain = resume_advice(_run_args(storage="/data/runs"))
    assert plain == "continue it with: reidsearch run s.yaml --storage /data/runs --resume"


# ------------------------------------------------------------- SyncBatchNorm in a space
@pytest.mark.parametrize(
    "text",
    [
        "resources: {workers: 2, gpus_per_worker: 1}\nfixed: {ddp: {sync_batchnorm: true}}\n",
        "resources: {workers: 1}\nfixed: {ddp: {sync_batchnorm: true}}\n",
        "resources: {workers: 2}\nsearch: {ddp.sync_batchnorm: {type: choice, values: [false]}}\n",
    ],
    ids=["gpu-workers", "one-worker", "never-on"],
)
def test_sync_batchnorm_that_can_run_loads(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text("search: {model.lam: {type: uniform, low: 1, high: 2}}\n" + text)
    if "search:" in text:
        path.write_text(text)
    reidsearch.load_space(path)
