"""The public Python API: its names, that ``import reidsearch`` stays light, that the README's
example calls it as it is, and the leaderboard as a DataFrame. Starts no Ray."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import reidsearch
from reidsearch.config import ObjectiveConfig
from reidsearch.search.results.leaderboard import Leaderboard, mark_indistinguishable

REPO = Path(__file__).resolve().parents[1]
API = {"load_space", "run_search", "leaderboard", "best_trial", "train", "evaluate"}


def test_the_package_exports_the_six_functions():
    assert set(reidsearch.__all__) == API
    assert API <= set(dir(reidsearch))
    for name in API:
        assert callable(getattr(reidsearch, name)), name
        assert inspect.getdoc(getattr(reidsearch, name)), name


def test_importing_the_package_and_loading_a_space_imports_neither_ray_nor_torch():
    code = (
        "import sys\nimport reidsearch\n"
        "before = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow'})\n"
        "space = reidsearch.load_space('search_spaces/quickstart.yaml')\n"
        "after = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow'})\n"
        "print(before, after, space.name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.stdout.strip() == "[] [] quickstart", out.stdout + out.stderr


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section has one example"
    return blocks[0]


def test_the_readme_example_calls_the_api_as_it_is():
    called = set()
    for node in ast.walk(ast.parse(_readme_example())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "reidsearch"):
            continue
        name = node.func.attr
        assert name in API, f"README calls reidsearch.{name}, which the API lacks"
        parameters = inspect.signature(getattr(reidsearch, name)).parameters
        positional = [
            p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        assert len(node.args) <= len(positional), f"too many arguments to {name}"
        for keyword in node.keywords:
            assert keyword.arg in parameters, f"reidsearch.{name} has no {keyword.arg}="
        called.add(name)
    assert called == API - {"train"}  # the example: space, search, board, best, its scores


def _row(name: str, score: float | None, params: dict[str, str]) -> dict:
    scored = {} if score is None else {"mAP": score, "mAP_ci_low": score - 0.1}
    scored |= {} if score is None else {"mAP_ci_high": score + 0.1, "rank1": 0.9}
    return {
        "run": f"latf {name}",
        "trial": name,
        "run_id": f"id-{name}",
        "status": "FINISHED" if score is not None else "FAILED",
        "stopped_early": False,
        "search": "s-1",
        "score": score,
        "score_epoch": None if score is None else 3.0,
        "scored": scored,
        "untrained_mAP": 0.02,
        "params": params,
    }


def test_the_leaderboard_as_a_data_frame_has_one_row_per_trial_best_first():
    rows = [
        _row("a", 0.6, {"model.lam": "8.0", "model.head": "latf", "sampler.k": "4"}),
        _row("b", 0.55, {"model.lam": "2.5", "model.head": "latfpp"}),
        _row("c", None, {"model.lam": "1e-3", "model.head": "latf"}),
    ]
    objective = ObjectiveConfig()
    mark_indistinguishable(rows, objective)
    frame = Leaderboard("exp", ["s-1"], objective, rows).to_frame()
    assert list(frame.index) == [1, 2, 3] and frame.index.name == "rank"
    assert list(frame["trial"]) == ["a", "b", "c"]
    assert list(frame["tied"]) == [True, True, False]
    assert frame.loc[1, "scored_mAP"] == 0.6 and frame.loc[2, "scored_rank1"] == 0.9
    assert frame["scored_mAP"].isna().tolist() == [False, False, True]
    assert list(frame["searched.model.lam"]) == [8.0, 2.5, 0.001]  # numbers, not MLflow text
    assert list(frame["searched.model.head"]) == ["latf", "latfpp", "latf"]
    assert frame.loc[1, "searched.sampler.k"] == 4 and frame["searched.sampler.k"].isna()[2]
    assert "scored" not in frame.columns and "params" not in frame.columns
    assert rows[0]["scored"]["mAP"] == 0.6  # the board's own rows are left as they were


def test_an_empty_leaderboard_is_an_empty_frame():
    frame = Leaderboard("exp", [], ObjectiveConfig()).to_frame()
    assert len(frame) == 0
