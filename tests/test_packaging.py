"""The install never puts both FAISS wheels (same `faiss` module) into one environment."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FAISS_WHEELS = {"faiss-cpu", "faiss-gpu"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_one_faiss_wheel_per_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"]) & FAISS_WHEELS
    assert not base  # the base install takes neither: an extra picks one
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    assert extras["gpu"] & FAISS_WHEELS == {"faiss-gpu"}  # the official wheel, not a rebuild
    assert extras["cpu"] & FAISS_WHEELS == {"faiss-cpu"}
    assert extras["dev"] & FAISS_WHEELS == {"faiss-cpu"}
    for name, reqs in extras.items():
        assert len(reqs & FAISS_WHEELS) <= 1, name
        assert not any(n.startswith("faiss-gpu-") for n in reqs), name  # third-party builds


def test_cluster_nodes_install_the_gpu_extra() -> None:
    setup = (ROOT / "cluster.yaml").read_text()
    assert re.search(r"pip install .*reidsearch\[gpu\]", setup)
