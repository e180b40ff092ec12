"""docker/Dockerfile, checked without Docker: the file is parsed (ARG defaults substituted, stages
split), and what it would install is compared with what the rest of the project says: the Ray and
Python of cluster.yaml's images, pyproject's bounds and its gpu extra (faiss-gpu, CUDA 12), a
CUDA 12 torch from the same CUDA as the base image, and no project code in the dependency layer.
No image is built here (no Docker engine): see docker/README.md for the check on a GPU node.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from types import ModuleType

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def load_script(name: str, path: Path) -> ModuleType:
    """A script of the repository as a module of its own name (no sys.path entry to shadow)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reqs = load_script("docker_requirements", ROOT / "docker" / "requirements.py")

RAY_TAG = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-cu(?P<cu>\d{3})$")
ANY_TAG = re.compile(r":(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)")


@dataclass
class Stage:
    name: str
    base: str
    args: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, rest)

    def runs(self) -> list[str]:
        return [rest for op, rest in self.steps if op == "RUN"]

    def copies(self) -> list[list[str]]:
        return [
            [t for t in rest.split() if not t.startswith("--")]
            for op, rest in self.steps
            if op == "COPY"
        ]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        op, _, rest = (pending + line).partition(" ")
        out.append((op.upper(), rest.strip()))
        pending = ""
    return out


