"""The MLflow tracking store of a cluster's head, kept alive across ``ray down``.

The head's MLflow server keeps its runs in an sqlite file on the head's disk, which ``ray down``
destroys (the artifacts on S3 would survive without the runs that point at them). So the file
is copied to the bucket while the server runs (``backup_store``: sqlite's online backup API,
consistent even mid-write, into a temp file first) and the head's set-up puts the copy back
before the server starts (``restore_store``), never over a store that is already there. The
search driver backs up as trials end (``driver.store_backup``) when the head's set-up names the
file and the URI in ``DB_ENV`` and ``BACKUP_ENV``.

No Ray here: ``reidsearch store backup|restore`` run in the head's set-up, before Ray starts.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from reidsearch.errors import ReidSearchError, first_line
from reidsearch.redact import mask_secrets
from reidsearch.storage import absolute, filesystem

DB_ENV = "REIDSEARCH_MLFLOW_DB"  # the tracking server's sqlite file on this machine
BACKUP_ENV = "REIDSEARCH_MLFLOW_BACKUP"  # where its copy goes (s3://, gs:// or a local path)
WHAT = "tracking store backup"
# How long a copy waits for a writer's lock. The copy holds a read lock only while it copies
# the file (a local disk copy); MLflow's own sqlite sessions wait up to 20 s for it.
BUSY_TIMEOUT_S = 30.0
RUNS_TABLE = "runs"  # MLflow's table of runs: what tells its store from another database


@dataclass(frozen=True)
class Backup:
    """What one backup copied: to say so in one line."""

    db: Path
    to: str
    size: int  # bytes
    runs: int | None  # MLflow runs in the copy (None: not an MLflow store)

    def line(self) -> str:
        runs = "" if self.runs is None else f"{self.runs} runs, "
        return f"backed up {self.db} ({runs}{self.size / 1e6:.1f} MB) to {mask_secrets(self.to)}"


def settings_from_env() -> tuple[str, str] | None:
    """``(db, uri)`` when the head's set-up asked for backups (both variables set), else None."""
    db, to = os.environ.get(DB_ENV, "").strip(), os.environ.get(BACKUP_ENV, "").strip()
    return (db, to) if db and to else None


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: opening it never creates or changes the file."""
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)


def _count_runs(conn: sqlite3.Connection) -> int | None:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if RUNS_TABLE not in tables:
        return None
    return int(conn.execute(f"SELECT count(*) FROM {RUNS_TABLE}").fetchone()[0])


def snapshot(db: str | os.PathLike, into: Path) -> int | None:
    """Copy the live sqlite file ``db`` to ``into`` with sqlite's backup API; the runs in it.

    The API reads the pages under sqlite's own locking, so the copy is one consistent state of
    the store even while the MLflow server writes (a plain file copy may catch half a write).
    """
    source_path = Path(db).expanduser().absolute()
    if not source_path.is_file():
        raise ReidSearchError(f"{source_path}: no such tracking store (an sqlite file)")
    try:
        with contextlib.closing(_connect_read_only(source_path)) as source:
            with contextlib.closing(sqlite3.connect(into)) as target:
                source.backup(target)  # one step: the read lock lasts one local copy
                return _count_runs(target)
    except sqlite3.Error as exc:
        raise ReidSearchError(f"{source_path}: cannot copy the store ({first_line(exc)})") from None


def _publish(local: Path, to: str) -> None:
    """Upload ``local`` as the file ``to`` so that readers never see a part of it: a local file
    is renamed into place; an object is written under a temp key and copied to its key (the
    copy is atomic, and a write that fails half-way never reaches the final key)."""
    from pyarrow import fs

    filesys, path = filesystem(to, WHAT)
    local_fs = isinstance(filesys, fs.LocalFileSystem)
    if local_fs:
        filesys.create_dir(os.path.dirname(path), recursive=True)
    partial = f"{path}.partial-{uuid.uuid4().hex[:12]}"
    try:
        fs.copy_files(
            str(local),
            partial,
            source_filesystem=fs.LocalFileSystem(),
            destination_filesystem=filesys,
        )
        size = filesys.get_file_info(partial).size
        if size != local.stat().st_size:
            raise OSError(f"uploaded {size} of {local.stat().st_size} bytes")
        if local_fs:
            filesys.move(partial, path)  # a rename: atomic
        else:
            filesys.copy_file(partial, path)
    finally:
        with contextlib.suppress(Exception):
            filesys.delete_file(partial)


def backup_store(db: str | os.PathLike, to: str) -> Backup:
    """Copy the tracking store ``db`` (a live sqlite file) to ``to`` (s3://, gs:// or a path).

    The copy is taken into a temp file first, so the server waits only for a local copy and
    never for the upload, and the upload publishes a whole file or nothing."""
    with tempfile.TemporaryDirectory(prefix="reidsearch-store-") as folder:
        copy = Path(folder) / "mlflow.db"
        runs = snapshot(db, copy)
        try:
            _publish(copy, to)
        except ReidSearchError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError from S3/GCS/local in many shapes
            raise ReidSearchError(
                mask_secrets(f"{to}: {WHAT}: cannot write ({first_line(exc)})")
            ) from None
        return Backup(Path(db).expanduser().absolute(), to, copy.stat().st_size, runs)


def check_store(path: Path, source: str) -> int:
    """The runs in the sqlite file ``path`` (downloaded from ``source``), after checking that it
    is a whole, uncorrupted MLflow store: one named error line otherwise."""
    bad = f"{mask_secrets(source)}: not a usable {WHAT}"
    try:
        with contextlib.closing(_connect_read_only(path)) as conn:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            runs = _count_runs(conn)
    except sqlite3.Error as exc:
        raise ReidSearchError(f"{bad} ({first_line(exc)})") from None
    if problems != ["ok"]:
        raise ReidSearchError(f"{bad} (corrupt sqlite database: {problems[0]})")
    if runs is None:
        raise ReidSearchError(f"{bad} (an sqlite database without MLflow's {RUNS_TABLE} table)")
    return runs


def _publish_new(tmp: Path, target: Path) -> bool:
    """Put ``tmp`` at ``target`` in one step unless something is there already (False then)."""
    try:
        os.link(tmp, target)  # fails on an existing target: never over a live store
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if target.exists():
            return False
        os.replace(tmp, target)
    return True


def restore_store(source: str, db: str | os.PathLike) -> str:
    """Put the backup at ``source`` at ``db`` before the MLflow server starts; one line on what
    was done. A store already at ``db`` is the live one and is left as it is; no backup at
    ``source`` (the cluster's first start) leaves ``db`` to the server to create."""
    from pyarrow import fs

    target = Path(absolute(db))
    shown = mask_secrets(source)
    if target.exists():
        return f"{target}: a tracking store is already there; left as it is (not restored)"
    for journal in (Path(f"{target}-journal"), Path(f"{target}-wal")):
        if journal.exists():  # sqlite would replay it into the restored file
            raise ReidSearchError(f"{journal}: left over from an earlier store; move it away")
    try:
        filesys, path = filesystem(source, WHAT)
        kind = filesys.get_file_info(path).type
    except ReidSearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - no credentials, no such bucket, network
        raise ReidSearchError(f"{shown}: {WHAT}: cannot read ({first_line(exc)})") from None
    if kind == fs.FileType.NotFound:
        return f"no {WHAT} at {shown} yet: the MLflow server starts with a new store"
    if kind == fs.FileType.Directory:
        raise ReidSearchError(f"{shown}: a folder, not a {WHAT}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReidSearchError(f"{target}: cannot make its folder ({first_line(exc)})") from None
    tmp = target.with_name(f".{target.name}.restoring-{uuid.uuid4().hex[:12]}")
    try:
        try:
            fs.copy_files(
                path,
                str(tmp),
                source_filesystem=filesys,
                destination_filesystem=fs.LocalFileSystem(),
            )
        except Exception as exc:  # noqa: BLE001
            raise ReidSearchError(f"{shown}: {WHAT}: cannot download ({first_line(exc)})") from None
        runs = check_store(tmp, source)
        if not _publish_new(tmp, target):
            return f"{target}: a tracking store is already there; left as it is (not restored)"
    finally:
        tmp.unlink(missing_ok=True)
    return f"restored {target} ({runs} runs) from {shown}"
