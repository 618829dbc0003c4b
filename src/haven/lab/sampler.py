"""Seeing a double run from outside: every lab host's QEMUs, read from the machine's process
table (not from any record of haven's), as often as every 10-20 ms.

A QEMU launched for a VM on the wrong host and killed half a second later never reaches the
network under TCG, but would on KVM: only the process table shows it (docs/LAB-NOTES.md).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def lab_qemus(run_root: Path) -> list[tuple[int, str, str]]:
    """(pid, host, VM) of every lab QEMU process, from /proc: a QEMU's `-pidfile` argument names
    its host and VM (RUN_ROOT/HOST/vms/VM/qemu.pid)."""
    prefix = str(run_root).rstrip("/") + "/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if not argv or b"qemu-system" not in argv[0] or b"-pidfile" not in argv:
            continue
        pidfile = argv[argv.index(b"-pidfile") + 1].decode(errors="replace")
        if not pidfile.startswith(prefix):
            continue  # another lab's, or not a lab's
        parts = pidfile[len(prefix):].split("/")  # HOST/vms/VM/qemu.pid
        if len(parts) == 4 and parts[1] == "vms":
            found.append((int(entry.name), parts[0], parts[2]))
    return found


def qemu_table(run_root: Path, qemus: list[tuple[int, str, str]] | None = None) -> dict[str, list[str]]:
    """VM -> the lab hosts with a QEMU process for it (from `qemus` if the caller listed them)."""
    table: dict[str, set[str]] = {}
    for _, host, vm in lab_qemus(run_root) if qemus is None else qemus:
        table.setdefault(vm, set()).add(host)  # a daemonizing QEMU is two processes a moment
    return {vm: sorted(hosts) for vm, hosts in table.items()}


def image_holders(qemus: list[tuple[int, str, str]], images: frozenset[str]) -> dict[str, set[str]]:
    """Image path -> the lab VMs ("vm@host") among `qemus` (`lab_qemus`) holding it open now, from
    /proc/PID/fd: what the kernel says, whatever QEMU or haven would report (a hot-plugged disk
    is not on the command line)."""
    holders: dict[str, set[str]] = {}
    for pid, host, vm in qemus:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in images:
                holders.setdefault(target, set()).add(f"{vm}@{host}")
    return holders


@dataclass
class Overlap:
    vm: str
    hosts: list[str]
    first: float  # time.monotonic() of the first sample that saw it
    samples: int = 1


@dataclass
class QemuSampler:
    """Samples the process table every `interval` seconds on a thread; records every VM seen on
    two hosts at once (overlaps), per host when a QEMU was last seen there, and every sample in
    which one of `images` (a service's data disk) was open in two VMs' QEMUs at once."""

    run_root: Path
    interval: float = 0.015
    images: frozenset[str] = frozenset()
    double_opens: list[tuple[str, list[str]]] = field(default_factory=list)  # (image, ["vm@host", ...])
    samples: int = 0
    overlaps: list[Overlap] = field(default_factory=list)
    last_seen: dict[str, float] = field(default_factory=dict)  # host -> time of its last QEMU sighting
    gaps: list[float] = field(default_factory=list)  # sampling gaps longer than 3 intervals
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        open_overlaps: dict[str, Overlap] = {}
        previous = time.monotonic()
        while not self._stop.wait(self.interval):
            qemus = lab_qemus(self.run_root)  # one /proc scan per sample serves both checks
            table = qemu_table(self.run_root, qemus)
            now = time.monotonic()
            if now - previous > 3 * self.interval:
                self.gaps.append(now - previous)
            previous = now
            self.samples += 1
            for hosts in table.values():
                for host in hosts:
                    self.last_seen[host] = now
            for vm, hosts in table.items():
                if len(hosts) > 1:
                    if vm in open_overlaps and open_overlaps[vm].hosts == hosts:
                        open_overlaps[vm].samples += 1
                    else:
                        open_overlaps[vm] = Overlap(vm, hosts, now)
                        self.overlaps.append(open_overlaps[vm])
                else:
                    open_overlaps.pop(vm, None)
            if self.images:
                for image, holders in image_holders(qemus, self.images).items():
                    if len(holders) > 1:
                        self.double_opens.append((image, sorted(holders)))

    def __enter__(self) -> QemuSampler:
        self._thread = threading.Thread(target=self._run, name="qemu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
