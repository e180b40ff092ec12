"""Nothing lost on ``ray down``: the head's MLflow store (sqlite) is backed up to the bucket while
its server runs and as a search goes, and put back by the next head before its server starts.

Real parts only: sqlite, ``mlflow server`` processes, moto's S3 server, a real small search."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from reidsearch.cli import main  # noqa: E402
from reidsearch.search.cluster.tracking_store import BACKUP_ENV, DB_ENV, restore_store  # noqa: E402
from reidsearch.search.driver.store_backup import TrackingStoreBackup, store_backups  # noqa: E402
from tests.cluster_harness import mlflow_server, s3_fixture  # noqa: E402, F401 - the s3 fixture
from tests.conftest import tiny_space  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def s3_env(s3, monkeypatch):  # noqa: F811
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


def _runs(uri: str) -> dict[str, tuple]:
    """Every run of every experiment: status, params, tags and each metric's whole history."""
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = {}
    for run in client.search_runs(experiments, max_results=1000):
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics
        }
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        found[run.info.run_id] = (run.info.status, run.data.params, tags, history)
    return found


def _mlflow_db(path: Path, runs: int = 2) -> Path:
    """A real MLflow store (sqlite, created by MLflow) with ``runs`` runs."""
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{path}")
    experiment = client.create_experiment("kept")
    for i in range(runs):
        run = client.create_run(experiment).info.run_id
        client.log_param(run, "lr", str(0.1 * (i + 1)))
        client.log_metric(run, "mAP", 0.5 + i / 10, step=0)
        client.set_terminated(run)
    return path


def _one_line(capsys) -> tuple[str, str]:
    out, err = capsys.readouterr()
    return out.strip(), err.strip()


@pytest.mark.fault("fault")
def test_a_store_backed_up_while_its_server_writes_comes_back_whole_on_a_new_head(
    s3_env, tmp_path, capsys
):
    backup = s3_env.uri("reidsearch/mlflow/mlflow.db")
    old_head, new_head = tmp_path / "old-head", tmp_path / "new-head"
    with mlflow_server(old_head) as uri:
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("latfpp")
        for i in range(3):
            run = client.create_run(experiment, tags={"reidsearch.kind": "trial"}).info.run_id
            client.log_param(run, "lr", str(1e-3 * (i + 1)))
            client.log_param(run, "head", "latfpp")
            for epoch in range(4):
                client.log_metric(run, "mAP", 0.1 * epoch + i / 100, step=epoch)
            client.set_terminated(run)
        finished = _runs(uri)
        # A trial still logging through the server while the copy is taken.
        live = client.create_run(experiment).info.run_id
        stop, errors, logged = threading.Event(), [], []

        def keep_logging() -> None:
            while not stop.is_set():
                try:
                    client.log_metric(live, "loss", 1.0 / (len(logged) + 1), step=len(logged))
                    logged.append(1)
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

        writer = threading.Thread(target=keep_logging)
        writer.start()
        try:
            while len(logged) < 20:
                time.sleep(0.05)
            assert (
                main(["store", "backup", "--db", str(old_head / "mlflow.db"), "--to", backup]) == 0
            )
            during = len(logged)
            while len(logged) < during + 20:  # the server went on writing after the copy
                time.sleep(0.05)
        finally:
            stop.set()
            writer.join()
        assert not errors, errors[0]
    out, _ = _one_line(capsys)
    assert "backed up" in out and "4 runs" in out and backup in out
    (old_head / "mlflow.db").unlink()  # `ray down`: the head's disk is gone

    assert main(["store", "restore", "--from", backup, "--db", str(new_head / "mlflow.db")]) == 0
    out, _ = _one_line(capsys)
    assert out.startswith(f"restored {new_head / 'mlflow.db'} (4 runs)")
    with mlflow_server(new_head) as uri:
        restored = _runs(uri)
    assert {k: v for k, v in restored.items() if k != live} == finished
    loss = restored[live][3]["loss"]  # a consistent moment of the live run: a whole prefix
    assert 20 <= len(loss) <= len(logged) and [s for s, _ in loss] == list(range(len(loss)))


