"""What a multi-objective (or constrained) search leaves on its parent run when it ends: each
trial's front rank as its ``front`` metric (the MLflow view sorts by it, front 1 first), the
hypervolume of the front as trials came in, and Optuna's Pareto-front picture of the study.

The hypervolume is exact for two objectives (the area the front dominates up to a reference
point: each objective's worst value among the ranked trials, recorded as a tag); with more, it
is not computed. Like the other analyses, nothing here stops a search from ending: a failure
is one warning line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from reidsearch.search.keys import FRONT_KEY, HYPERVOLUME_KEY, REFERENCE_TAG
from reidsearch.search.results.leaderboard import fetch_leaderboard
from reidsearch.search.results.pareto import front_ranks

FRONT_PICTURE = "front/pareto_front.png"


def hypervolume(points: list[list[float]], modes: list[str], reference: list[float]) -> float:
    """The area that ``points`` (two objectives) dominate up to ``reference``."""
    flip = [1.0 if m == "min" else -1.0 for m in modes]  # both minimised
    pts = [[v * f for v, f in zip(p, flip, strict=True)] for p in points]
    ref = [r * f for r, f in zip(reference, flip, strict=True)]
    front = [p for p, r in zip(pts, front_ranks(pts, ["min", "min"]), strict=True) if r == 1]
    area, last_y = 0.0, ref[1]
    for x, y in sorted(front):
        if x < ref[0] and y < last_y:
            area += (ref[0] - x) * (last_y - y)
            last_y = y
    return area


def log_front_summary(
    client: Any, tracking_uri: str, parent_run_id: str, study: Any | None = None
) -> None:
    """Front ranks on the trials, hypervolume history and picture on the parent; never raises."""
    try:
        board = fetch_leaderboard(tracking_uri, None, search=parent_run_id, top=1_000_000)
        for row in board.rows:
            if row.get("front") is not None:
                client.log_metric(row["run_id"], FRONT_KEY, float(row["front"]))
        objectives = board.objectives
        modes = [str(o.mode) for o in objectives]
        ranked = [r for r in board.rows if r.get("front") is not None]
        if len(objectives) == 2 and ranked:
            ranked.sort(key=lambda r: client.get_run(r["run_id"]).info.start_time)
            values = [r["values"] for r in ranked]
            reference = [
                (min if mode == "max" else max)(v[i] for v in values)
                for i, mode in enumerate(modes)
            ]
            client.set_tag(parent_run_id, REFERENCE_TAG, json.dumps(reference))
            for k in range(1, len(values) + 1):
                area = hypervolume(values[:k], modes, reference)
                client.log_metric(parent_run_id, HYPERVOLUME_KEY, area, step=k)
        if study is not None and len(objectives) > 1:
            _log_picture(client, parent_run_id, study, [o.metric for o in objectives])
    except Exception as err:  # noqa: BLE001 - a summary never fails the search
        message = str(err).splitlines()[0] if str(err) else ""
        print(f"reidsearch: warning: the Pareto summary failed: {message}", file=sys.stderr)


def _log_picture(client: Any, run_id: str, study: Any, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import warnings

    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" in Optuna
        ax = vis.plot_pareto_front(study, target_names=names)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(FRONT_PICTURE).name
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        client.log_artifact(run_id, str(path), str(Path(FRONT_PICTURE).parent))
