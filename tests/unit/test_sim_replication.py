"""The simulator's replicated disks (sim.replication) and the acknowledged-write invariant."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from haven.model.replica import ReplicaRecord
from haven.model.spec import ClusterConfig, Disk, MigrationKind, PoolKind, PoolSpec, VmSpec
from haven.model.state import LocalState, Migration, Placement, VmState
from haven.ports.replication import MirrorPhase, ReplicationError
from haven.sim.cluster import SimCluster
from haven.sim.faults import FaultError, apply_fault
from haven.sim.hypervisor import FakeHypervisor
from haven.sim.loop import EventLoop, HostClock
from haven.sim.replication import DiskData
from haven.sim.world import World

from .helpers import host

SPEC = VmSpec(name="db", memory_mib=512, disks=(Disk(pool="pair", size_mib=64, file="db-0.raw"), Disk(pool="shared")))
PAIR = PoolSpec(name="pair", kind=PoolKind.REPLICATED, hosts=("h1", "h2"))
SYNC_S = 64 / 200.0  # size / sync_mib_s


@dataclass
class Pair:
    loop: EventLoop = field(default_factory=EventLoop)
    placements: dict[str, Placement] = field(default_factory=dict)
    records: dict[str, ReplicaRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.world = World(lambda: self.loop.now)
        self.world.pools = {"pair": PAIR}
        self.world.monitor.placement_of = self.placements.get
        self.world.monitor.replica_of = self.records.get
        self.hv = {}
        for name in ("h1", "h2", "h3"):
            self.hv[name] = FakeHypervisor(name, self.loop, HostClock(self.loop), self.world)
            self.world.hypervisors[name] = self.hv[name]
            self.world.memory[name] = 4096

    @property
    def disk(self) -> DiskData:
        return self.world.disk("db", 0)

    def run(self, seconds: float) -> None:
        until = self.loop.now + seconds
        while (at := self.loop.next_time()) is not None and at <= until:
            self.loop.pop().fn()
            self.world.monitor.check()
        self.loop.now = until

    def start(self, where: str, generation: int) -> None:
        self.placements["db"] = Placement(vm="db", state=VmState.STARTING, host=where, generation=generation)
        self.hv[where].start(SPEC, generation)

    def in_sync_on_h1(self) -> None:
        """db runs on h1 (booted), mirrored in sync to h2's export."""
        self.start("h1", 1)
        self.run(3.5)
        assert self.hv["h1"].vms["db"].state is LocalState.RUNNING
        self.hv["h2"].replication.start_export(SPEC, 0)
        self.hv["h1"].replication.start_mirror("db", 0, "h2", "10.0.0.2")
        self.run(SYNC_S + 0.5)
        assert self.hv["h1"].replication.mirror("db", 0).phase is MirrorPhase.IN_SYNC

    def lost(self) -> int:
        return self.world.monitor.acknowledged_writes_lost


def test_initial_sync_then_in_sync_writes_reach_both_copies() -> None:
    p = Pair()
    p.start("h1", 1)
    p.run(1.0)
    assert p.disk.acked == p.disk.seq == p.disk.copies["h1"] >= 9  # no mirror: written here alone
    assert ("db", 1) not in p.world.disks  # the shared pool's disk is not modelled
    p.hv["h2"].replication.start_export(SPEC, 0)
    assert p.hv["h2"].replication.exports() == {("db", 0)}
    p.hv["h1"].replication.start_mirror("db", 0, "h2", "10.0.0.2")
    p.run(SYNC_S / 2)
    state = p.hv["h1"].replication.mirror("db", 0)
    assert state.phase is MirrorPhase.SYNCING and 0 < state.done < state.total == 64 << 20
    assert "h2" not in p.disk.copies and p.disk.acked == p.disk.copies["h1"]  # acknowledged meanwhile
    p.run(SYNC_S)
    state = p.hv["h1"].replication.mirror("db", 0)
    assert state.phase is MirrorPhase.IN_SYNC and state.done == state.total
    before = p.disk.acked
    p.run(1.0)
    assert p.disk.acked >= before + 9
    assert p.disk.copies == {"h1": p.disk.acked, "h2": p.disk.acked} and p.disk.pending is None
    assert p.world.monitor.violations == []


