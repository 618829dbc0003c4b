"""QemuHypervisor: the Hypervisor port over `qemu-system-x86_64` processes driven by QMP.

One QEMU per VM, started with `-daemonize` (so it outlives the agent and is never its child), one
QMP unix socket per VM, serial console to a file, all in the VM's run-directory entry (`qemu_vm`).
This module boots, stops, kills and watches VMs. The rest of the driver: the mixins `qemu_migration`
(live and quick migration) and `qemu_reattach` (taking back the QEMUs that still run after an agent
restart), `qemu_process` (/proc, signals, the KVM probe), `qemu_cmdline` (the argv) and `qmp` (the
monitor client).

States (`LocalState`) of a VM booted here; the migration states (INCOMING, MIGRATING_OUT, MIGRATED,
SAVING, SAVED) and a restore's STARTING are described in `qemu_migration`, which this class mixes in:
- STARTING from `start()` until the guest is up: with the lab guest (`guest` given) that is the
  guest's ready line on the serial console (HTTP answers); without it, QEMU's run state `running`.
- FAILED: QEMU would not start, or died before the VM reached RUNNING (detail: QEMU's stderr).
- CRASHED: the process died unasked while RUNNING, MIGRATING_OUT or SAVING.
- STOPPED: after `stop()` (guest powered off or killed after the stop timeout) or `kill()`.

Locking: one QMP connection at a time per VM (QEMU serves one client), short-lived; no QMP in
`list()`, which only reads /proc and, while STARTING, the serial log. A watcher thread does the
same on its own (a pidfd per QEMU) and calls `on_change` on every state change.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from haven.drivers.qemu_cmdline import (QEMU, CmdlineConfig, DiskArg, VmPaths, build_cmdline, disk_format,
                                        migration_port)
from haven.drivers.qemu_boot import DirectBoot, create_disk
from haven.drivers.qemu_migration import QemuMigration
from haven.drivers.qemu_process import (DEFAULT_ACCEL_CACHE, MonotonicClock, _alive, _proc_stat, _qemu_error,
                                        _read_pidfile, _sigkill, _supports_o_direct, _tail, _wait_dead,
                                        probe_accel)
from haven.drivers.qemu_reattach import QemuReattach
from haven.drivers.qemu_vm import DEAD_STATES, TERMINAL_STATES, S, _Vm
from haven.drivers.qmp import QmpClient, QmpError
from haven.model.spec import VmSpec
from haven.model.state import LocalState
from haven.ports.clock import Clock
from haven.ports.hypervisor import HypervisorError, LocalVm

MIB = 1024 * 1024

TapFor = Callable[[VmSpec, int], str]


class QemuHypervisor(QemuMigration, QemuReattach):
    """The Hypervisor port for one host. States: the module docstrings here and in `qemu_migration`;
    files: `qemu_vm`.

    host_name: this host's name (details, logs). run_dir: per-VM entries (local, not shared).
    pools: pool name -> directory (shared storage). network_namespace: run QEMU under
    `ip netns exec` (lab hosts). tap_for(spec, nic_index) -> tap name on this host's VM bridge
    (created by the caller, e.g. `LabNetwork.tap_for(host)`). guest: boot VMs from this kernel and
    initrd (None: VMs boot whatever their disks hold). accel: auto | kvm | tcg. address: this
    host's management address, where incoming live migrations listen. on_change: called (from
    a driver thread; keep it quick, e.g. set an Event) whenever a VM's state changes, so a loop
    with a long tick can wake up: exits are seen at once (pidfd), a booted guest within 0.1 s.
    `close()` stops the watcher thread and leaves the QEMUs running.
    """

    def __init__(self, host_name: str, run_dir: str | os.PathLike[str], pools: Mapping[str, str | os.PathLike[str]],
                 network_namespace: str | None = None, tap_for: TapFor | None = None, guest: DirectBoot | None = None,
                 accel: str = "auto", address: str = "127.0.0.1", clock: Clock | None = None, *,
                 binary: str = QEMU, machine: str = "pc", stop_timeout: float = 30.0,
                 migration_bandwidth_mib: int = 256, downtime_limit_ms: int = 100,
                 save_bandwidth_mib: int = 4096, connect_retry_s: float = 10.0,
                 migration_port_base: int | None = None, image_locking: bool = True,
                 keep_state_files: bool = False, qmp_timeout: float = 3.0, launch_timeout: float = 60.0,
                 accel_cache: Path | None = DEFAULT_ACCEL_CACHE,
                 on_change: Callable[[], None] | None = None) -> None:
        self.host_name = host_name
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pools = {name: Path(path) for name, path in pools.items()}
        self.namespace = network_namespace
        self.tap_for = tap_for
        self.guest = guest
        self.address = address
        self.clock: Clock = clock or MonotonicClock()
        self.binary = binary
        self.stop_timeout = stop_timeout
        self.migration_bandwidth = migration_bandwidth_mib * MIB
        self.downtime_limit_ms = downtime_limit_ms
        self.save_bandwidth = save_bandwidth_mib * MIB
        self.connect_retry_s = connect_retry_s
        self.port_base = migration_port_base
        self.keep_state_files = keep_state_files
        self.qmp_timeout = qmp_timeout
        self.launch_timeout = launch_timeout
        if accel == "auto":
            accel = probe_accel(guest, binary, accel_cache)
        if accel not in ("kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
        self.accel = accel
        self.config = CmdlineConfig(accel=accel, binary=binary, machine=machine,
                                    kernel=guest.kernel if guest else None,
                                    initrd=guest.initrd if guest else None, image_locking=image_locking)
        self.on_change = on_change
        self._direct: dict[str, bool] = {}
        self._lock = threading.RLock()
        self._vms: dict[str, _Vm] = {}
        self._tokens = 0
        self._closed = threading.Event()
        self._reattach()
        self._watcher = threading.Thread(target=self._watch, name=f"qemu-watch-{host_name}", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop the watcher thread. The QEMUs keep running (a new object re-attaches to them)."""
        self._closed.set()
        self._watcher.join(timeout=5)

    def _notify(self) -> None:
        callback = self.on_change
        if callback is not None:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a broken callback must not break the driver
                pass

    def _watch(self) -> None:
        """Notice exits at once (a pidfd per QEMU turns readable when it dies) and a booted guest
        within 0.1 s, so that `on_change` fires without anyone calling list()."""
        pidfds: dict[tuple[int, str], int] = {}
        try:
            while not self._closed.is_set():
                with self._lock:
                    for vm in list(self._vms.values()):
                        self._check(vm)
                    live = {(vm.pid, vm.starttime) for vm in self._vms.values()
                            if vm.pid and vm.state not in TERMINAL_STATES}
                    starting = any(vm.state is S.STARTING for vm in self._vms.values())
                for key in set(pidfds) - live:
                    os.close(pidfds.pop(key))
                for key in live - set(pidfds):
                    try:
                        pidfds[key] = os.pidfd_open(key[0])
                    except (OSError, AttributeError):
                        pass
                poller = select.poll()
                for fd in pidfds.values():
                    poller.register(fd, select.POLLIN)
                poller.poll(100 if starting else 500)
        finally:
            for fd in pidfds.values():
                os.close(fd)

    # --- helpers ---

    def migration_port(self, name: str) -> int:
        return migration_port(name) if self.port_base is None else migration_port(name, self.port_base)

    def _token(self) -> int:
        self._tokens += 1
        return self._tokens

    def _save_meta(self, vm: _Vm) -> None:
        try:
            vm.paths.dir.mkdir(parents=True, exist_ok=True)
            tmp = vm.paths.meta.with_name(".meta.json.tmp")
            tmp.write_text(json.dumps(vm.meta(), indent=1))
            os.replace(tmp, vm.paths.meta)
        except OSError:
            pass

    def _set(self, vm: _Vm, token: int | None, state: LocalState | None = None, **fields: Any) -> bool:
        """Change a VM's record if `token` is still current (None: unconditionally)."""
        with self._lock:
            if self._vms.get(vm.name) is not vm or (token is not None and vm.token != token):
                return False
            changed = state is not None and state is not vm.state
            if changed:
                vm.state = state
                vm.since = self.clock.now()
            for key, value in fields.items():
                setattr(vm, key, value)
            self._save_meta(vm)
        if changed:
            self._notify()
        return True

    @contextmanager
    def _monitor(self, vm: _Vm, timeout: float | None = None) -> Iterator[QmpClient]:
        with vm.qmp_lock:
            with QmpClient(str(vm.paths.qmp), timeout or self.qmp_timeout) as client:
                yield client

    def _qmp(self, vm: _Vm, command: str, arguments: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        with self._monitor(vm, timeout) as client:
            return client.execute(command, arguments)

    def _status(self, vm: _Vm) -> str:
        return str(self._qmp(vm, "query-status").get("status", ""))

    def _get(self, name: str) -> _Vm:
        vm = self._vms.get(name)
        if vm is None:
            raise HypervisorError(f"{self.host_name}: no VM {name}")
        return vm

    def _pool_dir(self, pool: str) -> Path:
        try:
            return self.pools[pool]
        except KeyError:
            raise HypervisorError(f"{self.host_name}: pool {pool!r} not reachable here") from None

    def disk_paths(self, spec: VmSpec) -> list[Path]:
        return [self._pool_dir(d.pool) / (d.file or f"{spec.name}-{i}.qcow2") for i, d in enumerate(spec.disks)]

    def _disk_cache(self, pool: str) -> str:
        if pool not in self._direct:
            self._direct[pool] = _supports_o_direct(self._pool_dir(pool))
        return "none" if self._direct[pool] else "writeback"

    def state_path(self, spec: VmSpec, generation: int) -> str:
        pool = spec.disks[0].pool if spec.disks else next(iter(sorted(self.pools)), None)
        if pool is None:
            raise HypervisorError(f"{self.host_name}: no pool for the saved state of {spec.name}")
        return str(self._pool_dir(pool) / ".haven-state" / f"{spec.name}-g{generation}.state")

    def vm_stats(self, name: str) -> dict[str, Any]:
        """Figures of the VM's last migration, save or restore (QEMU's and ours), for reports."""
        with self._lock:
            vm = self._vms.get(name)
            return dict(vm.stats) if vm else {}

    def pid(self, name: str) -> int | None:
        with self._lock:
            vm = self._vms.get(name)
            return vm.pid if vm and _alive(vm.pid, vm.starttime) else None

    # --- the port ---

    def list(self) -> dict[str, LocalVm]:
        with self._lock:
            for vm in list(self._vms.values()):
                self._check(vm)
            return {name: vm.public() for name, vm in sorted(self._vms.items())}

    def _check(self, vm: _Vm) -> None:
        """Notice a dead process or a booted guest (called with the lock held)."""
        if vm.state in TERMINAL_STATES:
            return
        if vm.pid is not None and not _alive(vm.pid, vm.starttime):
            self._on_exit(vm)
            return
        marker = self.guest.ready_marker if self.guest else None
        if vm.state is S.STARTING and vm.origin == "boot" and marker is not None and vm.pid is not None:
            try:
                with open(vm.paths.serial, "rb") as f:
                    f.seek(max(0, vm.serial_pos - 64))
                    data = f.read()
                    vm.serial_pos = f.tell()
            except OSError:
                return
            if marker.encode() in data:
                self._set(vm, None, S.RUNNING, detail="")

    def _on_exit(self, vm: _Vm) -> None:
        why = _tail(vm.paths.stderr, 300) or _tail(vm.paths.serial, 300)
        why = why.splitlines()[-1] if why else ""
        if vm.intent in ("stop", "kill"):
            self._set(vm, None, S.STOPPED, detail="killed" if vm.intent == "kill" else "stopped")
        elif vm.intent == "saved":
            self._set(vm, None, S.SAVED, detail=vm.save_path)
        elif vm.state in (S.STARTING, S.INCOMING):
            origins = {"incoming": "incoming migration", "standby": "standby", "restore": "restore"}
            what = origins.get(vm.origin, "start")
            self._set(vm, None, S.FAILED, detail=f"{what} failed: QEMU exited" + (f" ({why})" if why else ""))
        else:
            self._set(vm, None, S.CRASHED, detail="QEMU exited unasked" + (f" ({why})" if why else ""))

    def start(self, spec: VmSpec, generation: int, restore_from: str | None = None) -> None:
        if restore_from is None:
            self._begin(spec, generation, "boot", None, S.STARTING, "")
            return
        if not self._restore_into_standby(spec.name, generation, restore_from):
            self.prepare_restore(spec, generation)  # no standby prepared: launch one now
            if not self._restore_into_standby(spec.name, generation, restore_from):
                raise HypervisorError(f"{self.host_name}: {spec.name}: the standby for the restore is gone")

    def _begin(self, spec: VmSpec, generation: int, origin: str, incoming: str | None,
               state: LocalState, restore_from: str) -> None:
        for disk in spec.disks:
            self._pool_dir(disk.pool)
        if len(str(VmPaths.under(self.run_dir, spec.name).qmp)) > 107:
            raise HypervisorError(f"{self.host_name}: run dir {self.run_dir} too long for a unix socket path")
        if spec.nics and self.tap_for is None:
            raise HypervisorError(f"{self.host_name}: {spec.name} has NICs but this host has no tap_for")
        with self._lock:
            old = self._vms.get(spec.name)
            if old is not None:
                self._check(old)
                if old.state not in DEAD_STATES:
                    raise HypervisorError(f"{self.host_name}: {spec.name} is {old.state.value} "
                                          f"(generation {old.generation})")
                old.token = self._token()
            vm = _Vm(spec.name, generation, spec, VmPaths.under(self.run_dir, spec.name), state,
                     self.clock.now(), detail="launching", origin=origin, restore_from=restore_from,
                     token=self._token())
            self._vms[spec.name] = vm
            self._save_meta(vm)
            vm.launcher = threading.Thread(target=self._launch, args=(vm, vm.token, incoming),
                                           name=f"qemu-launch-{spec.name}", daemon=True)
            vm.launcher.start()

    def _launch(self, vm: _Vm, token: int, incoming: str | None) -> None:
        try:
            self._launch_inner(vm, token, incoming)
        except Exception as exc:  # never leave a VM in STARTING for an unexpected error
            self._set(vm, token, S.FAILED, detail=f"launch error: {type(exc).__name__}: {exc}")
            with self._lock:
                pid, st = vm.pid, vm.starttime
            _sigkill(pid, st)

    def _launch_inner(self, vm: _Vm, token: int, incoming: str | None) -> None:
        spec, paths = vm.spec, vm.paths
        paths.dir.mkdir(parents=True, exist_ok=True)
        for stale in (paths.qmp, paths.pidfile, paths.serial, paths.stderr):
            stale.unlink(missing_ok=True)
        t0 = time.monotonic()
        disks: list[DiskArg] = []
        for disk, path in zip(spec.disks, self.disk_paths(spec)):
            if not path.exists():
                if vm.origin != "boot":
                    self._set(vm, token, S.FAILED, detail=f"disk {path} missing")
                    return
                self._create_disk(path, disk.size_mib)
            disks.append(DiskArg(str(path), disk_format(str(path)), self._disk_cache(disk.pool)))
        taps = [self.tap_for(spec, i) for i in range(len(spec.nics))] if spec.nics else []  # type: ignore[misc]
        argv = build_cmdline(spec, self.config, paths, disks, taps, incoming)
        if self.namespace:
            argv = ["ip", "netns", "exec", self.namespace, *argv]
        with open(paths.stderr, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True, close_fds=True)
            try:
                rc = proc.wait(timeout=self.launch_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = -1
        pid = _read_pidfile(paths.pidfile)
        st = _proc_stat(pid) if pid else None
        starttime = st[1] if st else ""
        with self._lock:
            current = self._vms.get(vm.name) is vm and vm.token == token
            if current:
                vm.pid, vm.starttime = pid, starttime
        if not current:  # killed or forgotten while launching: make sure nothing runs
            _sigkill(pid, starttime)
            return
        if rc != 0 or not _alive(pid, starttime):
            _sigkill(pid, starttime)
            self._set(vm, token, S.FAILED, detail=f"QEMU failed to start (rc {rc}): "
                      + (_qemu_error(paths.stderr) or "no message"))
            return
        launched = time.monotonic() - t0
        vm.stats = {"launch_s": round(launched, 3)}
        if vm.origin == "standby":  # `_restore_thread` takes it from here
            if vm.state is S.INCOMING:
                self._set(vm, token, detail="standby for a restore")
        elif vm.origin == "incoming":
            self._set(vm, token, detail=f"listening on {incoming}")
            self._watch_incoming(vm, token)
        else:
            self._set(vm, token, detail="booting")
            if self.guest is None or self.guest.ready_marker is None:
                self._wait_running(vm, token)

    def _create_disk(self, path: Path, size_mib: int) -> None:
        create_disk(path, size_mib, disk_format(str(path)), self.guest.disk_filesystem if self.guest else None)

    def _alive_vm(self, vm: _Vm) -> bool:
        return _alive(vm.pid, vm.starttime)

    def _wait_running(self, vm: _Vm, token: int) -> None:
        while self._alive_vm(vm) and vm.token == token:
            try:
                if self._status(vm) == "running":
                    self._set(vm, token, S.RUNNING, detail="")
                    return
            except (OSError, QmpError):
                pass
            time.sleep(0.05)

    def stop(self, name: str) -> None:
        with self._lock:
            vm = self._get(name)
            self._check(vm)
            if vm.state in TERMINAL_STATES:
                return
            if vm.intent == "stop":
                return
            vm.intent = "stop"
            token = vm.token
            self._set(vm, None, detail="stopping")
        threading.Thread(target=self._stop_thread, args=(vm, token), name=f"qemu-stop-{name}",
                         daemon=True).start()

    def _stop_thread(self, vm: _Vm, token: int) -> None:
        if vm.launcher is not None:
            vm.launcher.join(timeout=self.launch_timeout)
        graceful = vm.state in (S.RUNNING, S.STARTING)
        if graceful:
            try:
                self._qmp(vm, "system_powerdown")
            except (OSError, QmpError):
                graceful = False
        done = graceful and _wait_dead(vm.pid, vm.starttime, self.stop_timeout)
        if not done:
            _sigkill(vm.pid, vm.starttime)
            _wait_dead(vm.pid, vm.starttime, 5.0)
        self._set(vm, token, S.STOPPED, detail="stopped" if done else
                  ("killed after the stop timeout" if graceful else "killed"))

    def kill(self, name: str) -> None:
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                return
            vm.intent = "kill"
            vm.token = self._token()  # background threads stop writing
            self._save_meta(vm)
            pid, st = vm.pid, vm.starttime
            launcher = vm.launcher
        if pid is None:  # still launching: the daemon may have written its pidfile already
            pid = _read_pidfile(vm.paths.pidfile)
            stat = _proc_stat(pid) if pid else None
            if stat and self._is_our_qemu(pid, vm):
                _sigkill(pid, stat[1])
            if launcher is not None:
                launcher.join(timeout=self.launch_timeout + 5)
            with self._lock:
                pid, st = vm.pid, vm.starttime
        _sigkill(pid, st)
        if not _wait_dead(pid, st, 5.0):
            raise HypervisorError(f"{self.host_name}: {name} (pid {pid}) survived SIGKILL")
        with self._lock:
            changed = self._vms.get(name) is vm and vm.state not in TERMINAL_STATES
            if changed:
                vm.state, vm.since, vm.detail = S.STOPPED, self.clock.now(), "killed"
            self._save_meta(vm)
        if changed:
            self._notify()

    def _is_our_qemu(self, pid: int, vm: _Vm) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(vm.paths.qmp).encode() in cmdline

    def forget(self, name: str) -> None:
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                return
            self._check(vm)
            if _alive(vm.pid, vm.starttime) or (vm.launcher is not None and vm.launcher.is_alive()):
                raise HypervisorError(f"{self.host_name}: {name} still runs here ({vm.state.value}): kill it first")
            vm.token = self._token()
            del self._vms[name]
            shutil.rmtree(vm.paths.dir, ignore_errors=True)
