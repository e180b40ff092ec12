"""The Ray a search runs on: capacity arithmetic, the launcher's cluster file, starting or
joining it."""

from reidsearch.search.moved import old_names

__getattr__ = old_names(__name__)  # what the module of this name held before the move
