"""The lab's two-host pair (issue 11, the article's two PCs): what differs from the shared-storage
lab. Two hosts keep each VM's disk on their own local pool, replicated; a third namespace, the
witness, runs an etcd member and nothing else; each host runs its own etcd member in its own
namespace, so cutting a host's network really takes its vote away.

The pair's direct link is the management network between the two hosts: `cut_link` drops what
one sends to the other (blackhole routes in both namespaces), while both keep their path to the
witness, so the store keeps its quorum and both hosts keep their leases.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from haven.drivers.guest_agent import GuestAgent, GuestAgentError
from haven.drivers.qemu_cmdline import VmPaths
from haven.lab.etcd import Site
from haven.lab.netns import LabNetwork, run_in
from haven.model.replica import PoolKind, PoolSpec
from haven.runtime.layout import Snapshot

PAIR_HOSTS = ("h1", "h2")
WITNESS = "w"
POOL = PoolSpec(name="pair", kind=PoolKind.REPLICATED, hosts=PAIR_HOSTS)
SEQ_FILE = "/mnt/disk/seq"  # where SeqWriter counts the guest's acknowledged writes


def protected(snap: Snapshot, vm: str) -> bool:
    """Every copy of the VM's disks in sync, as the snapshot has it."""
    record = snap.replicas.get(vm)
    return record is not None and record.protected


def etcd_sites(net: LabNetwork) -> tuple[Site, ...]:
    """One member in each pair host's namespace and one on the witness (its namespace made here)."""
    return tuple(Site(net.add_host(name).mgmt_address, net.add_host(name).namespace)
                 for name in (*PAIR_HOSTS, WITNESS))


def member_index(host: str) -> int:
    """The etcd member running on `host` (the witness's is the last)."""
    return (*PAIR_HOSTS, WITNESS).index(host)


def set_link(net: LabNetwork, a: str, b: str, up: bool) -> None:
    """Cut (or restore) the direct path between hosts `a` and `b` in both directions."""
    for here, there in ((a, b), (b, a)):
        route = ["ip", "route", "replace" if not up else "del", "blackhole", f"{net.hosts[there].mgmt_address}/32"]
        done = run_in(net.hosts[here].namespace, route, timeout=10)
        if done.returncode != 0 and not up:
            raise RuntimeError(f"cutting {here} -> {there}: {done.stderr.strip()}")


def kill_replica_servers(run_dir: Path) -> None:
    """The copies a host serves (qemu-storage-daemon, daemonized: not the daemon's children) die
    with the host in a power cut."""
    for pidfile in run_dir.glob("vms/replicas/nbd-*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if b"qemu-storage-daemon" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a reused pid
                os.kill(pid, signal.SIGKILL)


class SeqWriter:
    """The guest's acknowledged writes, counted from outside: writes the numbers after the one on
    the VM's disk (`start`) to it, through the guest agent of its QEMU on the host whose run
    directory is `run_dir`, each followed by `sync`; `acked` is the last number whose sync
    returned. It stops when the guest stops answering (the number in flight then was never
    acknowledged)."""

    def __init__(self, run_dir: Path, vm: str) -> None:
        self.agent = GuestAgent(VmPaths.under(run_dir / "vms", vm).guest_agent)
        self.start = self.acked = read_seq(run_dir, vm)
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{vm}", daemon=True)

    def _run(self) -> None:
        n = self.acked
        while not self._stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                result = self.agent.exec(["/bin/sh", "-c", f"echo {n} > {SEQ_FILE} && sync"], timeout=60)
            except GuestAgentError:
                return
            if not result.ok:
                return
            self.latencies.append(time.monotonic() - started)
            self.acked = n

    def __enter__(self) -> SeqWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=65)

    def stopped(self) -> bool:
        return not self._thread.is_alive()


def read_seq(run_dir: Path, vm: str, timeout: float = 60.0) -> int:
    """The last number on the VM's disk, read through its guest agent on the host whose run
    directory is `run_dir` (waiting for the guest to answer)."""
    agent = GuestAgent(VmPaths.under(run_dir / "vms", vm).guest_agent)
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = agent.exec(["/bin/sh", "-c", f"cat {SEQ_FILE} 2>/dev/null || echo 0"], timeout=10)
            if result.ok:
                return int(result.stdout.strip() or 0)
        except GuestAgentError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{vm}: no answer from its guest agent within {timeout:g} s")
        time.sleep(0.2)


def fsck_clean(image: Path) -> tuple[bool, str]:
    """`e2fsck -fn` on a copy no QEMU has open: (clean, what it said)."""
    done = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, timeout=120, check=False)
    return done.returncode == 0, (done.stdout + done.stderr).strip()[-500:]
