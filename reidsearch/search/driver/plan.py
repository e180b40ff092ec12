"""Where a search writes and how many trials run at once, decided without starting Ray."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from reidsearch.errors import ReidSearchError, first_line
from reidsearch.redact import mask_secrets
from reidsearch.search.cluster.capacity import (
    TRIAL_DRIVER_CPUS,
    Capacity,
    check_one_trial_fits,
    max_concurrent_trials,
)
from reidsearch.search.cluster.ray_session import running_ray_address
from reidsearch.search.driver.search_record import continue_where_started
from reidsearch.search.results.store import default_tracking_uri
from reidsearch.search.space import SearchSpace
from reidsearch.storage import exists, filesystem, is_uri, join, list_dirs


@dataclass
class SearchPlan:
    """What ``run`` will do, computed without starting Ray (``--dry-run`` prints it)."""

    experiment_dir: str  # a local folder or an s3:// / gs:// URI
    tracking_uri: str
    experiment: str
    max_concurrent: int
    local_cpus: float | None  # a private embedded Ray of this size; None joins a cluster
    ray_address: str | None = None
    notes: list[str] = field(default_factory=list)  # said before the search starts

    @property
    def train_storage(self) -> str:
        """Where the trials' Ray Train runs keep their checkpoints."""
        return join(self.experiment_dir, "train")

    def describe(self) -> str:
        """The plan in a few lines, credentials in its URIs masked (it is printed)."""
        lines = [
            f"experiment dir : {self.experiment_dir}",
            f"mlflow         : {self.tracking_uri} (experiment {self.experiment!r})",
            f"concurrency    : {self.max_concurrent} trial(s) at once",
        ]
        if self.local_cpus is not None:
            lines.append(f"local ray      : {self.local_cpus:g} logical CPUs")
        else:
            lines.append(f"ray cluster    : {self.ray_address}")
        return mask_secrets("\n".join([*lines, *self.notes]))


def _stamped(space: SearchSpace) -> re.Pattern[str]:
    """``<name>-YYYYmmdd-HHMMSS[-N]`` (not another space's ``<name>-other-...``)."""
    return re.compile(rf"{re.escape(space.name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?")


def latest_experiment_dir(space: SearchSpace) -> str | None:
    """The newest folder of this space's searches: by its time, then by its ``-N`` suffix
    (``-10`` after ``-9``, and any after the unnumbered first of that second)."""
    pattern = _stamped(space)
    root = space.storage_root()
    try:
        found = [(pattern.fullmatch(name), name) for name in list_dirs(root)]
    except OSError as exc:
        raise ReidSearchError(f"{root}: storage_path: cannot list ({first_line(exc)})") from None
    ranked = [(m[1], int(m[2] or 1), name) for m, name in found if m]
    return join(root, max(ranked)[2]) if ranked else None


def new_experiment_dir(space: SearchSpace, now: float | None = None) -> str:
    """``<storage root>/<name>-YYYYmmdd-HHMMSS``, readable and sortable; ``now`` (seconds since
    the epoch, default the clock) lets tests fix the second. ``claim_experiment_dir`` numbers
    it if another search took it first."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return join(space.storage_root(), f"{space.name}-{stamp}")


def numbered(location: str, n: int) -> str:
    """``location`` with ``-n`` on its last folder (before a URI's ``?query``); 1: itself."""
    if n == 1:
        return location
    path, question, query = location.partition("?") if is_uri(location) else (location, "", "")
    return f"{path.rstrip('/')}-{n}{question}{query}"


def claim_experiment_dir(location: str, what: str = "storage_path") -> str:
    """Create the new search's folder: ``location``, or ``location-2``, ``-3``... when a search
    started in the same second (a script) has it, so that no two searches share one.

    A local folder is claimed atomically (``mkdir``); a bucket has no atomic "create if absent",
    so there a folder is taken when it exists, and the window is the one request between."""
    n = 1
    try:
        while True:
            candidate = numbered(location, n)
            n += 1
            if not is_uri(candidate):
                Path(candidate).parent.mkdir(parents=True, exist_ok=True)
                try:
                    Path(candidate).mkdir()
                except FileExistsError:
                    continue
                return candidate
            if not exists(candidate):
                filesys, path = filesystem(candidate, what)
                filesys.create_dir(path, recursive=True)
                return candidate
    except OSError as exc:
        message = f"{location}: {what}: cannot create the search's folder ({first_line(exc)})"
        raise ReidSearchError(mask_secrets(message)) from None


def local_capacity() -> Capacity:
    """This machine's cores and GPUs (what an embedded local Ray will have)."""
    import os

    import torch

    return Capacity(cpus=float(os.cpu_count() or 1), gpus=float(torch.cuda.device_count()))


def check_dataset(space: SearchSpace) -> None:
    """Fail before Ray starts when the dataset folder is missing (every trial would fail)."""
    root = space.fixed_config.data.root
    if root is None:
        return
    try:
        found = exists(root)
    except (OSError, ReidSearchError) as exc:
        raise ReidSearchError(
            f"{space.source}: fixed.data.root: {root}: cannot read ({first_line(exc)})"
        ) from None
    if not found:
        raise ReidSearchError(
            f"{space.source}: fixed.data.root: {root}: no such folder "
            "(edit the file or pass --data)"
        )


def plan_search(
    space: SearchSpace,
    *,
    address: str | None,
    tracking_uri: str | None,
    resume: bool,
    now: float | None = None,
) -> SearchPlan:
    """The plan, without starting Ray or creating anything: a new search's folder is only
    named here (``run_search`` claims it, numbered if taken, once Ray is up)."""
    scaling = space.fixed_config.scaling
    if resume:
        experiment_dir = latest_experiment_dir(space)
        if experiment_dir is None:
            raise ReidSearchError(
                f"{space.source}: --resume: no earlier run of "
                f"{space.name!r} under {space.storage_root()}"
            )
    else:
        experiment_dir = new_experiment_dir(space, now)
    chosen_uri = tracking_uri or space.mlflow.tracking_uri
    uri = chosen_uri or default_tracking_uri()
    experiment, notes = space.experiment, []
    if resume:  # where the search was started: its tracker logs there whatever we say
        uri, experiment, notes = continue_where_started(experiment_dir, space, uri, chosen_uri)
    local_cpus = None
    max_concurrent = space.max_concurrent
    ray_address = running_ray_address(address)
    if ray_address is None:
        capacity = local_capacity()
        check_one_trial_fits(capacity, scaling, str(space.source), driver_cpus=0.0)
        fits = max_concurrent_trials(capacity, scaling, driver_cpus=0.0)
        max_concurrent = max(1, min(max_concurrent, fits))
        # The trial drivers only wait on their TorchTrainer: give them a logical share on top
        # of the real cores, so that `max_concurrent` trials of workers fill the machine.
        local_cpus = capacity.cpus + math.ceil(max_concurrent * TRIAL_DRIVER_CPUS)
    return SearchPlan(
        experiment_dir=experiment_dir,
        tracking_uri=uri,
        experiment=experiment,
        max_concurrent=max_concurrent,
        local_cpus=local_cpus,
        ray_address=ray_address,
        notes=notes,
    )
