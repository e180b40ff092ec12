"""``reidsearch run --dry-run``'s summary of a space names the searcher the search really uses."""

from __future__ import annotations

from pathlib import Path

import pytest

import reidsearch

SPACE = """\
searcher: {searcher}
trials: 3
seed: 7
search:
  model.head: {{type: choice, values: [latf, latfpp]}}
"""


@pytest.mark.parametrize(
    ("searcher", "line"),
    [
        (
            "optuna",  # the old name of tpe
            "searcher: tpe (Optuna's TPESampler: multivariate, constant liar for concurrent "
            "trials, first 2 trials random, seed 7), 3 trials",
        ),
        ("random", "searcher: random (Optuna's RandomSampler, seed 7), 3 trials"),
        ("grid", "searcher: grid, 2 combinations x 3 trials each = 6 trials"),
    ],
)
def test_describe_names_the_searcher_in_use(tmp_path: Path, searcher: str, line: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(searcher=searcher))
    text = reidsearch.load_space(path).describe()
    assert line in text.splitlines()
    assert ("TPESampler" in text) == (searcher == "optuna")