def test_start_mirror_needs_a_running_vm_and_an_answering_export() -> None:
    p = Pair()
    with pytest.raises(ReplicationError):
        p.hv["h1"].replication.start_mirror("db", 0, "h2", "10.0.0.2")  # not running here
    p.start("h1", 1)
    with pytest.raises(ReplicationError):
        p.hv["h1"].replication.start_mirror("db", 0, "h2", "10.0.0.2")  # h2 exports nothing
    p.hv["h2"].replication.start_export(SPEC, 0)
    p.world.network.cut_pairs.add(frozenset(("h1", "h2")))
    assert not p.hv["h1"].replication.replica_answers("db", 0, "h2", "10.0.0.2")
    with pytest.raises(ReplicationError):
        p.hv["h1"].replication.start_mirror("db", 0, "h2", "10.0.0.2")
    p.world.network.cut_pairs.clear()
    assert p.hv["h1"].replication.replica_answers("db", 0, "h2", "10.0.0.2")
    p.hv["h1"].replication.start_mirror("db", 0, "h2", "10.0.0.2")
    assert p.hv["h1"].replication.mirror("db", 0).phase is MirrorPhase.SYNCING


def test_lost_replica_blocks_writes_until_release_then_they_complete_on_the_primary_alone() -> None:
    p = Pair()
    p.in_sync_on_h1()
    p.hv["h2"].power_off()
    assert p.hv["h2"].replication.exports() == set()
    p.run(0.15)
    acked, pending = p.disk.acked, p.disk.pending
    assert pending == acked + 1 and p.disk.copies["h2"] == acked
    p.run(5.0)  # the guest waits
    assert (p.disk.acked, p.disk.pending, p.disk.seq) == (acked, pending, pending)
    assert p.hv["h1"].replication.blocked("db")
    p.hv["h1"].replication.release_mirror("db", 0)
    assert p.hv["h1"].replication.mirror("db", 0).phase is MirrorPhase.ABSENT
    assert p.disk.pending is None and p.disk.acked == p.disk.copies["h1"] == pending
    assert p.disk.copies["h2"] < p.disk.acked
    p.run(1.0)  # the guest writes on, here alone
    assert p.disk.acked == p.disk.copies["h1"] >= pending + 9 and p.disk.copies["h2"] == acked


def test_replica_answering_again_before_release_completes_the_write_replicated() -> None:
    p = Pair()
    p.in_sync_on_h1()
    p.world.network.cut_pairs.add(frozenset(("h1", "h2")))
    p.run(2.0)
    acked, pending = p.disk.acked, p.disk.pending
    assert pending == acked + 1
    p.world.network.cut_pairs.clear()  # the NBD client reconnects
    p.run(0.15)
    assert p.disk.pending is None and p.disk.acked >= pending
    assert p.disk.copies["h1"] == p.disk.copies["h2"] == p.disk.acked
    assert p.hv["h1"].replication.mirror("db", 0).phase is MirrorPhase.IN_SYNC
    # a power-cycled replica host exporting the same copy again: likewise
    p.hv["h2"].power_off()
    p.run(1.0)
    assert p.disk.pending is not None
    p.hv["h2"].replication.start_export(SPEC, 0)
    p.run(0.15)
    assert p.disk.pending is None and p.disk.copies["h1"] == p.disk.copies["h2"] == p.disk.acked


def test_launch_on_a_copy_lacking_an_acknowledged_write_is_a_violation() -> None:
    p = Pair()
    p.in_sync_on_h1()
    p.hv["h2"].power_off()
    p.run(1.0)
    p.hv["h1"].replication.release_mirror("db", 0)  # stale from here on
    p.run(0.5)
    p.hv["h1"].power_off()
    p.start("h2", 2)
    assert p.lost() == 1 and p.world.monitor.promoted_losses == 0
    assert any("acknowledged writes lost: vm db launched on h2 at generation 2" in v
               for v in p.world.monitor.violations)
    p.hv["h2"].kill("db")
    p.hv["h2"].start(SPEC, 2)  # the same launch again: counted once
    assert p.lost() == 1


def test_launch_on_an_in_sync_copy_loses_nothing_and_a_pending_write_dies_unacknowledged() -> None:
    p = Pair()
    p.in_sync_on_h1()
    p.world.network.cut_pairs.add(frozenset(("h1", "h2")))
    p.run(1.0)
    acked = p.disk.acked
    assert p.disk.pending == acked + 1
    p.hv["h1"].power_off()  # the primary dies with a write in flight
    assert p.disk.pending is None and p.disk.acked == acked
    p.world.network.cut_pairs.clear()
    p.hv["h2"].replication.stop_export("db", 0)
    p.start("h2", 2)
    assert p.lost() == 0 and p.world.monitor.violations == []
    p.run(1.0)  # h2 is the primary now, written alone until it mirrors back
    assert p.disk.copies["h2"] == p.disk.acked > acked and p.disk.copies["h1"] == acked


