"""What the simulated hosts share: the network's state, storage, and the safety monitor."""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from haven.model.replica import PoolSpec, ReplicaRecord
from haven.model.state import ACTIVE_LOCAL_STATES, LocalState, Placement
from haven.sim.replication import DiskData

if TYPE_CHECKING:
    from haven.sim.hypervisor import FakeHypervisor

STORE = "store"  # the store's name in partitions


@dataclass
class Network:
    store_down: bool = False
    cut_from_store: set[str] = field(default_factory=set)
    cut_pairs: set[frozenset[str]] = field(default_factory=set)
    groups: list[frozenset[str]] = field(default_factory=list)  # a partition; empty = none

    def _same_side(self, a: str, b: str) -> bool:
        if not self.groups:
            return True
        return any(a in group and b in group for group in self.groups)

    def host_reaches_store(self, host: str) -> bool:
        if self.store_down or host in self.cut_from_store:
            return False
        return not self.groups or self._same_side(host, STORE)  # asked on every store call

    def hosts_connected(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut_pairs and self._same_side(a, b)

    def heal(self, host: str | None = None) -> None:
        """Undo every cut and partition, or those of one host: it rejoins the store's side."""
        if host is None:
            self.cut_from_store.clear()
            self.cut_pairs.clear()
            self.groups = []
            return
        self.cut_from_store.discard(host)
        self.cut_pairs = {pair for pair in self.cut_pairs if host not in pair}
        if self.groups:
            groups = [group - {host} for group in self.groups]
            home = next((i for i, group in enumerate(groups) if STORE in group), 0)
            groups[home] |= {host}
            groups = [group for group in groups if group]
            self.groups = groups if len(groups) > 1 else []


@dataclass
class SafetyMonitor:
    """Checks the safety invariants after every simulated event."""

    world: World
    violations: list[str] = field(default_factory=list)
    dirty: bool = True  # a hypervisor changed since the last check
    # The store's current placement of a VM, as the store holds it (not as any host cached it).
    placement_of: Callable[[str], Placement | None] = lambda vm: None
    # The store's replica record of a VM (model.replica), likewise.
    replica_of: Callable[[str], ReplicaRecord | None] = lambda vm: None
    # Guest-cluster invariants: incidents (a new set of holders of one disk or address) counted.
    disk_double_attach: int = 0
    ip_double_raise: int = 0
    # Replicated disks: QEMUs launched on a copy lacking an acknowledged write (a violation), and
    # those an operator's promotion excused (`haven vm promote --accept-data-loss`). One per launch.
    acknowledged_writes_lost: int = 0
    promoted_losses: int = 0
    _doubles: set[tuple[str, str, tuple[str, ...]]] = field(default_factory=set)
    _losses: set[tuple[str, str, int]] = field(default_factory=set)  # (vm, host, generation) counted

    def violation(self, text: str) -> None:
        line = f"t={self.world.now():.3f} SAFETY: {text}"
        if line not in self.violations:
            self.violations.append(line)

    def active_copies(self) -> dict[str, list[str]]:
        copies: dict[str, list[str]] = {}
        for host, hv in sorted(self.world.hypervisors.items()):
            for name, vm in hv.vms.items():
                if vm.state in ACTIVE_LOCAL_STATES:
                    copies.setdefault(name, []).append(host)
        return copies

    def started(self, host: str, vm: str) -> None:
        """A VM is being started on `host`: every other copy must be dead (its host fenced)."""
        others = [h for h in self.active_copies().get(vm, []) if h != host]
        if others:
            self.violation(f"vm {vm} started on {host} while still active on {', '.join(others)}")

    def launched(self, host: str, vm: str, generation: int, incoming: bool = False) -> None:
        """A QEMU is launched for `vm` on `host` (a start, a restore, or the target of a migration).
        The store must place it there at that generation at this very moment: a stale start is a
        violation even if the copy is killed a moment later."""
        p = self.placement_of(vm)
        if incoming:
            ok = p is not None and p.migration is not None and (p.migration.target, p.migration.generation) == (
                host, generation)
        else:
            ok = p is not None and (p.host, p.generation) == (host, generation)
        if not ok:
            where = (f"placed on {p.host} generation {p.generation}"
                     + (f", migrating to {p.migration.target} generation {p.migration.generation}" if p.migration
                        else "")) if p else "not placed"
            self.violation(f"stale start: QEMU launched for vm {vm} on {host} at generation {generation} "
                           f"while the store has it {where}")
        self.check_copies(host, vm, generation, "launched")

    def handed_over(self, host: str, vm: str, generation: int) -> None:
        """A live migration hands the guest over to `host`: from now on it runs on that host's
        copies, which must hold every acknowledged write as at a launch (a replica released while
        the migration ran lacks some)."""
        self.check_copies(host, vm, generation, "handed over by a live migration")

    def check_copies(self, host: str, vm: str, generation: int, how: str) -> None:
        """Each replicated disk's copy on `host` holds every write acknowledged to the guest,
        unless the operator promoted that copy knowing it lacks writes."""
        behind = [(disk, data) for (name, disk), data in sorted(self.world.disks.items())
                  if name == vm and not data.holds_acknowledged(host)]
        if not behind or (vm, host, generation) in self._losses:
            return
        self._losses.add((vm, host, generation))
        record = self.replica_of(vm)
        if record is not None and record.promoted_at is not None and record.primary == host:
            self.promoted_losses += 1
            return
        self.acknowledged_writes_lost += 1
        lacks = "; ".join(f"disk {disk} holds writes up to {data.copies.get(host, 0)}, {data.acked} acknowledged"
                          for disk, data in behind)
        self.violation(f"acknowledged writes lost: vm {vm} {how} on {host} at generation {generation} "
                       f"on a copy that lacks them ({lacks})")

    def check(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        for vm, hosts in self.active_copies().items():
            if len(hosts) > 1:
                self.violation(f"vm {vm} runs on {' and '.join(hosts)} at once")
        for host, hv in self.world.hypervisors.items():
            used = sum(vm.spec.memory_mib for vm in hv.vms.values()
                       if vm.state in ACTIVE_LOCAL_STATES or vm.state is LocalState.INCOMING)
            capacity = self.world.memory[host]
            if used > capacity:
                self.violation(f"host {host} holds {used} MiB of VMs, more than its {capacity} MiB")
        self.check_guests()

    def check_guests(self) -> None:
        """A service's data disk is plugged into at most one running QEMU, and its floating IP is
        up in at most one running guest (core.service's rule, seen from the outside)."""
        disks: dict[str, list[str]] = {}
        ips: dict[str, list[str]] = {}
        for host, hv in sorted(self.world.hypervisors.items()):
            for name, vm in sorted(hv.vms.items()):
                if vm.state not in ACTIVE_LOCAL_STATES:
                    continue
                for path in vm.guest.disks.values():
                    disks.setdefault(path, []).append(f"{name} on {host}")
                for address in vm.guest.ips:
                    ips.setdefault(address, []).append(f"{name} on {host}")
        doubles = {("disk", path, tuple(holders)) for path, holders in disks.items() if len(holders) > 1}
        doubles |= {("ip", address, tuple(holders)) for address, holders in ips.items() if len(holders) > 1}
        for kind, what, holders in sorted(doubles - self._doubles):
            if kind == "disk":
                self.disk_double_attach += 1
                self.violation(f"data disk {what} attached to {' and '.join(holders)} at once")
            else:
                self.ip_double_raise += 1
                self.violation(f"floating IP {what} up in {' and '.join(holders)} at once")
        self._doubles = doubles


@dataclass
class World:
    now_fn: Callable[[], float]  # the virtual clock
    network: Network = field(default_factory=Network)
    hypervisors: dict[str, FakeHypervisor] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)
    state_files: dict[str, int] = field(default_factory=dict)  # path -> ram epoch saved
    start_failures: Counter[str] = field(default_factory=Counter)
    hung_guests: set[str] = field(default_factory=set)  # VMs whose guest agent does not answer
    failing_checks: set[tuple[str, str]] = field(default_factory=set)  # (service, VM): its check fails
    pools: dict[str, PoolSpec] = field(default_factory=dict)  # the declared pools (replicated ones)
    disks: dict[tuple[str, int], DiskData] = field(default_factory=dict)  # (VM, disk index): replicated
    monitor: SafetyMonitor = field(init=False)
    _epochs: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.monitor = SafetyMonitor(self)

    def now(self) -> float:
        return self.now_fn()

    def new_epoch(self) -> int:
        return next(self._epochs)

    def hypervisor(self, host: str) -> FakeHypervisor | None:
        return self.hypervisors.get(host)

    def disk(self, vm: str, index: int) -> DiskData:
        """The replicated disk's copies and writes (sim.replication)."""
        return self.disks.setdefault((vm, index), DiskData())

    def take_start_failure(self, vm: str) -> bool:
        if self.start_failures[vm] > 0:
            self.start_failures[vm] -= 1
            return True
        return False
