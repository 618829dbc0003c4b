"""The source side of both ways to move a VM (`OutgoingMigration`):

- live: RUNNING -> MIGRATING_OUT -> MIGRATED (paused for good; the process stays until `kill`);
  QEMU connects to the target's `-incoming tcp:` listener, which may still be launching: a refused
  connection is retried for `connect_retry_s`.
- save (the first half of a quick migration): RUNNING -> SAVING -> SAVED (state file complete and
  fsynced, QEMU quit; detail = path). QEMU writes the file itself through a descriptor passed
  over QMP (`fd:` migration, about twice as fast as `exec:cat`); it is written as `<path>.partial`
  and renamed once complete, so a reader never sees half a state.

Either one that fails or is cancelled goes back to RUNNING (continued if it was paused) with
`failed_migration = attempt` and the reason in `detail`.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haven.drivers.qemu_config import QemuHostConfig
from haven.drivers.qemu_monitor import MONITOR_ERRORS, STATE_FD
from haven.drivers.qemu_process import sigkill, wait_dead
from haven.drivers.qemu_vm import S, VmRecord, VmTable
from haven.drivers.qmp import pass_fd
from haven.ports.hypervisor import HypervisorError

UNDER_WAY = ("setup", "active", "device", "pre-switchover", "completed")  # query-migrate statuses


class OutgoingMigration:
    def __init__(self, config: QemuHostConfig, table: VmTable) -> None:
        self.config = config
        self.table = table

    def live(self, vm: VmRecord, target_host: str, target_address: str, attempt: str) -> None:
        """Send the running `vm` to the target prepared on `target_address`."""
        uri = self.config.migration_uri(target_address, vm.name)
        token = self._begin(vm, "migrate", S.MIGRATING_OUT, detail=f"to {target_host} ({uri})", attempt=attempt,
                            target_host=target_host)
        _spawn(f"qemu-migrate-{vm.name}", lambda: self._drive(vm, token, uri, attempt, live=True))

    def save(self, vm: VmRecord, path: str, attempt: str) -> None:
        """Pause the running `vm`, write its state to `path`, quit."""
        with self.table.lock:
            self._check_running(vm, "save")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).unlink(missing_ok=True)
            token = self._begin(vm, "save", S.SAVING, detail=path, attempt=attempt, save_path=path)
        _spawn(f"qemu-save-{vm.name}", lambda: self._drive(vm, token, path + ".partial", attempt, live=False))

    def cancel(self, vm: VmRecord) -> None:
        """Abort an outgoing live migration; `_drive` then sees it cancelled and rolls back."""
        if vm.state is not S.MIGRATING_OUT:
            return
        try:
            vm.monitor.execute("migrate_cancel")
        except MONITOR_ERRORS as exc:
            raise HypervisorError(f"{self.table.host_name}: cancel migration of {vm.name}: {exc}") from exc

    def follow(self, vm: VmRecord, token: int, live: bool) -> None:
        """Watch a migration or save that an earlier driver began, to its end (blocks)."""
        self._drive(vm, token, None, vm.attempt, live)

    def roll_back(self, vm: VmRecord, token: int, attempt: str, why: str) -> None:
        """A failed or cancelled migration (or a save, which paused it) must leave the VM running."""
        try:
            vm.monitor.ensure_running()
        except MONITOR_ERRORS as exc:
            why += f"; cont failed: {exc}"
        if vm.save_path:
            Path(vm.save_path + ".partial").unlink(missing_ok=True)
        self.table.set(vm, token, S.RUNNING, detail=why, failed_migration=attempt, attempt="", save_path="")

    # --- the phases ---

    def _check_running(self, vm: VmRecord, what: str) -> None:
        if vm.state is not S.RUNNING:
            raise HypervisorError(f"{self.table.host_name}: cannot {what} {vm.name}: it is {vm.state.value}")

    def _begin(self, vm: VmRecord, what: str, state: S, **fields: Any) -> int:
        with self.table.lock:
            self._check_running(vm, what)
            self.table.set(vm, vm.token, state, **fields)
            return vm.token

    def _drive(self, vm: VmRecord, token: int, dest: str | None, attempt: str, live: bool) -> None:
        """Start the migration to `dest` (the target's URI, or the state file to write; None: it
        is already under way) and poll it to its end."""
        t0 = time.monotonic()
        try:
            if dest is not None:
                self._start(vm, dest, live)
            retry_until = t0 + self.config.connect_retry_s
            while vm.token == token and vm.alive():  # else: killed, or the exit is reported by the watcher
                info = vm.monitor.migration()
                status = info.get("status", "")
                if status == "completed":
                    if live:
                        self._migrated(vm, token, info, t0)
                    else:
                        self._saved(vm, token, info, t0)
                    return
                refused = "refused" in str(info.get("error-desc", "")).lower()
                if status == "failed" and live and dest is not None and refused and time.monotonic() < retry_until:
                    time.sleep(0.1)  # the target is still launching
                    vm.monitor.execute("migrate", {"uri": dest})
                    continue
                if status in ("failed", "cancelled"):
                    why = info.get("error-desc") or status
                    self.roll_back(vm, token, attempt, f"{'migration' if live else 'save'} {status}: {why}")
                    return
                time.sleep(0.05 if live else 0.02)
        except MONITOR_ERRORS as exc:
            if vm.token == token and vm.alive():
                with contextlib.suppress(*MONITOR_ERRORS):
                    vm.monitor.execute("migrate_cancel")
                self.roll_back(vm, token, attempt, f"{type(exc).__name__}: {exc}")

    def _start(self, vm: VmRecord, dest: str, live: bool) -> None:
        if live:
            params = {"max-bandwidth": self.config.migration_bandwidth,
                      "downtime-limit": self.config.downtime_limit_ms}
        else:
            params = {"max-bandwidth": self.config.save_bandwidth}
        with vm.monitor.session() as q:  # one connection: the passed descriptor lives as long as it
            if not live:
                q.execute("stop")
            q.execute("migrate-set-parameters", params)
            if live:
                q.execute("migrate", {"uri": dest})
                return
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                q.execute("migrate", {"uri": pass_fd(q, STATE_FD, fd)})
            finally:
                os.close(fd)

    def _migrated(self, vm: VmRecord, token: int, info: dict[str, Any], t0: float) -> None:
        vm.stats = _figures(info, t0)
        self.table.set(vm, token, S.MIGRATED, detail=f"to {vm.target_host}: {vm.stats['total_time_ms']} ms, "
                       f"downtime {vm.stats['downtime_ms']} ms", attempt="")

    def _saved(self, vm: VmRecord, token: int, info: dict[str, Any], t0: float) -> None:
        stats = _figures(info, t0)
        partial = Path(vm.save_path + ".partial")
        try:
            if partial.exists() or not Path(vm.save_path).exists():  # else: renamed before an agent restart
                fd = os.open(partial, os.O_RDONLY)
                try:
                    os.fsync(fd)  # the target reads it from shared storage after we quit
                finally:
                    os.close(fd)
                os.replace(partial, vm.save_path)
        except OSError as exc:
            self.roll_back(vm, token, vm.attempt, f"save: {exc}")
            return
        stats["state_bytes"] = Path(vm.save_path).stat().st_size
        vm.stats = stats
        with self.table.lock:
            if vm.token != token:
                return
            vm.intent = "saved"  # from now on, QEMU's exit means SAVED (also to a restarted agent)
            self.table.save(vm)
        with contextlib.suppress(*MONITOR_ERRORS):
            vm.monitor.execute("quit")
        if not wait_dead(vm.pid, vm.starttime, 5.0):
            sigkill(vm.pid, vm.starttime)
            wait_dead(vm.pid, vm.starttime, 5.0)
        vm.stats["stop_to_quit_s"] = round(time.monotonic() - t0, 3)
        self.table.set(vm, token, S.SAVED, detail=vm.save_path, attempt="")


def _figures(info: dict[str, Any], t0: float) -> dict[str, Any]:
    """QEMU's figures of a completed migration, and ours."""
    return {"total_time_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
            "setup_time_ms": info.get("setup-time"), "observed_s": round(time.monotonic() - t0, 3),
            "transferred_bytes": (info.get("ram") or {}).get("transferred")}


def _spawn(name: str, target: Callable[[], None]) -> None:
    threading.Thread(target=target, name=name, daemon=True).start()
