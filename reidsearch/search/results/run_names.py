"""Readable MLflow run names for trials: the head and searched values, then the Tune trial id."""

from __future__ import annotations

import math
from typing import Any

NAME_LIMIT = 80  # characters of searched values in a run name, before the trial id


def _abbreviation(key: str) -> str:
    """``loss.label_smoothing`` -> ``ls``, ``model.lam`` -> ``lam``, ``optim.lr`` -> ``lr``."""
    last = key.rsplit(".", 1)[-1]
    parts = [p for p in last.split("_") if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else last


def short_value(value: Any) -> str:
    """A searched value in a few characters: 4.52, 0.19, 4.8e-4, latf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)[:16]
    if value == 0:
        return "0"
    if isinstance(value, int) or not math.isfinite(value):
        return str(value)
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def readable_run_name(head: str, searched: dict[str, Any], trial_id: str) -> str:
    """A trial's MLflow run name: its head and searched values, then its Tune trial id
    (``latf lam=4.52 ls=0.19 lr=4.8e-4 · 53803dfb``), so the runs table reads at a glance."""
    head = str(searched.get("model.head", head))
    shown = {k: v for k, v in searched.items() if k != "model.head"}
    short = [_abbreviation(k) for k in shown]
    # Two keys with one abbreviation are spelled out in full.
    names = {k: k if short.count(a) > 1 else a for k, a in zip(shown, short, strict=True)}
    text = " ".join([head, *(f"{names[k]}={short_value(v)}" for k, v in shown.items())])
    if len(text) > NAME_LIMIT:
        text = text[: NAME_LIMIT - 1].rstrip() + "…"
    return f"{text} · {trial_id}"
