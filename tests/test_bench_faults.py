"""The fault-latency benchmark runs (at its smallest cap), and the probes beat the libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_faults_runs_and_the_probes_answer_first():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_faults.py"), "--cap", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if "closed port" in line]
    assert len(rows) == 4
    for row in rows:
        if "preflight probe" in row:
            seconds = float(row.split()[row.split().index("probe") + 1])
            assert seconds < 3 and "ReidSearchError" in row, row
