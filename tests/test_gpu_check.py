"""``benchmarks/gpu_check.py`` runs where only torch, timm and numpy are installed.

Each test runs Python in a subprocess whose imports of ray, mlflow, optuna, faiss, pydantic and
pyarrow raise ImportError (a meta path finder installed before anything else), as on a bare GPU
machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "mlflow", "optuna", "faiss", "pydantic", "pyarrow")
BLOCKER = f"""
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError(f"{{name}} is not installed on this machine (blocked by the test)")
        return None

sys.meta_path.insert(0, Absent())
"""


def _python(code: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code],
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
    assert "DDP: skipped" in out.stdout
    assert "FAILED" not in out.stdout
    assert lines[-1].startswith("gpu_check: all passed"), out.stdout
