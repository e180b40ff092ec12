"""The documented cluster workflow, run for real: ``ray up``, a search, the leaderboard through a
port forward, ``ray down``, a new head that finds everything, ``--resume``.

Two hosts made on this machine (tests/ssh_hosts.py: each its own address, sshd, home, /tmp and
processes) take the part of the cloud's machines; the cluster file is ``cluster.yaml`` itself,
with its bucket placeholder filled in and turned into Ray's local-provider file by
``reidsearch cluster on-premise``, so its file mounts, setup, head setup and start commands are
what runs (over ssh, token auth across hosts). The hosts' Python is this venv, as an image holds
the dependencies; the bucket is a local S3 server. Each phase's time is printed, and written as
JSON where ``REIDSEARCH_RAY_UP_REPORT`` names a file (the figures in the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster_harness import s3_server
from tests.conftest import tiny_config_dict, tiny_space
from tests.ssh_hosts import ensure_openssh, ssh_hosts

pytestmark = pytest.mark.cluster
mlflow = pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VENV = Path(sys.prefix)
EXPERIMENT = "rehearsal"
SPACE = f"{EXPERIMENT}.yaml"


def _run(cmd: list[str], env: dict, timeout: float = 600, cwd: Path = REPO):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(cmd[:4])}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


@contextlib.contextmanager
def _forward(onprem: Path, env: dict, ports: list[int]):
    """Local ports forwarded to the head's, as ``ray attach -p PORT`` does (ssh -L)."""
    cmd = [str(BIN / "ray"), "exec", str(onprem), "sleep 3600"]
    for port in ports:
        cmd += ["--port-forward", str(port)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        for port in ports:
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                assert time.monotonic() < deadline, f"port {port} was not forwarded"
                time.sleep(0.5)
        yield
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def _space(folder: Path, storage: str) -> Path:
    """The search the rehearsal submits: its folder holds ``rehearsal.yaml``."""
    folder.mkdir(parents=True, exist_ok=True)
    fixed = tiny_config_dict(epochs=1, **{"data.synthetic.seed": 13})
    tiny_space(
        folder,
        EXPERIMENT,
        fixed=fixed,
        seed=0,
        storage_path=storage,
        resources={"workers": 1, "cpus_per_worker": 1},  # Ray Train, on the worker
        mlflow={"experiment": EXPERIMENT},
    )  # the server: MLFLOW_TRACKING_URI on the head
    return folder


def _cluster_file(root: Path, bucket: str, head, worker, key: Path) -> Path:
    """cluster.yaml with the bucket filled in, turned into the local-provider file."""
    cloud = root / "cluster.yaml"
    cloud.write_text((REPO / "cluster.yaml").read_text().replace("YOUR-BUCKET", bucket))
    local = root / "onprem.yaml"
    cmd = [
        str(BIN / "reidsearch"),
        "cluster",
        "on-premise",
        str(cloud),
        "--head-ip",
        head.ip,
        "--worker-ip",
        worker.ip,
        "--ssh-user",
        "root",
        "--ssh-key",
        str(key),
        "--worker-cpus",
        "2",
        "--worker-gpus",
        "0",
        "-o",
        str(local),
    ]
    _run(cmd, dict(os.environ))
    return local


def _trials(uri: str) -> list:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("reidsearch.kind") == "trial"]


def _worker_setup_seconds(head) -> float | None:
    """The worker's set-up as the head's autoscaler timed it (its NodeUpdater's LogTimer)."""
    logs = sorted(head.tmp.glob("ray/session_2*/logs/monitor.out"))
    text = logs[-1].read_text(errors="replace") if logs else ""
    found = re.findall(r"Setup commands succeeded \[LogTimer=(\d+)ms\]", text)
    return round(int(found[-1]) / 1000, 1) if found else None


