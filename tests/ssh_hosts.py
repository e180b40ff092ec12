"""Hosts made on this machine for a real ``ray up``: each its own network address and sshd.

A host is a network namespace joined to a bridge (the machine itself is the bridge's first
address, so a server started here on that address is "the cloud" every host reaches), with a
mount and a process namespace in which its sshd and everything started through ssh see the host's
own home, ``/tmp`` and ``/dev/shm`` (its own Ray sessions, caches and object store) and only its
own processes (``ray stop`` on one host must not stop another's Ray). Python and the project's
dependencies stay where they are, as a container image would hold them: the interpreter is bound
back into the new home when it lives under ``$HOME``, and the virtual environment is an overlay
whose writes (the node's ``pip install`` of the synced project) land in the host's own layer,
never in the venv this process runs from. ``Lab.replace_machine`` is what ``ray down`` does to a
cloud node, followed by a new instance at the same address.

Needs root, iproute2, ``unshare`` and Debian's ``openssh-server`` (``ensure_openssh`` installs
it and rsync when missing, as CI runs as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class Host:
    name: str  # the network namespace
    ip: str
    root: Path  # the host's own files: home/, tmp/, venv layer, sshd config

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def run(self, cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``cmd`` in the host's network namespace (not its file view: use ssh for that)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, "sh", "-c", cmd],
            capture_output=True, text=True, timeout=timeout,
        )


def missing_tools() -> list[str]:
    return [t for t in ("ip", "unshare", "ssh", "rsync", SSHD) if not shutil.which(t)]


def ensure_openssh() -> None:
    """Install Debian's openssh-server and rsync when missing (root only, as in CI)."""
    if not missing_tools():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "openssh-server", "openssh-client", "rsync"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)


