"""The hypervisor port: one host's VMs (QEMU over QMP in production, `sim.hypervisor` in the
simulator).

Calls return quickly. Long operations (boot, migration, save) run in the background; their
progress and outcome appear in `list()` as the VM's `LocalState`, which the agent reads on its next
iteration. A VM that died, failed or was saved stays listed until it is started again or `forget`
is called, so the agent can report what happened.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from haven.model.spec import VmSpec
from haven.model.state import LocalState


class HypervisorError(Exception):
    """The hypervisor refused or failed an operation; the message says why."""


@dataclass(frozen=True, slots=True)
class LocalVm:
    name: str
    generation: int
    state: LocalState
    detail: str = ""
    since: float = 0.0
    failed_migration: str = ""  # `attempt` of the last outgoing migration or save that failed
    downtime_ms: float | None = None  # MIGRATED: the guest's final pause, as the hypervisor measured it


class Hypervisor(Protocol):
    def list(self) -> dict[str, LocalVm]:
        """Every VM this host knows of, by name."""

    def start(self, spec: VmSpec, generation: int, restore_from: str | None = None) -> None:
        """Boot the VM, or restore it from a saved state file and continue it: into the standby
        that `prepare_restore` launched for this generation if there is one, else a new process."""

    def stop(self, name: str) -> None:
        """Ask the guest to shut down; it is killed after the stop timeout."""

    def kill(self, name: str) -> None:
        """Terminate at once (self-fence, stale copy); when it returns, the process is gone.
        Idempotent."""

    def prepare_incoming(self, spec: VmSpec, generation: int) -> None:
        """Start a paused target for a live migration; state INCOMING at once (its CPUs never
        run; it may still be launching, so `migrate_live` retries a refused connection for a few
        seconds), RUNNING once the migrated VM runs here."""

    def prepare_restore(self, spec: VmSpec, generation: int) -> None:
        """Quick-migration target: launch a paused standby while the source still saves, so that
        `start(..., restore_from)` only has to load the state; INCOMING until then (its CPUs never
        run)."""

    def migrate_live(self, name: str, target_host: str, target_address: str, attempt: str) -> None:
        """Send the running VM to the prepared target. Ends MIGRATED, or back to RUNNING on failure
        with `failed_migration = attempt` and `detail` saying why."""

    def cancel_migration(self, name: str) -> None:
        """Abort an outgoing live migration; the source keeps running."""

    def save(self, name: str, path: str, attempt: str) -> None:
        """Quick migration: pause, write the state to `path` on shared storage, quit. Ends SAVED
        (detail = path), or back to RUNNING on failure with `failed_migration = attempt`."""

    def forget(self, name: str) -> None:
        """Drop the record of a VM that is no longer running here."""

    def state_path(self, spec: VmSpec, generation: int) -> str:
        """Where a quick migration of this VM saves its state (shared storage)."""