def substitute(text: str, args: dict[str, str]) -> str:
    """${NAME} / $NAME of the ARGs in scope (anything else, e.g. shell variables, kept)."""

    def value(m: re.Match[str]) -> str:
        return args.get(m.group(1) or m.group(2), m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The stages by name, with Docker's ARG scopes: an ARG before the first FROM serves the
    FROM lines (a stage sees it only when it declares ``ARG NAME`` again), an ARG in a stage
    serves the rest of that stage only (not the stages built on it)."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for op, rest in instructions(path.read_text(encoding="utf-8")):
        if op == "ARG":
            name, has_default, default = rest.partition("=")
            scope = global_args if current is None else current.args
            value = default.strip().strip('"') if has_default else global_args.get(name, "")
            scope[name] = substitute(value, scope)
        elif op == "FROM":
            base, _, name = substitute(rest, global_args).partition(" AS ")
            current = stages[name.strip()] = Stage(name.strip(), base.strip())
        elif current is not None:
            current.steps.append((op, substitute(rest, current.args)))
    return stages


def _cluster_images() -> list[str]:
    docker = yaml.safe_load((ROOT / "cluster.yaml").read_text())["docker"]
    return [docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _base() -> re.Match[str]:
    base = parse_dockerfile()["deps"].base
    match = RAY_TAG.match(base)
    assert match, f"the deps stage is not on a CUDA tag of Ray's image: {base}"
    return match


def _command(run: str, word: str) -> list[str]:
    """The tokens of the `&&`-joined command of ``run`` that contains ``word``."""
    found = [shlex.split(part) for part in run.split("&&") if word in part]
    assert len(found) == 1, (word, run)
    return found[0]


def test_the_parser_reads_args_stages_and_continuations(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(
        'ARG A=x\n# c\nFROM img:${A} AS one\nARG A\nARG B="$A-y"\n'
        "RUN echo $B \\\n  $HOME\nFROM one AS two\nRUN echo ${B} $A\n"
    )
    stages = parse_dockerfile(path)
    assert stages["one"].base == "img:x" and stages["one"].runs() == ["echo x-y  $HOME"]
    assert stages["two"].runs() == ["echo ${B} $A"]  # out of scope: left to the shell


def test_the_base_image_is_rays_with_the_ray_and_python_of_cluster_yaml() -> None:
    base = _base()
    ray, py = base["ray"], base["py"]
    images = _cluster_images()
    assert images
    for image in images:  # rayproject/ray:2.60.0-py311[-gpu], or this image's tag
        tag = ANY_TAG.search(image)
        assert tag and (tag["ray"], tag["py"]) == (ray, py), (image, ray, py)
    project = _pyproject()["project"]
    ray_req = next(Requirement(r) for r in project["dependencies"] if r.startswith("ray"))
    assert ray_req.specifier.contains(ray), (str(ray_req), ray)
    python = f"{py[0]}.{py[1:]}"
    assert SpecifierSet(project["requires-python"]).contains(f"{python}.0"), python


def test_torch_comes_from_a_cuda12_index_of_the_base_images_cuda() -> None:
    deps, cuda = parse_dockerfile()["deps"], _base()["cu"]
    index = deps.args["TORCH_INDEX"]
    match = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d{3})", index)
    assert match and match[1] == cuda and cuda.startswith("12"), (index, cuda)
    install = _command(next(r for r in deps.runs() if "--index-url" in r), "pip install")
    assert install[install.index("--index-url") + 1] == index
    assert f"torch=={deps.args['TORCH_VERSION']}" in install
    assert f"torchvision=={deps.args['TORCHVISION_VERSION']}" in install


def test_the_torchvision_pin_is_the_build_for_the_torch_pin() -> None:
    deps = parse_dockerfile()["deps"]
    try:
        installed = version("torchvision")
    except PackageNotFoundError:
        pytest.skip("torchvision is not installed here")
    if installed != deps.args["TORCHVISION_VERSION"]:
        pytest.skip(f"torchvision {installed} here, the image pins another: its needs unknown")
    needs = next(Requirement(r) for r in requires("torchvision") or [] if r.startswith("torch "))
    assert needs.specifier.contains(deps.args["TORCH_VERSION"]), (str(needs), deps.args)


def test_the_deps_stage_installs_the_gpu_extra_and_keeps_torch_and_ray() -> None:
    deps = parse_dockerfile()["deps"]
    copied = {Path(src).name: dst for *srcs, dst in deps.copies() for src in srcs}
    assert set(copied) == {"pyproject.toml", "requirements.py"}  # no code: the layer stays
    run = next(r for r in deps.runs() if "requirements.py" in r)
    script = _command(run, "requirements.py")
    out = script[script.index(">") + 1]
    argv = script[script.index("python") + 2 : script.index(">")]
    assert Path(argv[0]).parent == Path(copied["pyproject.toml"])
    lines = reqs.requirements(ROOT / "pyproject.toml", *_extras(argv))
    project = _pyproject()["project"]
    gpu = project["optional-dependencies"]["gpu"]
    assert any(reqs.requirement_name(r) == "faiss-gpu" for r in gpu)  # the official wheel
    assert set(gpu) | set(project["dependencies"]) <= set(lines)
    assert not any(reqs.requirement_name(r) == "faiss-cpu" for r in lines)
    constraints = _command(run, "ray.__version__")
    assert all(f"{m}==" in " ".join(constraints) for m in ("ray", "torch", "torchvision"))
    install = _command(run, "pip install")
    pinned = constraints[constraints.index(">") + 1]
    assert install[install.index("-r") + 1] == out and install[install.index("-c") + 1] == pinned


def _extras(argv: list[str]) -> tuple[list[str], bool]:
    extras = [argv[i + 1] for i, a in enumerate(argv) if a == "--extra"]
    return extras, "--build-system" in argv


def test_the_app_stage_installs_the_code_where_the_rayjob_runs_it_without_dependencies() -> None:
    app = parse_dockerfile()["app"]
    assert app.base == "deps"
    [(src, dst)] = [(c[0], c[-1]) for c in app.copies()]
    assert src == "." and dst == "/home/ray/reidsearch"
    install = _command(app.runs()[0], "pip install")
    assert {"--no-deps", "--no-build-isolation", "-e"} <= set(install) and install[-1] == dst


def test_the_build_context_leaves_local_state_out() -> None:
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().split("\n")
    patterns = {p.strip() for p in ignore if p.strip() and not p.startswith("#")}
    assert {".git", ".venv", "*.egg-info", "mlflow.db", "reidsearch_runs", "data"} <= patterns


def test_requirements_script_refuses_an_unknown_extra_and_a_self_reference(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[project]\nname = "demo"\ndependencies = ["a>=1", "b"]\n'
        '[project.optional-dependencies]\ngpu = ["b", "c"]\nall = ["demo[gpu]"]\n'
        '[build-system]\nrequires = ["setuptools>=68"]\n'
    )
    assert reqs.requirements(path, ["gpu"], build_system=True) == [
        "a>=1",
        "b",
        "c",
        "setuptools>=68",
    ]
    with pytest.raises(ValueError, match="no extra 'cuda'"):
        reqs.requirements(path, ["cuda"])
    with pytest.raises(ValueError, match="names the project itself"):
        reqs.requirements(path, ["all"])
    assert reqs.main([str(path), "--extra", "cuda"]) == 2


def _image_packages() -> set[str]:
    """The distributions the deps stage installs: its pip install lines and requirements.py."""
    deps, names = parse_dockerfile()["deps"], set()
    for run in deps.runs():
        for part in run.split("&&"):
            tokens = shlex.split(part)
            if "install" in tokens and "pip" in tokens:
                names |= {
                    reqs.requirement_name(t)
                    for t in tokens[tokens.index("install") + 1 :]
                    if not t.startswith(("-", "/", "$")) and not t.endswith(".txt")
                }
            if "requirements.py" in part:
                argv = tokens[tokens.index("python") + 2 : tokens.index(">")]
                lines = reqs.requirements(ROOT / "pyproject.toml", *_extras(argv))
                names |= {reqs.requirement_name(r) for r in lines}
    return names


def test_the_image_packages_cover_the_project_and_the_heads_tools() -> None:
    names = _image_packages()
    assert {"torch", "torchvision", "faiss-gpu", "ray", "mlflow", "boto3", "setuptools"} <= names


def test_cluster_yaml_setup_installs_no_dependencies_once_it_uses_the_image() -> None:
    """On the image, a setup command installs the synced code (--no-deps) or packages the image
    already has (pip then only says "already satisfied"): nothing heavy, no download."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    if all(image.startswith("rayproject/") for image in _cluster_images()):
        pytest.skip("cluster.yaml still runs Ray's plain image (setup installs the dependencies)")
    have = _image_packages()
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands")
    for command in [c for key in keys for c in config.get(key) or [] if "pip install" in c]:
        if "--no-deps" in command:
            continue
        tokens = shlex.split(command.split("pip install", 1)[1].split(";")[0])
        wanted = {reqs.requirement_name(t) for t in tokens if not t.startswith("-")}
        assert wanted <= have, (command, wanted - have)
