"""The default MLflow tracking URI (kept apart so the CLI can use it without importing Ray)."""

from __future__ import annotations

import os
from pathlib import Path


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an ABSOLUTE sqlite file in the working directory
    (Ray moves workers' working directories, so a relative URI would land elsewhere)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve()}/mlflow.db"
