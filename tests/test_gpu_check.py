"""``benchmarks/gpu_check.py`` runs where only torch, timm and numpy are installed.

Each test runs Python in a subprocess whose imports of ray, mlflow, optuna, faiss, pydantic and
pyarrow raise ImportError (a meta path finder installed before anything else), as on a bare GPU
machine; the torch+faiss tests let faiss import (here the faiss-cpu wheel, or a broken stand-in).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "mlflow", "optuna", "faiss", "pydantic", "pyarrow")
BLOCKER = """
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError(f"{{name}} is not installed on this machine (blocked by the test)")
        return None

sys.meta_path.insert(0, Absent())
"""


def _python(
    code: str, timeout: int, absent: tuple[str, ...] = ABSENT
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER.format(absent=absent) + code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def test_the_bare_machine_parts_import_without_pydantic_or_pyarrow():
    modules = [
        "reidsearch.modeling",
        "reidsearch.evaluation",
        "reidsearch.evaluation.metrics",
        "reidsearch.evaluation.retrieval",
        "reidsearch.data.augment",
        "reidsearch.data.sampler",
        "reidsearch.engine.step",
        "reidsearch.engine.optim",
        "reidsearch.engine.distributed",
    ]
    code = "".join(f"import {m}\n" for m in modules) + "print('imported')\n"
    out = _python(code, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "imported"


def test_the_blocker_blocks():
    out = _python("import pydantic\n", timeout=60)
    assert out.returncode != 0 and "blocked by the test" in out.stderr


def test_gpu_check_smoke_on_cpu_prints_the_throughput_figures():
    code = (
        "import runpy\n"
        "sys.argv = ['benchmarks/gpu_check.py', '--smoke', '--device', 'cpu']\n"
        "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')\n"
    )
    out = _python(code, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for size in ("[64x64]", "[64x32]"):
        mine = [line for line in lines if line.startswith(size)]
        for figure in (
            "(a) full GPU data path",
            "(b) model only",
            "(a) / (b)",
            "(c) PIL + DataLoader",
        ):
            assert any(figure in line for line in mine), (figure, out.stdout)
        assert sum("img/s" in line for line in mine) >= 4, out.stdout
        assert any("eval" in line and "training epoch" in line for line in mine), out.stdout
    assert "faiss GPU: skipped (faiss does not import" in out.stdout  # the blocker was active
    assert "torch+faiss: skipped (faiss does not import" in out.stdout
    assert "DDP: skipped" in out.stdout
    assert "FAILED" not in out.stdout
    assert lines[-1].startswith("gpu_check: all passed"), out.stdout


# ------------------------------------------------ torch and faiss in one process (CPU path)
CHECK = """
import torch
sys.path.insert(0, "benchmarks")
import gpu_check
args = gpu_check.parse_args({argv!r})
gpu_check.torch_faiss_check(args, gpu_check.resolve(args))
print("failures:", gpu_check.failures)
"""
WITH_FAISS = tuple(m for m in ABSENT if m != "faiss")


def _check(argv: list[str], prelude: str = "") -> tuple[str, str]:
    out = _python(prelude + CHECK.format(argv=argv), timeout=180, absent=WITH_FAISS)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("torch+faiss:"))
    return line, out.stdout.splitlines()[-1]


def test_torch_and_faiss_cpu_run_together_and_agree():
    line, failures = _check(["--smoke", "--device", "cpu"])
    import faiss
    import torch

    assert f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})" in line
    assert f"faiss-cpu {faiss.__version__} (NO GPU support: a CPU wheel)" in line
    assert "IndexFlatIP on the cpu: top-100 of 48 x 192 scores as torch's top-k" in line
    assert "CUDA libraries loaded:" in line and "FAILED" not in line
    assert failures == "failures: []"


def test_expect_faiss_gpu_fails_where_faiss_has_no_gpu_index():
    line, failures = _check(["--smoke", "--device", "cpu", "--expect-faiss-gpu"])
    assert line.startswith("torch+faiss: FAILED:") and "NO GPU support" in line, line
    assert failures == "failures: ['torch+faiss']"


BROKEN_FAISS = """
import types
import numpy as np

class OffByOne:  # returns each query's neighbours one rank late
    def __init__(self, dim):
        self.g = None
    def add(self, g):
        self.g = g
    def search(self, q, k):
        scores = q @ self.g.T
        ids = np.argsort(-scores, axis=1)[:, 1 : k + 1]
        return np.take_along_axis(scores, ids, axis=1), ids

sys.modules["faiss"] = types.SimpleNamespace(IndexFlatIP=OffByOne, __version__="0-broken")
"""


def test_a_faiss_returning_wrong_neighbours_fails():
    line, failures = _check(["--smoke", "--device", "cpu"], prelude=BROKEN_FAISS)
    assert line.startswith("torch+faiss: FAILED:") and "0-broken" in line, line
    assert failures == "failures: ['torch+faiss']"
