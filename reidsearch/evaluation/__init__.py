"""Evaluation: features, exact re-ID metrics, FAISS retrieval, re-ranking, leak check, pictures.

Only ``evaluate`` and the light helpers are imported here; FAISS and matplotlib load lazily.
"""



from reidsearch.evaluation.metrics import evaluate


__all__ = [
    "evaluate",
    "extract_features",
    "find_query_gallery_leaks",
    "leak_warning",
    "re_rank",
    "re_rank_dist",
]
