"""FakeHypervisor: the simulator's twin of the QEMU driver.

Boots take `boot_s`, live migration `0.2 + memory / bandwidth`, saves and restores likewise; a VM
can crash or fail to start on command. Each VM carries a `ram_epoch`, kept across live and quick
migration and new on a cold boot, so scenarios can tell what survived. Disks on a replicated pool
are written by the guest and mirrored by `replication` (sim.replication, the replication port).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from haven.model.spec import VmSpec
from haven.model.state import ACTIVE_LOCAL_STATES, DEAD_LOCAL_STATES, LocalState
from haven.ports.hypervisor import HypervisorError, LocalVm
from haven.sim.guest import GuestState
from haven.sim.loop import EventLoop, HostClock
from haven.sim.replication import FakeReplication

if TYPE_CHECKING:
    from haven.sim.world import World


@dataclass(frozen=True)
class SimTimings:
    boot_s: float = 3.0
    fail_s: float = 0.5  # a failing start is noticed after this
    stop_s: float = 1.0
    launch_s: float = 0.1  # a restore launches a process, unless a standby was prepared
    load_s: float = 0.2  # a restore loads the state
    bandwidth_mib_s: float = 1000.0  # live migration and save
    # A watch broken by a network fault reconnects this long after the store is reachable again
    # (the daemon's watch retries with a backoff that reaches 1 s during an outage): until then a
    # host's calls reach the store while its watch has not caught up.
    watch_reconnect_s: float = 0.5
    hotplug_s: float = 0.2  # a disk hot-plug or unplug, until QEMU confirms it
    fence_monitor_s: float = 60.0  # the leading manager checks every fence device this often
    # A power fence's round trip: the host goes off, and the answer comes back, this long after the
    # manager asked (0: at once, in the manager's own step; the daemon runs it on a thread).
    fence_delay_s: float = 0.0
    sync_mib_s: float = 200.0  # a replicated disk's full copy to its replica (sim.replication)
    write_interval_s: float = 0.1  # a running guest writes to each replicated disk this often


@dataclass
class SimVm:
    spec: VmSpec
    generation: int
    state: LocalState
    since: float
    instance: int
    ram_epoch: int
    detail: str = ""
    failed_migration: str = ""
    standby: bool = False  # INCOMING from prepare_restore: waits for a state file
    downtime_ms: float | None = None  # MIGRATED: the handover here is instantaneous, a zero pause
    guest: GuestState = field(default_factory=GuestState)  # what this boot of the guest holds


_instances = itertools.count(1)


@dataclass
class FakeHypervisor:
    host: str
    loop: EventLoop
    clock: HostClock
    world: World
    timings: SimTimings = field(default_factory=SimTimings)
    vms: dict[str, SimVm] = field(default_factory=dict)
    on_change: Callable[[], None] = lambda: None
    _listed: dict[str, LocalVm] | None = None
    replication: FakeReplication = field(init=False)  # this host's replication port

    def __post_init__(self) -> None:
        self.replication = FakeReplication(self)

    # --- port ---

    def list(self) -> dict[str, LocalVm]:
        if self._listed is None:  # rebuilt only after a change: agents ask on every tick
            self._listed = {name: LocalVm(name, vm.generation, vm.state, vm.detail, vm.since, vm.failed_migration,
                                          vm.downtime_ms)
                            for name, vm in sorted(self.vms.items())}
        return dict(self._listed)

    def start(self, spec: VmSpec, generation: int, restore_from: str | None = None) -> None:
        old = self.vms.get(spec.name)
        # a prepared target of this generation is replaced (QEMU: loads into the standby)
        prepared = old is not None and old.state is LocalState.INCOMING and old.generation == generation
        if old and not prepared and old.state not in DEAD_LOCAL_STATES:
            raise HypervisorError(f"{spec.name} is {old.state.value}")
        standby = prepared and old is not None and old.standby
        # A launch, or a load into the standby (which makes it run): the same rule for both.
        self.world.monitor.launched(self.host, spec.name, generation)
        if restore_from is not None and restore_from not in self.world.state_files:
            vm = self._set(spec, generation, LocalState.FAILED, self.world.new_epoch())
            vm.detail = f"no saved state at {restore_from}"
            self._listed = None
            return
        epoch = self.world.state_files.pop(restore_from) if restore_from else self.world.new_epoch()
        vm = self._set(spec, generation, LocalState.STARTING, epoch)
        self.world.monitor.started(self.host, spec.name)
        if self.world.take_start_failure(spec.name):
            self._later(vm, self.timings.fail_s, LocalState.FAILED, "guest failed to start")
        else:
            restore = self.timings.load_s + (0.0 if standby else self.timings.launch_s)
            self._later(vm, restore if restore_from else self.timings.boot_s, LocalState.RUNNING)

    def stop(self, name: str) -> None:
        vm = self.vms.get(name)
        if vm and vm.state in (LocalState.RUNNING, LocalState.STARTING) and not vm.detail.startswith("stopping"):
            vm.detail = "stopping"
            self._listed = None
            self._later(vm, self.timings.stop_s, LocalState.STOPPED)

    def kill(self, name: str) -> None:
        vm = self.vms.get(name)
        if vm:
            self._transition(vm, LocalState.STOPPED, "killed")

    def prepare_incoming(self, spec: VmSpec, generation: int) -> None:
        old = self.vms.get(spec.name)
        if old and old.state in ACTIVE_LOCAL_STATES:
            raise HypervisorError(f"{spec.name} is {old.state.value}")
        self.world.monitor.launched(self.host, spec.name, generation, incoming=True)
        self._set(spec, generation, LocalState.INCOMING, 0)

    def prepare_restore(self, spec: VmSpec, generation: int) -> None:
        self.prepare_incoming(spec, generation)
        self.vms[spec.name].standby = True

    def migrate_live(self, name: str, target_host: str, target_address: str, attempt: str) -> None:
        vm = self._running(name)
        self._transition(vm, LocalState.MIGRATING_OUT)
        instance = vm.instance

        def finish() -> None:
            if vm.instance != instance or vm.state is not LocalState.MIGRATING_OUT:
                return
            if self.replication.blocked(name):
                self._fail_migration(vm, attempt, "migration failed: a disk write waits for a lost replica")
                return
            target = self.world.hypervisor(target_host)
            incoming = target.vms.get(name) if target else None
            if target and incoming and incoming.state is LocalState.INCOMING and \
                    self.world.network.hosts_connected(self.host, target_host):
                incoming.ram_epoch = vm.ram_epoch
                self.world.monitor.handed_over(target_host, name, incoming.generation)
                vm.downtime_ms = 0.0  # reported as QEMU does; the world switches over at once
                self._transition(vm, LocalState.MIGRATED)
                target._transition(incoming, LocalState.RUNNING)
            else:
                self._fail_migration(vm, attempt, f"migration failed: {target_host} unreachable or not ready")

        self.loop.after(0.2 + vm.spec.memory_mib / self.timings.bandwidth_mib_s, finish)

    def cancel_migration(self, name: str) -> None:
        vm = self.vms.get(name)
        if vm and vm.state is LocalState.MIGRATING_OUT:
            vm.instance = next(_instances)
            self._transition(vm, LocalState.RUNNING, "migration cancelled")

    def save(self, name: str, path: str, attempt: str) -> None:
        vm = self._running(name)
        self._transition(vm, LocalState.SAVING)
        instance = vm.instance

        def finish() -> None:
            if vm.instance != instance or vm.state is not LocalState.SAVING:
                return
            if self.replication.blocked(name):
                self._fail_migration(vm, attempt, "save failed: a disk write waits for a lost replica")
                return
            self.world.state_files[path] = vm.ram_epoch
            self._transition(vm, LocalState.SAVED, path)

        self.loop.after(0.1 + vm.spec.memory_mib / self.timings.bandwidth_mib_s, finish)

    def forget(self, name: str) -> None:
        vm = self.vms.get(name)
        if vm and vm.state not in ACTIVE_LOCAL_STATES:
            del self.vms[name]
            self._listed = None

    def state_path(self, spec: VmSpec, generation: int) -> str:
        return f"shared/{spec.name}.{generation}.state"

    def adopt_running(self, spec: VmSpec, generation: int) -> None:
        """Begin with this VM already running here (replaying a real cluster's present)."""
        self._set(spec, generation, LocalState.RUNNING, self.world.new_epoch())

    # --- faults ---

    def crash(self, name: str) -> bool:
        vm = self.vms.get(name)
        if vm is None or vm.state not in ACTIVE_LOCAL_STATES:
            return False
        self._transition(vm, LocalState.CRASHED, "guest crashed")
        return True

    def power_off(self) -> None:
        self.replication.power_off()
        self.vms.clear()
        self._changed()

    def kill_all(self) -> int:
        active = [vm for vm in self.vms.values() if vm.state in ACTIVE_LOCAL_STATES or vm.state is LocalState.INCOMING]
        for vm in active:
            self._transition(vm, LocalState.STOPPED, "killed by watchdog")
        return len(active)

    # --- internals ---

    def _running(self, name: str) -> SimVm:
        vm = self.vms.get(name)
        if vm is None or vm.state is not LocalState.RUNNING:
            raise HypervisorError(f"{name} is not running here")
        return vm

    def _set(self, spec: VmSpec, generation: int, state: LocalState, epoch: int) -> SimVm:
        vm = SimVm(spec, generation, state, self.clock.now(), next(_instances), epoch)
        self.vms[spec.name] = vm
        self.replication.vm_changed(spec.name)
        self._changed()
        return vm

    def _transition(self, vm: SimVm, state: LocalState, detail: str = "") -> None:
        vm.state, vm.detail, vm.since = state, detail, self.clock.now()
        if state is not LocalState.MIGRATED:
            vm.downtime_ms = None
        if state not in (LocalState.RUNNING, LocalState.MIGRATING_OUT):
            vm.instance = next(_instances)  # pending completions of the old phase are void
        self.replication.vm_changed(vm.spec.name)
        self._changed()

    def changed(self) -> None:
        """Something in a guest changed (a disk, an address): check the invariants, wake the agent."""
        self._changed()

    def _changed(self) -> None:
        self._listed = None
        self.world.monitor.dirty = True
        self.on_change()

    def _later(self, vm: SimVm, delay: float, state: LocalState, detail: str = "") -> None:
        instance = vm.instance

        def fire() -> None:
            if vm.instance == instance and self.vms.get(vm.spec.name) is vm:
                self._transition(vm, state, detail)

        self.loop.after(delay, fire)

    def _fail_migration(self, vm: SimVm, attempt: str, why: str) -> None:
        vm.failed_migration = attempt
        self._transition(vm, LocalState.RUNNING, why)
