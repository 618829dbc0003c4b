"""The guest port: what a host agent does inside a member VM and to its hot-pluggable disks
(guest-cluster services, `core.service`). The QEMU driver answers it through the QEMU guest agent
on a virtio-serial channel and QMP hot-plug; `sim.guest` is its twin on virtual time.

Calls return within their timeout. A guest that does not answer in time is not an error of the
port: `ping` says False, `exec` raises `GuestError`, and the caller decides what silence means.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class GuestError(Exception):
    """The guest agent could not be reached or did not answer in time; the message says which."""


@dataclass(frozen=True, slots=True)
class GuestResult:
    exit_code: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Guest(Protocol):
    def ping(self, vm: str, timeout: float) -> bool:
        """True if the VM's guest agent answered within `timeout` (a hung guest does not)."""

    def exec(self, vm: str, argv: Sequence[str], timeout: float, silence: float | None = None) -> GuestResult:
        """Run `argv` in the guest and wait for its exit status and output; `GuestError` if the
        command does not end within `timeout`, or if the agent does not answer at all (or, given
        `silence`, stays silent that long while the command runs: a guest hung meanwhile)."""

    def exec_steps(self, vm: str, steps: Sequence[Sequence[str]], timeout: float) -> tuple[int, GuestResult]:
        """Run the commands in order in one call, up to the first that fails: how many succeeded,
        and the result of the one that failed (or of the last). `GuestError` as `exec`."""

    def attach_disk(self, vm: str, device_id: str, path: str, size_mib: int) -> None:
        """Hot-plug the image `path` (`<pool>/<file>`: each host knows where its pools are) as
        virtio disk `device_id` (its serial too, so the guest finds it), first creating it empty
        (`size_mib`, with the host's guest filesystem) if the pool has none: a new service's first
        start. It may take a moment to appear in `attached_disks`. Raises HypervisorError."""

    def detach_disk(self, vm: str, device_id: str) -> None:
        """Unplug it: done only when QEMU confirms the device is gone and the image closed, which
        `attached_disks` shows. Raises HypervisorError."""

    def attached_disks(self, vm: str) -> set[str]:
        """The hot-plugged disks (device ids) QEMU holds for `vm` now; empty if it does not run."""