@pytest.mark.fault("bad_input")
def test_restore_never_overwrites_a_store_and_without_a_backup_does_nothing(tmp_path, capsys):
    backups = tmp_path / "bucket"
    source = _mlflow_db(tmp_path / "source.db", runs=3)
    assert main(["store", "backup", "--db", str(source), "--to", str(backups / "mlflow.db")]) == 0
    capsys.readouterr()

    live = _mlflow_db(tmp_path / "head" / "mlflow.db", runs=1)
    before = live.read_bytes()
    capsys.readouterr()  # MLflow's own lines on creating the store
    assert main(["store", "restore", "--from", str(backups / "mlflow.db"), "--db", str(live)]) == 0
    out, err = _one_line(capsys)
    assert len(out.splitlines()) == 1 and "already there; left as it is" in out and not err
    assert live.read_bytes() == before
    assert sorted(p.name for p in live.parent.iterdir()) == ["mlflow.db"]  # no temp left

    fresh = tmp_path / "first-head" / "mlflow.db"
    assert main(["store", "restore", "--from", str(backups / "none.db"), "--db", str(fresh)]) == 0
    out, err = _one_line(capsys)
    assert len(out.splitlines()) == 1 and out.startswith("no tracking store backup at")
    assert not err and not fresh.exists()


