"""Every private API of a dependency that reidsearch (or its cluster test harness) relies on.

Each test checks one private use, kept because no public API does it (the reason is in
``reidsearch/internals/``), and fails naming the dependency and the private name, so that an
upgrade that changes it fails here rather than deep in a search. The last tests keep new private
uses out of the rest of the package. Nothing here starts Ray.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPENDENCIES = {"ray", "mlflow", "optuna", "torch", "pyarrow"}


def _get(module: str, attr: str | None = None) -> Any:
    """``module`` (or its dotted ``attr``), failing with what changed where it is gone."""
    dep = module.split(".")[0]
    try:
        found = importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{dep} changed {module}: it cannot be imported ({exc})")
    for part in attr.split(".") if attr else []:
        if not hasattr(found, part):
            pytest.fail(f"{dep} changed {module}.{attr}: it has no {part!r}")
        found = getattr(found, part)
    return found


def _expect(ok: bool, dep: str, name: str, what: str) -> None:
    if not ok:
        pytest.fail(f"{dep} changed {name}: {what}")


def _takes(fn: Any, dep: str, name: str, *params: str) -> None:
    """``fn`` still accepts ``params`` by name."""
    have = inspect.signature(fn).parameters
    missing = [p for p in params if p not in have]
    _expect(not missing, dep, name, f"no parameter(s) {missing}; it takes {list(have)}")


# ---------------------------------------------------------------- reidsearch.internals (Ray)


def test_ray_services_find_the_local_ray() -> None:
    from reidsearch.internals.ray_internals import local_ray_address

    name = "ray._private.services.find_bootstrap_address"
    _takes(_get("ray._private.services", "find_bootstrap_address"), "ray", name, "temp_dir")
    find_gcs = _get("ray._private.services", "find_gcs_addresses")
    required = [p for p in inspect.signature(find_gcs).parameters.values() if p.default is p.empty]
    _expect(not required, "ray", "ray._private.services.find_gcs_addresses", f"needs {required}")
    found = local_ray_address()  # reads this machine's records only: starts and joins nothing
    _expect(found is None or isinstance(found, str), "ray", name, f"returned {found!r}")


def test_ray_state_records_the_autoscalers_maximum() -> None:
    state = _get("ray._private.state", "state")
    for method in ("get_cluster_config", "get_max_resources_from_cluster_config"):
        name = f"ray._private.state.state.{method}"
        fn = getattr(state, method, None)
        _expect(callable(fn), "ray", name, "it is gone")
        _expect(not inspect.signature(fn).parameters, "ray", name, "it now takes arguments")
    proto = _get("ray.core.generated.autoscaler_pb2")
    groups = proto.ClusterConfig.DESCRIPTOR.fields_by_name.get("node_group_configs")
    _expect(groups is not None, "ray", "ClusterConfig.node_group_configs", "it is gone")
    fields = groups.message_type.fields_by_name
    _expect("max_count" in fields, "ray", "NodeGroupConfig.max_count", "it is gone")


def test_ray_autoscaler_prepares_and_validates_a_cluster_file() -> None:
    import jsonschema
    import yaml

    from reidsearch.internals.ray_internals import cluster_config_validator

    for fn in ("prepare_config", "validate_config"):
        name = f"ray.autoscaler._private.util.{fn}"
        _takes(_get("ray.autoscaler._private.util", fn), "ray", name, "config")
    check = cluster_config_validator()
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = check(raw)
    name = "ray.autoscaler._private.util.prepare_config"
    _expect("cluster_synced_files" in prepared, "ray", name, "it fills in no defaults")
    _expect("cluster_synced_files" not in raw, "ray", name, "the mapping given changed")
    with pytest.raises(jsonschema.ValidationError, match="unknown_key"):
        check({**raw, "unknown_key": 1})  # (validate_config raising it: mapped per key)


def test_ray_worker_prints_forwarded_log_lines_through_one_function() -> None:
    from reidsearch.internals.ray_internals import driver_log_printer, set_driver_log_printer

    name = "ray._private.worker.print_to_stdstream"
    printer = driver_log_printer()
    _expect(callable(printer), "ray", name, "it is gone")
    _takes(printer, "ray", name, "data", "ignore_prefix")  # Ray passes ignore_prefix= by name
    worker = _get("ray._private.worker")
    set_driver_log_printer(print)
    try:
        _expect(worker.print_to_stdstream is print, "ray", name, "it cannot be replaced")
    finally:
        set_driver_log_printer(printer)


def test_tune_trial_run_metadata_keeps_the_last_result_and_caches_its_json() -> None:
    from ray.tune.experiment import Trial

    from reidsearch.internals.ray_internals import invalidate_trial_metadata, trial_last_result

    name = "ray.tune.experiment.Trial.run_metadata (_TrainingRunMetadata)"
    trial = Trial("__fake", config={}, stub=True)
    metadata = getattr(trial, "run_metadata", None)
    _expect(metadata is not None, "ray", name, "a Trial has no run_metadata")
    _expect(trial_last_result(trial) == {}, "ray", f"{name}.last_result", "not a dict at first")
    for attr in ("invalidate_cache", "get_json_state"):
        _expect(callable(getattr(metadata, attr, None)), "ray", f"{name}.{attr}", "it is gone")
    metadata.last_result = {"epoch": 2}
    metadata.get_json_state()  # cached, as a periodic save of the experiment state caches it
    metadata.last_result["done"] = True  # in place, as Tune sets it when a trial returns
    invalidate_trial_metadata(trial)
    fresh = metadata.get_json_state()
    _expect('"done": true' in fresh, "ray", f"{name}.invalidate_cache", "JSON not rewritten")


def _optuna_search() -> Any:
    from optuna.samplers import RandomSampler
    from ray.tune.search.optuna import OptunaSearch

    def space(trial: Any) -> None:
        trial.suggest_float("x", 0, 1)

    return OptunaSearch(space=space, metric="m", mode="max", sampler=RandomSampler(seed=0))


def test_tune_optuna_search_keeps_its_study_and_asked_trials() -> None:
    import optuna

    from reidsearch.internals.ray_internals import optuna_search_study, optuna_search_trials

    searcher = _optuna_search()
    searcher.suggest("t1")
    study = optuna_search_study(searcher)
    _expect(isinstance(study, optuna.Study), "ray", "OptunaSearch._ot_study", f"is {study!r}")
    asked = optuna_search_trials(searcher)
    ok = isinstance(asked, dict) and isinstance(asked.get("t1"), optuna.Trial)
    _expect(ok, "ray", "OptunaSearch._ot_trials", f"is {asked!r}, not trial id -> optuna.Trial")


def test_tune_optuna_search_tells_pruned_for_a_trial_without_result() -> None:
    """Public, but relied on: ``PruneAwareOptunaSearch`` prunes by completing without result."""
    from optuna.trial import TrialState

    from reidsearch.internals.ray_internals import optuna_search_study

    searcher = _optuna_search()
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"m": 0.3, "training_iteration": 1})
    searcher.on_trial_complete("t1", result=None, error=False)
    state = optuna_search_study(searcher).trials[0].state
    _expect(state == TrialState.PRUNED, "ray", "OptunaSearch.on_trial_complete", f"{state}")


def test_tune_asha_keeps_its_brackets_rungs_and_arguments() -> None:
    from ray.tune.schedulers import ASHAScheduler

    from reidsearch.internals import ray_internals as ri

    asha = ASHAScheduler(
        time_attr="epoch", metric="m", mode="max", max_t=8, grace_period=1, reduction_factor=2
    )
    _expect(ri.asha_time_attr(asha) == "epoch", "ray", "ASHAScheduler._time_attr", "not kept")
    _expect(ri.asha_max_t(asha) == 8, "ray", "ASHAScheduler._max_t", "not kept")
    brackets = ri.asha_brackets(asha)
    _expect(isinstance(brackets, list) and brackets, "ray", "ASHAScheduler._brackets", "gone")
    rungs = ri.bracket_rungs(brackets[0])
    milestones = [m for m, _ in rungs]
    _expect(milestones == [8, 4, 2, 1], "ray", "_Bracket._rungs", f"milestones {milestones}")
    trial = SimpleNamespace(trial_id="t1")
    asha.on_trial_add(None, trial)
    placed = ri.asha_trial_brackets(asha)
    _expect(placed.get("t1") is brackets[0], "ray", "ASHAScheduler._trial_info", f"{placed}")
    asha.on_trial_result(None, trial, {"epoch": 1, "m": 0.5})
    recorded = [dict(rec) for _, rec in ri.bracket_rungs(brackets[0])]
    _expect(recorded[-1] == {"t1": 0.5}, "ray", "_Bracket._rungs", f"recorded {recorded}")
    ri.set_asha_stop_count(asha, 3)
    _expect("num_stopped=3" in asha.debug_string(), "ray", "ASHAScheduler._num_stopped", "unused")


def test_our_tune_subclasses_add_no_attribute_their_parents_use(tmp_path: Path) -> None:
    """A Ray release that gave OptunaSearch or ASHAScheduler an attribute of the name of one of
    ours would have the subclass overwrite it silently."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from reidsearch.search.driver.schedulers import ResumableASHA
    from reidsearch.search.driver.searcher import PruneAwareOptunaSearch

    kw: dict[str, Any] = {"time_attr": "epoch", "metric": "m", "mode": "max", "max_t": 4}
    asha = ASHAScheduler(**kw), ResumableASHA(state_path=str(tmp_path / "a.json"), **kw)
    search = OptunaSearch(metric="m"), PruneAwareOptunaSearch(metric="m", max_epochs=4)
    own_asha = {"_state_path", "_stopped", "_bracket_of", "_loaded"}
    cases = [(*asha, own_asha), (*search, {"_max_epochs"})]
    for parent, ours, names in cases:
        kind = type(parent).__name__
        clash = sorted(names & (set(vars(parent)) | set(dir(type(parent)))))
        _expect(not clash, "ray", f"{kind} {clash}", "Ray uses the name(s): ours overwrite them")
        added = set(vars(ours)) - set(vars(parent))
        assert added == names, f"{type(ours).__name__} sets {sorted(added)}: update this test"


