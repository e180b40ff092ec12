"""The Tune driver process: plan a search, check it, run it and record it (see ``search``)."""

from reidsearch.search.moved import old_names

__getattr__ = old_names(__name__)  # what the module of this name held before the move
