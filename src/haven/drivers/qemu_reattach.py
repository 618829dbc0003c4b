"""Re-attaching after an agent restart, mixed into `QemuHypervisor`.

The QEMUs outlive the agent (`-daemonize`). `QemuHypervisor(...)` on the same run dir reads every
`<run_dir>/<vm>/meta.json` (`qemu_vm`) and takes back the QEMUs that still run instead of killing
them: it lists them again and resumes watching what was under way (an outgoing migration or save,
an incoming migration, a restore). A QEMU that died meanwhile is reported as its exit would have
been.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haven.drivers.qemu_cmdline import VmPaths
from haven.drivers.qemu_process import _alive, _proc_stat, _read_pidfile
from haven.drivers.qemu_vm import TERMINAL_STATES, S, _Vm
from haven.drivers.qmp import QmpError
from haven.model.spec import VmSpec
from haven.model.state import LocalState


class QemuReattach:
    """Mixed into `QemuHypervisor`, whose record keeping, monitor helpers and watchers it uses."""

    run_dir: Path
    guest: Any | None
    _lock: threading.RLock
    _vms: dict[str, _Vm]

    if TYPE_CHECKING:  # provided by QemuHypervisor and QemuMigration
        def _token(self) -> int: ...
        def _is_our_qemu(self, pid: int, vm: _Vm) -> bool: ...
        def _on_exit(self, vm: _Vm) -> None: ...
        def _set(self, vm: _Vm, token: int | None, state: LocalState | None = None, **fields: Any) -> bool: ...
        def _qmp(self, vm: _Vm, command: str, arguments: dict[str, Any] | None = None,
                 timeout: float | None = None) -> Any: ...
        def _status(self, vm: _Vm) -> str: ...
        def _migrate_thread(self, vm: _Vm, token: int, dest: str | None, attempt: str, live: bool) -> None: ...
        def _migration_failed(self, vm: _Vm, token: int, attempt: str, why: str) -> None: ...
        def _watch_incoming(self, vm: _Vm, token: int) -> None: ...
        def _watch_restore(self, vm: _Vm, token: int, t0: float) -> None: ...

    def _reattach(self) -> None:
        for meta_path in sorted(self.run_dir.glob("*/meta.json")):
            try:
                meta = json.loads(meta_path.read_text())
                spec = VmSpec.model_validate(meta["spec"])
                vm = _Vm(meta["name"], int(meta["generation"]), spec, VmPaths(meta_path.parent),
                         LocalState(meta["state"]), float(meta.get("since", 0.0)),
                         detail=meta.get("detail", ""), failed_migration=meta.get("failed_migration", ""),
                         origin=meta.get("origin", "boot"), restore_from=meta.get("restore_from", ""),
                         pid=meta.get("pid"), starttime=meta.get("starttime", ""), intent=meta.get("intent", ""),
                         attempt=meta.get("attempt", ""), save_path=meta.get("save_path", ""),
                         target_host=meta.get("target_host", ""), stats=meta.get("stats", {}))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if vm.pid is None:  # the agent died while launching: the daemon may have come up
                pid = _read_pidfile(vm.paths.pidfile)
                if pid and self._is_our_qemu(pid, vm):
                    stat = _proc_stat(pid)
                    vm.pid, vm.starttime = pid, stat[1] if stat else ""
            vm.token = self._token()
            with self._lock:
                self._vms[vm.name] = vm
            if vm.state in TERMINAL_STATES and vm.state is not S.MIGRATED:
                continue
            if not _alive(vm.pid, vm.starttime):
                if vm.state is S.SAVING and vm.save_path and Path(vm.save_path).is_file():
                    vm.intent = "saved"
                with self._lock:
                    if vm.state is not S.MIGRATED:
                        self._on_exit(vm)
                continue
            self._resume(vm)

    def _resume(self, vm: _Vm) -> None:
        """A live QEMU from an earlier agent: find out where it stands, resume watching it."""
        token = vm.token
        try:
            status = self._status(vm)
            migration = self._qmp(vm, "query-migrate").get("status", "")
        except (OSError, QmpError) as exc:
            self._set(vm, token, detail=f"re-attached, monitor unreachable: {exc}")
            return
        watch: Callable[[], None] | None = None
        under_way = migration in ("setup", "active", "device", "pre-switchover", "completed")
        if vm.state in (S.MIGRATING_OUT, S.SAVING):  # an outgoing migration or save was watched
            live = vm.state is S.MIGRATING_OUT
            if under_way or (live and status == "postmigrate"):
                watch = lambda: self._migrate_thread(vm, token, None, vm.attempt, live)  # noqa: E731
            else:  # it failed, was cancelled or never began: the VM goes on running here
                what = "migration" if live else "save"
                watch = lambda: self._migration_failed(vm, token, vm.attempt,  # noqa: E731
                                                       f"{what} interrupted by an agent restart")
        elif status == "postmigrate":
            self._set(vm, token, S.MIGRATED)
        elif status == "inmigrate" and vm.origin == "standby":  # still waiting for its state file
            self._set(vm, token, S.INCOMING)
        elif status == "inmigrate":
            if vm.origin == "restore":
                self._set(vm, token, S.STARTING)
                watch = lambda: self._watch_restore(vm, token, time.monotonic())  # noqa: E731
            else:
                self._set(vm, token, S.INCOMING)
                watch = lambda: self._watch_incoming(vm, token)  # noqa: E731
        elif status == "running":
            if vm.state is S.STARTING and vm.origin == "boot" and self.guest is not None:
                pass  # the watcher still waits for the guest's ready line
            else:
                self._set(vm, token, S.RUNNING, detail="" if vm.state is S.RUNNING else vm.detail)
        elif status in ("paused", "prelaunch") and vm.origin == "restore" and vm.state is S.STARTING:
            watch = lambda: self._watch_restore(vm, token, time.monotonic())  # noqa: E731
        else:
            self._set(vm, token, detail=f"re-attached, QEMU status {status}")
        if watch is not None:
            threading.Thread(target=watch, name=f"qemu-reattach-{vm.name}", daemon=True).start()
