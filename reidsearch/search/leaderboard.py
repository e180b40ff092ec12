"""The leaderboard: the best trials of a search, read back from MLflow."""

from __future__ import annotations

from typing import Any

from reidsearch.errors import ReidSearchError
from reidsearch.search.tracking import KIND_TAG


def fetch_leaderboard(
    tracking_uri: str, experiment: str | None, top: int = 10, metric: str = "best_mAP"
) -> tuple[str, list[dict[str, Any]]]:
    """Trial runs of ``experiment`` (default: the most recently created one), best first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if experiment is None:
        experiments = [e for e in client.search_experiments() if e.name != "Default"]
        if not experiments:
            raise ReidSearchError(
                f"{tracking_uri}: no reidsearch experiments yet "
                "(run `reidsearch run SPACE.yaml` first)"
            )
        found = max(experiments, key=lambda e: e.creation_time or 0)
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ReidSearchError(f"{tracking_uri}: no experiment named {experiment!r}")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = 'trial'",
        order_by=[f"metrics.`{metric}` DESC"],
        max_results=top,
    )
    rows = []
    for run in runs:
        searched = {
            k[len("searched.") :]: v
            for k, v in run.data.params.items()
            if k.startswith("searched.")
        }
        rows.append(
            {
                "run": run.info.run_name,
                "status": run.info.status,
                "stopped_early": run.data.tags.get("stopped_early") == "True",
                "search": run.data.tags.get("reidsearch.search", ""),
                "metrics": dict(run.data.metrics),
                "params": searched,
            }
        )
    return found.name, rows


def format_leaderboard(experiment: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"experiment {experiment!r}: no trials"
    keys = sorted({k for row in rows for k in row["params"]})
    header = ["#", "trial", "status", "mAP", "rank-1", "rank-5", "mINP", "epochs", *keys]
    baselines = [
        row["metrics"]["untrained_mAP"] for row in rows if "untrained_mAP" in row["metrics"]
    ]
    table = [header]
    for n, row in enumerate(rows, 1):
        m = row["metrics"]

        def pct(key: str, m: dict = m) -> str:
            return f"{100 * m[key]:.1f}" if key in m else "-"

        table.append(
            [
                str(n),
                row["run"],
                "stopped" if row["stopped_early"] else row["status"].lower(),
                pct("best_mAP"),
                pct("rank1"),
                pct("rank5"),
                pct("mINP"),
                f"{m['epoch']:.0f}" if "epoch" in m else "-",
                *[_short(row["params"].get(k, "-")) for k in keys],
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        f"Leaderboard of experiment {experiment!r} (in %: mAP at each trial's best epoch; "
        "rank-k and mINP at its last; stopped = stopped early by ASHA)"
    ]
    for r in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if baselines:
        lines.append(
            f"untrained model (same data, random init): mAP "
            f"{100 * max(baselines):.1f}% (best of {len(baselines)} trials' own)"
        )
    return "\n".join(lines)


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}"