# ------------------------------------------------------ tests/cluster_harness.py (test-only)
# The harness fakes an autoscaling cluster on one machine by subclassing Ray's own test
# provider; Ray has no public API that starts a node in-process or fakes a cloud provider.


def test_ray_private_apis_of_the_cluster_harness(tmp_path: Path, monkeypatch) -> None:
    constants = _get("ray._private.ray_constants")
    for var in ("RESOURCES_ENVIRONMENT_VARIABLE", "LABELS_ENVIRONMENT_VARIABLE"):
        value = getattr(constants, var, None)
        _expect(isinstance(value, str), "ray", f"ray._private.ray_constants.{var}", "gone")
    node = _get("ray._private.node", "Node")
    _takes(node, "ray", "ray._private.node.Node", "head", "shutdown_at_exit", "spawn_reaper")
    used = "env_vars node_ip_address temp_dir min_worker_port max_worker_port num_cpus num_gpus"
    used += " dashboard_agent_listen_port object_store_memory redis_address gcs_address"
    used += " dashboard_port resources labels"
    params = _get("ray._private.parameter", "RayParams")
    _takes(params, "ray", "ray._private.parameter.RayParams", *used.split())
    module = "ray.autoscaler._private.fake_multi_node.node_provider"
    provider_cls = _get(module, "FakeMultiNodeProvider")
    create = "FakeMultiNodeProvider._create_node_with_resources_and_labels"
    method = getattr(provider_cls, create.split(".")[1], None)
    _expect(callable(method), "ray", create, "it is gone")
    _takes(method, "ray", create, "node_config", "tags", "count", "resources", "labels")
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    provider = provider_cls({"gcs_address": "127.0.0.1:1"}, "test")
    for attr in ("lock", "_gcs_address", "_nodes", "_next_hex_node_id", "provider_config"):
        _expect(hasattr(provider, attr), "ray", f"FakeMultiNodeProvider.{attr}", "it is gone")
    gcs = "FakeMultiNodeProvider._gcs_address"
    _expect(provider._gcs_address == "127.0.0.1:1", "ray", gcs, "not the provider config's")

    from tests.cluster_harness import LocalAutoscalingCluster

    base = _get("ray.cluster_utils", "AutoscalingCluster")
    _takes(base.start, "ray", "AutoscalingCluster.start", "_system_config", "override_env")
    cluster = LocalAutoscalingCluster(tmp_path, {"CPU": 0}, {"w": {"max_workers": 1}})
    made = getattr(cluster, "_config", None)
    _expect(
        isinstance(made, dict) and made.get("cluster_name") == "reidsearch-test",
        "ray",
        "AutoscalingCluster._config / _generate_config",
        "the config is no longer made by _generate_config",
    )
    head = getattr(cluster, "_head_resources", None)
    _expect(head == {"CPU": 0}, "ray", "AutoscalingCluster._head_resources", f"is {head!r}")


