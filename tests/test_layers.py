"""Layering and style rules that keep the core runnable on a bare GPU machine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = [
    "reidsearch.data",
    "reidsearch.modeling",
    "reidsearch.evaluation",
    "reidsearch.engine.trainer",
    "reidsearch.engine.run_local",
    "reidsearch.engine.evaluate",
]


def test_the_core_imports_neither_ray_nor_mlflow_nor_optuna():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE)
        + "bad = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow', 'optuna'})\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_the_cli_answers_help_without_importing_torch_or_ray():
    code = (
        "import sys\nfrom reidsearch.cli import build_parser\nbuild_parser()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_ruff_is_clean():
    ruff = str(Path(sys.executable).parent / "ruff")  # installed with the dev extra
    if not Path(ruff).exists():
        ruff = shutil.which("ruff") or ruff
    out = subprocess.run(
        [ruff, "check", "reidsearch", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout
