"""A node's set-up time with and without the dependencies in place (issue 23, item 3).

    .venv/bin/python benchmarks/bench_node_setup.py [--warm-repeats 3] [--json FILE] [--keep]
    .venv/bin/python benchmarks/bench_node_setup.py --dry-run   # print what it would run

Runs cluster.yaml's project set-up command (the ``setup_commands`` entry that pip-installs
``~/reidsearch``; read from the file, never copied here) through ``bash -c`` as a node would,
with HOME a temp folder holding the project as the launcher's rsync syncs it (file_mounts,
rsync_exclude, rsync_filter of cluster.yaml) and PATH led by a virtual environment:

- cold: a brand-new venv (``python -m venv``, nothing installed): Ray's plain image, where the
  command installs the project with every dependency (its ``else`` branch). Run once.
- warm: the same venv afterwards with ``pip uninstall -y reidsearch``: the project's image, every
  dependency in place (its light ``then`` branch). Run ``--warm-repeats`` times, median.

Which branch ran is read from bash's trace (``bash -x``: the ``pip install`` line it executed),
not assumed; the packages pip added come from ``pip list`` before and after. Each run gets a
fresh copy of the project (a new node's sync has no egg-info). Everything lives in a temp folder
under /var/tmp (the venv is several GB), removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = ROOT / "cluster.yaml"
# The environment of this machine that a node would not have (or that would point pip elsewhere).
DROPPED_ENV = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_CACHE_DIR", "XDG_CACHE_HOME",
               "PIP_USER", "PIP_REQUIRE_VIRTUALENV", "PS4", "BASH_ENV", "ENV")


def load_cluster(path: Path = CLUSTER_FILE) -> dict:
    """The cluster launcher file, as Ray reads it."""
    return yaml.safe_load(path.read_text())


def setup_command(cluster: dict) -> str:
    """The setup_commands entry that pip-installs the synced project (exactly one must)."""
    found = [c for c in cluster["setup_commands"] if "pip install" in c and "reidsearch" in c]
    if len(found) != 1:
        raise SystemExit(f"expected one project install in setup_commands, found {len(found)}")
    return found[0]


def project_mount(cluster: dict) -> str:
    """The remote path (``~/...``) that file_mounts syncs the repository root (".") to."""
    for remote, local in cluster["file_mounts"].items():
        if local in (".", "./"):
            return remote
    raise SystemExit("cluster.yaml's file_mounts sync no '.' (the repository root)")


def rsync_filter_args(cluster: dict) -> list[str]:
    """rsync's filter arguments as Ray's launcher builds them (command_runner.py)."""
    args: list[str] = []
    for pattern in cluster.get("rsync_exclude") or []:
        args += ["--exclude", pattern]
    for name in cluster.get("rsync_filter") or []:
        args += ["--filter", f"dir-merge,- {name}"]
    return args


def sync_project(cluster: dict, home: Path) -> Path:
    """A fresh copy of the repository where a new node's launcher would put it."""
    target = home / project_mount(cluster).removeprefix("~/")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["rsync", "-a", *rsync_filter_args(cluster), f"{ROOT}/", f"{target}/"], check=True
    )
    return target


def node_env(venv: Path, home: Path) -> dict[str, str]:
    """This process's environment (pip's index settings included) as a node's shell would see
    it: HOME the temp home (so pip's cache starts empty there), the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin")
    return env


def installed(venv: Path) -> set[str]:
    """``name==version`` of every package in the venv."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {line.strip().lower() for line in out.splitlines() if "==" in line}


def executed_pip(trace: str) -> str:
    """The ``pip install`` line bash ran, from its ``-x`` trace on stderr."""
    lines = [ln[2:] for ln in trace.splitlines() if ln.startswith("+ pip install")]
    return lines[-1] if lines else ""


def branch_of(pip_line: str) -> str:
    """``light`` for the --no-deps install of the image, ``heavy`` for the full one."""
    if not pip_line:
        return "none"
    return "light" if "--no-deps" in shlex.split(pip_line) else "heavy"


def run_setup(command: str, cluster: dict, venv: Path, home: Path) -> dict:
    """Time one set-up of a freshly synced project; what ran and what it installed."""
    sync_project(cluster, home)
    before = installed(venv)
    start = time.perf_counter()
    run = subprocess.run(
        ["bash", "-x", "-c", command], env=node_env(venv, home), cwd=home,
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    added = sorted(installed(venv) - before)
    pip_line = executed_pip(run.stderr)
    return {
        "seconds": round(seconds, 2), "rc": run.returncode, "branch": branch_of(pip_line),
        "pip_command": pip_line, "packages_added": len(added),
        "added": added if len(added) <= 3 else added[:3] + ["..."],
        "output_tail": (run.stdout + run.stderr)[-1500:] if run.returncode else "",
    }


def faiss_import(venv: Path, home: Path) -> dict:
    """Whether ``import faiss`` works in the venv (the warm branch's check needs it)."""
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import faiss; print(faiss.__version__, hasattr(faiss, 'StandardGpuResources'))"],
        env=node_env(venv, home), capture_output=True, text=True,
    )
    lines = (run.stdout if run.returncode == 0 else run.stderr).strip().splitlines()
    return {"ok": run.returncode == 0, "says": lines[-1] if lines else ""}


def time_check(command: str, venv: Path, home: Path) -> float | None:
    """Seconds of the command's ``if`` check alone (imports, no install): the share of a warm
    set-up that is Python importing the dependencies, not pip."""
    found = re.match(r"\s*if (.+?);\s*then ", command)
    if not found:
        return None
    start = time.perf_counter()
    subprocess.run(["bash", "-c", found[1]], env=node_env(venv, home), cwd=home)
    return round(time.perf_counter() - start, 2)


def du_bytes(path: Path) -> int:
    """Disk usage of a folder (``du -sb``)."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def summarize(cold_s: float, warm_s: list[float]) -> dict:
    """The figures the README reports: the cold time, the warm median, their ratio."""
    warm = statistics.median(warm_s)
    return {"cold_s": round(cold_s, 1), "warm_median_s": round(warm, 1),
            "warm_s": [round(s, 1) for s in warm_s], "ratio": round(cold_s / warm, 1)}


def machine() -> dict:
    """CPU, cores, memory and load, since the figures depend on a shared machine's state."""
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                  .splitlines() if ln.startswith("model name")), "?")
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "mem_gib": round(mem / 2**20, 1),
            "load": os.getloadavg()[0], "python": sys.version.split()[0]}


def describe(command: str, cluster: dict, repeats: int) -> str:
    """What the benchmark runs (``--dry-run``); the command on a line of its own."""
    mount = project_mount(cluster)
    return "\n".join([
        "command (cluster.yaml setup_commands), run as: bash -x -c COMMAND",
        command,
        f"sync: rsync -a {shlex.join(rsync_filter_args(cluster))} {ROOT}/ -> $HOME/"
        f"{mount.removeprefix('~/')}/ (file_mounts {mount}: .)",
        "cold: a brand-new venv (python -m venv, nothing installed) first on PATH; "
        "HOME a temp folder under /var/tmp; 1 run",
        f"warm: the same venv after the cold run, `pip uninstall -y reidsearch` before each of "
        f"{repeats} runs (median)",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm-repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (debugging)")
    ap.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = ap.parse_args()
    cluster = load_cluster()
    command = setup_command(cluster)
    print(describe(command, cluster, args.warm_repeats), flush=True)
    if args.dry_run:
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_node_setup-", dir="/var/tmp"))
    try:
        figures = measure(command, cluster, tmp, args.warm_repeats)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"removed {tmp}" + (" (NOT all gone)" if tmp.exists() else ""))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures: {args.json}")
    if figures.get("failed"):
        raise SystemExit(figures["failed"])


def measure(command: str, cluster: dict, tmp: Path, repeats: int) -> dict:
    """The cold run, the faiss check (faiss-cpu in its place if faiss-gpu does not import),
    then the warm runs; the figures as a dict."""
    home, venv = tmp / "home", tmp / "venv"
    home.mkdir()
    figures: dict = {"command": command, "machine": machine()}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    figures["pip"] = subprocess.run([*pip, "--version"], capture_output=True, text=True,
                                    check=True).stdout.split()[1]
    figures["packages_before"] = len(installed(venv))
    print(f"\ncold: new venv (pip {figures['pip']}, {figures['packages_before']} packages)",
          flush=True)
    cold = run_setup(command, cluster, venv, home)
    figures["cold"] = cold
    print(f"cold: {cold['seconds']:.1f} s, rc {cold['rc']}, branch {cold['branch']}: "
          f"{cold['pip_command']}; {cold['packages_added']} packages added", flush=True)
    if cold["rc"]:
        print(cold["output_tail"])
        return {**figures, "failed": "the cold set-up failed"}
    figures["venv_bytes"] = du_bytes(venv)
    shutil.rmtree(home / ".cache", ignore_errors=True)  # an image's home has no pip cache
    print(f"venv {figures['venv_bytes'] / 2**30:.2f} GiB", flush=True)
    figures["faiss_gpu_import"] = faiss_import(venv, home)
    print(f"import faiss (faiss-gpu, no GPU here): {figures['faiss_gpu_import']}", flush=True)
    if not figures["faiss_gpu_import"]["ok"]:  # the warm check would fail: take faiss-cpu
        subprocess.run([*pip, "uninstall", "-q", "-y", "faiss-gpu"], check=True)
        subprocess.run([*pip, "install", "-q", "faiss-cpu"], check=True,
                       env=node_env(venv, home))
        figures["faiss_for_warm"] = faiss_import(venv, home)
        print(f"warm runs with faiss-cpu instead: {figures['faiss_for_warm']}", flush=True)
    warm = []
    for i in range(repeats):
        subprocess.run([*pip, "uninstall", "-q", "-y", "reidsearch"], check=True)
        run = run_setup(command, cluster, venv, home)
        run["check_seconds"] = time_check(command, venv, home)
        warm.append(run)
        print(f"warm {i + 1}: {run['seconds']:.1f} s (its import check alone: "
              f"{run['check_seconds']:.1f} s), rc {run['rc']}, branch {run['branch']}: "
              f"{run['pip_command']}; added {run['added']}", flush=True)
        if run["rc"]:
            print(run["output_tail"])
            return {**figures, "warm": warm, "failed": "a warm set-up failed"}
    figures["warm"] = warm
    figures["summary"] = summarize(cold["seconds"], [r["seconds"] for r in warm])
    figures["machine"]["load_end"] = os.getloadavg()[0]
    s = figures["summary"]
    checks = [r["check_seconds"] for r in warm if r["check_seconds"] is not None]
    s["warm_check_median_s"] = round(statistics.median(checks), 1) if checks else None
    print(f"\nnode set-up: cold {s['cold_s']} s ({cold['branch']} branch), warm median "
          f"{s['warm_median_s']} s of {s['warm_s']} ({warm[0]['branch']} branch; its import "
          f"check alone {s['warm_check_median_s']} s): "
          f"cold / warm = {s['ratio']}x; venv {figures['venv_bytes'] / 2**30:.2f} GiB")
    return figures


if __name__ == "__main__":
    main()
