"""The module paths ``reidsearch.search`` had before it was sorted into role folders, kept
importable.

Tune pickles a search's searcher, scheduler, callbacks and trainable by module path (``tuner.pkl``,
the searcher's state), so a search started before the move resumes only if those paths import.
Each old module below is made on its first import (a finder on ``sys.meta_path``, installed by
``reidsearch.search``) as a module whose names are looked up, in order, in the modules that hold
them now; ``driver`` and ``cluster``, now packages, look up their old names the same way. Names
that were renamed are not aliased: only the classes and functions Tune pickles need to be found.
Nothing imports these paths; new code uses the new ones.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

_S = "reidsearch.search"
MOVED: dict[str, tuple[str, ...]] = {
    f"{_S}.analysis": (f"{_S}.results.analysis",),
    f"{_S}.best_model": (f"{_S}.results.best_trial", f"{_S}.keys"),
    f"{_S}.cluster": (f"{_S}.cluster.capacity", f"{_S}.cluster.ray_session"),
    f"{_S}.cluster_file": (f"{_S}.cluster.cluster_file",),
    f"{_S}.driver": (f"{_S}.driver.search", f"{_S}.driver.searcher", f"{_S}.trial.trainable"),
    f"{_S}.in_trial": (f"{_S}.trial.trial_process", f"{_S}.trial.drills", f"{_S}.keys"),
    f"{_S}.leaderboard": (f"{_S}.results.leaderboard", f"{_S}.results.searches", f"{_S}.keys"),
    f"{_S}.mlflow_experiment": (f"{_S}.results.store", f"{_S}.keys"),
    f"{_S}.mlflow_view": (f"{_S}.results.ui_view", f"{_S}.results.run_names"),
    f"{_S}.params": (f"{_S}.space.params",),
    f"{_S}.params_parsing": (f"{_S}.space.parsing",),
    f"{_S}.plan": (f"{_S}.driver.plan",),
    f"{_S}.preflight": (f"{_S}.driver.preflight",),
    f"{_S}.progress": (f"{_S}.driver.progress",),
    f"{_S}.ray_train": (
        f"{_S}.trial.torch_trainer",
        f"{_S}.trial.train_loop",
        f"{_S}.trial.resume",
        f"{_S}.trial.drills",
        f"{_S}.trial.failures",
        f"{_S}.keys",
    ),
    f"{_S}.schedulers": (f"{_S}.driver.schedulers", f"{_S}.keys"),
    f"{_S}.search_space": (f"{_S}.space.search_space",),
    f"{_S}.search_summary": (f"{_S}.results.summary",),
    f"{_S}.shipping": (
        f"{_S}.trial.shipment",
        f"{_S}.trial.received",
        f"{_S}.driver.shipping",
    ),
    f"{_S}.single": (f"{_S}.driver.single_trial",),
    f"{_S}.space_loading": (f"{_S}.space.loading",),
    f"{_S}.space_schema": (f"{_S}.space.schema",),
    f"{_S}.state_files": (f"{_S}.results.state_files", f"{_S}.keys"),
    f"{_S}.tracking": (f"{_S}.driver.tracker", f"{_S}.space.trials", f"{_S}.keys"),
    f"{_S}.tracking_uri": (f"{_S}.results.store",),
    f"{_S}.trial_outcome": (f"{_S}.trial.outcome", f"{_S}.driver.trial_states", f"{_S}.keys"),
}
PACKAGES_NOW = (f"{_S}.driver", f"{_S}.cluster")  # old modules that became packages


def old_names(old: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` finding the names of the old module ``old`` where they are now."""

    def lookup(name: str) -> Any:
        # A package's own submodule (``from reidsearch.search.driver import preflight`` asks for
        # the attribute first) is not an old name: say so at once, so that the import system
        # loads just that submodule instead of every module holding the old names.
        if old in PACKAGES_NOW and importlib.util.find_spec(f"{old}.{name}") is not None:
            raise AttributeError(name)
        if not name.startswith("__"):
            for new in MOVED[old]:
                module = importlib.import_module(new)
                if hasattr(module, name):
                    return getattr(module, name)
        raise AttributeError(f"module {old!r} (moved: see reidsearch.search.moved) has no {name!r}")

    return lookup


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths that no longer exist as files."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in MOVED or fullname in PACKAGES_NOW:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        module.__doc__ = (
            f"Moved: names of this old path live in {', '.join(MOVED[module.__name__])}."
        )
        module.__getattr__ = old_names(module.__name__)  # type: ignore[attr-defined]


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
