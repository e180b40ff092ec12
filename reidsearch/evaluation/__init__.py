"""Evaluation: features, exact re-ID metrics and their bootstrap intervals, FAISS retrieval,
re-ranking, leak check, pictures.

FAISS (``retrieval``) and matplotlib (``plots``) are imported lazily, by their own modules.
"""

from reidsearch.evaluation.bootstrap import bootstrap_interval, query_intervals
from reidsearch.evaluation.features import extract_features
from reidsearch.evaluation.leaks import find_query_gallery_leaks, leak_warning
from reidsearch.evaluation.metrics import evaluate
from reidsearch.evaluation.rerank import re_rank, re_rank_dist

__all__ = [
    "bootstrap_interval",
    "evaluate",
    "extract_features",
    "find_query_gallery_leaks",
    "leak_warning",
    "query_intervals",
    "re_rank",
    "re_rank_dist",
]
