"""The lab's power panel: the switch behind each lab host's BMC.

A lab host is a namespace and a few processes owned by the `Lab` object, so "cutting its power"
is the lab's own `crash`, and "switching it on" its `power_on`. The BMC (`lab.bmc`, OpenIPMI's
`ipmi_sim`) runs its chassis commands as separate programs: the panel serves those requests on a
unix socket in the lab's process, one line in (`off h1`, `on h1`, `status h1`), one line out
(`ok`, `on`, `off`, or `error: why`). The client side is this file run as a program (it imports
nothing but the standard library, so it runs wherever the BMC runs it):

    python3 panel.py SOCKET off|on|status HOST    exit 0: done, or on; 1: off; 2: anything else

An error is never "off": a BMC that read a failed status as off would confirm a power fence
while the host runs.

so a power-off through IPMI is exactly the lab's power cut, and a power status is the host's real
state (also after a crash the BMC did not cause).
"""
from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

ACTIONS = ("off", "on", "status")
TIMEOUT_S = 60.0  # a power-on starts a daemon: seconds at most, even on a busy machine


class PowerPanel:
    def __init__(self, path: Path, off: Callable[[str], None], on: Callable[[str], None],
                 is_on: Callable[[str], bool], hosts: Callable[[], list[str]]) -> None:
        self.path = path
        self.off, self.on, self.is_on, self.hosts = off, on, is_on, hosts
        self.server: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        self.path.chmod(0o600)  # root's BMCs only: a power switch is not for every user
        server.listen(8)
        self.server = server
        self.thread = threading.Thread(target=self._serve, name="power-panel", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        if self.thread is not None:
            self.thread.join(timeout=5.0)
        self.path.unlink(missing_ok=True)

    def command(self, action: str, host: str) -> list[str]:
        """The program a BMC runs for `action` on `host`."""
        return [sys.executable, str(Path(__file__).resolve()), str(self.path), action, host]

    def _serve(self) -> None:
        while self.server is not None:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # stopped
            with conn:
                conn.settimeout(TIMEOUT_S)
                with contextlib.suppress(OSError):
                    request = conn.makefile().readline().split()
                    conn.sendall((self.answer(request) + "\n").encode())

    def answer(self, request: list[str]) -> str:
        if len(request) != 2 or request[0] not in ACTIONS:
            return f"error: expected one of {', '.join(ACTIONS)} and a host"
        action, host = request
        if host not in self.hosts():
            return f"error: no lab host {host}"
        try:
            if action == "status":
                return "on" if self.is_on(host) else "off"
            (self.off if action == "off" else self.on)(host)
        except Exception as exc:  # noqa: BLE001 - the BMC reports a failure, the lab goes on
            return f"error: {action} {host}: {exc}"
        return "ok"


def ask(path: str, action: str, host: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(TIMEOUT_S)
        conn.connect(path)
        conn.sendall(f"{action} {host}\n".encode())
        return conn.makefile().readline().strip()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ACTIONS:
        print("usage: panel.py SOCKET off|on|status HOST", file=sys.stderr)
        return 2
    try:
        reply = ask(*argv)
    except OSError as exc:
        print(f"power panel {argv[0]}: {exc}", file=sys.stderr)
        return 2
    if reply in ("ok", "on"):
        return 0
    if reply == "off":
        return 1
    print(reply or "power panel: no answer", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
