"""Replicated pools: two hosts' local disks instead of shared storage (the article's two PCs).

A VM on a replicated pool runs on one of the pool's two hosts; its copy there is the *primary*,
the other host's copy the *replica*, which the primary's QEMU mirrors synchronously: a guest write
is acknowledged only once both copies hold it. The replica is therefore a safe place to restart
the VM only while nothing has been acknowledged that it lacks, and that is what `ReplicaRecord`
says, per disk, in the store (`/haven/<cluster>/replicas/<vm>`).

Who writes what:
- The manager writes the record when the primary changes (a first start, a failover, a
  migration), in the transaction that places the VM, and then the copy on the old primary is
  `stale` (the new primary writes what it lacks). It never writes `in-sync`.
- The primary's agent writes the copies' progress: `syncing` while its mirror copies the disk,
  `in-sync` once every write waits for the replica, and `stale` when the replica is lost: written
  *before* it lets the guest's blocked writes complete without the replica (DRBD's fence-peer
  rule). Its writes are guarded by its alive key, so a host whose lease is gone writes nothing.
The record is not bound to a lease: a stale mark must outlive the host that wrote it.
"""
from __future__ import annotations

from enum import StrEnum

from pydantic import Field

# The pools are declarations (model.spec); re-exported here beside what is recorded of them.
from haven.model.spec import Frozen, PoolKind, PoolSpec, VmSpec


class CopyState(StrEnum):
    SYNCING = "syncing"  # the primary's mirror is copying the disk to it: not a failover target yet
    IN_SYNC = "in-sync"  # holds every acknowledged write: the VM may restart on it
    STALE = "stale"  # lacks writes (since `since`): the VM restarts only on the primary


class DiskCopy(Frozen):
    """The replica of one disk of the VM."""

    disk: int = Field(ge=0, description="index in the VM's disks")
    host: str
    state: CopyState
    since: float = 0.0  # when it entered this state (the writer's clock)
    done: int = Field(default=0, ge=0, description="syncing: bytes copied")
    total: int = Field(default=0, ge=0)
    reason: str = ""


class ReplicaRecord(Frozen):
    vm: str
    primary: str  # the host whose copies are current: where the VM runs or last ran
    copies: tuple[DiskCopy, ...] = ()
    generation: int = 0  # the VM's placement generation when the primary last changed
    # The operator started the VM from a copy known to lack writes (`haven vm promote`): the
    # writes it lacked are lost by their decision, not by a failover haven made.
    promoted_at: float | None = None
    # A migration to this host (which holds an in-sync copy) is under way: from its switchover on,
    # the guest writes there alone before any record can say so, so this host is the one place
    # sure to hold every write until the move ends (the manager clears it), or the primary's agent,
    # having cancelled the move, records that copy stale.
    incoming: str | None = None

    def copy_of(self, disk: int) -> DiskCopy | None:
        return next((c for c in self.copies if c.disk == disk), None)

    def with_copy(self, new: DiskCopy) -> ReplicaRecord:
        copies = tuple(sorted((*(c for c in self.copies if c.disk != new.disk), new), key=lambda c: c.disk))
        return self.model_copy(update={"copies": copies})

    @property
    def protected(self) -> bool:
        """Every copy in sync: the VM may fail over without losing a write."""
        return bool(self.copies) and all(c.state is CopyState.IN_SYNC for c in self.copies)

    def holds_everything(self, host: str) -> bool:
        """May the VM start on `host` without losing an acknowledged write? On its primary, or
        where every disk's replica is in sync; during a migration only on its target."""
        if self.incoming is not None:
            return host == self.incoming
        return host == self.primary or (bool(self.copies) and all(
            c.host == host and c.state is CopyState.IN_SYNC for c in self.copies))

    def behind(self, host: str) -> DiskCopy | None:
        """The first copy on `host` that lacks writes (None when it holds everything)."""
        if self.holds_everything(host):
            return None
        return next((c for c in self.copies if c.host == host and c.state is not CopyState.IN_SYNC),
                    DiskCopy(disk=0, host=host, state=CopyState.STALE, reason="holds no copy"))


def replicated_disks(vm: VmSpec, pools: dict[str, PoolSpec]) -> tuple[tuple[int, PoolSpec], ...]:
    """(index, pool) of each of the VM's disks on a replicated pool."""
    return tuple((n, pools[d.pool]) for n, d in enumerate(vm.disks)
                 if d.pool in pools and pools[d.pool].kind is PoolKind.REPLICATED)


def first_record(vm: VmSpec, pools: dict[str, PoolSpec], host: str, generation: int,
                 now: float) -> ReplicaRecord | None:
    """The record of a VM placed for the first time on `host`: every replica to be synced."""
    disks = replicated_disks(vm, pools)
    if not disks:
        return None
    copies = tuple(DiskCopy(disk=n, host=pool.peer(host) or "", state=CopyState.SYNCING, since=now)
                   for n, pool in disks)
    return ReplicaRecord(vm=vm.name, primary=host, copies=copies, generation=generation)


def moved_record(record: ReplicaRecord, host: str, generation: int, now: float, why: str) -> ReplicaRecord:
    """The record once the VM is placed on `host`, which held its replicas: `host` is the primary
    and the old primary's copies are stale (the new primary writes what they lack)."""
    copies = tuple(DiskCopy(disk=c.disk, host=record.primary, state=CopyState.STALE, since=now, reason=why)
                   for c in record.copies)
    return ReplicaRecord(vm=record.vm, primary=host, copies=copies, generation=generation)
