"""A search read back from MLflow: leaderboard, best trial, the UI's view, the parent run's
summary and analyses. Imports no Ray (the read-only commands run without it)."""
