"""reidsearch: hyperparameter search for transformer person re-identification.

The core (``data``, ``modeling``, ``evaluation``, ``engine``) depends only on torch, timm, numpy,
pyarrow (and faiss for retrieval); ``search`` adds Ray Tune, Optuna and MLflow on top.

The Python API (``load_space``, ``run_search``, ``leaderboard``, ``best_trial``, ``train``,
``evaluate``; see :mod:`reidsearch.api`) is loaded on first use: every import of a submodule
imports this package first, and that must stay light (the CLI's ``--help``, the core without
Ray).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["best_trial", "evaluate", "leaderboard", "load_space", "run_search", "train"]


def __getattr__(name: str) -> Any:
    """``reidsearch.load_space`` etc.: the API's functions, its module imported at first use."""
    if name in __all__:
        from reidsearch import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
