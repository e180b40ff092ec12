"""Evaluation: features, exact re-ID metrics, FAISS retrieval, re-ranking, leak check, pictures.

FAISS (``retrieval``) and matplotlib (``plots``) are imported lazily, by their own modules.
"""

from reidsearch.evaluation.features import extract_features
from reidsearch.evaluation.leaks import find_query_gallery_leaks, leak_warning
from reidsearch.evaluation.metrics import evaluate
from reidsearch.evaluation.rerank import re_rank, re_rank_dist

__all__ = [
    "evaluate",
    "extract_features",
    "find_query_gallery_leaks",
    "leak_warning",
    "re_rank",
    "re_rank_dist",
]
