"""A search's Optuna study, kept in a journal file that belongs to the search.

The study is the searcher's memory (every trial it asked, told, pruned), in Optuna's own storage
format rather than only inside Tune's pickle: ``optuna-dashboard`` reads it live, a resumed
search continues it, and any Optuna version that reads journals can open it. It lives in the
search's state folder: in place when the search's storage is a local (or shared) folder; for a
bucket, in this machine's cache (a journal file needs a POSIX file system), uploaded to the
bucket by the driver as trials end and fetched from there by ``--resume`` and ``dashboard`` on
any machine.

``SearchJournal`` names the journal by its search, not by a path: a searcher pickled on one
machine finds the file on the machine that restores it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalStorage

from reidsearch.search.keys import STUDY_FILE
from reidsearch.search.results.state_files import state_path
from reidsearch.storage import basename, default_cache_root, exists, is_uri, read_text, write_text


def study_name(experiment_dir: str) -> str:
    """The study's name: the search's folder name (``quickstart-20261203-101500``)."""
    return basename(experiment_dir)


def journal_path(experiment_dir: str) -> Path:
    """Where this machine keeps the search's journal file."""
    if not is_uri(experiment_dir):
        return Path(state_path(experiment_dir, STUDY_FILE))
    digest = hashlib.sha256(experiment_dir.encode()).hexdigest()[:12]
    return default_cache_root() / "studies" / f"{study_name(experiment_dir)}-{digest}.journal"


class SearchJournal(BaseJournalBackend):
    """Optuna's journal file of a search, opened on first use on the machine that uses it."""

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir
        self._file: JournalFileBackend | None = None

    def _open(self) -> JournalFileBackend:
        if self._file is None:
            path = journal_path(self.experiment_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = JournalFileBackend(str(path))
        return self._file

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self._open().read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._open().append_logs(logs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}  # reopened where it is unpickled


def study_storage(experiment_dir: str) -> JournalStorage:
    """The Optuna storage of a search's study."""
    return JournalStorage(SearchJournal(experiment_dir))


def upload_journal(experiment_dir: str) -> None:
    """Copy this machine's journal of a bucket-stored search to the bucket (in place: nothing)."""
    local = journal_path(experiment_dir)
    if is_uri(experiment_dir) and local.is_file():
        write_text(state_path(experiment_dir, STUDY_FILE), local.read_text())


def fetch_journal(experiment_dir: str) -> Path | None:
    """This machine's journal of the search, first brought up to date from the bucket when the
    bucket's copy is longer (another machine ran the search); None when the search has none."""
    local = journal_path(experiment_dir)
    if is_uri(experiment_dir):
        remote = state_path(experiment_dir, STUDY_FILE)
        if exists(remote):
            data = read_text(remote).encode()
            if not local.is_file() or len(data) > local.stat().st_size:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(data)
    return local if local.is_file() else None


def load_study(experiment_dir: str) -> Any:
    """The search's study from its journal on this machine (None: it has none)."""
    import optuna

    if fetch_journal(experiment_dir) is None:
        return None
    return optuna.load_study(
        study_name=study_name(experiment_dir), storage=study_storage(experiment_dir)
    )
