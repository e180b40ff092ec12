"""The checks of ``k8s/validate.py`` that no CRD schema expresses (layers 2 and 3 there).

2. KubeRay's own rules (its ``validation.go`` at v1.7.0, the ones these manifests can meet): the
   operator refuses such a manifest at reconcile time, after ``kubectl apply`` said "created",
   or, for a group resource that is no Kubernetes quantity, skips it with a log line.
3. Core objects (Deployment, Service, PersistentVolumeClaim, ServiceAccount): what breaks
   silently when wrong: selectors that match pod labels, ports, volumes, claims and service
   accounts that exist in the files checked together.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

RAY_KINDS = ("RayCluster", "RayJob")
# Kubernetes' resource.Quantity syntax (the CRDs carry the same pattern for container resources).
QUANTITY = re.compile(
    r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
MAX_NAME = {"RayCluster": 53, "RayJob": 47}  # KubeRay v1.7.0 utils/constant.go
CLUSTER_SELECTOR_KEY = "ray.io/cluster"  # RayJobClusterSelectorKey
START_PARAM_RESOURCES = ("num-cpus", "num-gpus", "memory", "resources")
CORE_KINDS = {
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
}
Doc = dict[str, Any]


def name_of(doc: Doc) -> str:
    meta = as_map(doc.get("metadata"))
    return str(meta.get("name") or f"{meta.get('generateName', '?')}*")


def as_map(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def dig(value: Any, *keys: str) -> Any:
    for key in keys:
        value = as_map(value).get(key)
    return value


# --------------------------------------------------------------------- 2. KubeRay's rules


def version_tuple(text: Any) -> tuple[int, ...]:
    """A version's numbers, to compare: "2.60.0" -> (2, 60, 0); anything unparsable -> (0,)."""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", str(text or ""))
    return tuple(int(g or 0) for g in match.groups()) if match else (0,)


def autoscaler_v2(spec: Doc) -> bool:
    """KubeRay's IsAutoscalingV2Enabled: the autoscalerOptions.version, else Ray >= 2.47."""
    if spec.get("enableInTreeAutoscaling") is not True:
        return False
    chosen = dig(spec, "autoscalerOptions", "version")
    return chosen == "v2" if chosen else version_tuple(spec.get("rayVersion")) >= (2, 47, 0)


def cluster_spec_errors(spec: Doc, where: str) -> list[str]:
    """KubeRay's ValidateRayClusterSpec (v1.7.0), the rules that matter to these manifests."""
    errors: list[str] = []
    autoscaling, v2 = spec.get("enableInTreeAutoscaling") is True, autoscaler_v2(spec)
    groups = [("head group", as_map(spec.get("headGroupSpec")))]
    groups += [
        (f"worker group {as_map(g).get('groupName')}", as_map(g))
        for g in as_list(spec.get("workerGroupSpecs"))
    ]
    for label, group in groups:
        pod = as_map(dig(group, "template", "spec"))
        if not as_list(pod.get("containers")):
            errors.append(f"{where}: {label}: the pod template has no container")
        params, resources = as_map(group.get("rayStartParams")), as_map(group.get("resources"))
        if resources and any(params.get(key) for key in START_PARAM_RESOURCES):
            errors.append(
                f"{where}: {label}: resources set both in rayStartParams and in "
                "resources (KubeRay refuses this): use only resources"
            )
        if "labels" in params:
            errors.append(f"{where}: {label}: rayStartParams.labels: use the group's labels")
        for key, value in resources.items():
            if not isinstance(value, str) or not QUANTITY.match(value):
                errors.append(
                    f"{where}: {label}: resources.{key}: {value!r} is no Kubernetes "
                    "quantity (KubeRay would skip it silently)"
                )
        if v2 and pod.get("restartPolicy") not in (None, "", "Never"):
            errors.append(
                f"{where}: {label}: restartPolicy must be Never or unset with autoscaler v2"
            )
        if label == "head group":
            continue
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            errors.append(f"{where}: {label}: set minReplicas and maxReplicas (no autoscaler)")
        numbers = [n for n in (low, high) if isinstance(n, int)]
        if any(n < 0 for n in numbers) or (len(numbers) == 2 and low > high):
            errors.append(f"{where}: {label}: need 0 <= minReplicas <= maxReplicas")
    if dig(spec, "authOptions", "mode") == "token":
        if version_tuple(spec.get("rayVersion")) < (2, 52, 0):
            errors.append(f"{where}: authOptions.mode token needs rayVersion >= 2.52.0")
    return errors


def kuberay_errors(doc: Doc) -> list[str]:
    """What the KubeRay operator refuses (or silently mangles) beyond the CRD schema."""
    kind, spec, where = (
        doc.get("kind"),
        as_map(doc.get("spec")),
        f"{doc.get('kind')} {name_of(doc)}",
    )
    errors = _name_errors(doc, DNS1035, MAX_NAME.get(str(kind), 63))
    if kind == "RayCluster":
        return errors + cluster_spec_errors(spec, where)
    selector = as_map(spec.get("clusterSelector"))
    if not spec.get("rayClusterSpec") and not selector:
        errors.append(f"{where}: set rayClusterSpec or clusterSelector")
    if selector:
        if not selector.get(CLUSTER_SELECTOR_KEY):
            errors.append(f"{where}: clusterSelector needs {CLUSTER_SELECTOR_KEY}: <RayCluster>")
        if spec.get("submissionMode") == "SidecarMode":
            errors.append(f"{where}: clusterSelector does not work with SidecarMode")
        if isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] > 0:
            errors.append(f"{where}: backoffLimit > 0 does not work with clusterSelector")
        if spec.get("suspend"):
            errors.append(f"{where}: a clusterSelector RayJob cannot be suspended")
    if spec.get("rayClusterSpec"):
        errors += cluster_spec_errors(as_map(spec["rayClusterSpec"]), f"{where}: rayClusterSpec")
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    except yaml.YAMLError as exc:
        runtime_env = f"unparsable ({str(exc).splitlines()[0]})"
    if not isinstance(runtime_env, dict):
        errors.append(f"{where}: runtimeEnvYAML is not a YAML mapping: {runtime_env!r:.80}")
    return errors


