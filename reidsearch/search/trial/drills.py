"""Fault drills for tests and rehearsals: kill a trial's process once, after a given epoch."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from reidsearch.search.keys import CRASH_ENV


def crash_drill() -> dict[str, Any] | None:
    """The drill asked for in this (driver) process's environment (``CRASH_ENV``: json of
    ``{"after_epoch": N, "marker": path}``), if any."""
    return json.loads(os.environ[CRASH_ENV]) if os.environ.get(CRASH_ENV) else None


def crash_once(fault: dict[str, Any] | None, epoch: int, rank: int) -> None:
    """Fault injection for tests and drills: kill this worker process once, after ``epoch``.

    ``delay_s`` waits before the kill: Ray Train's controller collects a worker's reports (and
    registers their checkpoints) only on its health check, every 2 s, so a drill that must
    resume from the last checkpoint gives it time to be collected."""
    if not fault or rank != 0 or epoch != fault["after_epoch"]:
        return
    marker = Path(fault["marker"])
    if not marker.exists():
        marker.write_text(f"killed after epoch {epoch}")
        time.sleep(float(fault.get("delay_s", 0.0)))
        os._exit(1)
