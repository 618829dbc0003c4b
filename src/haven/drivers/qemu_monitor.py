"""QMP access to one VM's QEMU (`Monitor`).

QEMU serves one QMP client at a time, so the driver never holds a connection: every operation
opens a short one, under a per-VM lock (two threads of this driver must not queue behind each
other in QEMU's backlog, where a second client waits greeting-less) and under a timeout (a hung
QEMU must not hang the driver). A re-attaching agent or an operator's `socat` gets in between.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from haven.drivers.qmp import QmpClient, QmpError

# What talking to a monitor may raise: it is unreachable (OSError, QmpConnectError, TimeoutError)
# or QEMU refused the command (QmpError).
MONITOR_ERRORS = (OSError, QmpError)

STATE_FD = "haven-state"  # the name a state file's descriptor has inside QEMU (`fd:` migration)


class Monitor:
    def __init__(self, socket_path: str | Path, timeout: float = 3.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._lock = threading.Lock()

    @contextmanager
    def session(self, timeout: float | None = None) -> Iterator[QmpClient]:
        """One connection for several commands that belong together (e.g. `getfd` + `migrate`,
        whose descriptor lives only as long as the connection)."""
        with self._lock, QmpClient(self.socket_path, timeout or self.timeout) as client:
            yield client

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        with self.session(timeout) as client:
            return client.execute(command, arguments)

    def status(self) -> str:
        """QEMU's run state: running, paused, inmigrate, postmigrate, prelaunch, ..."""
        return run_state(self.execute("query-status"))

    def migration(self) -> dict[str, Any]:
        """`query-migrate`: status (setup, active, completed, failed, cancelled, ...) and figures."""
        return dict(self.execute("query-migrate") or {})

    def ensure_running(self) -> None:
        """Continue the VM unless it runs (after a failed migration or save, which paused it)."""
        with self.session() as client:
            if run_state(client.execute("query-status")) != "running":
                client.execute("cont")


def run_state(reply: Any) -> str:
    return str((reply or {}).get("status", ""))
