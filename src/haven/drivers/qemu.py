"""QemuHypervisor: the Hypervisor port over `qemu-system-x86_64` processes driven by QMP.

One QEMU per VM, started with `-daemonize` (so it outlives the agent and is never its child), one
QMP unix socket per VM, serial console to a file, all in the VM's run-directory entry (`qemu_vm`).
This class answers the port's calls and decides which collaborator acts; each collaborator has
one job:

    QemuHostConfig     the settings (`qemu_config`)
    VmTable            the VM records, their lock, tokens and meta.json (`qemu_vm`)
    QemuLauncher       starting a QEMU process (`qemu_launch`)
    Monitor            QMP access to one VM, one short connection at a time (`qemu_monitor`)
    VmWatcher          exits and booted guests, noticed without QMP (`qemu_watch`)
    OutgoingMigration  the source side: live migration out, save (`qemu_outgoing`)
    IncomingMigration  the target side: live migration in, restore into a standby (`qemu_incoming`)
    Reattacher         taking back the QEMUs that outlived an agent restart (`qemu_reattach`)

States (`LocalState`) of a VM booted here (the migration states: `qemu_outgoing`, `qemu_incoming`;
what an exit means: `qemu_watch`):
- STARTING from `start()` until the guest is up: with a guest that announces itself (a ready
  line on the serial console), that line; otherwise QEMU's run state `running`.
- FAILED: QEMU would not start, or died before the VM reached RUNNING (detail: QEMU's stderr).
- STOPPED after `stop()` (guest powered off, or killed after the stop timeout) or `kill()`.
"""
from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from haven.drivers.guest_agent import GuestAgent
from haven.drivers.qemu_cmdline import VmPaths, disk_format
from haven.drivers.qemu_config import QemuHostConfig
from haven.drivers.qemu_hotplug import HotplugError, attach_disk, attached_disks, detach_disk
from haven.drivers.qemu_incoming import IncomingMigration
from haven.drivers.qemu_launch import LaunchError, QemuLauncher
from haven.drivers.qemu_monitor import MONITOR_ERRORS
from haven.drivers.qemu_outgoing import OutgoingMigration
from haven.drivers.qemu_process import MonotonicClock, is_qemu_for, proc_stat, read_pidfile, sigkill, wait_dead
from haven.drivers.qemu_reattach import Reattacher
from haven.drivers.qemu_vm import DEAD_STATES, TERMINAL_STATES, S, VmRecord, VmTable
from haven.drivers.qemu_watch import VmWatcher
from haven.drivers.replication import MirrorState, ReplicationError, mirror_state, release_mirror, start_mirror
from haven.model.spec import VmSpec
from haven.model.state import LocalState
from haven.ports.clock import Clock
from haven.ports.hypervisor import HypervisorError, LocalVm

__all__ = ["MonotonicClock", "QemuHostConfig", "QemuHypervisor"]


