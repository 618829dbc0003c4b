"""The driver's records of its VMs: one `VmRecord` per VM, all of them in one `VmTable` that every
collaborator of `QemuHypervisor` shares.

Per VM a run-directory entry `<run_dir>/<vm>/` (`VmPaths`: meta.json, qmp.sock, qemu.pid,
serial.log, qemu.stderr). meta.json is `VmRecord.meta()`, rewritten on every change, so that a
restarted agent can re-attach to the QEMUs that still run (`qemu_reattach`).

Tokens: `kill`, `forget` and a new start give the record a new token; a background thread (launch,
migration, restore, stop) holds the token it started with and may change the record only while it
is still current, so that a killed VM's old threads cannot bring it back to life.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haven.drivers.qemu_cmdline import VmPaths
from haven.drivers.qemu_monitor import Monitor
from haven.drivers.qemu_process import alive
from haven.model.spec import VmSpec
from haven.model.state import DEAD_LOCAL_STATES, LocalState
from haven.ports.clock import Clock
from haven.ports.hypervisor import HypervisorError, LocalVm

S = LocalState
DEAD_STATES = DEAD_LOCAL_STATES
TERMINAL_STATES = DEAD_STATES | {S.MIGRATED}  # a process exit changes nothing any more


@dataclass(eq=False)
class VmRecord:
    name: str
    generation: int
    spec: VmSpec
    paths: VmPaths
    state: LocalState
    since: float
    detail: str = ""
    failed_migration: str = ""
    origin: str = "boot"  # boot | incoming | standby (for a restore) | restore
    restore_from: str = ""
    pid: int | None = None
    starttime: str = ""  # /proc/<pid>/stat field 22: tells a reused pid from ours
    intent: str = ""  # "" | stop | kill | saved (state file complete, quit sent)
    attempt: str = ""  # the outgoing migration or save in progress
    save_path: str = ""
    target_host: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # last migration / save / restore figures
    qmp_timeout: float = 3.0
    token: int = 0
    serial_pos: int = 0  # how far the serial log was searched for the guest's ready line
    launcher: threading.Thread | None = None
    monitor: Monitor = field(init=False)

    def __post_init__(self) -> None:
        self.monitor = Monitor(self.paths.qmp, self.qmp_timeout)

    def alive(self) -> bool:
        """Whether our QEMU still runs (a reused pid does not count)."""
        return alive(self.pid, self.starttime)

    def public(self) -> LocalVm:
        downtime = self.stats.get("downtime_ms") if self.state is S.MIGRATED else None  # QEMU's figure, for events
        return LocalVm(self.name, self.generation, self.state, self.detail, self.since, self.failed_migration,
                       downtime)

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "generation": self.generation, "state": self.state.value,
                "since": self.since, "detail": self.detail, "failed_migration": self.failed_migration,
                "origin": self.origin, "restore_from": self.restore_from, "pid": self.pid,
                "starttime": self.starttime, "intent": self.intent, "attempt": self.attempt,
                "save_path": self.save_path, "target_host": self.target_host,
                "spec": self.spec.model_dump(mode="json"), "stats": self.stats}

    @classmethod
    def from_meta(cls, path: Path, qmp_timeout: float = 3.0) -> VmRecord:
        """The record an earlier driver left in `path` (meta.json); raises OSError, ValueError,
        KeyError or TypeError if it cannot be read."""
        meta = json.loads(path.read_text())
        return cls(meta["name"], int(meta["generation"]), VmSpec.model_validate(meta["spec"]), VmPaths(path.parent),
                   LocalState(meta["state"]), float(meta.get("since", 0.0)), detail=meta.get("detail", ""),
                   failed_migration=meta.get("failed_migration", ""), origin=meta.get("origin", "boot"),
                   restore_from=meta.get("restore_from", ""), pid=meta.get("pid"),
                   starttime=meta.get("starttime", ""), intent=meta.get("intent", ""),
                   attempt=meta.get("attempt", ""), save_path=meta.get("save_path", ""),
                   target_host=meta.get("target_host", ""), stats=meta.get("stats", {}), qmp_timeout=qmp_timeout)


class VmTable:
    """Every VM record of one host, behind one lock. `on_change` is called (from whichever thread
    made the change; keep it quick, e.g. set an Event) on every state change."""

    def __init__(self, host_name: str, clock: Clock, on_change: Callable[[], None] | None = None) -> None:
        self.host_name = host_name
        self.clock = clock
        self.on_change = on_change
        self.on_record: Callable[[], None] | None = None  # the driver's own watcher: any record changed
        self.lock = threading.RLock()
        self._vms: dict[str, VmRecord] = {}
        self._tokens = 0

    def get(self, name: str) -> VmRecord | None:
        with self.lock:
            return self._vms.get(name)

    def require(self, name: str) -> VmRecord:
        vm = self.get(name)
        if vm is None:
            raise HypervisorError(f"{self.host_name}: no VM {name}")
        return vm

    def records(self) -> list[VmRecord]:
        with self.lock:
            return [self._vms[name] for name in sorted(self._vms)]

    def add(self, vm: VmRecord) -> None:
        """Take `vm` in, replacing any record of the same name (whose threads stop writing)."""
        with self.lock:
            old = self._vms.get(vm.name)
            if old is not None:
                self.retire(old)
            vm.token = self.new_token()
            self._vms[vm.name] = vm
            self.save(vm)

    def remove(self, vm: VmRecord) -> None:
        with self.lock:
            self.retire(vm)
            if self._vms.get(vm.name) is vm:
                del self._vms[vm.name]

    def new_token(self) -> int:
        with self.lock:
            self._tokens += 1
            return self._tokens

    def retire(self, vm: VmRecord) -> None:
        """Background threads working on `vm` stop changing it."""
        vm.token = self.new_token()

    def is_current(self, vm: VmRecord, token: int | None = None) -> bool:
        with self.lock:
            return self._vms.get(vm.name) is vm and (token is None or vm.token == token)

    def set(self, vm: VmRecord, token: int | None, state: LocalState | None = None, **fields: Any) -> bool:
        """Change a VM's record if `token` is still current (None: unconditionally, as long as
        the record is in the table); False if it was not."""
        with self.lock:
            if not self.is_current(vm, token):
                return False
            for key, value in fields.items():  # before the state: whoever sees the new state sees these
                setattr(vm, key, value)
            changed = False
            if state is not None and state is not vm.state:
                vm.since = self.clock.now()
                vm.state = state
                changed = True
            self.save(vm)
        if self.on_record is not None:
            self.on_record()
        if changed:
            self.notify()
        return True

    def save(self, vm: VmRecord) -> None:
        """Rewrite the VM's meta.json (atomically: a restarting agent never reads half a file)."""
        try:
            vm.paths.dir.mkdir(parents=True, exist_ok=True)
            tmp = vm.paths.meta.with_name(".meta.json.tmp")
            tmp.write_text(json.dumps(vm.meta(), indent=1))
            os.replace(tmp, vm.paths.meta)
        except OSError:
            pass

    def notify(self) -> None:
        callback = self.on_change
        if callback is not None:
            with contextlib.suppress(Exception):  # a broken callback must not break the driver
                callback()