@pytest.mark.skipif(os.geteuid() != 0, reason="makes hosts (network namespaces, sshd): needs root")
def test_ray_up_search_ray_down_and_a_new_head_finds_and_resumes_it():
    ensure_openssh()
    phases: dict[str, float | None] = {}
    root = Path(f"/var/tmp/reidsearch-ray-up-{os.getpid()}")  # not under /tmp: hosts bind it
    shutil.rmtree(root, ignore_errors=True)
    laptop = root / "laptop"  # the user's machine: its own home (token, ssh state), its /tmp
    (laptop / ".reidsearch-ray").mkdir(parents=True)
    (laptop / ".reidsearch-ray" / "token").write_text(os.urandom(32).hex())
    (laptop / "tmp").mkdir()
    image = f"export PATH={VENV}/bin:$PATH\n"
    try:
        with ssh_hosts(["head", "worker"], root, VENV, bashrc=image) as lab:
            with s3_server(bucket="rehearsal", log_dir=root, host=lab.gateway) as s3:
                # The instances' credentials and endpoint, as a role and a VPC would give them.
                lab.bashrc = image + "".join(f"export {k}={v}\n" for k, v in s3.env.items())
                for host in lab.hosts:
                    (host.home / ".bashrc").write_text(lab.bashrc)
                _rehearse(lab, laptop, s3, phases)
        shutil.rmtree(root, ignore_errors=True)  # kept after a failure: the hosts' logs
    finally:
        report = os.environ.get("REIDSEARCH_RAY_UP_REPORT")
        if report:
            Path(report).write_text(json.dumps(phases, indent=1))
        print("ray up rehearsal, seconds per phase:", json.dumps(phases))


def _rehearse(lab, laptop: Path, s3, phases: dict) -> None:
    head, worker = lab.hosts
    onprem = _cluster_file(lab.root, s3.bucket, head, worker, lab.key)
    env = {
        **os.environ,
        "HOME": str(laptop),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(laptop / ".reidsearch-ray" / "token"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "TMPDIR": str(laptop / "tmp"),
        "RAY_TMPDIR": str(laptop / "tmp"),
    }  # the launcher's state: laptop/tmp/ray
    for name in ("RAY_ADDRESS", "RAY_UP_enable_autoscaler_v2"):  # as a user has them: unset
        env.pop(name, None)
    ray = str(BIN / "ray")
    job = _space(lab.root / "job", s3.uri("runs"))

    def timed(name: str, cmd: list[str]) -> subprocess.CompletedProcess:
        start = time.monotonic()
        out = _run(cmd, env, timeout=900)
        phases[name] = round(time.monotonic() - start, 1)
        return out

    timed("up (head: sync, setup, MLflow, ray start)", [ray, "up", "-y", str(onprem)])
    submitted = time.time()
    with _forward(onprem, env, [8265, 5000]):  # the job server and MLflow, token auth on
        timed(
            "search: job submit to end (2 trials x 1 epoch)",
            [
                ray,
                "job",
                "submit",
                "--address",
                "http://127.0.0.1:8265",
                "--working-dir",
                str(job),
                "--",
                "reidsearch",
                "run",
                SPACE,
            ],
        )
        trials = _trials("http://127.0.0.1:5000")  # the leaderboard, through the forward
        board = _run(
            [
                str(BIN / "reidsearch"),
                "leaderboard",
                "--tracking-uri",
                "http://127.0.0.1:5000",
                "--experiment",
                EXPERIMENT,
            ],
            env,
        )
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    rows = [line for line in board.stdout.splitlines() if " finished " in line]
    assert len(rows) == 2, board.stdout  # `reidsearch leaderboard` through the forward
    for trial in trials:
        assert f"{float(trial.data.params['model.lam']):.3f}" in board.stdout, board.stdout
    first = min(t.info.start_time for t in trials) / 1000
    phases["first trial started, after submit"] = round(first - submitted, 1)
    phases["worker setup (autoscaler's timer)"] = _worker_setup_seconds(head)
    scores = sorted(t.data.metrics["score"] for t in trials)
    (node,) = {t.data.tags["reidsearch.nodes"] for t in trials}  # the worker (head: CPU 0)

    timed("down", [ray, "down", "-y", str(onprem)])
    for host in lab.hosts:  # terminated with `ray down`: processes and disks gone
        lab.replace_machine(host)
    assert not (head.home / "mlflow").exists()

    timed("up again (a new head restores the store)", [ray, "up", "-y", str(onprem)])
    with _forward(onprem, env, [5000]):
        again = _trials("http://127.0.0.1:5000")
    assert sorted(t.data.metrics["score"] for t in again) == scores
    # `ray exec` on the new head: the same search, extended to 3 trials.
    _run([ray, "rsync-up", str(onprem), str(job / SPACE), SPACE], env)
    timed(
        "resume to 3 trials (ray exec)",
        [ray, "exec", str(onprem), f"reidsearch run {SPACE} --resume --trials 3"],
    )
    with _forward(onprem, env, [5000]):
        resumed = _trials("http://127.0.0.1:5000")
    assert len(resumed) == 3
    kept = {t.info.run_id: t.data.metrics["score"] for t in again}
    assert sorted(t.data.metrics["score"] for t in resumed if t.info.run_id in kept) == scores
    _run([ray, "down", "-y", str(onprem)], env)