def _name_errors(doc: Doc, pattern: re.Pattern[str], longest: int) -> list[str]:
    meta, where = as_map(doc.get("metadata")), f"{doc.get('kind')} {name_of(doc)}"
    name = meta.get("name") or (
        f"{meta.get('generateName')}abcde" if meta.get("generateName") else None
    )  # the API server appends 5 characters to generateName
    if not isinstance(name, str) or not pattern.match(name) or len(name) > longest:
        return [f"{where}: metadata.name: not a valid name of at most {longest} characters"]
    bad = [k for k, v in as_map(meta.get("labels")).items() if not LABEL_VALUE.match(str(v))]
    return [f"{where}: metadata.labels.{k}: not a label value" for k in bad]


# ------------------------------------------------------------------------ 3. core objects


def core_errors(docs: list[Doc]) -> list[str]:
    """Structural checks of the core objects, and of every pod template against the set."""
    named = {(d.get("kind"), name_of(d)): d for d in docs}
    errors: list[str] = []
    templates: list[tuple[str, Doc]] = []  # (owner, pod template) of every workload
    for doc in docs:
        kind, where, spec = doc.get("kind"), f"{doc.get('kind')} {name_of(doc)}", doc.get("spec")
        spec = as_map(spec)
        if kind in RAY_KINDS:
            cluster = as_map(spec.get("rayClusterSpec")) if kind == "RayJob" else spec
            groups = [
                as_map(cluster.get("headGroupSpec")),
                *map(as_map, as_list(cluster.get("workerGroupSpecs"))),
            ]
            templates += [(where, as_map(g.get("template"))) for g in groups if g]
            continue
        if (doc.get("apiVersion"), kind) not in CORE_KINDS:
            errors.append(f"{where}: apiVersion {doc.get('apiVersion')} kind {kind}: unchecked")
            continue
        errors += _name_errors(doc, DNS1035 if kind == "Service" else DNS1123, 63)
        if kind == "Deployment":
            template = as_map(spec.get("template"))
            labels = as_map(dig(template, "metadata", "labels"))
            wanted = as_map(dig(spec, "selector", "matchLabels"))
            if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
                errors.append(
                    f"{where}: spec.selector.matchLabels {wanted} does not select "
                    f"its pod template's labels {labels}"
                )
            templates.append((where, template))
        elif kind == "PersistentVolumeClaim":
            size = dig(spec, "resources", "requests", "storage")
            if not as_list(spec.get("accessModes")) or not QUANTITY.match(str(size)):
                errors.append(f"{where}: needs accessModes and resources.requests.storage")
    for doc in docs:
        if doc.get("kind") == "Service":
            errors += _service_errors(doc, [t for _, t in templates])
    for owner, template in templates:
        errors += _pod_errors(owner, as_map(template.get("spec")), named)
    return errors


def _service_errors(service: Doc, templates: list[Doc]) -> list[str]:
    where = f"Service {name_of(service)}"
    selector = as_map(dig(service, "spec", "selector"))
    pods = [
        t
        for t in templates
        if selector
        and all(as_map(dig(t, "metadata", "labels")).get(k) == v for k, v in selector.items())
    ]
    if not pods:
        return [f"{where}: spec.selector {selector} selects no pod template in these files"]
    ports = [
        p
        for t in pods
        for c in as_list(dig(t, "spec", "containers"))
        for p in as_list(as_map(c).get("ports"))
    ]
    errors = []
    for port in as_list(dig(service, "spec", "ports")):
        target = as_map(port).get("targetPort", as_map(port).get("port"))
        if not any(
            target in (as_map(p).get("name"), as_map(p).get("containerPort")) for p in ports
        ):
            errors.append(
                f"{where}: port {as_map(port).get('port')}: targetPort {target!r} is no "
                "container port of the selected pods"
            )
    return errors


def _pod_errors(owner: str, pod: Doc, named: dict[tuple[Any, str], Doc]) -> list[str]:
    errors = []
    volumes = {as_map(v).get("name"): as_map(v) for v in as_list(pod.get("volumes"))}
    for container in map(as_map, as_list(pod.get("containers"))):
        if not container.get("name") or not container.get("image"):
            errors.append(f"{owner}: a container without name or image")
        for mount in map(as_map, as_list(container.get("volumeMounts"))):
            if mount.get("name") not in volumes:
                errors.append(f"{owner}: volumeMount {mount.get('name')!r}: no such volume")
    for volume in volumes.values():
        claim = dig(volume, "persistentVolumeClaim", "claimName")
        if claim is not None and ("PersistentVolumeClaim", claim) not in named:
            errors.append(
                f"{owner}: volume {volume.get('name')!r}: claim {claim!r} is not "
                "defined in these files"
            )
    account = pod.get("serviceAccountName")
    if account and ("ServiceAccount", account) not in named:
        errors.append(f"{owner}: serviceAccountName {account!r} is not defined in these files")
    return errors