@pytest.mark.fault("bad_input")
def test_a_corrupt_backup_or_a_missing_store_is_one_line_and_exit_2(s3_env, tmp_path, capsys):
    import pyarrow.fs as pafs

    s3fs, _ = pafs.FileSystem.from_uri(s3_env.uri())
    good = _mlflow_db(tmp_path / "good.db").read_bytes()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    corrupt = {
        "garbage.db": b"not a database at all" * 100,
        "truncated.db": good[: len(good) // 3],
        "other.db": other.read_bytes(),  # sqlite, but no MLflow store
    }
    capsys.readouterr()  # MLflow's own lines on creating the store
    for name, data in corrupt.items():
        with s3fs.open_output_stream(f"{s3_env.bucket}/bad/{name}") as stream:
            stream.write(data)
        target = tmp_path / "heads" / name / "mlflow.db"
        uri = s3_env.uri(f"bad/{name}")
        assert main(["store", "restore", "--from", uri, "--db", str(target)]) == 2, name
        out, err = _one_line(capsys)
        assert not out and len(err.splitlines()) == 1 and uri in err, err
        assert "not a usable tracking store backup" in err and "Traceback" not in err
        assert not target.parent.exists() or not any(target.parent.iterdir())  # nothing left

    missing = tmp_path / "nowhere" / "mlflow.db"
    assert main(["store", "backup", "--db", str(missing), "--to", s3_env.uri("x.db")]) == 2
    _, err = _one_line(capsys)
    assert len(err.splitlines()) == 1 and str(missing) in err and "no such tracking store" in err
    assert main(["store", "restore", "--from", "foo://b/x.db", "--db", str(missing)]) == 2
    _, err = _one_line(capsys)
    assert len(err.splitlines()) == 1 and "foo://b/x.db" in err
    assert not missing.exists()


# ---------------------------------------------------------------------------- the callback
class SlowWriter:
    """A backup that blocks until released: records the threads it ran in."""

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), threading.Event()
        self.calls: list[str] = []

    def __call__(self, db: str, to: str) -> None:
        self.calls.append(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(30)


def test_the_callback_returns_at_once_while_a_slow_backup_runs_and_coalesces(tmp_path):
    writer = SlowWriter()  # blocks for up to 30 s: an event loop that waited would show it
    callback = TrackingStoreBackup("db", "to", backup=writer, final_wait_s=30)
    waited = 0.0
    for i in range(6):  # trials end; from the second on, while the first copy still runs
        began = time.monotonic()
        (callback.on_trial_error if i % 2 else callback.on_trial_complete)(1 + i, [], None)
        waited += time.monotonic() - began
        if i == 0:
            assert writer.started.wait(10)
    assert waited < 5.0 and len(writer.calls) == 1  # the event loop never waited for the copy
    writer.release.set()
    callback.on_experiment_end([])
    # The first copy, one for the five requests made while it ran, and the final one at most.
    assert 2 <= len(writer.calls) <= 3
    assert all(name == "reidsearch-store-backup" for name in writer.calls)
    assert threading.current_thread().name not in writer.calls


def test_the_search_end_waits_for_its_last_copy_only_so_long(capsys):
    writer = SlowWriter()
    callback = TrackingStoreBackup("db", "s3://b/mlflow.db", backup=writer, final_wait_s=0.5)
    began = time.monotonic()
    callback.on_experiment_end([])
    assert 0.4 < time.monotonic() - began < 5
    _, err = _one_line(capsys)
    assert len(err.splitlines()) == 1 and "still running after" in err
    writer.release.set()


def test_a_failing_backup_warns_in_one_line_and_the_search_goes_on(tmp_path, capsys):
    callback = TrackingStoreBackup(str(tmp_path / "missing.db"), str(tmp_path / "b" / "m.db"))
    for _ in range(3):  # the same failure after every trial: said once
        callback.on_trial_complete(1, [], None)
        assert callback.finish(30)
    callback.on_experiment_end([])
    out, err = _one_line(capsys)
    assert len(err.splitlines()) == 1 and "missing.db" in err and "the search goes on" in err
    assert not out  # no "backed up" line after a failure
    pickle.loads(pickle.dumps(callback))  # Tune pickles its callbacks with the search


def test_the_driver_adds_the_callback_only_when_the_head_asks(monkeypatch, tmp_path):
    monkeypatch.delenv(DB_ENV, raising=False)
    monkeypatch.delenv(BACKUP_ENV, raising=False)
    assert store_backups() == []
    monkeypatch.setenv(DB_ENV, str(tmp_path / "mlflow.db"))
    assert store_backups() == []
    monkeypatch.setenv(BACKUP_ENV, "s3://b/mlflow.db")
    (callback,) = store_backups()
    assert (callback.db, callback.to) == (str(tmp_path / "mlflow.db"), "s3://b/mlflow.db")


@pytest.mark.fault("fault")
def test_a_driver_that_exits_without_the_search_end_still_backs_up(tmp_path):
    db, backup = _mlflow_db(tmp_path / "mlflow.db", runs=1), tmp_path / "bucket" / "mlflow.db"
    code = (
        "import sys\n"
        "from reidsearch.search.driver.store_backup import store_backups\n"
        "import mlflow\n"
        "(callback,) = store_backups()\n"
        "callback.setup()\n"
        f"client = mlflow.tracking.MlflowClient(tracking_uri='sqlite:///{db}')\n"
        "client.create_run(client.get_experiment_by_name('kept').experiment_id)\n"
        "sys.exit(130)  # e.g. a second Ctrl-C: Tune never reached on_experiment_end\n"
    )
    env = {**os.environ, DB_ENV: str(db), BACKUP_ENV: str(backup)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 130, out.stderr
    assert "backing up the MLflow store" in out.stdout
    assert _runs(f"sqlite:///{backup}") == _runs(f"sqlite:///{db}")
    assert len(_runs(f"sqlite:///{backup}")) == 2


# --------------------------------------------------------------------- a real search
def test_a_search_on_the_head_leaves_its_whole_store_in_the_bucket(
    search_ray, s3_env, tmp_path, monkeypatch, capsys
):
    import reidsearch

    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    path = tiny_space(tmp_path, "kept", mlflow={"tracking_uri": f"sqlite:///{db}"})
    backup = s3_env.uri("reidsearch/mlflow/mlflow.db")
    monkeypatch.setenv(DB_ENV, str(db))
    monkeypatch.setenv(BACKUP_ENV, backup)

    plan, results = reidsearch.run_search(reidsearch.load_space(path), verbose=0)
    assert len(results) == 2 and results.num_errors == 0
    assert f"MLflow store backed up to {backup}" in capsys.readouterr().out

    restored = tmp_path / "new-head" / "mlflow.db"
    assert restore_store(backup, restored).startswith(f"restored {restored} (3 runs)")
    assert _runs(f"sqlite:///{restored}") == _runs(plan.tracking_uri)
