"""A client for the QEMU guest agent (`qemu-ga`) on a VM's virtio-serial channel.

The agent speaks QMP-style JSON lines but has no greeting and answers one request at a time. The
host end is a socket QEMU serves (`VmPaths.guest_agent`); QEMU keeps the guest side open whoever
connects, so a reply meant for an earlier client that gave up can still be in the channel: each
connection first sends `guest-sync` with a fresh number and drops every line until that number
comes back. A guest whose OS hangs accepts the connection (QEMU does) but never answers: every call
has a deadline, and `ping` turns a missed one into False, which is how a hung guest is detected.
"""
from __future__ import annotations

import base64
import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Poll period for a running command's status: short, since service checks are on the failover path.
EXEC_POLL_S = 0.02


class GuestAgentError(Exception):
    """The agent could not be reached, did not answer in time, or refused the command."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class GuestAgent:
    """One VM's agent. Each call opens its own connection, so a caller that timed out leaves
    nothing behind that the next call could mistake for its answer."""

    def __init__(self, socket_path: str | Path, timeout: float = 3.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def ping(self, timeout: float | None = None) -> bool:
        """True when the guest OS answered within `timeout`: the agent runs, so the guest schedules."""
        try:
            self._call([("guest-ping", None)], timeout)
        except GuestAgentError:
            return False
        return True

    def exec(self, argv: list[str], timeout: float | None = None, silence: float | None = None) -> ExecResult:
        """Run `argv` in the guest and wait for it to exit; its exit code and output come back.
        `silence`: an agent that does not answer one of the status polls within this is hung, an
        error at once rather than at the end of `timeout` (a long check must not hide a hang)."""
        if not argv:
            raise ValueError("exec needs a command")
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit
        with _Connection(self.socket_path, deadline, silence) as conn:
            started = conn.call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
            pid = started["pid"]
            while True:
                status = conn.call("guest-exec-status", {"pid": pid})
                if status.get("exited"):
                    return ExecResult(int(status.get("exitcode", -1)),
                                      _decode(status.get("out-data")), _decode(status.get("err-data")))
                if time.monotonic() + EXEC_POLL_S > deadline:
                    raise GuestAgentError(f"{' '.join(argv)}: still running after {limit:g} s")
                time.sleep(EXEC_POLL_S)

    def _call(self, calls: list[tuple[str, dict[str, Any] | None]], timeout: float | None) -> list[Any]:
        with self._connect(timeout or self.timeout) as conn:
            return [conn.call(command, arguments) for command, arguments in calls]

    def _connect(self, timeout: float) -> _Connection:
        return _Connection(self.socket_path, time.monotonic() + timeout)


class _Connection:
    def __init__(self, path: str, deadline: float, silence: float | None = None) -> None:
        self.path = path
        self.deadline = deadline
        self.silence = silence  # the longest wait for any one answer (None: up to the deadline)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = b""

    def __enter__(self) -> _Connection:
        try:
            self._sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
            self._sock.connect(self.path)
        except OSError as exc:
            self._sock.close()
            raise GuestAgentError(f"{self.path}: {exc}") from exc
        token = random.randrange(1, 2**31)  # a sync marker, not a secret
        self._send("guest-sync", {"id": token})
        while self._read().get("return") != token:
            pass  # an answer left over for an earlier client
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self._send(command, arguments)
        reply = self._read()
        if "error" in reply:
            raise GuestAgentError(f"{command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def _send(self, command: str, arguments: dict[str, Any] | None) -> None:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise GuestAgentError(f"{self.path}: {exc}") from exc

    def _read(self) -> dict[str, Any]:
        deadline = self.deadline if self.silence is None else min(self.deadline, time.monotonic() + self.silence)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestAgentError(f"{self.path}: the guest agent did not answer in time")
            try:
                self._sock.settimeout(left)
                chunk = self._sock.recv(65536)
            except OSError as exc:  # socket.timeout included
                raise GuestAgentError(f"{self.path}: the guest agent did not answer in time ({exc})") from exc
            if not chunk:
                raise GuestAgentError(f"{self.path}: the channel closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return dict(json.loads(line))
        except ValueError as exc:
            raise GuestAgentError(f"{self.path}: unreadable answer {line[:80]!r}") from exc


def _decode(data: str | None) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""
