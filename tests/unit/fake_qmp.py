"""FakeQemu: a scripted stand-in for one QEMU, for driver tests without root or QEMU.

- A QMP peer on a real unix socket that serves one client at a time, as QEMU does (a second
  client waits in the backlog until the first leaves). It greets, negotiates capabilities,
  answers the commands the driver uses, records each one in `commands`, and keeps the descriptors
  that `getfd` brings (SCM_RIGHTS) by name.
- A real process standing for QEMU's pid (`sleep`), so that the driver's /proc checks work; `quit`
  and `system_powerdown` end it, as they end QEMU. (`fake_qemu_bin` runs one as a daemon that is
  itself the process, for tests of the whole driver.)
- Migration as QEMU 7.2 reports it: `migrate` to `fd:NAME` writes `state` through the passed
  descriptor; `query-migrate` then says active once, then completed with figures (or failed with
  the next of `refuse`'s reasons); `migrate-incoming` reads the state from the passed descriptor.

Scripting: set `status` (the run state), `refuse` (reasons for the next `migrate` calls to fail
with), `endless` (a migration stays active until cancelled), `errors` (command -> error
description), `fail_incoming`, `hang` (seconds to stall every reply), `emit()` an event before
the next reply.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

STATE = b"HAVEN-FAKE-STATE " * 4096  # what a save writes (68 KiB)
COMPLETED = {"status": "completed", "total-time": 321, "downtime": 12, "setup-time": 3,
             "ram": {"transferred": len(STATE)}}


class FakeQmpError(Exception):
    def __init__(self, desc: str, klass: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc, self.klass = desc, klass


class FakeQemu:
    def __init__(self, socket_path: str | Path, status: str = "running", greet: bool = True,
                 stand_in: bool = True) -> None:
        """stand_in: a `sleep` child is QEMU's process; False: this process is (`fake_qemu_bin`)."""
        self.socket_path = str(socket_path)
        self.status = status
        self.greet = greet
        self.state = STATE
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.fds: dict[str, int] = {}
        self.refuse: list[str] = []
        self.errors: dict[str, str] = {}
        self.fail_incoming = ""
        self.endless = False  # a migration that stays active until cancelled
        self.hang = 0.0
        self.loaded = b""  # what migrate-incoming read
        self.connections = 0
        self._migration: list[dict[str, Any]] = []  # query-migrate answers to come; the last repeats
        self._events: list[dict[str, Any]] = []
        self._closed = threading.Event()
        self.gone = threading.Event()  # QEMU's process ended
        self.process = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL) if stand_in else None
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.socket_path)
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, name="fake-qemu", daemon=True)
        self.thread.start()

    # --- what the test looks at ---

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else os.getpid()

    @property
    def starttime(self) -> str:
        with open(f"/proc/{self.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]

    def running(self) -> bool:
        if self.process is not None:  # the driver may have killed it without a word
            return self.process.poll() is None
        return not self.gone.is_set()

    def names(self) -> list[str]:
        return [name for name, _ in self.commands if name != "qmp_capabilities"]

    def arguments(self, command: str) -> list[dict[str, Any]]:
        return [args for name, args in self.commands if name == command]

    def emit(self, event: str) -> None:
        self._events.append({"event": event, "timestamp": {"seconds": int(time.time()), "microseconds": 0}})

    def complete(self) -> None:
        """An `endless` migration completes now."""
        self._migration = [dict(COMPLETED)]

    def exit(self) -> None:
        """QEMU ends (quit, power-off, crash)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.gone.set()

    def close(self) -> None:
        self._closed.set()
        self.exit()
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        except OSError:
            pass
        self.server.close()
        self.thread.join(timeout=2)
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> FakeQemu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the peer ---

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if not self.greet:
                    self._closed.wait()  # a busy QEMU: accepted, never greeted
                    return
                try:
                    self._session(conn)
                except (OSError, ValueError):
                    pass
            if not self.running():  # QEMU is gone, and its monitor with it
                self.server.close()
                return

    def _session(self, conn: socket.socket) -> None:
        conn.sendall(b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\n')
        buf, fds = b"", []
        while not self._closed.is_set():
            data, received, _, _ = socket.recv_fds(conn, 65536, 4)
            if not data:
                for fd in received:
                    os.close(fd)
                return
            buf += data
            fds += received
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                command, args = msg["execute"], msg.get("arguments", {})
                self.commands.append((command, args))
                if self.hang:
                    time.sleep(self.hang)
                try:
                    reply: dict[str, Any] = {"return": self._answer(command, args, fds)}
                except FakeQmpError as err:
                    reply = {"error": {"class": err.klass, "desc": err.desc}}
                if "id" in msg:
                    reply["id"] = msg["id"]
                while self._events:
                    conn.sendall(json.dumps(self._events.pop(0)).encode() + b"\n")
                conn.sendall(json.dumps(reply).encode() + b"\n")
                if command == "quit":
                    self.exit()
                    return

    def _answer(self, command: str, args: dict[str, Any], fds: list[int]) -> Any:
        if command in self.errors:
            raise FakeQmpError(self.errors[command])
        if command == "query-status":
            return {"status": self.status, "running": self.status == "running"}
        if command == "getfd":
            if not fds:
                raise FakeQmpError("No file descriptor supplied via SCM_RIGHTS")
            old = self.fds.pop(args["fdname"], None)
            if old is not None:
                os.close(old)
            self.fds[args["fdname"]] = fds.pop(0)
            return {}
        if command == "stop":
            self.status = "paused"
            self.emit("STOP")
            return {}
        if command == "cont":
            if self.status == "inmigrate":
                raise FakeQmpError("Migration is not finalized")
            self.status = "running"
            self.emit("RESUME")
            return {}
        if command == "migrate":
            return self._migrate(args["uri"])
        if command == "query-migrate":
            if not self._migration:
                return {}
            answer = self._migration.pop(0) if len(self._migration) > 1 else self._migration[0]
            if answer["status"] == "completed":
                self.status = "postmigrate"  # the source stays paused for good
            return answer
        if command == "migrate_cancel":
            if self._migration and self._migration[-1]["status"] not in ("completed", "failed"):
                self._migration = [{"status": "cancelled"}]
            return {}
        if command == "migrate-incoming":
            return self._incoming(args["uri"])
        if command == "system_powerdown":
            threading.Timer(0.05, self.exit).start()  # the guest powers off a moment after the reply
            return {}
        return {}  # qmp_capabilities, quit, migrate-set-parameters, ...

    def _migrate(self, uri: str) -> dict[str, Any]:
        if self.refuse:
            self._migration = [{"status": "failed", "error-desc": self.refuse.pop(0)}]
            return {}
        if uri.startswith("fd:"):
            fd = self.fds.pop(uri[3:])
            try:
                os.write(fd, self.state)
            finally:
                os.close(fd)
        self._migration = [{"status": "active"}] + ([] if self.endless else [dict(COMPLETED)])
        return {}

    def _incoming(self, uri: str) -> dict[str, Any]:
        if self.status != "inmigrate":
            raise FakeQmpError("The incoming migration has not been requested")
        if self.fail_incoming:
            raise FakeQmpError(self.fail_incoming)
        fd = self.fds.pop(uri[3:])
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                self.loaded = f.read()
        finally:
            os.close(fd)
        self.status = "paused"  # loaded; `cont` runs it
        return {}