class QemuHypervisor:
    """The Hypervisor port for one host. A new object on the run dir of an earlier one takes its
    QEMUs back (`qemu_reattach`); `close()` stops the watcher thread and leaves the QEMUs running.

    on_change: called (from a driver thread; keep it quick, e.g. set an Event) whenever a VM's
    state changes, so a loop with a long tick can wake up: exits are seen at once, a booted guest
    within 0.1 s."""

    def __init__(self, config: QemuHostConfig, *, clock: Clock | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.config = config.resolved()
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        self.clock: Clock = clock or MonotonicClock()
        self.table = VmTable(self.config.host_name, self.clock, on_change)
        self.launcher = QemuLauncher(self.config)
        self.watcher = VmWatcher(self.table, self.config.guest.ready_marker if self.config.guest else None)
        self.outgoing = OutgoingMigration(self.config, self.table)
        self.incoming = IncomingMigration(self.config, self.table)
        Reattacher(self.config, self.table, self.watcher, self.outgoing, self.incoming).run()
        self.watcher.start()

    @property
    def on_change(self) -> Callable[[], None] | None:
        return self.table.on_change

    @on_change.setter
    def on_change(self, callback: Callable[[], None] | None) -> None:
        self.table.on_change = callback

    def close(self) -> None:
        """Stop the watcher thread. The QEMUs keep running (a new object re-attaches to them)."""
        self.watcher.close()

    # --- reports beyond the port ---

    def vm_stats(self, name: str) -> dict[str, Any]:
        """Figures of the VM's last migration, save or restore (QEMU's and ours), for reports."""
        vm = self.table.get(name)
        return dict(vm.stats) if vm else {}

    def pid(self, name: str) -> int | None:
        vm = self.table.get(name)
        return vm.pid if vm and vm.alive() else None

    # --- inside the guest: the guest agent and hot-plugged data disks (guest-cluster services) ---

    def guest_agent(self, name: str) -> GuestAgent:
        return GuestAgent(self.table.require(name).paths.guest_agent)

    def attach_disk(self, name: str, device_id: str, path: str) -> None:
        try:
            attach_disk(self.table.require(name).monitor, device_id, path, disk_format(path))
        except MONITOR_ERRORS as exc:
            raise HypervisorError(f"{self.config.host_name}: {name}: cannot attach {path}: {exc}") from exc

    def detach_disk(self, name: str, device_id: str, timeout: float = 5.0) -> None:
        """Returns once the guest released the disk and QEMU closed its image; raises otherwise."""
        try:
            detach_disk(self.table.require(name).monitor, device_id, timeout)
        except (*MONITOR_ERRORS, HotplugError) as exc:
            raise HypervisorError(f"{self.config.host_name}: {name}: cannot detach {device_id}: {exc}") from exc

    def attached_disks(self, name: str) -> set[str]:
        try:
            return attached_disks(self.table.require(name).monitor)
        except MONITOR_ERRORS as exc:
            raise HypervisorError(f"{self.config.host_name}: {name}: {exc}") from exc

    # --- replicated disks (a two-host pair): see `replication` ---

    def start_replication(self, name: str, disk: int, address: str, port: int, export: str) -> None:
        try:
            start_mirror(self.table.require(name).monitor, disk, address, port, export)
        except MONITOR_ERRORS as exc:
            raise HypervisorError(f"{self.config.host_name}: {name}: cannot replicate disk {disk}: {exc}") from exc

    def replication(self, name: str, disk: int) -> MirrorState:
        try:
            return mirror_state(self.table.require(name).monitor, disk)
        except MONITOR_ERRORS as exc:
            raise HypervisorError(f"{self.config.host_name}: {name}: {exc}") from exc

    def release_replication(self, name: str, disk: int) -> None:
        """Only after the replica is marked stale in the store: see `replication`."""
        try:
            release_mirror(self.table.require(name).monitor, disk)
        except (*MONITOR_ERRORS, ReplicationError) as exc:
            raise HypervisorError(f"{self.config.host_name}: {name}: cannot release disk {disk}: {exc}") from exc

    # --- the port ---

    def list(self) -> dict[str, LocalVm]:
        with self.table.lock:
            records = self.table.records()
            for vm in records:
                self.watcher.refresh(vm)
            return {vm.name: vm.public() for vm in records}

    def start(self, spec: VmSpec, generation: int, restore_from: str | None = None) -> None:
        if restore_from is None:
            self._launch(spec, generation, "boot", None, S.STARTING)
            return
        if not self._restore_into_standby(spec.name, generation, restore_from):
            self.prepare_restore(spec, generation)  # no standby prepared: launch one now
            if not self._restore_into_standby(spec.name, generation, restore_from):
                raise HypervisorError(f"{self.config.host_name}: {spec.name}: the standby for the restore is gone")

    def prepare_incoming(self, spec: VmSpec, generation: int) -> None:
        self._launch(spec, generation, "incoming", self.incoming.listen_uri(spec.name), S.INCOMING)

    def prepare_restore(self, spec: VmSpec, generation: int) -> None:
        self._launch(spec, generation, "standby", "defer", S.INCOMING)

    def migrate_live(self, name: str, target_host: str, target_address: str, attempt: str = "") -> None:
        with self.table.lock:
            self.outgoing.live(self._refreshed(name), target_host, target_address, attempt)

    def cancel_migration(self, name: str) -> None:
        self.outgoing.cancel(self.table.require(name))

    def save(self, name: str, path: str, attempt: str = "") -> None:
        with self.table.lock:
            self.outgoing.save(self._refreshed(name), path, attempt)

    def state_path(self, spec: VmSpec, generation: int) -> str:
        return self.config.state_path(spec, generation)

    def stop(self, name: str) -> None:
        with self.table.lock:
            vm = self._refreshed(name)
            if vm.state in TERMINAL_STATES or vm.intent == "stop":
                return
            vm.intent = "stop"
            token = vm.token
            self.table.set(vm, None, detail="stopping")
        threading.Thread(target=self._stop, args=(vm, token), name=f"qemu-stop-{name}", daemon=True).start()

    def kill(self, name: str) -> None:
        with self.table.lock:
            vm = self.table.get(name)
            if vm is None:
                return
            vm.intent = "kill"
            self.table.retire(vm)
            self.table.save(vm)
            pid, starttime, launcher = vm.pid, vm.starttime, vm.launcher
        if pid is None:  # still launching: the daemon may have written its pidfile already
            pid = read_pidfile(vm.paths.pidfile)
            stat = proc_stat(pid) if pid else None
            if pid and stat and is_qemu_for(pid, vm.paths.qmp):
                sigkill(pid, stat[1])
            if launcher is not None:
                launcher.join(timeout=self.config.launch_timeout + 5)
            with self.table.lock:
                pid, starttime = vm.pid, vm.starttime
        sigkill(pid, starttime)
        if not wait_dead(pid, starttime, 5.0):
            raise HypervisorError(f"{self.config.host_name}: {name} (pid {pid}) survived SIGKILL")
        with self.table.lock:
            if vm.state not in TERMINAL_STATES:
                self.table.set(vm, None, S.STOPPED, detail="killed")

    def forget(self, name: str) -> None:
        with self.table.lock:
            vm = self.table.get(name)
            if vm is None:
                return
            self.watcher.refresh(vm)
            if vm.alive() or (vm.launcher is not None and vm.launcher.is_alive()):
                raise HypervisorError(f"{self.config.host_name}: {name} still runs here ({vm.state.value}): "
                                      "kill it first")
            self.table.remove(vm)
            shutil.rmtree(vm.paths.dir, ignore_errors=True)

    # --- launching, booting, stopping ---

    def _refreshed(self, name: str) -> VmRecord:
        vm = self.table.require(name)
        self.watcher.refresh(vm)
        return vm

    def _restore_into_standby(self, name: str, generation: int, restore_from: str) -> bool:
        """Hand the state file to this generation's standby; False if there is none (a standby
        that failed, or a live-migration target left at this generation: that one is killed)."""
        with self.table.lock:
            vm = self.table.get(name)
            if vm is not None:
                self.watcher.refresh(vm)
            if vm is None or vm.generation != generation or vm.state is not S.INCOMING:
                return False
            standby = vm.origin == "standby"
        if not standby:
            self.kill(name)
            return False
        return self.incoming.restore(vm, restore_from)

    def _launch(self, spec: VmSpec, generation: int, origin: str, incoming: str | None, state: LocalState) -> None:
        paths = VmPaths.under(self.config.run_dir, spec.name)
        self.launcher.check(spec, paths)
        with self.table.lock:
            old = self.table.get(spec.name)
            if old is not None:
                self.watcher.refresh(old)
                if old.state not in DEAD_STATES:
                    raise HypervisorError(f"{self.config.host_name}: {spec.name} is {old.state.value} "
                                          f"(generation {old.generation})")
            vm = VmRecord(spec.name, generation, spec, paths, state, self.clock.now(), detail="launching",
                          origin=origin, qmp_timeout=self.config.qmp_timeout)
            self.table.add(vm)
            vm.launcher = threading.Thread(target=self._launch_thread, args=(vm, vm.token, incoming),
                                           name=f"qemu-launch-{spec.name}", daemon=True)
            vm.launcher.start()

    def _launch_thread(self, vm: VmRecord, token: int, incoming: str | None) -> None:
        try:
            self._launch_and_follow(vm, token, incoming)
        except Exception as exc:  # noqa: BLE001 - never leave a VM in STARTING for an unexpected error
            self.table.set(vm, token, S.FAILED, detail=f"launch error: {type(exc).__name__}: {exc}")
            with self.table.lock:
                pid, starttime = vm.pid, vm.starttime
            sigkill(pid, starttime)

    def _launch_and_follow(self, vm: VmRecord, token: int, incoming: str | None) -> None:
        try:
            launched = self.launcher.launch(vm.spec, vm.paths, incoming, new_disks=vm.origin == "boot")
        except LaunchError as exc:
            self.table.set(vm, token, S.FAILED, detail=str(exc))
            return
        with self.table.lock:
            current = self.table.is_current(vm, token)
            if current:
                vm.pid, vm.starttime = launched.pid, launched.starttime
        if not current:  # killed or forgotten while launching: make sure nothing runs
            sigkill(launched.pid, launched.starttime)
            return
        if launched.error:
            sigkill(launched.pid, launched.starttime)
            self.table.set(vm, token, S.FAILED, detail=launched.error)
            return
        vm.stats = {"launch_s": round(launched.seconds, 3)}
        if vm.origin == "standby":  # `IncomingMigration.restore` takes it from here
            if vm.state is S.INCOMING:
                self.table.set(vm, token, detail="standby for a restore")
        elif vm.origin == "incoming":
            self.table.set(vm, token, detail=f"listening on {incoming}")
            self.incoming.watch_live(vm, token)
        else:
            self.table.set(vm, token, detail="booting")
            if self.watcher.ready_marker is None:  # else the watcher sees the guest's ready line
                self._wait_booted(vm, token)

    def _wait_booted(self, vm: VmRecord, token: int) -> None:
        while vm.alive() and vm.token == token:
            try:
                if vm.monitor.status() == "running":
                    self.table.set(vm, token, S.RUNNING, detail="")
                    return
            except MONITOR_ERRORS:
                pass
            time.sleep(0.05)

    def _stop(self, vm: VmRecord, token: int) -> None:
        """ACPI power button, then SIGKILL after the stop timeout (or at once if the guest cannot
        hear it: not running, or the monitor is gone)."""
        if vm.launcher is not None:
            vm.launcher.join(timeout=self.config.launch_timeout)
        graceful = vm.state in (S.RUNNING, S.STARTING)
        if graceful:
            try:
                vm.monitor.execute("system_powerdown")
            except MONITOR_ERRORS:
                graceful = False
        done = graceful and wait_dead(vm.pid, vm.starttime, self.config.stop_timeout)
        if not done:
            sigkill(vm.pid, vm.starttime)
            wait_dead(vm.pid, vm.starttime, 5.0)
        self.table.set(vm, token, S.STOPPED, detail="stopped" if done else
                       ("killed after the stop timeout" if graceful else "killed"))
