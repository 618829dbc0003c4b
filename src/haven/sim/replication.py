"""FakeReplication: the simulator's twin of the replication port (drivers.replication).

The disks of a VM on a replicated pool (model.replica) are modelled by write sequence numbers,
one `DiskData` per (VM, disk index) in the World: the highest write each host's copy holds (a copy
is on disk: it survives a power cut), the highest write acknowledged to the guest, the last issued,
and a write issued but waiting for a lost replica.

While such a VM is active on a host (its QEMU runs the guest's CPUs), the guest writes once every
`write_interval_s` per replicated disk. Without a mirror a write lands on the host's copy and is
acknowledged. With one (`start_mirror`: QEMU's write-blocking `blockdev-mirror`), a write is
acknowledged only once the replica has it: during the first `size / sync_mib_s` seconds (SYNCING,
a full copy) the replica's copy counts as whole only at the end; then (IN_SYNC) each write lands on
both copies. When the replica does not answer (its host off, the pair's link cut, its export
stopped), the write waits and the guest writes nothing more on that disk (docs/LAB-NOTES.md,
"Replicated disks: what a lost replica does to guest writes"): it completes replicated when the
replica answers again (the NBD client reconnects), or on this host alone at `release_mirror`.
A mirror and a waiting write die with their QEMU; a write that never completed is never acknowledged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from haven.model.replica import replicated_disks
from haven.model.spec import VmSpec
from haven.model.state import ACTIVE_LOCAL_STATES, DEAD_LOCAL_STATES, LocalState
from haven.ports.replication import MirrorPhase, MirrorState, ReplicationError
from haven.sim.loop import Timer

if TYPE_CHECKING:
    from haven.sim.hypervisor import FakeHypervisor, SimVm


@dataclass
class DiskData:
    """One replicated disk of a VM, across the hosts holding a copy of it."""

    copies: dict[str, int] = field(default_factory=dict)  # host -> highest write its copy holds
    acked: int = 0  # highest write acknowledged to the guest
    seq: int = 0  # last write issued
    pending: int | None = None  # a write issued, waiting for a lost replica

    def holds_acknowledged(self, host: str) -> bool:
        return self.copies.get(host, 0) >= self.acked


@dataclass(eq=False)
class _Mirror:
    vm: SimVm  # the QEMU running the job: the job dies with it
    disk: int
    peer: str
    address: str
    total: int  # bytes
    started: float
    phase: MirrorPhase = MirrorPhase.SYNCING
    timer: Timer | None = None


@dataclass(eq=False)
class _Writer:
    vm: SimVm  # the QEMU whose guest writes: the writer dies with it
    disk: int
    timer: Timer | None = None
    pending: bool = False  # this writer's write waits for a lost replica (DiskData.pending)


class FakeReplication:
    """One host's side of replicated disks (the `Replication` port) against the World."""

    def __init__(self, hv: FakeHypervisor) -> None:
        self.hv = hv
        self._exports: set[tuple[str, int]] = set()
        self._mirrors: dict[tuple[str, int], _Mirror] = {}
        self._writers: dict[tuple[str, int], _Writer] = {}

    @property
    def host(self) -> str:
        return self.hv.host

    # --- port ---

    def exports(self) -> set[tuple[str, int]]:
        return set(self._exports)

    def start_export(self, spec: VmSpec, disk: int) -> None:
        if disk not in self._replicated(spec):
            raise ReplicationError(f"disk {disk} of {spec.name} is not on a replicated pool")
        self._exports.add((spec.name, disk))

    def stop_export(self, vm: str, disk: int) -> None:
        self._exports.discard((vm, disk))

    def mirror(self, vm: str, disk: int) -> MirrorState:
        m = self._mirrors.get((vm, disk))
        if m is None:
            return MirrorState(MirrorPhase.ABSENT)
        if m.phase is MirrorPhase.SYNCING:
            done = int((self.hv.loop.now - m.started) * self.hv.timings.sync_mib_s * (1 << 20))
            return MirrorState(m.phase, min(done, m.total), m.total)
        return MirrorState(m.phase, m.total, m.total)

    def start_mirror(self, vm: str, disk: int, peer: str, address: str) -> None:
        key = (vm, disk)
        qemu = self.hv.vms.get(vm)
        if qemu is None or qemu.state not in ACTIVE_LOCAL_STATES:
            raise ReplicationError(f"{vm} is not running here")
        if key in self._mirrors:
            return  # as the driver: the job is there already
        if disk not in self._replicated(qemu.spec):
            raise ReplicationError(f"disk {disk} of {vm} is not on a replicated pool")
        if peer == self.host:
            raise ReplicationError(f"{vm} disk {disk}: the replica must be on another host than {self.host}")
        if not self.replica_answers(vm, disk, peer, address):
            raise ReplicationError(f"{peer}'s export of {vm} disk {disk} at {address} does not answer")
        size_mib = qemu.spec.disks[disk].size_mib
        m = _Mirror(qemu, disk, peer, address, size_mib << 20, self.hv.loop.now)
        self._mirrors[key] = m
        # A full copy overwrites the peer's copy block by block: until it ends, that copy holds
        # nothing whole.
        self.hv.world.disk(vm, disk).copies.pop(peer, None)
        m.timer = self.hv.loop.after(size_mib / self.hv.timings.sync_mib_s, lambda: self._sync_end(key, m))

    def replica_answers(self, vm: str, disk: int, peer: str, address: str) -> bool:
        # An export exists only while its host is powered on (power_off drops them).
        other = self.hv.world.hypervisor(peer)
        return (other is not None and peer != self.host and (vm, disk) in other.replication._exports
                and self.hv.world.network.hosts_connected(self.host, peer))

    def release_mirror(self, vm: str, disk: int) -> None:
        key = (vm, disk)
        m = self._mirrors.pop(key, None)
        if m is not None and m.timer is not None:
            m.timer.cancel()
        w = self._writers.get(key)
        if w is not None and w.pending:  # completes on this host alone
            data = self.hv.world.disk(vm, disk)
            assert data.pending is not None
            self._complete(w, data, data.pending, replica=None)

    # --- the hypervisor's hooks ---

    def blocked(self, vm: str) -> bool:
        """Does one of the VM's writes here wait for a lost replica? (QEMU cannot complete a
        migration while I/O is stuck.)"""
        return any(w.pending for (name, _), w in self._writers.items() if name == vm)

    def vm_changed(self, name: str) -> None:
        """The VM's local state changed: writers follow the QEMU whose guest runs, mirrors the
        QEMU that runs them. A write waiting when its QEMU dies is never acknowledged."""
        current = self.hv.vms.get(name)
        disks = self._replicated(current.spec) if current is not None else ()
        keys = sorted({k for k in (*self._writers, *self._mirrors) if k[0] == name})
        if not disks and not keys:
            return
        writing = current if current is not None and current.state in ACTIVE_LOCAL_STATES else None
        alive = current if current is not None and current.state not in DEAD_LOCAL_STATES \
            and current.state is not LocalState.MIGRATED else None
        for key in keys:
            w = self._writers.get(key)
            if w is not None and w.vm is not writing:
                self._end_writer(key, w)
            m = self._mirrors.get(key)
            if m is not None and m.vm is not alive:
                self._end_mirror(key, m)
        if writing is not None:
            for disk in disks:
                if (name, disk) not in self._writers:
                    w = _Writer(writing, disk)
                    self._writers[(name, disk)] = w
                    self._schedule(w)

    def power_off(self) -> None:
        """The host loses power: its exports, its QEMUs' mirrors and their waiting writes go."""
        for key, w in sorted(self._writers.items()):
            self._end_writer(key, w)
        for key, m in sorted(self._mirrors.items()):
            self._end_mirror(key, m)
        self._exports.clear()

    # --- internals ---

    def _replicated(self, spec: VmSpec) -> tuple[int, ...]:
        pools = self.hv.world.pools
        return tuple(n for n, _ in replicated_disks(spec, pools)) if pools else ()

    def _answers(self, m: _Mirror) -> bool:
        return self.replica_answers(m.vm.spec.name, m.disk, m.peer, m.address)

    def _schedule(self, w: _Writer) -> None:
        w.timer = self.hv.loop.after(self.hv.timings.write_interval_s, lambda: self._write(w))

    def _write(self, w: _Writer) -> None:
        key = (w.vm.spec.name, w.disk)
        if self._writers.get(key) is not w:
            return
        data = self.hv.world.disk(*key)
        m = self._mirrors.get(key)
        if w.pending:  # blocked: completes once the replica answers again (the NBD client reconnects)
            if m is not None and self._answers(m):
                assert data.pending is not None
                self._complete(w, data, data.pending, m)
        else:
            data.seq += 1
            if m is None or self._answers(m):
                self._complete(w, data, data.seq, m)
            else:
                data.pending, w.pending = data.seq, True
        self._schedule(w)

    def _complete(self, w: _Writer, data: DiskData, seq: int, replica: _Mirror | None) -> None:
        """A write lands on this host's copy (and the replica's, once the mirror is in sync) and
        is acknowledged to the guest."""
        data.copies[self.host] = seq
        if replica is not None and replica.phase is MirrorPhase.IN_SYNC:
            data.copies[replica.peer] = seq
        data.acked = max(data.acked, seq)
        data.pending, w.pending = None, False

    def _sync_end(self, key: tuple[str, int], m: _Mirror) -> None:
        if self._mirrors.get(key) is not m:
            return
        m.timer = None
        if not self._answers(m):  # the copy waits for the replica to answer again
            m.timer = self.hv.loop.after(self.hv.timings.write_interval_s, lambda: self._sync_end(key, m))
            return
        data = self.hv.world.disk(*key)
        w = self._writers.get(key)
        if w is not None and w.pending:
            assert data.pending is not None
            self._complete(w, data, data.pending, m)
        m.phase = MirrorPhase.IN_SYNC
        data.copies[m.peer] = data.copies.get(self.host, 0)

    def _end_writer(self, key: tuple[str, int], w: _Writer) -> None:
        del self._writers[key]
        if w.timer is not None:
            w.timer.cancel()
        if w.pending:  # never acknowledged
            self.hv.world.disk(*key).pending = None
            w.pending = False

    def _end_mirror(self, key: tuple[str, int], m: _Mirror) -> None:
        del self._mirrors[key]
        if m.timer is not None:
            m.timer.cancel()
