"""The search, in folders by the process that runs the code (dependencies run one way, down):

- ``keys``, ``scores``: the names every process shares (MLflow tags, result keys, state files)
  and the rules by which trials compare; they import nothing.
- ``space/``: a space file (YAML) to a validated ``SearchSpace``; imports no ray, torch, optuna.
- ``cluster/``: capacity arithmetic, the cluster file, starting or joining Ray.
- ``trial/``: what runs in a trial's processes (the Tune trainable, its Ray Train workers or the
  in-process runner, resume and replay, outcome files).
- ``results/``: MLflow reads and the parent run's artifacts (leaderboard, best trial, the UI view,
  analyses); imports no Ray: ``leaderboard``, ``ui`` and ``export --best`` use it.
- ``driver/``: the Tune driver process (plan, pre-flight checks, searcher, scheduler, the MLflow
  tracker and the progress callbacks, the search itself; ``reidsearch train``'s single trial).

``tests/test_layers.py`` checks the direction. ``moved`` keeps the paths of before the move
importable, so that searches started then still resume.
"""

from reidsearch.search import moved

moved.install()
