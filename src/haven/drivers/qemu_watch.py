"""What happens to a VM's QEMU without anyone asking (`VmWatcher`): its exit, and a booted guest.

`refresh(vm)` reads /proc and, while a boot is STARTING with a guest that announces itself, the
serial log (no QMP: `list()` must stay quick and must not take the monitor from anyone). A thread
does the same on its own, so that `on_change` fires without a `list()` call: an exit at once (a
pidfd per QEMU turns readable when it dies), a booted guest within 0.1 s.

What an exit means depends on what was asked (`VmRecord.intent`) and the state:
- STOPPED after `stop()` or `kill()`; SAVED once a save's state file is complete;
- FAILED if QEMU died before the VM reached RUNNING (detail: QEMU's last words);
- CRASHED if it died unasked while RUNNING, MIGRATING_OUT or SAVING.
"""
from __future__ import annotations

import contextlib
import os
import select
import threading

from haven.drivers.qemu_process import tail
from haven.drivers.qemu_vm import TERMINAL_STATES, S, VmRecord, VmTable

STARTING_POLL_MS = 100  # a booting guest's ready line is looked for this often
IDLE_POLL_MS = 5000  # a safety net only: exits wake the watcher through their pidfds
_ORIGINS = {"incoming": "incoming migration", "standby": "standby", "restore": "restore"}


class VmWatcher:
    def __init__(self, table: VmTable, ready_marker: str | None) -> None:
        self.table = table
        self.ready_marker = ready_marker
        self._closed = threading.Event()
        # Woken through a pipe when a record changes (a new QEMU to watch, a guest booting) or on
        # close; otherwise it sleeps until a QEMU exits (its pidfd turns readable).
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_lock = threading.Lock()  # a closed fd's number is reused: never write to it after close
        table.on_record = self.wake
        self._thread = threading.Thread(target=self._run, name=f"qemu-watch-{table.host_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._wake_lock:
            if self._wake_w < 0:  # closed: records may still change (the agent kills, forgets)
                return
            with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
                os.write(self._wake_w, b"w")

    def close(self) -> None:
        self._closed.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._wake_lock:
            if self._wake_w >= 0:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1

    def refresh(self, vm: VmRecord) -> None:
        """Notice a dead process or a booted guest."""
        with self.table.lock:
            if vm.state in TERMINAL_STATES:
                return
            if vm.pid is not None and not vm.alive():
                self.exited(vm)
                return
            booting = vm.state is S.STARTING and vm.origin == "boot" and self.ready_marker and vm.pid is not None
            if booting and self._ready_line_seen(vm):
                self.table.set(vm, None, S.RUNNING, detail="")

    def _ready_line_seen(self, vm: VmRecord) -> bool:
        try:
            with open(vm.paths.serial, "rb") as f:
                f.seek(max(0, vm.serial_pos - 64))  # the marker may straddle two reads
                data = f.read()
                vm.serial_pos = f.tell()
        except OSError:
            return False
        return self.ready_marker is not None and self.ready_marker.encode() in data

    def exited(self, vm: VmRecord) -> None:
        """Record the exit of `vm`'s QEMU as what it means."""
        why = tail(vm.paths.stderr, 300) or tail(vm.paths.serial, 300)
        why = why.splitlines()[-1] if why else ""
        because = f" ({why})" if why else ""
        if vm.intent in ("stop", "kill"):
            self.table.set(vm, None, S.STOPPED, detail="killed" if vm.intent == "kill" else "stopped")
        elif vm.intent == "saved":
            self.table.set(vm, None, S.SAVED, detail=vm.save_path)
        elif vm.state in (S.STARTING, S.INCOMING):
            what = _ORIGINS.get(vm.origin, "start")
            self.table.set(vm, None, S.FAILED, detail=f"{what} failed: QEMU exited{because}")
        else:
            self.table.set(vm, None, S.CRASHED, detail=f"QEMU exited unasked{because}")

    def _run(self) -> None:
        pidfds: dict[tuple[int, str], int] = {}
        try:
            while not self._closed.is_set():
                records = self.table.records()
                for vm in records:
                    self.refresh(vm)
                live = {(vm.pid, vm.starttime) for vm in records if vm.pid and vm.state not in TERMINAL_STATES}
                starting = any(vm.state is S.STARTING for vm in records)
                for key in set(pidfds) - live:
                    os.close(pidfds.pop(key))
                for key in live - set(pidfds):
                    with contextlib.suppress(OSError, AttributeError):
                        pidfds[key] = os.pidfd_open(key[0])
                poller = select.poll()
                wake_r = self._wake_r  # open until close() has joined this thread
                for fd in (*pidfds.values(), wake_r):
                    poller.register(fd, select.POLLIN)
                poller.poll(STARTING_POLL_MS if starting else IDLE_POLL_MS)
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
        finally:
            for fd in pidfds.values():
                os.close(fd)
