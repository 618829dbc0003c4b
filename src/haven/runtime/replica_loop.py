"""The agent's replication runner: `core.replica_agent.plan_replication` -> the replication port
-> the copies' states in the store. Called from `AgentLoop.step` (daemon and simulator alike)
after the lease check, before the VM reconcile, so that a copy this host served is released
before the VM it belongs to starts here.

Every record write is a transaction guarded by the record's mod revision as read and this host's
alive key as written under its current lease: a host whose lease is gone writes nothing, and a
record the manager changed meanwhile (a new primary) is read again before anything is decided on
it. A release that needs a stale mark first happens only if that write succeeded, unless the VM
chose availability over safety (`write_without_replica`) and the store is what failed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from haven.core.events import EventKind
from haven.core.replica_agent import (
    DiskKey,
    Mirror,
    Record,
    Release,
    ReplicaAction,
    ReplicaInput,
    Serve,
    Unserve,
    before_launch,
    mirrored_disks,
    plan_replication,
)
from haven.model.replica import CopyState, DiskCopy, ReplicaRecord
from haven.model.state import LocalState
from haven.ports.hypervisor import HypervisorError
from haven.ports.replication import MirrorState, Replication, ReplicationError
from haven.ports.store import Compare, KeyValue, Put, StoreError

if TYPE_CHECKING:
    from haven.runtime.agent_loop import AgentLoop


class ReplicaRunner:
    def __init__(self, agent: AgentLoop, port: Replication | None) -> None:
        self.agent = agent
        self.port = port
        self.host = agent.host.name
        self.records: dict[str, ReplicaRecord] = {}
        self.revs: dict[str, int] = {}  # mod revision of each record read

    @property
    def active(self) -> bool:
        """Does this host mirror or serve anything (the daemon then ticks faster)?"""
        return self.port is not None and any(self._concerns(record) for record in self.records.values())

    def _concerns(self, record: ReplicaRecord | None) -> bool:
        """Is this host the record's primary or a copy's host?"""
        return record is not None and (record.primary == self.host or any(c.host == self.host for c in record.copies))

    # --- what we know of the store (the agent's reads and watch feed it) ---

    def forget_all(self) -> None:
        self.records, self.revs = {}, {}

    def apply_record(self, vm: str, kv: KeyValue | None) -> bool:
        """A record changed; True if it concerns this host."""
        old = self.records.pop(vm, None)
        self.revs.pop(vm, None)
        if kv is not None:
            self.records[vm] = self.agent.decoded(ReplicaRecord, kv)
            self.revs[vm] = kv.mod_revision
        return self._concerns(old) or self._concerns(self.records.get(vm))

    # --- one round ---

    def step(self) -> None:
        port = self.port
        if port is None or not self.records:
            return
        agent = self.agent
        local = agent.hypervisor.list()
        disks = mirrored_disks(self.host, self.records, agent.placements, local)
        mirrors: dict[DiskKey, MirrorState] = {}
        answers: dict[DiskKey, bool] = {}
        for (vm, disk), copy in disks:
            address = agent.addresses.get(copy.host, "")
            try:
                mirrors[(vm, disk)] = port.mirror(vm, disk)
                answers[(vm, disk)] = bool(address) and port.replica_answers(vm, disk, copy.host, address)
            except ReplicationError:
                answers[(vm, disk)] = False
        actions = plan_replication(ReplicaInput(
            host=self.host, now=agent.clock.now(), records=self.records, placements=agent.placements,
            local=local, addresses=agent.addresses, exports=frozenset(port.exports()), mirrors=mirrors,
            answers=answers))
        for action in actions:
            self._execute(port, action)

    def before_launch(self, vm: str) -> bool:
        """Called right before a QEMU for `vm` is launched here: False holds the launch back. On
        its primary, its in-sync copies become syncing first. Anywhere else (a migration's
        target) the copy here must hold every acknowledged write, as the record says at the store."""
        record = self.records.get(vm)
        if self.port is None or record is None:
            return True
        if record.primary != self.host:
            return record.holds_everything(self.host) and self._unchanged(vm)
        new = before_launch(record, self.host, self.agent.clock.now())
        return new is None or self._write(new)

    def may_send(self, vm: str, target: str) -> bool:
        """May the VM migrate to `target` now? Only while its copy there holds every write."""
        record = self.records.get(vm)
        return self.port is None or record is None or record.holds_everything(target)

    def _execute(self, port: Replication, action: ReplicaAction) -> None:
        agent = self.agent
        try:
            match action:
                case Serve(vm, disk):
                    spec = agent.specs.get(vm)
                    if spec is not None:
                        port.start_export(spec, disk)
                case Unserve(vm, disk):
                    port.stop_export(vm, disk)
                case Mirror(vm, disk, peer, address):
                    port.start_mirror(vm, disk, peer, address)
                case Record(vm, copy):
                    self._write_copy(vm, copy)
                case Release(vm, disk, first):
                    if not self._stay(vm):
                        return
                    if first is not None and not self._write_copy(vm, first) and not self._may_write_alone(vm):
                        return  # the guest's writes keep waiting: nothing is acknowledged without the replica
                    port.release_mirror(vm, disk)
        except (ReplicationError, HypervisorError) as error:
            agent.event(EventKind.ACTION_FAILED, action.vm, action=type(action).__name__.lower(), reason=str(error))

    def _stay(self, vm: str) -> bool:
        """Before a replica is given up: a live migration of the VM under way (most likely to that
        very host) is cancelled first. False if it had already switched over: the VM lives on the
        target now, and the writes waiting here are never acknowledged."""
        hv = self.agent.hypervisor
        local = hv.list().get(vm)
        if local is not None and local.state is LocalState.MIGRATING_OUT:
            hv.cancel_migration(vm)
            local = hv.list().get(vm)
        return local is None or local.state is not LocalState.MIGRATED

    def _may_write_alone(self, vm: str) -> bool:
        spec = self.agent.specs.get(vm)
        if spec is None or not spec.write_without_replica:
            return False
        self.agent.event(EventKind.REPLICA, vm, new="released unrecorded",
                         reason="the store did not answer; the VM prefers availability (write_without_replica)")
        return True

    def _write_copy(self, vm: str, copy: DiskCopy) -> bool:
        record = self.records.get(vm)
        if record is None:
            return False
        new = record.with_copy(copy)
        if record.incoming == copy.host and copy.state is not CopyState.IN_SYNC:
            new = new.model_copy(update={"incoming": None})  # the move to it is cancelled (`_stay`)
        return self._write(new)

    def _unchanged(self, vm: str) -> bool:
        """The record is still the one read, and our alive key the one written under our lease
        (a write-free transaction, as the start rule's)."""
        return self._guarded(vm, []) is not None

    def _write(self, new: ReplicaRecord) -> bool:
        """Write `new` if the record is still the one read and our alive key the one written
        under our current lease. On success the cache holds it (the watch confirms it later)."""
        old = self.records.get(new.vm)  # before the write: the watch may deliver it at once
        revision = self._guarded(new.vm, [Put(self.agent.layout.replica(new.vm), new.model_dump_json())])
        if revision is None:
            return False
        self.records[new.vm] = new
        self.revs[new.vm] = revision
        for copy in new.copies:  # an event for each copy whose state changed
            was = old.copy_of(copy.disk) if old else None
            if was is None or was.state is not copy.state:
                self.agent.event(EventKind.REPLICA, new.vm, new=copy.state.value, to_host=copy.host,
                                 count=copy.disk, reason=copy.reason)
        return True

    def _guarded(self, vm: str, ops: list[Put]) -> int | None:
        """Run `ops` in a transaction guarded by the VM's record as read and our alive key as
        written under our current lease: the store's revision, or None when the guard failed (the
        view is then read again before anything is decided on it) or the store did not answer."""
        agent = self.agent
        state = agent.keeper.state
        rev = self.revs.get(vm)
        if state.lease is None or not state.alive_rev or rev is None:
            return None
        try:
            result = agent.store.txn([Compare(agent.layout.replica(vm), mod_revision=rev),
                                      Compare(agent.layout.alive(self.host), mod_revision=state.alive_rev)], ops)
        except StoreError:
            return None
        if not result.succeeded:
            agent.stale = agent.changed = True
            return None
        return result.revision
