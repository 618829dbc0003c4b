"""Lab networking: several "hosts" on one machine, as network namespaces (root needed).

    with LabNetwork() as net:
        h1 = net.add_host("h1")            # namespace hv0-h1, management address 10.77.0.10
        h2 = net.add_host("h2")
        client = net.add_client()          # namespace hv0-client, 10.78.0.2 on the VM network
        tap = net.add_tap("h1", "web")     # a tap on h1's VM bridge (QEMU: -netdev tap,ifname=...)
        net.isolate("h1")                  # h1's management leg down (vm=True: its VM leg too)
        net.heal("h1")
        net.run_in(client.namespace, ["busybox", "wget", "-qO-", "http://10.78.0.100/"])

Layout (N = the lab's slot, 0..MAX_SLOTS-1, so that labs of concurrent test runs do not clash):

    root ns:  bridge hvN-mgmt 10.77.N.1/24      bridge hvN-vmnet (no address)
                 | veth hvN-m-<host>                | veth hvN-v-<host>         | veth hvN-c-<client>
    host ns hvN-<host>:  mgmt0 10.77.N.(10+i)/24    vmup0 -- bridge br0 -- taps   |
    client ns hvN-<client>:                                            eth0 10.78.N.(2+j)/24

VM addresses are 10.78.N.100 and up (`vm_address(k)`). Every address lives on an interface created
here. The slot is held with an flock on /run/haven-lab/slot-N.lock for the lab's lifetime; a slot
whose lock is free but which still has `hvN-` namespaces or links (a crashed run) is swept clean
before reuse. `teardown()` kills the processes left in its namespaces, deletes the namespaces,
links and bridges it created, and releases the slot; it is idempotent and also runs at exit.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from haven.drivers.tap import tap_name

LOCK_DIR = Path("/run/haven-lab")
MAX_SLOTS = 16
IFNAMSIZ = 15  # usable characters in a Linux interface name

_LIVE: set[LabNetwork] = set()


def _teardown_all_at_exit() -> None:
    for lab in list(_LIVE):
        lab.teardown()


atexit.register(_teardown_all_at_exit)


class LabNetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", namespace] if namespace else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabNetworkError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def _link_exists(name: str, namespace: str | None = None) -> bool:
    return _ip("link", "show", "dev", name, check=False, namespace=namespace).returncode == 0


def _netns_list() -> list[str]:
    out = _ip("-j", "netns", "list", check=False).stdout.strip()
    try:
        return [entry["name"] for entry in json.loads(out or "[]")]
    except (ValueError, KeyError, TypeError):
        return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(namespace: str) -> list[int]:
    out = _ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_pids(pids: Sequence[int], timeout: float = 3.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break  # a zombie: gone for our purposes (its parent reaps it)
            except (OSError, IndexError):
                break
            time.sleep(0.02)


def _sysctl(path: str, value: str, namespace: str | None = None) -> None:
    if namespace:
        subprocess.run(["ip", "netns", "exec", namespace, "sh", "-c", f"echo {value} > /proc/sys/{path}"],
                       capture_output=True)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/sys", path).write_text(value)


def short_name(prefix: str, name: str, limit: int = IFNAMSIZ) -> str:
    """`prefix + name`, or if too long for an interface name, a truncation with a stable hash."""
    full = prefix + name
    if len(full) <= limit:
        return full
    digest = f"{zlib.crc32(name.encode()) & 0xFFFFF:05x}"
    return (prefix + name)[: limit - len(digest) - 1] + "-" + digest


@dataclass
class HostNet:
    name: str
    namespace: str
    mgmt_address: str  # without prefix length
    mgmt_leg: str  # root-side veth on the management bridge
    vm_leg: str  # root-side veth on the VM bridge
    bridge: str = "br0"  # VM bridge inside the namespace


@dataclass
class ClientNet:
    name: str
    namespace: str
    address: str
    leg: str


class LabNetwork:
    """Namespaces, bridges, veths and taps for a lab; records all it creates and removes it all."""

    def __init__(self, slot: int | None = None, mgmt_base: str = "10.77", vm_base: str = "10.78",
                 prefix_len: int = 24) -> None:
        if os.geteuid() != 0:
            raise LabNetworkError("the lab network needs root")
        self._lock_fd: int | None = None
        self.slot = self._claim_slot(slot)
        self.prefix = f"hv{self.slot}-"
        self.mgmt_net = f"{mgmt_base}.{self.slot}"
        self.vm_net = f"{vm_base}.{self.slot}"
        self.prefix_len = prefix_len
        self.mgmt_bridge = f"{self.prefix}mgmt"
        self.vm_bridge = f"{self.prefix}vmnet"
        self.mgmt_gateway = f"{self.mgmt_net}.1"
        self.hosts: dict[str, HostNet] = {}
        self.clients: dict[str, ClientNet] = {}
        self.taps: dict[tuple[str, str], str] = {}
        self._created: list[tuple[str, str]] = []  # (kind, name), in creation order
        self._mutex = threading.RLock()
        self._closed = False
        _LIVE.add(self)
        try:
            self._sweep()
            self._make_bridge(self.mgmt_bridge, f"{self.mgmt_gateway}/{prefix_len}")
            self._make_bridge(self.vm_bridge, None)
        except BaseException:
            self.teardown()
            raise

    # --- slot ---

    def _claim_slot(self, wanted: int | None) -> int:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for slot in ([wanted] if wanted is not None else range(MAX_SLOTS)):
            fd = os.open(LOCK_DIR / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._lock_fd = fd
            return slot
        raise LabNetworkError(f"no free lab slot (locks in {LOCK_DIR})")

    def _sweep(self) -> None:
        """Remove what a crashed earlier holder of this slot left behind (names with our prefix)."""
        for ns in _netns_list():
            if ns.startswith(self.prefix):
                _kill_pids(_netns_pids(ns))
                _ip("netns", "del", ns, check=False)
        out = _ip("-j", "link", "show", check=False).stdout
        try:
            links = [entry["ifname"] for entry in json.loads(out or "[]")]
        except (ValueError, KeyError, TypeError):
            links = []
        for link in links:
            if link.startswith(self.prefix):
                _ip("link", "del", "dev", link, check=False)

    # --- building blocks ---

    def _record(self, kind: str, name: str) -> None:
        self._created.append((kind, name))

    def _make_bridge(self, name: str, address: str | None, namespace: str | None = None) -> None:
        if not _link_exists(name, namespace):
            _ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0",
                "mcast_snooping", "0", namespace=namespace)
            if namespace is None:
                self._record("link", name)
        _sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1", namespace)
        if address:
            _ip("addr", "replace", address, "dev", name, namespace=namespace)
        _ip("link", "set", name, "up", namespace=namespace)

    def _make_namespace(self, namespace: str) -> None:
        if namespace not in _netns_list():
            _ip("netns", "add", namespace)
            self._record("netns", namespace)
        _sysctl("net/ipv6/conf/all/disable_ipv6", "1", namespace)
        _sysctl("net/ipv6/conf/default/disable_ipv6", "1", namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)

    def _make_leg(self, root_name: str, root_bridge: str, namespace: str, ns_name: str) -> None:
        """A veth pair: `root_name` on `root_bridge` in the root namespace, `ns_name` in `namespace`."""
        if not _link_exists(root_name):
            _ip("link", "add", root_name, "type", "veth", "peer", "name", ns_name, "netns", namespace)
            self._record("link", root_name)
        _sysctl(f"net/ipv6/conf/{root_name}/disable_ipv6", "1")
        _ip("link", "set", root_name, "master", root_bridge, "up")
        _ip("link", "set", ns_name, "up", namespace=namespace)

    # --- public API ---

    def namespace_of(self, host: str) -> str:
        return self.prefix + host

    def add_host(self, name: str) -> HostNet:
        """A host namespace with a management leg (address) and a VM bridge with an uplink."""
        with self._mutex:
            if name in self.hosts:
                return self.hosts[name]
            index = len(self.hosts)
            if index > 80:
                raise LabNetworkError("too many hosts")
            ns = self.namespace_of(name)
            host = HostNet(name=name, namespace=ns, mgmt_address=f"{self.mgmt_net}.{10 + index}",
                           mgmt_leg=short_name(self.prefix + "m-", name),
                           vm_leg=short_name(self.prefix + "v-", name))
            self._make_namespace(ns)
            self._make_leg(host.mgmt_leg, self.mgmt_bridge, ns, "mgmt0")
            _ip("addr", "replace", f"{host.mgmt_address}/{self.prefix_len}", "dev", "mgmt0", namespace=ns)
            self._make_bridge(host.bridge, None, namespace=ns)
            self._make_leg(host.vm_leg, self.vm_bridge, ns, "vmup0")
            _ip("link", "set", "vmup0", "master", host.bridge, namespace=ns)
            self.hosts[name] = host
            return host

    def add_client(self, name: str = "client") -> ClientNet:
        """A namespace on the VM network (eth0 10.78.N.2, .3, ...) to probe the VMs' services."""
        with self._mutex:
            if name in self.clients:
                return self.clients[name]
            if name in self.hosts:
                raise LabNetworkError(f"{name} is a host")
            ns = self.namespace_of(name)
            client = ClientNet(name=name, namespace=ns, address=f"{self.vm_net}.{2 + len(self.clients)}",
                               leg=short_name(self.prefix + "c-", name))
            self._make_namespace(ns)
            self._make_leg(client.leg, self.vm_bridge, ns, "eth0")
            _ip("addr", "replace", f"{client.address}/{self.prefix_len}", "dev", "eth0", namespace=ns)
            self.clients[name] = client
            return client

    def vm_address(self, k: int) -> str:
        """The k-th VM address on the VM network (without prefix length); k = 0..149."""
        if not 0 <= k < 150:
            raise ValueError("k must be in 0..149")
        return f"{self.vm_net}.{100 + k}"

    def vm_cidr(self, k: int) -> str:
        return f"{self.vm_address(k)}/{self.prefix_len}"

    @staticmethod
    def tap_name(vm: str, nic_index: int = 0) -> str:
        return tap_name(vm, nic_index)  # the same names as a daemon's own taps

    def add_tap(self, host: str, vm: str, nic_index: int = 0) -> str:
        """A persistent tap for `vm` on `host`'s VM bridge (idempotent); returns its name."""
        with self._mutex:
            h = self.hosts[host]
            tap = self.tap_name(vm, nic_index)
            if not _link_exists(tap, h.namespace):
                _ip("tuntap", "add", "dev", tap, "mode", "tap", namespace=h.namespace)
            _ip("link", "set", tap, "master", h.bridge, "up", namespace=h.namespace)
            self.taps[(host, tap)] = tap
            return tap

    def tap_for(self, host: str):  # -> Callable[[VmSpec, int], str], for QemuHypervisor
        """A `tap_for(spec, nic_index)` callable for a QemuHypervisor running on `host`."""
        def tap_for(spec: Any, nic_index: int) -> str:
            return self.add_tap(host, spec.name, nic_index)
        return tap_for

    def remove_tap(self, host: str, vm: str, nic_index: int = 0) -> None:
        with self._mutex:
            h = self.hosts[host]
            tap = self.tap_name(vm, nic_index)
            _ip("link", "del", "dev", tap, check=False, namespace=h.namespace)
            self.taps.pop((host, tap), None)

    def isolate(self, host: str, mgmt: bool = True, vm: bool = False) -> None:
        """Cut `host` off: its management leg (store, peers, migrations) and optionally its VM leg."""
        self._set_legs(host, "down", mgmt, vm)

    def heal(self, host: str, mgmt: bool = True, vm: bool = True) -> None:
        """Bring `host`'s legs back up."""
        self._set_legs(host, "up", mgmt, vm)

    def _set_legs(self, host: str, state: str, mgmt: bool, vm: bool) -> None:
        h = self.hosts[host]
        for leg in ([h.mgmt_leg] if mgmt else []) + ([h.vm_leg] if vm else []):
            _ip("link", "set", leg, state)

    def run_in(self, namespace: str, argv: Sequence[str], check: bool = False, timeout: float | None = 30,
               **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `namespace` (a host or client name, or a namespace name)."""
        return run_in(self._resolve(namespace), argv, check=check, timeout=timeout, **kwargs)

    def popen_in(self, namespace: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        return popen_in(self._resolve(namespace), argv, **kwargs)

    def _resolve(self, namespace: str) -> str:
        if namespace in self.hosts:
            return self.hosts[namespace].namespace
        if namespace in self.clients:
            return self.clients[namespace].namespace
        return namespace

    def teardown(self) -> None:
        """Remove everything this lab created (processes in its namespaces first). Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            errors: list[str] = []
            for kind, name in reversed(self._created):
                if kind == "netns":
                    _kill_pids(_netns_pids(name))
                    proc = _ip("netns", "del", name, check=False)
                    if proc.returncode != 0 and name in _netns_list():
                        errors.append(proc.stderr.strip())
            for kind, name in reversed(self._created):
                if kind == "link" and _link_exists(name):
                    proc = _ip("link", "del", "dev", name, check=False)
                    if proc.returncode != 0 and _link_exists(name):
                        errors.append(proc.stderr.strip())
            self._created.clear()
            _LIVE.discard(self)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if errors:
                raise LabNetworkError("teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> LabNetwork:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()


def run_in(namespace: str, argv: Sequence[str], check: bool = False, timeout: float | None = 30,
           **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], check=check, timeout=timeout, **kwargs)


def popen_in(namespace: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
    kwargs.setdefault("text", True)
    return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **kwargs)


# --- probes (run as a Python child inside a namespace) --------------------------------------------

_PROBE_SCRIPT = r"""
import json, os, select, signal, socket, struct, sys, time
mode, target, interval, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
stop = False
def _stop(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, _stop)
signal.signal(signal.SIGINT, _stop)
def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
if mode == "http":
    import http.client
    host, _, port = target.partition(":")
    while not stop:
        t0 = time.time()
        rec = {"t": t0}
        try:
            conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
            conn.request("GET", "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            rec["status"] = resp.status
            rec["body"] = json.loads(body)
        except Exception as exc:
            rec["error"] = type(exc).__name__ + ": " + str(exc)[:100]
        rec["dt"] = time.time() - t0
        out(rec)
        delay = interval - (time.time() - t0)
        if delay > 0 and not stop:
            time.sleep(delay)
else:
    def checksum(data):
        if len(data) % 2:
            data += b"\0"
        s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
        s = (s >> 16) + (s & 0xFFFF); s += s >> 16
        return ~s & 0xFFFF
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    sent = {}
    replies = []  # (seq, sent_time, recv_time)
    seq = 0
    next_send = time.monotonic()
    start = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now >= next_send:
            seq = (seq + 1) & 0xFFFF
            payload = struct.pack("!d", now)
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), ident, seq) + payload
            try:
                sock.sendto(pkt, (target, 0))
            except OSError:
                pass
            sent[seq] = now
            next_send += interval
            if next_send < now:
                next_send = now + interval
        r, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
        if r:
            data = sock.recv(2048)
            ihl = (data[0] & 0x0F) * 4
            typ, code, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if typ == 0 and rid == ident and rseq in sent:
                replies.append((rseq, sent.pop(rseq), time.monotonic()))
    end = time.monotonic()
    times = [r[2] for r in replies]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # longest run of consecutive probes without a reply (by send order)
    answered = set(r[0] for r in replies)
    total = seq
    run = longest = 0
    for s in range(1, total + 1):
        if s in answered:
            run = 0
        else:
            run += 1
            longest = max(longest, run)
    out({"sent": total, "received": len(replies), "lost": total - len(replies),
         "max_gap_s": max(gaps) if gaps else None, "longest_loss_run": longest,
         "interval_s": interval, "duration_s": end - start,
         "first_reply_s": (times[0] - start) if times else None})
"""


class _Probe:
    def __init__(self, namespace: str, mode: str, target: str, interval: float, timeout: float) -> None:
        self.records: list[dict[str, Any]] = []
        self.proc = popen_in(namespace, [sys.executable, "-u", "-c", _PROBE_SCRIPT, mode, target,
                                         str(interval), str(timeout)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.records.append(json.loads(line))

    def stop(self) -> list[dict[str, Any]]:
        if self.proc.poll() is None:
            # `ip netns exec` execs the command, so the pid is python's own
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.records

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# What a user's client waits before giving up: more than TCP's initial retransmission timeout (1 s),
# so one SYN lost in a migration's switch-over costs a retransmission, not a failed request.
USER_TIMEOUT_S = 3.0


class HttpProbe(_Probe):
    """GET http://target/ every `interval` s from `namespace`; one record per request:
    {"t", "dt", "status", "body"} or {"t", "dt", "error"}."""

    def __init__(self, namespace: str, target: str, interval: float = 0.05, timeout: float = 0.5) -> None:
        super().__init__(namespace, "http", target, interval, timeout)

    def successes(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "body" in r]

    def worst_latency(self) -> float:
        """The slowest answered request, seconds: what a user waited longest for."""
        return max((r["dt"] for r in self.successes()), default=0.0)

    def max_gap(self) -> float:
        """Longest time between two successful answers (request start times)."""
        ts = [r["t"] for r in self.successes()]
        return max((b - a for a, b in itertools.pairwise(ts)), default=0.0)


class IcmpProbe(_Probe):
    """ICMP echo to `target` every `interval` s from `namespace`, never retried; `stop()` returns one
    summary record: sent, received, lost, max_gap_s (longest time between two replies),
    longest_loss_run (consecutive unanswered probes). Blackout ~ max_gap_s - interval."""

    def __init__(self, namespace: str, target: str, interval: float = 0.01) -> None:
        super().__init__(namespace, "icmp", target, interval, 0)

    def summary(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}

    def blackout_ms(self) -> float | None:
        """The longest outage the probe saw (its longest gap less one interval), None without replies."""
        summary = self.summary()
        gap = summary.get("max_gap_s")
        return max(0.0, (gap - summary.get("interval_s", 0.01)) * 1000) if gap is not None else None