# ------------------------------------------------------------ replaced: public APIs relied on


def test_optuna_create_trial_rejects_a_value_outside_its_distribution() -> None:
    """``analysis._fits`` asks Optuna's public ``create_trial`` (no longer ``_contains``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from reidsearch.search.results.analysis import _fits

    cases = [
        (FloatDistribution(0.0, 1.0), 0.5, True),
        (FloatDistribution(0.0, 1.0), 2.0, False),
        (FloatDistribution(0.0, 1.0, step=0.25), 0.3, False),
        (IntDistribution(1, 8, step=1), 4, True),
        (IntDistribution(0, 8, step=2), 3, False),
        (CategoricalDistribution(["a", "b"]), "b", True),
        (CategoricalDistribution(["a", "b"]), "c", False),
        (CategoricalDistribution(["a"]), [1, 2], False),
        (FloatDistribution(0.0, 1.0), "x", False),
    ]
    for distribution, value, fits in cases:
        assert _fits(distribution, value) is fits, f"optuna changed create_trial's check: {value}"


# ---------------------------------------------------------- no private use outside internals

# Members of dependencies' objects that only reidsearch.internals may reach:
PRIVATE_MEMBERS = {
    *"_ot_study _ot_trials _completed_trials _brackets _rungs _trial_info _num_stopped".split(),
    *"_time_attr _max_t _sampler _contains _cached_json run_metadata invalidate_cache".split(),
    "print_to_stdstream",
}


def _private_uses(path: Path, base: Path = ROOT) -> list[str]:
    """``path:line: what`` for each private use of a dependency in one source file."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: set[str] = set()  # names bound to a dependency's module or object
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in DEPENDENCIES:
                    aliases.add(alias.asname or alias.name.split(".")[0])
                    if _private_path(alias.name):
                        found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in DEPENDENCIES:
            names = [alias.name for alias in node.names]
            aliases.update(alias.asname or alias.name for alias in node.names)
            if _private_path(node.module or "") or any(_private_name(n) for n in names):
                found.append((node.lineno, f"from {node.module} import {', '.join(names)}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, root = _chain(node)
            if node.attr in PRIVATE_MEMBERS:
                found.append((node.lineno, f".{node.attr}"))
            elif root in aliases and any(_private_name(part) for part in chain):
                found.append((node.lineno, ".".join([root, *chain])))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id in {"getattr", "setattr", "hasattr", "delattr"} and len(args) > 1:
                name = args[1].value if isinstance(args[1], ast.Constant) else None
                if name in PRIVATE_MEMBERS:
                    found.append((node.lineno, f"{node.func.id}(..., {name!r})"))
    rel = path.relative_to(base)
    return [f"{rel}:{line}: {what}" for line, what in sorted(set(found))]


def _private_name(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_path(dotted: str) -> bool:
    return any(_private_name(part) for part in dotted.split("."))


def _chain(node: ast.Attribute) -> tuple[list[str], str | None]:
    """(the attributes, outermost last; the name they start from) of ``a.b.c``."""
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    return parts[::-1], current.id if isinstance(current, ast.Name) else None


def test_no_private_api_of_a_dependency_outside_reidsearch_internals() -> None:
    internals = ROOT / "reidsearch" / "internals"
    files = [*(ROOT / "reidsearch").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    uses = [u for f in sorted(files) if internals not in f.parents for u in _private_uses(f)]
    assert not uses, (
        "private APIs of ray/mlflow/optuna/torch/pyarrow used outside reidsearch/internals/ "
        "(use a public API, or add a function there with why none does it):\n" + "\n".join(uses)
    )


def test_the_internals_import_nothing_of_the_project_and_no_library_at_load() -> None:
    """They cannot make an import circle, and importing one loads no heavy library (the CLI's
    ``--help`` and ``reidsearch.search.space`` must not import ray or torch)."""
    modules = []
    for path in sorted((ROOT / "reidsearch" / "internals").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            bad = [n for n in names if n.split(".")[0] == "reidsearch"]
            assert not bad, f"{path.name}:{node.lineno} imports {bad}"
        if path.stem != "__init__":
            modules.append(f"reidsearch.internals.{path.stem}")
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {DEPENDENCIES!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_source_scan_finds_private_uses(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import ray._private.worker as w\n"
        "from torch import nn\n"
        "from optuna.distributions import _convert\n"
        "x = nn.modules.batchnorm._BatchNorm\n"
        "y = searcher._ot_study\n"
        "z = getattr(trial, 'run_metadata', None)\n"
        "ok = self._own + helper._own_helper() + nn.__name__\n"
    )
    lines = [u.split(":")[1] for u in _private_uses(sample, tmp_path)]
    assert lines == ["1", "3", "4", "5", "6"]
