"""The replication port: one host's side of replicated disks (model.replica).

On the primary, the VM's QEMU mirrors a disk synchronously to the replica's host (QEMU's
`blockdev-mirror` in write-blocking mode over NBD in production, `sim.hypervisor` in the
simulator). On the replica's host, a server exports its copy of that disk for the mirror to write.
A lost replica never fails a guest write: the write waits (the primary's agent then marks the
replica stale in the store and only after that calls `release_mirror`, which lets the waiting
writes complete on the primary alone). Calls return quickly; a copy's progress shows in `mirror`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from haven.model.spec import VmSpec


class MirrorPhase(StrEnum):
    ABSENT = "absent"  # no replication job
    SYNCING = "syncing"  # copying the disk; not yet a failover target
    IN_SYNC = "in-sync"  # every acknowledged write is on the replica
    BROKEN = "broken"  # the job reported an error: the replica may lack writes


@dataclass(frozen=True, slots=True)
class MirrorState:
    phase: MirrorPhase
    done: int = 0  # bytes copied
    total: int = 0


class ReplicationError(Exception):
    """A replication call failed; the message says why."""


class Replication(Protocol):
    def exports(self) -> set[tuple[str, int]]:
        """(VM, disk index) of every copy this host serves to a primary elsewhere."""

    def start_export(self, spec: VmSpec, disk: int) -> None:
        """Serve this host's copy of the disk (created empty when missing: a full sync fills it)."""

    def stop_export(self, vm: str, disk: int) -> None:
        """Stop serving it (before the VM starts here: the server holds the image). Idempotent."""

    def mirror(self, vm: str, disk: int) -> MirrorState:
        """The local VM's replication job for that disk."""

    def start_mirror(self, vm: str, disk: int, peer: str, address: str) -> None:
        """Start copying the running VM's disk to `peer`'s export at `address`; from then on a
        guest write waits for the replica. A full copy (QEMU 7.2 has no changed-blocks mode)."""

    def replica_answers(self, vm: str, disk: int, peer: str, address: str) -> bool:
        """Does `peer`'s export of this disk answer now (within a short timeout)?"""

    def release_mirror(self, vm: str, disk: int) -> None:
        """End the job: writes waiting for a lost replica complete here alone. Call it only once
        the replica is recorded stale (or the operator chose availability for this VM)."""
