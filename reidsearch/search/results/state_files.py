"""Where a search keeps its own state files inside its Tune experiment folder.

Not at the folder's top level: when Tune restores a search it copies every top-level ``.json``
and ``.pkl`` file of the experiment folder into its staging folder and uploads them back on each
save, which would overwrite the newer versions we wrote since (the MLflow run ids, ASHA's rungs).
Tune leaves subfolders other than trial folders alone.
"""

from __future__ import annotations

from reidsearch.search.keys import STATE_DIR
from reidsearch.storage import join


def state_path(experiment_dir: str, name: str) -> str:
    return join(experiment_dir, STATE_DIR, name)
