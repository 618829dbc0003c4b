"""The target side of both ways to move a VM (`IncomingMigration`):

- live: a target launched with `-incoming tcp:...` is INCOMING (its CPUs never run) until QEMU
  runs the migrated VM here, then RUNNING.
- restore (the second half of a quick migration): a standby launched with `-incoming defer` while
  the source still saves is INCOMING; once the state file is complete it is STARTING while QEMU
  loads the state (read by QEMU itself through a descriptor passed over QMP) and RUNNING once
  continued. Restoring into a standby saves the process launch (~0.1 s of the outage).

The state file is removed once the restored VM runs (unless `keep_state_files`).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from haven.drivers.qemu_config import QemuHostConfig
from haven.drivers.qemu_monitor import MONITOR_ERRORS, STATE_FD, run_state
from haven.drivers.qemu_process import sigkill
from haven.drivers.qemu_vm import S, VmRecord, VmTable
from haven.drivers.qmp import QmpError, pass_fd

# Run states of a QEMU that holds a loaded state but does not run it yet: `cont` runs it.
LOADED = ("paused", "prelaunch", "postmigrate", "restore-vm")


class IncomingMigration:
    def __init__(self, config: QemuHostConfig, table: VmTable) -> None:
        self.config = config
        self.table = table

    def listen_uri(self, vm: str) -> str:
        return self.config.migration_uri(self.config.address, vm)

    def watch_live(self, vm: VmRecord, token: int) -> None:
        """INCOMING until QEMU runs the migrated VM (blocks)."""
        failures = 0
        while vm.token == token and vm.alive():
            try:
                status = vm.monitor.status()
                failures = 0
            except MONITOR_ERRORS as exc:
                failures += 1
                if failures > 100:
                    self.table.set(vm, token, detail=f"monitor unreachable: {exc}")
                time.sleep(0.1)
                continue
            if status == "running":
                self.table.set(vm, token, S.RUNNING, detail="")
                return
            if status in ("paused", "postmigrate"):  # the source was paused: continue it here
                with contextlib.suppress(*MONITOR_ERRORS):
                    vm.monitor.execute("cont")
            time.sleep(0.05)

    def restore(self, vm: VmRecord, restore_from: str) -> bool:
        """Load `restore_from` into the standby `vm` (INCOMING, origin standby) and run it, in
        the background; False if `vm` changed meanwhile."""
        token = vm.token
        if not self.table.set(vm, token, S.STARTING, detail="restoring", restore_from=restore_from):
            return False
        threading.Thread(target=self._restore, args=(vm, token), name=f"qemu-restore-{vm.name}", daemon=True).start()
        return True

    def _restore(self, vm: VmRecord, token: int) -> None:
        t0 = time.monotonic()
        if vm.launcher is not None:
            vm.launcher.join()  # the standby may still be launching
        if vm.token != token or not vm.alive():
            return  # killed, or its launch failed (reported by the launcher or the watcher)
        if not Path(vm.restore_from).is_file():
            self._fail(vm, token, f"state file {vm.restore_from} missing")
            return
        try:
            self.table.set(vm, token, origin="restore")
            fd = os.open(vm.restore_from, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with vm.monitor.session() as q:  # the passed descriptor lives as long as the connection
                    q.execute("migrate-incoming", {"uri": pass_fd(q, STATE_FD, fd)})
            finally:
                os.close(fd)
        except MONITOR_ERRORS as exc:
            self._fail(vm, token, f"restore failed: {exc}")
            return
        self.watch_restore(vm, token, t0)

    def _fail(self, vm: VmRecord, token: int, why: str) -> None:
        if self.table.set(vm, token, S.FAILED, detail=why):
            sigkill(vm.pid, vm.starttime)

    def watch_restore(self, vm: VmRecord, token: int, t0: float) -> None:
        """Wait for the state to load, continue, RUNNING (blocks). Polled every 10 ms; `cont` and
        the check that the VM runs share one connection, so RUNNING is reported at once."""
        loaded = None
        while vm.token == token and vm.alive():
            try:
                with vm.monitor.session() as q:
                    status = run_state(q.execute("query-status"))
                    if status in LOADED:
                        loaded = loaded or time.monotonic()
                        with contextlib.suppress(QmpError):
                            q.execute("cont")
                        status = run_state(q.execute("query-status"))
            except MONITOR_ERRORS:
                time.sleep(0.05)
                continue
            if status == "running":
                vm.stats.update({"restore_s": round((loaded or time.monotonic()) - t0, 3),
                                 "restore_to_running_s": round(time.monotonic() - t0, 3)})
                self.table.set(vm, token, S.RUNNING, detail="")
                if not self.config.keep_state_files:
                    Path(vm.restore_from).unlink(missing_ok=True)
                return
            time.sleep(0.01)
