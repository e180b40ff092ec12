"""Check reidsearch's Kubernetes manifests offline, before ``kubectl apply``::

    python k8s/validate.py                 # every k8s/*.yaml
    python k8s/validate.py k8s/rayjob.yaml k8s/raycluster.yaml ...

Why three layers, not one: the API server checks a custom resource against its CRD's schema, but
the KubeRay operator refuses more at reconcile time (after ``kubectl apply`` said "created"), and
some mistakes it does not refuse at all (a group resource that is no Kubernetes quantity is
skipped with a log line: the head would silently lose its trial-driver resource). So:

1. RayCluster / RayJob against KubeRay's published CRD schemas (pinned in ``k8s/crds/``, see
   SOURCE.md) as strict field validation treats them (``kubectl apply`` is strict): unknown
   fields are errors where the schema lists properties and does not carry
   ``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string``, ``nullable``,
   int32/int64 and list-map keys are honoured; fields with CEL rules
   (``x-kubernetes-validations``) are refused, since CEL is not evaluated here.
2. The KubeRay rules of its ``validation.go`` (v1.7.0) that no schema expresses, and
3. core objects (Deployment, Service, PersistentVolumeClaim, ServiceAccount): selectors that
   match pod labels, ports, volumes, claims and service accounts that exist
   (both in ``k8s/kuberay_rules.py``).
"""

from __future__ import annotations

import argparse
import gzip
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kuberay_rules import (
    Doc,
    as_list,
    as_map,
    core_errors,
    kuberay_errors,
    name_of,
)

HERE = Path(__file__).resolve().parent
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml.gz", "RayJob": "ray.io_rayjobs.yaml.gz"}
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


# ------------------------------------------------------------------------------ documents


def load_documents(paths: Iterable[str | Path]) -> list[tuple[str, Doc]]:
    """Every YAML document of ``paths`` as (file name, mapping); empty documents skipped."""
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for doc in yaml.safe_load_all(fh):
                if doc is None:
                    continue
                if not isinstance(doc, dict):
                    raise ValueError(f"{path}: a document is not a mapping: {doc!r:.60}")
                docs.append((Path(path).name, doc))
    return docs


# ------------------------------------------------------------------------ 1. CRD schemas


@cache
def load_crd(kind: str) -> Doc:
    """KubeRay's CustomResourceDefinition of ``kind`` (the pinned copy in k8s/crds/)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with gzip.open(HERE / "crds" / CRD_FILES[kind], "rt", encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader


def crd_schema(kind: str, version: str) -> Doc:
    """The openAPIV3Schema of ``kind`` at a served ``version`` (KeyError when not served)."""
    for entry in load_crd(kind)["spec"]["versions"]:
        if entry["name"] == version and entry.get("served"):
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"{kind}: KubeRay's CRD serves no version {version!r}")


def strict(schema: Any) -> Any:
    """A copy in which every object schema that lists properties forbids other properties,
    unless it carries ``x-kubernetes-preserve-unknown-fields``: the API server prunes such
    fields, and strict field validation (kubectl's default) refuses them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _type(validator: Any, types: Any, instance: Any, schema: Doc) -> Iterator[Any]:
    if instance is None and schema.get("nullable"):
        return
    yield from jsonschema.Draft7Validator.VALIDATORS["type"](validator, types, instance, schema)


def _cel(validator: Any, rules: Any, instance: Any, schema: Doc) -> Iterator[Any]:
    said = "; ".join(str(rule.get("rule")) for rule in as_list(rules) if isinstance(rule, dict))
    yield jsonschema.ValidationError(
        f"this field has CEL rules ({said}) that are not evaluated offline: leave it out, or "
        "check the manifest against a cluster (kubectl apply --dry-run=server)"
    )


def _list_type(validator: Any, list_type: Any, instance: Any, schema: Doc) -> Iterator[Any]:
    if not isinstance(instance, list):
        return
    if list_type == "map":
        keys = as_list(schema.get("x-kubernetes-list-map-keys"))
        seen = [tuple(as_map(item).get(key) for key in keys) for item in instance]
    elif list_type == "set":
        seen = [repr(item) for item in instance]
    else:
        return
    dupes = sorted({repr(item) for item in seen if seen.count(item) > 1})
    if dupes:
        yield jsonschema.ValidationError(f"duplicate entries of a list-{list_type}: {dupes}")


FORMATS = jsonschema.FormatChecker()
for _fmt, (_lo, _hi) in INT_RANGES.items():
    FORMATS.checks(_fmt)(lambda v, lo=_lo, hi=_hi: not isinstance(v, int) or lo <= v <= hi)
CRDValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    {"type": _type, "x-kubernetes-validations": _cel, "x-kubernetes-list-type": _list_type},
)


@cache
def crd_validator(kind: str, version: str) -> Any:
    return CRDValidator(strict(crd_schema(kind, version)), format_checker=FORMATS)


def schema_errors(doc: Doc) -> list[str]:
    """What the API server would refuse in a RayCluster or RayJob, one line each."""
    kind, (group, _, version) = doc.get("kind"), str(doc.get("apiVersion", "")).partition("/")
    where = f"{kind} {name_of(doc)}"
    if kind not in CRD_FILES or group != "ray.io":
        return [f"{where}: apiVersion {doc.get('apiVersion')!r}: not a KubeRay kind"]
    try:
        validator = crd_validator(kind, version)
    except KeyError as exc:
        return [f"{where}: {exc.args[0]}"]
    found = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{where}: {_path(e.absolute_path)}: {e.message}" for e in found]


def _path(parts: Iterable[Any]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
    return text.lstrip(".") or "(top level)"


# ---------------------------------------------------------------------------------- all


def validate(paths: Iterable[str | Path]) -> list[str]:
    """Every problem of the manifests in ``paths`` (checked together), one line each."""
    docs = [doc for _, doc in load_documents(paths)]
    errors: list[str] = []
    for doc in docs:
        if doc.get("kind") in CRD_FILES:
            errors += schema_errors(doc) + kuberay_errors(doc)
    return errors + core_errors(docs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="manifests (default: every k8s/*.yaml)")
    paths = ap.parse_args(argv).paths or sorted(HERE.glob("*.yaml"))
    errors = validate(paths)
    for line in errors:
        print(line)
    print(
        f"{len(errors)} problem(s) in {len(paths)} file(s)"
        if errors
        else f"ok: {len(paths)} file(s) valid (KubeRay CRDs v1.7.0, strict fields)"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
