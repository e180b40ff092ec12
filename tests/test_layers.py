"""Layering and style rules: the core runs on a bare GPU machine, the package has no import
circle (imports inside functions count), and the roles of ``reidsearch.search`` depend one way.

The circles and the roles are read from the source with ``ast`` (nothing is imported), so a
circle kept apart only by an import inside a function is found too; which heavy libraries a role
loads is checked in subprocesses."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# ------------------------------------------------------------- circles and roles
PACKAGE = REPO / "reidsearch"
S = "reidsearch.search"

# What each role of the search may import of the project (besides itself and the shared
# top-level modules below). Anything not listed is refused.
SHARED = {"reidsearch.config", "reidsearch.errors", "reidsearch.redact", "reidsearch.storage"}
SHARED |= {"reidsearch.objective"}  # the objective and its metric names (config re-exports)
# The dependencies' private APIs: they import nothing of the project (tests/test_private_apis.py).
SHARED |= {"reidsearch.internals", "reidsearch.internals.ray_internals"}
CORE = ("reidsearch.data", "reidsearch.modeling", "reidsearch.evaluation", "reidsearch.engine")
ALLOWED: dict[str, tuple[str, ...]] = {
    f"{S}.keys": (),
    f"{S}.rules": (f"{S}.keys",),
    f"{S}.moved": (),
    f"{S}.space": (f"{S}.keys", f"{S}.rules"),
    f"{S}.cluster": (f"{S}.keys", f"{S}.rules", f"{S}.space", f"{S}.moved"),
    f"{S}.results": (f"{S}.keys", f"{S}.rules", f"{S}.space", "reidsearch.engine"),
    f"{S}.trial": (f"{S}.keys", f"{S}.rules", f"{S}.space", *CORE),
    f"{S}.driver": (
        f"{S}.keys",
        f"{S}.rules",
        f"{S}.space",
        f"{S}.cluster",
        f"{S}.results",
        f"{S}.trial",
        f"{S}.moved",
        *CORE,
    ),
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _known(name: str) -> str | None:
    """The longest module of the package that ``name`` names or lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules ``module`` imports anywhere in its source (functions included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            stem = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                stem = f"{anchor}.{stem}" if stem else anchor
            # ``from a.b import c``: the module a.b.c if there is one, else a name of a.b
            names = [f"{stem}.{a.name}" for a in node.names]
            names = [name if name in MODULES else stem for name in names]
        for name in names:
            target = _known(name) if name.startswith("reidsearch") else None
            # A package's __init__ importing its own submodules is not a dependency on them.
            if target and target != module and not target.startswith(module + "."):
                found.add(target)
    return found


EDGES = {module: _imports(module, path) for module, path in MODULES.items()}


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    circles.append(sorted(group))
    return circles


def test_the_circle_finder_finds_a_circle_through_a_function_level_import():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(edges) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circle():
    assert _circles(EDGES) == [], "import circles (imports inside functions count)"


def _role(module: str) -> str | None:
    for role in sorted(ALLOWED, key=len, reverse=True):
        if module == role or module.startswith(role + "."):
            return role
    return None


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_role_of_the_search_imports_only_what_lies_below_it(role):
    allowed = (role, *ALLOWED[role])
    bad = []
    for module, targets in EDGES.items():
        if _role(module) != role:
            continue
        for target in sorted(targets):
            if target in SHARED or any(target == a or target.startswith(a + ".") for a in allowed):
                continue
            bad.append(f"{module} imports {target}")
    assert not bad, f"{role} may import only {', '.join(ALLOWED[role]) or 'nothing'}: {bad}"


def test_the_core_imports_nothing_of_the_search_or_the_cli():
    bad = [
        f"{module} imports {target}"
        for module, targets in EDGES.items()
        if module.startswith(CORE)
        for target in targets
        if target.startswith(("reidsearch.search", "reidsearch.cli", "reidsearch.api"))
    ]
    assert not bad


def _loaded(imports: str) -> list[str]:
    code = f"import sys\n{imports}\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list


def test_the_space_and_the_shared_names_import_no_ray_torch_or_optuna():
    loaded = _loaded(
        "import reidsearch.search.space, reidsearch.search.keys, reidsearch.search.rules\n"
        "import reidsearch.search.space.trials"
    )
    assert not {"ray", "torch", "optuna", "mlflow"} & set(loaded)


def test_the_read_only_commands_import_no_ray():
    modules = sorted(m for m in MODULES if m.startswith(f"{S}.results"))
    loaded = _loaded("\n".join(f"import {m}" for m in modules))
    assert "ray" not in loaded


def test_what_rays_per_trial_processes_unpickle_imports_no_model_code():
    # Tune's trial process builds a Ray Train run and Train's controller unpickles its config:
    # neither trains; timm/torchvision cost Tune's process 1.4 s, torch the controller 1.8 s.
    tune_side = _loaded(
        "import reidsearch.search.trial.trainable, reidsearch.search.trial.failures\n"
        "import reidsearch.engine.divergence"
    )
    assert not {"timm", "torchvision"} & set(tune_side)
    assert "torch" not in _loaded("import reidsearch.search.trial.shipment")
