"""Shared fixtures: a tiny trial config on a tiny synthetic dataset (seconds per epoch on CPU).

The synthetic data and decoded caches go to a per-session folder (REIDSEARCH_CACHE), which Ray
workers started by the tests inherit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_CACHE = Path(tempfile.mkdtemp(prefix="reidsearch-test-cache-"))
os.environ.setdefault("REIDSEARCH_CACHE", str(_CACHE))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def tiny_config_dict(**overrides) -> dict:
    """A 2-block, 64-wide ViT on 64x32 synthetic images: about a second per epoch on CPU."""
    cfg = {
        "data": {
            "synthetic": {
                "layout": "latfpp",
                "ids": 32,
                "test_ids": 16,
                "images_per_camera": 4,
                "height": 64,
                "width": 32,
                "seed": 0,
            },
            "height": 64,
            "width": 32,
        },
        "model": {
            "backbone": "vit_tiny_patch16_224",
            "depth": 2,
            "embed_dim": 64,
            "num_heads": 2,
            "head": "latfpp",
            "bottleneck_dim": 64,
        },
        "loss": {"label_smoothing": 0.1, "triplet_weight": 1.0},
        "optim": {"lr": 1e-3, "scheduler": "cosine"},
        "sampler": {"p": 8, "k": 4},
        "eval": {"batch_size": 64},
        "epochs": 3,
        "amp": False,
        "seed": 0,
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def tiny_space(folder: Path, name: str, epochs: int = 1, **fields) -> Path:
    """``<folder>/<name>.yaml``: a 2-trial search of ``model.lam`` on the tiny config, 2 at a
    time in-process, no scheduler, results and a sqlite store in ``folder``. ``fields`` replace
    top-level keys (``fixed``, ``trials``, ``mlflow``, ...); None drops one."""
    import yaml

    space = {
        "name": name,
        "fixed": tiny_config_dict(epochs=epochs),
        "search": {"model.lam": {"type": "uniform", "low": 0.5, "high": 10.0}},
        "trials": 2,
        "max_concurrent": 2,
        "scheduler": {"type": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "runner": "trial_process"},
        "storage_path": str(folder / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"},
        **fields,
    }
    path = folder / f"{name}.yaml"
    kept = {k: v for k, v in space.items() if v is not None}
    path.write_text(yaml.safe_dump(kept, sort_keys=False))  # search order matters (conditions)
    return path


def tiny_tracker(folder: Path, epochs: int = 4, background: bool = False):
    """A search's MLflow tracker over ``folder`` (its sqlite store, folders and space file), as a
    (re)started driver builds it for the tiny config."""
    from reidsearch.config import ObjectiveConfig
    from reidsearch.search.driver.tracker import MLflowSearchTracker

    space_file = folder / "space.yaml"
    space_file.write_text("name: t\n")
    return MLflowSearchTracker(
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        experiment="t",
        search_name="t",
        experiment_dir=str(folder / "search"),
        train_storage=str(folder / "search" / "train"),
        space_file=str(space_file),
        fixed=tiny_config_dict(epochs=epochs),
        objective=ObjectiveConfig(),
        background=background,
    )


def learnable_config_dict(**overrides) -> dict:
    """Enough identities (160) at 128x64 that a few epochs clearly beat the untrained model."""
    data = {
        "synthetic": {
            "layout": "latfpp",
            "ids": 160,
            "test_ids": 32,
            "images_per_camera": 3,
            "height": 128,
            "width": 64,
            "seed": 0,
        },
        "height": 128,
        "width": 64,
    }
    cfg = tiny_config_dict(**overrides)
    cfg["data"] = data
    cfg["model"] = {"backbone": "vit_tiny_patch16_224", "depth": 2, "head": "latfpp"}
    cfg["optim"]["warmup_epochs"] = 1
    return cfg


def write_tiny_market(root: Path) -> Path:
    """A Market-1501 layout of 3 train and 2 test identities, 2 cameras, 40x20 JPEGs."""
    from reidsearch.data.synthetic import generate_synthetic

    generate_synthetic(
        root,
        layout="market1501",
        ids=3,
        test_ids=2,
        cameras=2,
        images_per_camera=2,
        height=40,
        width=20,
    )
    return root


@pytest.fixture(scope="session")
def tiny_config():
    from reidsearch.config import TrialConfig

    def make(**overrides):
        return TrialConfig.model_validate(tiny_config_dict(**overrides))

    return make


def pytest_collection_modifyitems(config, items):
    """Run the multi-node cluster tests last: they start many processes, and the single-machine
    tests should not share the 2 CI cores with what those leave winding down."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)


@pytest.fixture(scope="module")
def search_ray():
    """A private local Ray for a module's searches: 3 logical CPUs (2 trials and their drivers)."""
    import ray

    from reidsearch.search.cluster.ray_session import init_ray

    init_ray("local", num_cpus=3)
    yield
    ray.shutdown()


# -------------------------------------------------------------------- the fault-injection suite
# Every test marked ``@pytest.mark.fault("bad_input")`` or ``@pytest.mark.fault("fault")`` tries
# one bad input or one fault (a killed driver, a lost node, a diverged trial...) and asserts that
# it was survived with nothing lost; the run ends with one line that counts them.
FAULT_KINDS = ("bad_input", "fault")
_fault_outcomes: dict[str, dict[str, int]] = {
    kind: {"passed": 0, "failed": 0} for kind in FAULT_KINDS
}


def _fault_kind(item) -> str | None:
    marker = item.get_closest_marker("fault")
    if marker is None:
        return None
    kind = marker.args[0] if marker.args else marker.kwargs.get("kind")
    if kind not in FAULT_KINDS:
        raise pytest.UsageError(f"{item.nodeid}: fault marker kind must be one of {FAULT_KINDS}")
    return kind


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    kind = _fault_kind(item)
    if kind is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _fault_outcomes[kind]["passed" if report.passed else "failed"] += 1


def pytest_terminal_summary(terminalreporter):
    bad, faults = _fault_outcomes["bad_input"], _fault_outcomes["fault"]
    tried_bad = bad["passed"] + bad["failed"]
    tried_faults = faults["passed"] + faults["failed"]
    if tried_bad + tried_faults == 0:
        return
    failed = bad["failed"] + faults["failed"]
    verdict = (
        "all survived, nothing lost"
        if failed == 0
        else f"{failed} NOT survived (see the failures above)"
    )
    terminalreporter.write_line(
        f"fault injection: tried {tried_bad} bad inputs and {tried_faults} faults; {verdict}"
    )


# --------------------------------------------------------------- the end of the test process
# The suite's own process hosts Ray drivers, torch's and faiss's OpenMP runtimes and MLflow's
# stores. One CI run ended with a segmentation fault *after* the summary, while the interpreter
# tore those native libraries down (exit 139 with every result already reported, no Python
# frame in it). Once pytest is done, leave with its own status instead of finalising them.
_session_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _session_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _session_status and os.environ.get("REIDSEARCH_FAST_EXIT", "1") == "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session_status[-1])
