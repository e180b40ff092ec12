"""Malformed search spaces: one line naming the file and the key, before anything heavy is
imported (the valid ones: test_space.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import reidsearch
from reidsearch.errors import ConfigError
from tests.test_space import BASE, write

BAD = [
    # (yaml, key named in the error, words in the message)
    ("name: t\nsearchr: optuna\n", "searchr", "unknown key"),
    ("trials: many\n", "trials", "integer"),
    ("max_concurrent: 0\n", "max_concurrent", "greater than or equal"),
    ("objective: {metric: accuracy}\n", "objective.metric", "mAP"),
    ("objective: {reduce: mean}\n", "objective.reduce", "'best' or 'last'"),
    ("objective: {bound: maybe}\n", "objective.bound", "boolean"),
    ("objective: {metric: loss, bound: true}\n", "objective", "no confidence interval"),
    ("objective: {metric: mAP, direction: max}\n", "objective.direction", "unknown key"),
    ("repeats: 0\n", "repeats", "greater than or equal to 1"),
    ("repeats: two\n", "repeats", "integer"),
    ("fixed: {repeats: 3}\n", "fixed.repeats", "top-level repeats: key"),
    ("fixed: {objective: {metric: rank1}}\n", "fixed.objective", "top-level objective: key"),
    ("search: {repeats: {type: int, low: 1, high: 3}}\n", "search.repeats", "top-level repeats"),
    (
        "search: {objective.reduce: {type: choice, values: [best, last]}}\n",
        "search.objective.reduce",
        "top-level objective",
    ),
    ("scheduler: {type: pbt}\n", "scheduler.type", "asha"),
    ("scheduler: {type: none, grace_period: 3}\n", "scheduler.grace_period", "only used"),
    ("fixed: {epochs: 4}\nscheduler: {grace_period: 5}\n", "scheduler.grace_period", "max_t"),
    ("fixed: {model: {lam: -1}}\n", "fixed.model.lam", "greater than or equal"),
    ("fixed: {model: {lamda: 1}}\n", "fixed.model.lamda", "unknown key"),
    ("resources: {gpus: 1}\n", "resources.gpus", "unknown key"),
    ("search: {model.lamda: {type: uniform, low: 0, high: 1}}\n", "search.model.lamda", "unknown"),
    ("search: {model: {type: choice, values: [1]}}\n", "search.model", "group of settings"),
    ("search: {model.lam: {type: gauss, low: 0, high: 1}}\n", "search.model.lam.type", "gauss"),
    ("search: {model.lam: {type: uniform, low: 2, high: 1}}\n", "search.model.lam", "low"),
    ("search: {model.lam: {type: uniform, low: 1, high: 1}}\n", "search.model.lam", "empty range"),
    ("search: {model.lam: {type: uniform, low: 0, hi: 1}}\n", "search.model.lam.hi", "unknown"),
    ("search: {model.lam: {type: uniform, low: a, high: 1}}\n", "search.model.lam.low", "number"),
    (
        "search: {model.lam: {type: loguniform, low: 0, high: 1}}\n",
        "search.model.lam.low",
        "greater than 0",
    ),
    ("search: {model.lam: 3.0}\n", "search.model.lam", "expected a mapping"),
    ("search: {model.head: {type: choice, values: []}}\n", "search.model.head.values", "empty"),
    ("search: {model.head: {type: choice, values: [latf, vit]}}\n", "search.model.head", "vit"),
    ("search: {model.dropout: {type: uniform, low: 0, high: 1}}\n", "search.model.dropout", "1.0"),
    ("search: {sampler.k: {type: uniform, low: 2, high: 8}}\n", "search.sampler.k.type", "int"),
    ("search: {model.head: {type: int, low: 1, high: 3}}\n", "search.model.head.type", "choice"),
    ("search: {sampler.k: {type: int, low: 2, high: 7, step: 2}}\n", "search.sampler.k.step", ""),
    ("search: {scaling.workers: {type: int, low: 1, high: 2}}\n", "search.scaling.workers", ""),
    (
        "search:\n"
        "  loss.triplet_margin: {type: uniform, low: 0.1, high: 0.6,"
        ' when: "loss.triplet_weight > 0"}\n'
        "  loss.triplet_weight: {type: choice, values: [0.0, 1.0]}\n",
        "search.loss.triplet_margin.when",
        "searched later",
    ),
    (
        'search: {model.lam: {type: uniform, low: 1, high: 2, when: "model.head == latf"}}\n',
        "search.model.lam.when",
        "not a searched key",
    ),
    (
        "search:\n"
        "  model.head: {type: choice, values: [latf, latfpp]}\n"
        '  model.lam: {type: uniform, low: 1, high: 2, when: "model.head is latf"}\n',
        "search.model.lam.when",
        "op",
    ),
    (
        "search:\n"
        "  model.head: {type: choice, values: [latf, latfpp]}\n"
        '  model.lam: {type: uniform, low: 1, high: 2, when: "model.head == vit"}\n',
        "search.model.lam.when",
        "false for every choice",
    ),
    (
        "search: {model.lam: {type: uniform, low: 1, high: 2}}\n"
        "points_to_evaluate: [{model.lam: 3.0}]\n",
        "points_to_evaluate.0.model.lam",
        "outside",
    ),
    (
        "search: {model.lam: {type: uniform, low: 1, high: 2}}\n"
        "points_to_evaluate: [{model.lam: 1.5}, {model.head: latf}]\n",
        "points_to_evaluate.1.model.head",
        "not a searched key",
    ),
    (
        "search:\n"
        "  model.head: {type: choice, values: [latf, latfpp]}\n"
        "points_to_evaluate: [{model.head: vit}]\n",
        "points_to_evaluate.0.model.head",
        "outside",
    ),
    (
        BASE + "points_to_evaluate: [{loss.triplet_weight: 0.0, loss.triplet_margin: 0.3}]\n",
        "points_to_evaluate.0.loss.triplet_margin",
        "never used",
    ),
    (
        BASE + "points_to_evaluate: [{model.head: latf, sampler.k: 3}]\n",
        "points_to_evaluate.0.sampler.k",
        "outside",
    ),
    (
        "searcher: grid\nsearch: {model.head: {type: choice, values: [latf]}}\n"
        "points_to_evaluate: [{model.head: latf}]\n",
        "points_to_evaluate",
        "grid",
    ),
    (
        "searcher: grid\nsearch: {model.lam: {type: uniform, low: 1, high: 2}}\n",
        "search.model.lam",
        "grid needs choice",
    ),
    (
        "resources: {workers: 2}\nfixed: {ddp: {sync_batchnorm: true}}\n",
        "fixed.ddp.sync_batchnorm",
        "GPUs only",
    ),
    (
        "resources: {workers: 2, gpus_per_worker: 0}\n"
        "search: {ddp.sync_batchnorm: {type: choice, values: [false, true]}}\n",
        "search.ddp.sync_batchnorm",
        "GPUs only",
    ),
    ("name: 'a b/c'\n", "name", "letters"),
    ("- just\n- a list\n", "", "mapping"),
    ("search: {model.lam: [unclosed\n", "", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "key", "words"), BAD, ids=[b[1] or b[2] for b in BAD])
@pytest.mark.fault("bad_input")
def test_malformed_space_raises_one_line_naming_file_and_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        reidsearch.load_space(path)
    msg = str(err.value)
    assert "\n" not in msg and "Value error" not in msg
    prefix = f"{path}: {key}: " if key else f"{path}: "
    assert msg.startswith(prefix), msg
    assert words in msg, msg


@pytest.mark.fault("bad_input")
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        reidsearch.load_space(tmp_path / "nope.yaml")


def test_import_is_light_and_malformed_space_fails_fast(tmp_path: Path) -> None:
    path = write(tmp_path, "search: {model.lamda: {type: uniform, low: 0, high: 1}}\n")
    code = textwrap.dedent(
        f"""\
        import sys
        import reidsearch.search.space as space
        heavy = sorted(m for m in ("torch", "ray", "optuna") if m in sys.modules)
        assert not heavy, heavy
        try:
            space.load_search_space({str(path)!r})
        except space.ConfigError as exc:
            print(exc)
        heavy = sorted(m for m in ("torch", "ray", "optuna") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(f"{path}: search.model.lamda: ")
    assert elapsed < 20  # loose: the real cost is ~0.3 s (pydantic + yaml)


@pytest.mark.parametrize(
    "fields,key",
    [
        ({"scheduler": {"type": "asha", "max_t": 99}}, "scheduler.max_t"),
        ({"fixed": {"epochs": 4, "eval": {"period": 2}}}, "fixed.eval.period"),
    ],
)
def test_asha_settings_that_would_mislead_the_scheduler_are_rejected(tmp_path, fields, key):
    space = {
        "fixed": {"epochs": 4},
        "search": {"model.lam": {"type": "uniform", "low": 1, "high": 2}},
    }
    space.update(fields)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError, match=f"{path}: {key}:"):
        reidsearch.load_space(path)
