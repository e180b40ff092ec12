"""reidsearch: hyperparameter search for transformer person re-identification.

The core (``data``, ``modeling``, ``evaluation``, ``engine``) depends only on torch, timm, numpy,
pyarrow (and faiss for retrieval); ``search`` adds Ray Tune, Optuna and MLflow on top.
"""

__version__ = "0.1.0"
