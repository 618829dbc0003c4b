"""Run a real etcd cluster (1 or 3 members) as local processes, for tests and the lab.

    with EtcdCluster(tmp_path, members=3) as cluster:
        store = EtcdStore(cluster.endpoints)

Every member runs in its own session (process group); stop(), kill_member(), the context manager
and, as a last resort, atexit kill the whole group. On Linux members also get PR_SET_PDEATHSIG so
they die with the Python thread that started them (start the cluster from a long-lived thread).
`netns` runs the members under `ip netns exec <netns>` (root needed); `host` is the address they
bind, e.g. a lab bridge address. `sites` places each member in a namespace of its own, at an
address of its own (the pair lab: one member per host and one on the witness), so that cutting a
host's network really takes its vote away.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

_LIVE: set[EtcdCluster] = set()  # clusters with running members, killed at exit


def _kill_all_at_exit() -> None:
    for cluster in list(_LIVE):
        cluster.stop()


atexit.register(_kill_all_at_exit)


# Below Linux's ephemeral range (32768-60999 by default): a port the kernel picked with bind(0) is
# one an outgoing connection may take before etcd binds it (seen: "address already in use" while
# other tests ran beside a fresh-clone run); a listener's port from here is taken only by another
# listener.
LISTEN_PORTS = (20000, 32767)


def _free_port(host: str) -> int:
    for _ in range(200):
        port = random.randint(*LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise EtcdError(f"no free port on {host} between {LISTEN_PORTS[0]} and {LISTEN_PORTS[1]}")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class EtcdError(RuntimeError):
    pass


@dataclass(frozen=True)
class Site:
    """Where one member runs: its address, and the namespace that holds it (None: this one)."""

    address: str
    netns: str | None = None


SITE_CLIENT_PORT, SITE_PEER_PORT = 2379, 2380  # etcd's own: one member per address


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    host: str
    netns: str | None
    proc: subprocess.Popen[bytes] | None = None


class EtcdCluster:
    def __init__(self, data_dir: str | os.PathLike[str], members: int = 1, host: str = "127.0.0.1",
                 netns: str | None = None, etcd_bin: str | None = None,
                 heartbeat_ms: int = 100, election_ms: int = 1000,
                 extra_args: tuple[str, ...] = (), sites: tuple[Site, ...] = ()) -> None:
        """`heartbeat_ms`/`election_ms` are etcd's defaults: they give a minimum lease TTL of
        about 1.5 s, so TTL-2 leases work (expiry seen 2.1-2.4 s after the last refresh)."""
        if sites:
            members = len(sites)
        if members not in (1, 3, 5):
            raise ValueError(f"members must be 1, 3 or 5, not {members}")
        binary = etcd_bin or shutil.which("etcd")
        if binary is None:
            raise EtcdError("etcd binary not found: install Debian package etcd-server")
        self.etcd_bin = binary
        self.data_dir = Path(data_dir)
        self.host = host
        self.netns = netns
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.extra_args = extra_args
        self.token = f"haven-{os.getpid()}-{id(self):x}"
        self._members = [
            _Member(f"m{i}", SITE_CLIENT_PORT, SITE_PEER_PORT, self.data_dir / f"m{i}", site.address, site.netns)
            for i, site in enumerate(sites)
        ] or [
            _Member(f"m{i}", _free_port(host), _free_port(host), self.data_dir / f"m{i}", host, netns)
            for i in range(members)
        ]

    # -- addresses ------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member, e.g. ["http://127.0.0.1:40123", ...]."""
        return [self._client_url(m) for m in self._members]

    def _client_url(self, m: _Member) -> str:
        return f"http://{m.host}:{m.client_port}"

    def _peer_url(self, m: _Member) -> str:
        return f"http://{m.host}:{m.peer_port}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start every member and wait until all report healthy (a leader is elected)."""
        try:
            for i in range(len(self._members)):
                self._spawn(i)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every member (SIGKILL to its process group) and reap it. Idempotent."""
        for i in range(len(self._members)):
            self.kill_member(i)
        _LIVE.discard(self)

    def kill_member(self, i: int) -> None:
        """SIGKILL member i (like a power cut); its data dir is kept for restart_member."""
        m = self._members[i]
        if m.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(m.proc.pid, signal.SIGKILL)
        m.proc.wait()
        m.proc = None

    def restart_member(self, i: int, wait: bool = True, timeout: float = 10.0) -> None:
        """Restart member i from its data dir; with `wait`, until it is healthy."""
        self.kill_member(i)
        self._spawn(i)
        if wait:
            self._wait_member(i, time.monotonic() + timeout)

    def pause_member(self, i: int) -> None:
        """SIGSTOP member i: its sockets stay open but nothing answers (a hung or cut-off
        member, as clients see it)."""
        m = self._members[i]
        if m.proc is not None:
            os.killpg(m.proc.pid, signal.SIGSTOP)

    def resume_member(self, i: int) -> None:
        m = self._members[i]
        if m.proc is not None:
            os.killpg(m.proc.pid, signal.SIGCONT)

    def leader(self) -> int | None:
        """Index of the current leader as the live members report it; None if there is none."""
        ids: dict[str, int] = {}
        leaders: set[str] = set()
        for i, m in enumerate(self._members):
            if not self.alive(i):
                continue
            try:
                st = httpx.post(self._client_url(m) + "/v3/maintenance/status", json={},
                                timeout=0.5, trust_env=False).json()
            except (httpx.HTTPError, ValueError):
                continue  # paused or not serving
            ids[st.get("header", {}).get("member_id", "")] = i
            leaders.add(st.get("leader", "0"))
        found = [ids[x] for x in leaders if x in ids]
        return found[0] if len(found) == 1 else None

    def alive(self, i: int) -> bool:
        p = self._members[i].proc
        return p is not None and p.poll() is None

    def wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for i, m in enumerate(self._members):
            if m.proc is not None:
                self._wait_member(i, deadline)

    def _wait_member(self, i: int, deadline: float) -> None:
        m = self._members[i]
        url = self._client_url(m) + "/health"
        last = "no answer"
        while time.monotonic() < deadline:
            if m.proc is None or m.proc.poll() is not None:
                raise EtcdError(f"etcd member {m.name} exited early; see {self._log(m)}")
            try:
                r = httpx.get(url, timeout=0.5, trust_env=False)
                if r.status_code == 200 and r.json().get("health") == "true":
                    return
                last = r.text.strip()
            except (httpx.HTTPError, ValueError) as e:
                last = repr(e)
            time.sleep(0.05)
        raise EtcdError(f"etcd member {m.name} not healthy in time ({last}); see {self._log(m)}")

    def _log(self, m: _Member) -> Path:
        return self.data_dir / f"{m.name}.log"

    def _spawn(self, i: int) -> None:
        m = self._members[i]
        if m.proc is not None and m.proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        initial = ",".join(f"{x.name}={self._peer_url(x)}" for x in self._members)
        cmd = [
            self.etcd_bin,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", self._client_url(m),
            "--advertise-client-urls", self._client_url(m),
            "--listen-peer-urls", self._peer_url(m),
            "--initial-advertise-peer-urls", self._peer_url(m),
            "--initial-cluster", initial,
            "--initial-cluster-token", self.token,
            # Ignored by etcd when the data dir already holds a member (a restart).
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap", "--log-outputs", "stderr",
            # Healthy watch streams then never fall silent longer than EtcdStore.watch_idle.
            "--experimental-watch-progress-notify-interval", "1s",
            *self.extra_args,
        ]
        if m.netns:
            cmd = ["ip", "netns", "exec", m.netns, *cmd]  # exec: same pid, same group
        with open(self._log(m), "ab") as log:
            m.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      start_new_session=True, preexec_fn=_die_with_parent)
        _LIVE.add(self)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