def _sh(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")


def _image_mounts(host: Host, venv: Path) -> list[str]:
    """Shell lines (run in the host's fresh mount namespace) giving it its own home and /tmp,
    the interpreter where it was, and the venv as an overlay with a layer of its own.

    The image's folders are bound to a staging place first: the interpreter or the venv may
    live under the home or /tmp the host is about to get (a CI clone under /tmp does), and a
    path hidden by those mounts could no longer be bound or be an overlay's lower layer."""
    home = Path(pwd.getpwuid(0).pw_dir).resolve()  # where root's home is (ssh logs in as root)
    image = host.root / "image"
    staged = {"interpreter": Path(sys.base_prefix).resolve(), "venv": venv.resolve()}
    lines = []
    for name, path in staged.items():
        (image / name).mkdir(parents=True, exist_ok=True)
        lines.append(f"mount --bind {path} {image / name}")
    layer = host.root / "venv-layer"
    (layer / "upper").mkdir(parents=True, exist_ok=True)
    (layer / "work").mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={image / 'venv'},upperdir={layer}/upper,workdir={layer}/work"
    lines += [
        f"mount --rbind {host.home} {home}",
        f"mount --bind {host.tmp} /tmp",
        # Back where they were (e.g. pyenv under /root): in the host's own home or /tmp now.
        f"mkdir -p {staged['interpreter']} {staged['venv']}",
        f"mount --bind {image / 'interpreter'} {staged['interpreter']}",
        f"mount -t overlay overlay -o {opts} {staged['venv']}",
        # The image has the dependencies, not the project: the node's set-up installs the copy
        # the launcher synced (this only whites the files out in the host's own layer).
        f"rm -rf {staged['venv']}/lib/python*/site-packages/__editable__*reidsearch*",
        f"rm -rf {staged['venv']}/lib/python*/site-packages/reidsearch-*.dist-info",
        "mount -t tmpfs -o size=4g tmpfs /dev/shm",  # Ray's object store, per host
    ]
    return lines


def _sshd_config(host: Host, authorized: Path) -> Path:
    key = host.root / "ssh_host_ed25519_key"
    if not key.exists():  # a replaced machine keeps its host key (as an address would)
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    cfg = host.root / "sshd_config"
    cfg.write_text(
        f"ListenAddress {host.ip}\nPort 22\nHostKey {key}\nPidFile none\nUsePAM no\n"
        f"PermitRootLogin prohibit-password\nPasswordAuthentication no\nStrictModes no\n"
        f"AuthorizedKeysFile {authorized}\nMaxSessions 200\nMaxStartups 200\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    return cfg


def _wait_for_ssh(host: Host, sshd: subprocess.Popen, timeout: float = 60) -> None:
    """Until the host's sshd accepts; its own log in the error when it exited or never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sshd.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection((host.ip, 22), timeout=1):
            return
        time.sleep(0.2)
    done = sshd.poll() is not None
    state = f"exited {sshd.returncode}" if done else f"no answer in {timeout:g} s"
    log = (host.root / "sshd.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"sshd on {host.ip}:22 ({host.name}): {state}; its log:\n{log}")


def _kill_namespace(name: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), sig)
        if sig == signal.SIGTERM and pids.stdout.strip():
            time.sleep(3)


def remove_stale_hosts() -> None:
    """Hosts and bridges left by a run that was killed (its pid, in their names, is gone)."""
    listed = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in [n for n in names if n.startswith("rs") and "-" in n]:
        if not Path(f"/proc/{name[2:].split('-')[0]}").exists():
            _kill_namespace(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for word in listed.replace(":", " ").replace("@", " ").split():
        if word.startswith("rsbr") and not Path(f"/proc/{word[4:]}").exists():
            subprocess.run(["ip", "link", "del", word], capture_output=True)


class Lab:
    """The bridge, the hosts on it, and the key that logs in as root on each.

    ``gateway`` is this machine's address on the bridge; ``bashrc`` each host's starting
    ``~/.bashrc`` (the image's environment)."""

    def __init__(self, names: list[str], root: Path, venv: Path, bashrc: str, subnet: str):
        self.tag = str(os.getpid())
        self.root, self.venv, self.bashrc = root, venv, bashrc
        self.bridge, self.gateway = f"rsbr{self.tag}", f"{subnet}.1"
        self.key = root / "id_ed25519"
        self.hosts = [
            Host(f"rs{self.tag}-{n}", f"{subnet}.{10 + i}", root / n) for i, n in enumerate(names)
        ]
        self._sshd: dict[str, subprocess.Popen] = {}
        self._made: list[str] = []

    def start(self) -> None:
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        (self.root / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
        _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        _sh(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        _sh(["ip", "link", "set", self.bridge, "up"])
        for i, host in enumerate(self.hosts):
            self._wire(i, host)
            self._boot(host)
        for host in self.hosts:
            _wait_for_ssh(host, self._sshd[host.name])

    def _wire(self, i: int, host: Host) -> None:
        _sh(["ip", "netns", "add", host.name])
        self._made.append(host.name)
        outer, inner = f"rsv{self.tag}-{i}", f"rsi{self.tag}-{i}"
        _sh(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
        _sh(["ip", "link", "set", outer, "master", self.bridge, "up"])
        _sh(["ip", "link", "set", inner, "netns", host.name])
        for cmd in (
            f"ip link set lo up && ip link set {inner} name eth0 && ip link set eth0 up",
            f"ip addr add {host.ip}/24 dev eth0 && ip route add default via {self.gateway}",
        ):
            out = host.run(cmd)
            if out.returncode:
                raise RuntimeError(f"{host.name}: {cmd}: {out.stderr.strip()}")

    def _boot(self, host: Host) -> None:
        """A fresh machine from the image: empty home (but ``bashrc``) and /tmp, then sshd."""
        for d in (host.home, host.tmp, host.root / "venv-layer"):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        host.tmp.chmod(0o1777)
        (host.home / ".bashrc").write_text(self.bashrc)
        sshd = f"exec {SSHD} -D -e -f {_sshd_config(host, self.root / 'authorized_keys')}"
        script = " && ".join([*_image_mounts(host, self.venv), sshd])
        with open(host.root / "sshd.log", "ab") as log:
            self._sshd[host.name] = subprocess.Popen(
                ["ip", "netns", "exec", host.name, "unshare", "--mount", "--propagation",
                 "private", "--pid", "--fork", "--mount-proc", "sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _halt(self, host: Host) -> None:
        _kill_namespace(host.name)
        proc = self._sshd.pop(host.name, None)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def replace_machine(self, host: Host) -> None:
        """What ``ray down`` does to a cloud node, then a new instance at the same address:
        every process gone, the disk gone, the image as it was."""
        self._halt(host)
        self._boot(host)
        _wait_for_ssh(host, self._sshd[host.name])

    def stop(self) -> None:
        for host in self.hosts:
            self._halt(host)
        for name in self._made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@contextlib.contextmanager
def ssh_hosts(
    names: list[str], root: Path, venv: Path, bashrc: str = "", subnet: str = "10.77.0"
) -> Iterator[Lab]:
    """Hosts ``names`` on a bridge of their own, each with a running sshd (see ``Lab``)."""
    remove_stale_hosts()
    lab = Lab(names, root, venv, bashrc, subnet)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
