"""``reidsearch dashboard``: optuna-dashboard on a search's study, found from MLflow.

The search's parent run records its folder; the study's journal is in that folder's state (or,
for a bucket, fetched from it to this machine). A local journal is live: the dashboard shows
trials as the running search tells them; a fetched one is the bucket's copy at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reidsearch.errors import ReidSearchError
from reidsearch.redact import MASK, mask_secrets
from reidsearch.search.keys import EXPERIMENT_DIR_TAG
from reidsearch.search.results.searches import find_searches, search_label
from reidsearch.search.results.store import existing_store
from reidsearch.search.results.study import fetch_journal, study_name


@dataclass
class SearchStudy:
    label: str  # the search, as the leaderboard names it
    name: str  # the study's name in the journal
    journal: Path  # this machine's journal file

    def storage(self):  # noqa: ANN201 - optuna's JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(self.journal)))

    def url(self, base: str) -> str:
        """The study's page in optuna-dashboard served at ``base``."""
        study_id = self.storage().get_study_id_from_name(self.name)
        return f"{base.rstrip('/')}/dashboard/studies/{study_id}"


def search_study(tracking_uri: str, experiment: str | None, search: str | None) -> SearchStudy:
    """The study of the newest search (or ``search``: its folder name or run id)."""
    from mlflow.tracking import MlflowClient

    uri = existing_store(tracking_uri)
    _, parents = find_searches(MlflowClient(tracking_uri=uri), uri, experiment, search)
    if not parents:
        raise ReidSearchError(f"{mask_secrets(uri)}: no search named {search!r}")
    parent = parents[0]
    label = search_label(parent)
    folder = parent.data.tags.get(EXPERIMENT_DIR_TAG, "")
    if not folder or MASK in folder:
        raise ReidSearchError(
            f"{label}: its folder is not recorded in full ({folder or 'no tag'}); credentials "
            "belong in the environment, not in the storage URI"
        )
    journal = fetch_journal(folder)
    if journal is None:
        raise ReidSearchError(
            f"{label}: no Optuna study in {mask_secrets(folder)} (a grid search has none; a "
            "search started before studies were kept there has its study in Tune's state only)"
        )
    return SearchStudy(label=label, name=study_name(folder), journal=journal)
