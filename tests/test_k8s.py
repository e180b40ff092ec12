"""k8s/: the RayCluster + RayJob pair and the MLflow server, checked offline.

The manifests are validated against KubeRay's published CRD schemas (the pinned copies in
k8s/crds/, whose checksums SOURCE.md records) by k8s/validate.py, and deliberately broken copies
must be refused by the same validator. What the manifests mean is read back through the code
that will read them: Ray's own KubeRay autoscaler config reader (the resources and worker counts
the autoscaler sees; a private Ray module, used by tests only), reidsearch's command-line parser
and its cluster-sizing rule (does the RayJob's search fit this cluster), and MLflow's own
host-header check (does the driver's tracking URI get answered). Nothing here needs a cluster.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import re
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from reidsearch.cli import build_parser
from reidsearch.errors import ConfigError
from reidsearch.search.cluster.capacity import TRIAL_DRIVER_RESOURCE
from reidsearch.search.cluster.cluster_file import (
    ClusterFile,
    NodeType,
    check_space_against_cluster_file,
)
from reidsearch.search.space import load_search_space
from reidsearch.storage import is_uri
from tests.test_image import load_script, parse_dockerfile

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
sys.path.append(str(K8S))  # validate.py imports kuberay_rules.py beside it
kv = load_script("k8s_validate", K8S / "validate.py")

MANIFESTS = sorted(K8S.glob("*.yaml"))
HEAD = "headgroup"  # the head's node type name in Ray's KubeRay autoscaler config


def docs() -> list[dict[str, Any]]:
    return [doc for _, doc in kv.load_documents(MANIFESTS)]


def one(kind: str) -> dict[str, Any]:
    [found] = [d for d in docs() if d["kind"] == kind]
    return found


def ray_node_types(raycluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The node types Ray's autoscaler derives from the RayCluster (what it scales by)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _generate_available_node_types_from_ray_cr_spec,
    )

    return _generate_available_node_types_from_ray_cr_spec(copy.deepcopy(raycluster["spec"]))


def cluster_file_of(raycluster: dict[str, Any]) -> ClusterFile:
    """The RayCluster as reidsearch's cluster model (the shape `reidsearch cluster check` uses)."""
    types = {
        name: NodeType(
            name,
            {k: float(v) for k, v in t["resources"].items()},
            t["min_workers"],
            t["max_workers"],
        )
        for name, t in ray_node_types(raycluster).items()
    }
    workers = sum(t.max_workers for name, t in types.items() if name != HEAD)
    return ClusterFile(K8S / "raycluster.yaml", "kuberay", HEAD, types, workers)


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    groups = (
        [spec["headGroupSpec"], *spec["workerGroupSpecs"]] if "headGroupSpec" in spec else [spec]
    )
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ------------------------------------------------------------------------------ validation


def test_the_pinned_crds_are_kuberays_files_that_source_md_names() -> None:
    source = (K8S / "crds" / "SOURCE.md").read_text()
    rows = re.findall(r"\| `(\S+\.gz)` \| `(\S+)` \| `([0-9a-f]{64})` \|", source)
    assert sorted(name for name, _, _ in rows) == sorted(kv.CRD_FILES.values())
    for name, path, sha in rows:
        text = gzip.decompress((K8S / "crds" / name).read_bytes())
        assert hashlib.sha256(text).hexdigest() == sha, name
        crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "ray.io"
        assert path.endswith(name[:-3])
        v1 = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        assert v1 and v1[0]["served"] and v1[0]["storage"]
    assert "`v1.7.0`" in source and re.search(r"commit \| `[0-9a-f]{40}`", source)


def test_every_manifest_validates() -> None:
    assert kv.validate(MANIFESTS) == []
    assert kv.main([str(p) for p in MANIFESTS]) == 0


