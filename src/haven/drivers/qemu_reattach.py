"""Taking back, after an agent restart, the QEMUs an earlier driver left running (`Reattacher`).

The QEMUs outlive the agent (`-daemonize`). A new driver on the same run dir reads every
`<run_dir>/<vm>/meta.json` (`qemu_vm`) and, instead of killing what still runs, lists it again and
resumes watching what was under way (an outgoing migration or save, an incoming migration, a
restore). A QEMU that died meanwhile is reported as its exit would have been.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from haven.drivers.qemu_config import QemuHostConfig
from haven.drivers.qemu_incoming import IncomingMigration
from haven.drivers.qemu_monitor import MONITOR_ERRORS
from haven.drivers.qemu_outgoing import UNDER_WAY, OutgoingMigration
from haven.drivers.qemu_process import is_qemu_for, proc_stat, read_pidfile
from haven.drivers.qemu_vm import TERMINAL_STATES, S, VmRecord, VmTable
from haven.drivers.qemu_watch import VmWatcher


class Reattacher:
    def __init__(self, config: QemuHostConfig, table: VmTable, watcher: VmWatcher,
                 outgoing: OutgoingMigration, incoming: IncomingMigration) -> None:
        self.config = config
        self.table = table
        self.watcher = watcher
        self.outgoing = outgoing
        self.incoming = incoming

    def run(self) -> None:
        """Take every VM of the run dir into the table; resume watching the live ones."""
        for meta_path in sorted(self.config.run_dir.glob("*/meta.json")):
            try:
                vm = VmRecord.from_meta(meta_path, self.config.qmp_timeout)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours, or half-written by a crashed driver: leave it alone
            if vm.pid is None:  # the agent died while launching: the daemon may have come up
                pid = read_pidfile(vm.paths.pidfile)
                if pid and is_qemu_for(pid, vm.paths.qmp):
                    stat = proc_stat(pid)
                    vm.pid, vm.starttime = pid, stat[1] if stat else ""
            self.table.add(vm)
            if vm.state in TERMINAL_STATES and vm.state is not S.MIGRATED:
                continue
            if not vm.alive():
                if vm.state is S.SAVING and vm.save_path and Path(vm.save_path).is_file():
                    vm.intent = "saved"  # it quit after the rename: the save is complete
                if vm.state is not S.MIGRATED:
                    self.watcher.exited(vm)
                continue
            self._resume(vm)

    def _resume(self, vm: VmRecord) -> None:
        """A live QEMU from an earlier agent: find out where it stands, resume watching it."""
        token = vm.token
        try:
            status = vm.monitor.status()
            migration = vm.monitor.migration().get("status", "")
        except MONITOR_ERRORS as exc:
            self.table.set(vm, token, detail=f"re-attached, monitor unreachable: {exc}")
            return
        watch: Callable[[], None] | None = None
        if vm.state in (S.MIGRATING_OUT, S.SAVING):  # an outgoing migration or save was watched
            live = vm.state is S.MIGRATING_OUT
            if migration in UNDER_WAY or (live and status == "postmigrate"):
                watch = lambda: self.outgoing.follow(vm, token, live)  # noqa: E731 - run on a thread
            else:  # it failed, was cancelled or never began: the VM goes on running here
                why = f"{'migration' if live else 'save'} interrupted by an agent restart"
                watch = lambda: self.outgoing.roll_back(vm, token, vm.attempt, why)  # noqa: E731 - run on a thread
        elif status == "postmigrate":
            self.table.set(vm, token, S.MIGRATED)
        elif status == "inmigrate" and vm.origin == "standby":  # still waiting for its state file
            self.table.set(vm, token, S.INCOMING)
        elif status == "inmigrate" and vm.origin == "restore":
            self.table.set(vm, token, S.STARTING)
            watch = lambda: self.incoming.watch_restore(vm, token, time.monotonic())  # noqa: E731 - run on a thread
        elif status == "inmigrate":
            self.table.set(vm, token, S.INCOMING)
            watch = lambda: self.incoming.watch_live(vm, token)  # noqa: E731 - run on a thread
        elif status == "running":
            if not (vm.state is S.STARTING and vm.origin == "boot" and self.config.guest is not None):
                self.table.set(vm, token, S.RUNNING, detail="" if vm.state is S.RUNNING else vm.detail)
            # else: the watcher still waits for the guest's ready line
        elif status in ("paused", "prelaunch") and vm.origin == "restore" and vm.state is S.STARTING:
            watch = lambda: self.incoming.watch_restore(vm, token, time.monotonic())  # noqa: E731 - run on a thread
        else:
            self.table.set(vm, token, detail=f"re-attached, QEMU status {status}")
        if watch is not None:
            threading.Thread(target=watch, name=f"qemu-reattach-{vm.name}", daemon=True).start()
