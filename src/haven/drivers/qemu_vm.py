"""One VM as the QEMU driver records it (`_Vm`), and the states its QEMU's exit no longer changes.

Per VM a run-directory entry `<run_dir>/<vm>/` (`VmPaths`: meta.json, qmp.sock, qemu.pid,
serial.log, qemu.stderr). meta.json is `_Vm.meta()`, rewritten on every change, so that a restarted
agent can re-attach to the QEMUs that still run (`qemu_reattach`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from haven.drivers.qemu_cmdline import VmPaths
from haven.model.spec import VmSpec
from haven.model.state import DEAD_LOCAL_STATES, LocalState
from haven.ports.hypervisor import LocalVm

S = LocalState
DEAD_STATES = DEAD_LOCAL_STATES
TERMINAL_STATES = DEAD_STATES | {S.MIGRATED}  # a process exit changes nothing any more


@dataclass
class _Vm:
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
    token: int = 0  # bumped by kill/forget/start: a background thread with an older token stops writing
    serial_pos: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # last migration / save / restore figures
    qmp_lock: threading.Lock = field(default_factory=threading.Lock)
    launcher: threading.Thread | None = None

    def public(self) -> LocalVm:
        return LocalVm(self.name, self.generation, self.state, self.detail, self.since, self.failed_migration)

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "generation": self.generation, "state": self.state.value,
                "since": self.since, "detail": self.detail, "failed_migration": self.failed_migration,
                "origin": self.origin, "restore_from": self.restore_from, "pid": self.pid,
                "starttime": self.starttime, "intent": self.intent, "attempt": self.attempt,
                "save_path": self.save_path, "target_host": self.target_host,
                "spec": self.spec.model_dump(mode="json"), "stats": self.stats}