def _set(path: str, value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = doc
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()
HEAD_C = "spec.headGroupSpec.template.spec.containers.0"
GPU = "spec.workerGroupSpecs.0"
BROKEN = [  # (kind, change, what the validator must say)
    ("RayCluster", _set(f"{GPU}.minReplicas", "0"), "'0' is not of type 'integer'"),
    ("RayCluster", _set(f"{HEAD_C}.imagee", "x"), "('imagee' was unexpected)"),
    ("RayCluster", _set("spec.enableInTreeAutoscale", True), "'enableInTreeAutoscale' was"),
    ("RayCluster", _set(f"{GPU}.groupName", _DELETE), "'groupName' is a required property"),
    ("RayCluster", _set(f"{HEAD_C}.name", _DELETE), "'name' is a required property"),
    ("RayCluster", _set("spec.autoscalerOptions.version", "v3"), "is not one of ['v1', 'v2']"),
    ("RayCluster", _set(f"{GPU}.maxReplicas", 2**31), "is not a 'int32'"),
    ("RayCluster", _set("spec.managedBy", "ray.io/kuberay-operator"), "CEL rules"),
    ("RayCluster", _set(f"{HEAD_C}.resources.limits.cpu", True), "is not valid under any"),
    (
        "RayCluster",
        _set(f"spec.headGroupSpec.resources.{TRIAL_DRIVER_RESOURCE}", "1,000"),
        "is no Kubernetes quantity",
    ),
    (
        "RayCluster",
        _set("spec.headGroupSpec.rayStartParams.num-cpus", "0"),
        "both in rayStartParams and in resources",
    ),
    ("RayCluster", _set("spec.rayVersion", "2.51.0"), "needs rayVersion >= 2.52.0"),
    ("RayCluster", _set(f"{GPU}.minReplicas", 9), "need 0 <= minReplicas <= maxReplicas"),
    ("RayJob", _set("spec.entrypoint", ["reidsearch", "run"]), "is not of type 'string'"),
    ("RayJob", _set("spec.entryPoint", "x"), "('entryPoint' was unexpected)"),
    ("RayJob", _set("spec.clusterSelector", {"app": "reidsearch"}), "needs ray.io/cluster"),
    ("RayJob", _set("spec.runtimeEnvYAML", "env_vars: [unclosed"), "not a YAML mapping"),
    ("Service", _set("spec.selector", {"app.kubernetes.io/name": "mlflow"}), "selects no pod"),
    ("Service", _set("spec.ports.0.targetPort", "web"), "is no container port"),
    ("Deployment", _set("spec.selector.matchLabels", {"app": "x"}), "does not select"),
    (
        "Deployment",
        _set("spec.template.spec.volumes.0.persistentVolumeClaim.claimName", "db"),
        "claim 'db' is not defined",
    ),
    (
        "Deployment",
        _set("spec.template.spec.containers.0.volumeMounts.0.name", "stor"),
        "no such volume",
    ),
    ("Deployment", _set("spec.template.spec.serviceAccountName", "default2"), "'default2' is not"),
]


@pytest.mark.parametrize(("kind", "change", "said"), BROKEN, ids=[b[2][:40] for b in BROKEN])
def test_a_broken_manifest_is_refused(tmp_path: Path, kind: str, change: Any, said: str) -> None:
    files = []
    for i, path in enumerate(MANIFESTS):
        docs_of_file = [d for _, d in kv.load_documents([path])]
        for doc in docs_of_file:
            if doc["kind"] == kind:
                change(doc)
        files.append(tmp_path / f"{i}.yaml")
        files[-1].write_text(yaml.safe_dump_all(docs_of_file))
    errors = kv.validate(files)
    assert any(said in line for line in errors), errors
    assert kv.main([str(f) for f in files]) == 1


def test_int_or_string_preserve_unknown_fields_and_open_metadata() -> None:
    schema = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object"},
            "q": {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True,
            },
            "open": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "maybe": {"type": "string", "nullable": True},
        },
    }
    check = kv.CRDValidator(kv.strict(schema), format_checker=kv.FORMATS)
    good = {"metadata": {"name": "x", "labels": {}}, "q": 2, "open": {"b": 1}, "maybe": None}
    assert list(check.iter_errors(good)) == []
    assert list(check.iter_errors({**good, "q": "500m"})) == []
    for bad in ({"q": True}, {"q": 1.5}, {"closed": {"b": 1}}, {"extra": 1}):
        assert list(check.iter_errors({**good, **bad})), bad


# ------------------------------------------------------------------------- the RayCluster


def test_the_head_runs_no_trial_and_holds_the_trial_drivers() -> None:
    raycluster = one("RayCluster")
    head = ray_node_types(raycluster)[HEAD]["resources"]
    assert head["CPU"] == 0 and head[TRIAL_DRIVER_RESOURCE] == 1000 and "GPU" not in head
    spec = raycluster["spec"]["headGroupSpec"]
    assert spec["rayStartParams"].get("include-dashboard", "true") != "false"
    [container] = spec["template"]["spec"]["containers"]
    assert {"name": "dashboard", "containerPort": 8265} in container["ports"]
    assert raycluster["spec"]["authOptions"]["mode"] == "token"  # RAY_AUTH_MODE on every pod


def test_the_gpu_groups_start_at_zero_autoscale_and_match_cluster_yaml() -> None:
    raycluster = one("RayCluster")
    assert raycluster["spec"]["enableInTreeAutoscaling"] is True
    types = ray_node_types(raycluster)
    for group in raycluster["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0
        [container] = group["template"]["spec"]["containers"]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert types[group["groupName"]]["resources"]["GPU"] == int(gpus) >= 1
        assert types[group["groupName"]]["min_workers"] == 0
    launcher = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]
    want = sorted(
        (t["resources"].get("CPU"), t["resources"].get("GPU"), t["max_workers"])
        for t in launcher.values()
        if t["resources"].get("GPU")
    )
    have = sorted(
        (t["resources"]["CPU"], t["resources"]["GPU"], t["max_workers"])
        for name, t in types.items()
        if name != HEAD
    )
    assert have == want  # the same GPU node types as cluster.yaml
    timeout = raycluster["spec"]["autoscalerOptions"]["idleTimeoutSeconds"]
    assert (
        timeout == 60 * yaml.safe_load((ROOT / "cluster.yaml").read_text())["idle_timeout_minutes"]
    )


