"""A small, careful, synchronous QMP client over a unix socket.

Why not `qemu.qmp`: its sync wrapper runs an asyncio loop per connection; the driver opens one
short connection per operation (QEMU serves one QMP client at a time, so holding a connection would
lock out a re-attaching agent or an operator's `socat`). This client:
- puts a timeout on connect, on the greeting (a second client waits in the backlog, greeting-less,
  until the first one leaves: without a timeout it hangs) and on every reply;
- reads raw bytes with `recv` (no `makefile()`: closing the socket while a file object is open
  leaves the fd open and the next client hangs, LAB-NOTES);
- skips asynchronous events while waiting for a reply (kept in `events`);
- always closes its socket, also on errors (use it as a context manager).
"""
from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any


class QmpError(Exception):
    """QEMU answered a command with an error (`klass` is QEMU's error class)."""

    def __init__(self, command: str, klass: str, desc: str) -> None:
        super().__init__(f"{command}: {desc}")
        self.command = command
        self.klass = klass
        self.desc = desc


class QmpConnectError(OSError):
    """The monitor could not be reached (no socket, nobody listening, busy, timed out)."""


class QmpClient:
    def __init__(self, path: str, timeout: float = 3.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._buf = b""
        self._next_id = 0

    def connect(self) -> QmpClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        self._sock = sock
        try:
            sock.connect(self.path)
            self.greeting = self._read_message(time.monotonic() + self.timeout)
            if "QMP" not in self.greeting:
                raise QmpConnectError(f"{self.path}: not a QMP greeting: {self.greeting!r:.200}")
            self.execute("qmp_capabilities")
        except (OSError, ValueError) as exc:
            self.close()
            if isinstance(exc, QmpConnectError):
                raise
            raise QmpConnectError(f"{self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> QmpClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _read_message(self, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.path}: no answer within {self.timeout:g} s")
            self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(f"{self.path}: monitor closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None, fds: Sequence[int] = ()) -> Any:
        """Run one command and return its `return` value; raise QmpError on an error reply.
        `fds` travel with the command (SCM_RIGHTS), as `getfd` and `add-fd` expect."""
        if self._sock is None:
            raise QmpConnectError(f"{self.path}: not connected")
        self._next_id += 1
        ident = f"haven-{self._next_id}"
        msg: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            msg["arguments"] = arguments
        self._sock.settimeout(timeout or self.timeout)
        data = json.dumps(msg).encode() + b"\n"
        if fds:
            sent = socket.send_fds(self._sock, [data], list(fds))
            self._sock.sendall(data[sent:])
        else:
            self._sock.sendall(data)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") not in (ident, None):
                continue
            if "error" in reply:
                err = reply["error"]
                raise QmpError(command, err.get("class", ""), err.get("desc", ""))
            return reply.get("return")


def pass_fd(client: QmpClient, name: str, fd: int) -> str:
    """Give QEMU a duplicate of `fd` under `name`; returns the migration URI `fd:<name>` (QEMU
    then writes or reads the state itself: about twice as fast as a pipe through `exec:cat`)."""
    client.execute("getfd", {"fdname": name}, fds=[fd])
    return f"fd:{name}"