def test_a_promoted_record_excuses_the_loss() -> None:
    p = Pair()
    p.start("h1", 1)
    p.run(1.0)  # never mirrored: h2 holds nothing
    p.hv["h1"].crash("db")
    p.records["db"] = ReplicaRecord(vm="db", primary="h2", promoted_at=1.0)
    p.start("h2", 2)
    assert p.lost() == 0 and p.world.monitor.promoted_losses == 1 and p.world.monitor.violations == []
    # a promotion names its host: elsewhere it excuses nothing
    p.hv["h2"].kill("db")
    p.start("h3", 3)
    assert p.lost() == 1


def test_crash_and_stop_end_the_mirror() -> None:
    p = Pair()
    p.in_sync_on_h1()
    p.hv["h1"].crash("db")
    assert p.hv["h1"].replication.mirror("db", 0).phase is MirrorPhase.ABSENT
    seq = p.disk.seq
    p.run(1.0)
    assert p.disk.seq == seq  # a dead QEMU writes nothing
    p.start("h1", 2)  # its own copy: nothing lost
    p.run(1.0)
    assert p.disk.seq > seq and p.lost() == 0
    assert p.hv["h1"].replication.mirror("db", 0).phase is MirrorPhase.ABSENT  # a new QEMU mirrors anew


def _migrate(p: Pair) -> str:
    migration = Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2, started=p.loop.now)
    p.placements["db"] = Placement(vm="db", state=VmState.MIGRATING, host="h1", generation=1, migration=migration)
    p.hv["h2"].prepare_incoming(SPEC, 2)
    p.hv["h1"].migrate_live("db", "h2", "10.0.0.2", migration.attempt)
    return migration.attempt


def test_live_migration_on_the_pair_moves_the_writer_and_ends_the_mirror() -> None:
    p = Pair()
    p.in_sync_on_h1()
    _migrate(p)
    p.run(1.0)
    assert p.hv["h1"].vms["db"].state is LocalState.MIGRATED
    assert p.hv["h2"].vms["db"].state is LocalState.RUNNING
    assert p.hv["h1"].replication.mirror("db", 0).phase is MirrorPhase.ABSENT
    p.run(1.0)
    assert p.disk.copies["h2"] == p.disk.acked > p.disk.copies["h1"]  # written on the target now
    assert p.lost() == 0 and p.world.monitor.violations == []


def test_live_migration_with_a_blocked_write_fails() -> None:
    p = Pair()
    p.in_sync_on_h1()
    p.hv["h2"].replication.stop_export("db", 0)  # the replica stops answering
    p.run(0.5)
    assert p.hv["h1"].replication.blocked("db")
    attempt = _migrate(p)
    p.run(2.0)
    source = p.hv["h1"].vms["db"]
    assert source.state is LocalState.RUNNING and source.failed_migration == attempt
    assert "lost replica" in source.detail
    assert p.hv["h2"].vms["db"].state is LocalState.INCOMING
    assert p.hv["h1"].replication.blocked("db")  # still waiting: nothing acknowledged meanwhile


def test_handover_onto_a_released_replica_is_a_violation() -> None:
    p = Pair()
    p.in_sync_on_h1()
    _migrate(p)
    p.hv["h2"].replication.stop_export("db", 0)
    p.run(0.15)
    p.hv["h1"].replication.release_mirror("db", 0)  # released while the migration runs
    p.run(2.0)
    assert p.hv["h2"].vms["db"].state is LocalState.RUNNING
    assert p.lost() == 1
    assert any("handed over by a live migration on h2" in v for v in p.world.monitor.violations)


def test_cut_link_and_heal_link() -> None:
    config = ClusterConfig(name="t", hosts=(host("h1"), host("h2"), host("h3")))
    cluster = SimCluster(config)
    net = cluster.world.network
    apply_fault(cluster, "cut-link h1 h2")
    assert not net.hosts_connected("h1", "h2") and net.hosts_connected("h1", "h3")
    assert net.host_reaches_store("h1") and net.host_reaches_store("h2")
    apply_fault(cluster, "cut h1 from h3")
    apply_fault(cluster, "heal-link h2 h1")
    assert net.hosts_connected("h1", "h2") and not net.hosts_connected("h1", "h3")
    with pytest.raises(FaultError):
        apply_fault(cluster, "cut-link h1 h1")
    with pytest.raises(FaultError):
        apply_fault(cluster, "heal-link h1")
