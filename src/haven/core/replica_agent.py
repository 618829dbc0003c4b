"""A host agent's part of replicated pools (model.replica): serve the copies primaries elsewhere
mirror to, mirror the disks of the VMs that run here, and say in the store what each copy holds.

Pure: the runner (runtime.replica_loop) gathers the facts, executes the actions, and writes the
records under this host's alive key. The order that keeps every acknowledged write:
- a copy becomes `in-sync` only once the local mirror is ready (every write then waits for it);
- a lost replica is recorded `stale` *before* its mirror is released (`release_after` holds the
  record to write first): until then the guest's writes wait, none is acknowledged without it;
- a VM about to start on its primary makes its in-sync copies `syncing` first (`before_launch`):
  the new QEMU writes before its mirror is up.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from haven.model.replica import CopyState, DiskCopy, ReplicaRecord
from haven.model.state import HOLDING_STATES, LocalState, Placement
from haven.ports.hypervisor import LocalVm
from haven.ports.replication import MirrorPhase, MirrorState

DiskKey = tuple[str, int]  # (VM, disk index)


@dataclass(frozen=True, slots=True)
class Serve:
    vm: str
    disk: int


@dataclass(frozen=True, slots=True)
class Unserve:
    vm: str
    disk: int


@dataclass(frozen=True, slots=True)
class Mirror:
    vm: str
    disk: int
    peer: str
    address: str


@dataclass(frozen=True, slots=True)
class Record:
    """Write this copy's state (guarded by the record's revision and this host's alive key)."""

    vm: str
    copy: DiskCopy


@dataclass(frozen=True, slots=True)
class Release:
    """Release the mirror: after `first` is durable in the store when given (the fence-peer rule)."""

    vm: str
    disk: int
    first: DiskCopy | None


ReplicaAction = Serve | Unserve | Mirror | Record | Release


@dataclass(frozen=True)
class ReplicaInput:
    host: str
    now: float
    records: Mapping[str, ReplicaRecord]
    placements: Mapping[str, Placement]
    local: Mapping[str, LocalVm]
    addresses: Mapping[str, str]  # host -> management address
    exports: frozenset[DiskKey]
    mirrors: Mapping[DiskKey, MirrorState]  # the local primaries' disks (`mirrored_disks`)
    answers: Mapping[DiskKey, bool]  # does the replica's export answer now, same keys


def mirrored_disks(host: str, records: Mapping[str, ReplicaRecord], placements: Mapping[str, Placement],
                   local: Mapping[str, LocalVm]) -> list[tuple[DiskKey, DiskCopy]]:
    """The disks this host should be mirroring: of VMs running here, at their placement's
    generation, with this host recorded as their primary."""
    disks = []
    for name, record in sorted(records.items()):
        vm, p = local.get(name), placements.get(name)
        if (record.primary == host and vm is not None and vm.state is LocalState.RUNNING and p is not None
                and p.host == host and p.generation == vm.generation):
            disks += [((name, c.disk), c) for c in record.copies]
    return disks


def served_disks(host: str, records: Mapping[str, ReplicaRecord],
                 placements: Mapping[str, Placement]) -> set[DiskKey]:
    """The copies this host should serve: those it holds of VMs placed to run on another host."""
    wanted: set[DiskKey] = set()
    for name, record in records.items():
        p = placements.get(name)
        if p is None or p.state not in HOLDING_STATES or p.host in (None, host):
            continue
        wanted |= {(name, c.disk) for c in record.copies if c.host == host}
    return wanted


def plan_replication(i: ReplicaInput) -> list[ReplicaAction]:
    wanted = served_disks(i.host, i.records, i.placements)
    actions: list[ReplicaAction] = [Unserve(vm, disk) for vm, disk in sorted(i.exports - wanted)]
    actions += [Serve(vm, disk) for vm, disk in sorted(wanted - i.exports)]
    for (vm, disk), copy in mirrored_disks(i.host, i.records, i.placements, i.local):
        state = i.mirrors.get((vm, disk), MirrorState(MirrorPhase.ABSENT))
        answers = i.answers.get((vm, disk), False)
        if state.phase is MirrorPhase.ABSENT:
            address = i.addresses.get(copy.host)
            if answers and address:
                actions.append(Mirror(vm, disk, copy.host, address))
            elif copy.state is not CopyState.STALE:  # no mirror: writes go here alone from now on
                actions.append(Record(vm, _stale(copy, i.now, "the replica was out of reach when the VM started")))
            continue
        lost = "the replica did not answer" if not answers else (
            "the replica reported an error" if state.phase is MirrorPhase.BROKEN else "")
        if lost:
            first = None if copy.state is CopyState.STALE else _stale(copy, i.now, lost)
            actions.append(Release(vm, disk, first))
        elif state.phase is MirrorPhase.IN_SYNC and copy.state is not CopyState.IN_SYNC:
            actions.append(Record(vm, DiskCopy(disk=disk, host=copy.host, state=CopyState.IN_SYNC, since=i.now,
                                               done=state.total, total=state.total)))
        elif state.phase is MirrorPhase.SYNCING and _progressed(copy, state):
            actions.append(Record(vm, DiskCopy(disk=disk, host=copy.host, state=CopyState.SYNCING,
                                               since=copy.since if copy.state is CopyState.SYNCING else i.now,
                                               done=state.done, total=state.total)))
    return actions


def before_launch(record: ReplicaRecord | None, host: str, now: float) -> ReplicaRecord | None:
    """The record to write before a QEMU for the VM is launched on `host` (None: nothing to
    write): its copies elsewhere stop counting as in sync, since the new QEMU writes here before
    its mirror is up."""
    if record is None or record.primary != host:
        return None
    if not any(c.state is CopyState.IN_SYNC for c in record.copies):
        return None
    copies = tuple(DiskCopy(disk=c.disk, host=c.host, state=CopyState.SYNCING, since=now,
                            reason="the VM restarted on its primary") if c.state is CopyState.IN_SYNC else c
                   for c in record.copies)
    return record.model_copy(update={"copies": copies})


def _stale(copy: DiskCopy, now: float, why: str) -> DiskCopy:
    return DiskCopy(disk=copy.disk, host=copy.host, state=CopyState.STALE, since=now, reason=why)


def _progressed(copy: DiskCopy, state: MirrorState) -> bool:
    """Worth a write: the copy was not recorded syncing, or a tenth more of it is done."""
    if copy.state is not CopyState.SYNCING:
        return True
    return state.total > 0 and state.done - copy.done >= state.total / 10