def test_every_pod_runs_the_app_image_of_the_dockerfiles_ray() -> None:
    raycluster, mlflow = one("RayCluster"), one("Deployment")
    images = {c["image"] for c in containers(raycluster) + containers(mlflow)}
    assert len(images) == 1, images
    base = parse_dockerfile()["deps"].base  # rayproject/ray:2.60.0-py311-cu128
    assert raycluster["spec"]["rayVersion"] == re.search(r":(\d+\.\d+\.\d+)-", base)[1]
    account = one("ServiceAccount")["metadata"]["name"]
    templates = [
        g["template"]
        for g in [raycluster["spec"]["headGroupSpec"], *raycluster["spec"]["workerGroupSpecs"]]
    ]
    for template in [*templates, mlflow["spec"]["template"]]:
        assert template["spec"]["serviceAccountName"] == account


# ----------------------------------------------------------------------------- the RayJob


def test_the_rayjob_runs_a_valid_search_that_fits_this_cluster() -> None:
    raycluster, rayjob = one("RayCluster"), one("RayJob")
    spec = rayjob["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": raycluster["metadata"]["name"]}
    # No entrypoint resources: Ray's job manager then pins the driver to the head node.
    assert not {"entrypointNumCpus", "entrypointNumGpus", "entrypointResources"} & set(spec)
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "reidsearch"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and is_uri(args.storage) and is_uri(args.data)
    [(_, code_dir)] = [(c[0], c[-1]) for c in parse_dockerfile()["app"].copies()]
    space_file = ROOT / Path(args.space).relative_to(code_dir)  # the image holds the repository
    assert space_file.is_file(), space_file
    space = load_search_space(space_file).with_data_root(args.data)
    space = dataclasses.replace(space, storage_path=args.storage)  # as `run --storage` does
    fits = check_space_against_cluster_file(cluster_file_of(raycluster), space)
    assert fits >= space.max_concurrent >= 1


def test_the_fit_check_would_refuse_a_cluster_without_the_trial_driver_resource() -> None:
    raycluster, rayjob = one("RayCluster"), one("RayJob")
    del raycluster["spec"]["headGroupSpec"]["resources"][TRIAL_DRIVER_RESOURCE]
    args = build_parser().parse_args(shlex.split(rayjob["spec"]["entrypoint"])[1:])
    space_file = ROOT / "search_spaces" / Path(args.space).name
    space = dataclasses.replace(load_search_space(space_file), storage_path=args.storage)
    with pytest.raises(ConfigError, match=TRIAL_DRIVER_RESOURCE):
        check_space_against_cluster_file(cluster_file_of(raycluster), space)


# ------------------------------------------------------------------------------- MLflow


def _server_args(deployment: dict[str, Any]) -> dict[str, str]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    return dict(a.removeprefix("--").split("=", 1) for a in container["args"])


def test_the_search_driver_reaches_mlflow_through_its_service() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    service, deployment, rayjob = one("Service"), one("Deployment"), one("RayJob")
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]
    uri = urlsplit(env["MLFLOW_TRACKING_URI"])
    [port] = service["spec"]["ports"]
    assert (uri.scheme, uri.hostname, uri.port) == (
        "http",
        service["metadata"]["name"],
        port["port"],
    )
    [head] = one("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": env["MLFLOW_TRACKING_URI"]} in head["env"]
    server = _server_args(deployment)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    [target] = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert int(server["port"]) == target["containerPort"] and server["host"] == "0.0.0.0"
    allowed = server["allowed-hosts"].split(",")
    name = service["metadata"]["name"]
    for host in (uri.netloc, f"{name}.default.svc.cluster.local:5000", "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host  # driver, FQDN, port-forward
    assert not is_allowed_host_header(allowed, "attacker.example:5000")


def test_the_mlflow_store_is_on_a_claim_and_survives_pods() -> None:
    deployment, claim = one("Deployment"), one("PersistentVolumeClaim")
    server = _server_args(deployment)
    store = server["backend-store-uri"]
    assert store.startswith("sqlite:////"), store  # an absolute path
    db = Path(store.removeprefix("sqlite:///"))
    pod = deployment["spec"]["template"]["spec"]
    [mount] = [
        m
        for c in pod["containers"]
        for m in c.get("volumeMounts", [])
        if db.is_relative_to(m["mountPath"])
    ]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one sqlite writer at a time
    assert server["artifacts-destination"].startswith("s3://")
