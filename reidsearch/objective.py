"""What a search ranks trials by: the objective, its metric names, and the cost metrics.

The first (or only) objective is a quality metric (a retrieval metric or the training loss): it
picks each trial's score epoch and kept checkpoint. A search may add objectives (``objective:``
as a list) that are read at that epoch: other quality metrics or ``cost.*`` (what the model
costs to deploy, measured once per trial by ``engine.cost``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

# The per-query retrieval metrics an evaluation gives (each the mean over valid queries), and
# what a trial's score may be (those plus the training loss): the one list of metric names.
QUERY_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")
OBJECTIVE_METRICS = (*QUERY_METRICS, "loss")
# Every cost a trial reports (all numbers) and what each counts.
COST_UNITS = {
    "cost.feature_dim": "values per image in the retrieval feature",
    "cost.feature_bytes": "bytes per image of the feature in fp32",
    "cost.feature_bytes_fp16": "bytes per image of the feature in fp16",
    "cost.params_backbone": "backbone parameters",
    "cost.params_head": "head parameters, classifiers included (training)",
    "cost.params_inference": "parameters the retrieval feature uses (deployment)",
    "cost.model_bytes": "bytes of the model's weights and buffers (its file less the format's)",
    "cost.images_per_s": "inference throughput at batch 64, images/s",
    "cost.latency_ms": "inference latency at batch 1, ms",
    "cost.search_ms": "FAISS flat inner-product search per query, ms, gallery of search_gallery",
    "cost.search_gallery": "gallery size the search was timed at",
}
HIGHER_IS_BETTER = (*QUERY_METRICS, "cost.images_per_s")  # the default mode of these is max
RANKED_METRICS = (*OBJECTIVE_METRICS, *COST_UNITS)
RankedMetric = Literal[RANKED_METRICS]  # type: ignore[valid-type]


class ObjectiveConfig(BaseModel):
    """One objective: the metric, its direction, and how a run's epochs make one value.

    ``reduce: best`` scores a run by its best evaluated epoch so far, ``last`` by its latest.
    ``bound: true`` scores the pessimistic end of the metric's 95% bootstrap interval (the
    lower end when maximising), so that a lucky run on a small query set is not crowned.
    """

    model_config = ConfigDict(extra="forbid")

    metric: RankedMetric = "mAP"
    mode: Literal["max", "min"] | None = None
    reduce: Literal["best", "last"] = "best"
    bound: bool = False

    @model_validator(mode="after")
    def _default_mode(self) -> ObjectiveConfig:
        if self.mode is None:
            self.mode = "max" if self.metric in HIGHER_IS_BETTER else "min"
        if self.bound and self.metric not in QUERY_METRICS:
            raise ValueError(f"bound: {self.metric} has no confidence interval")
        return self

    @property
    def is_cost(self) -> bool:
        return self.metric in COST_UNITS
