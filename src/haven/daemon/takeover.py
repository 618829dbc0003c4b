"""A daemon restart is a handover: the new run, loaded and attached to the QEMUs, asks the old one
to go (SIGHUP: it renews the lease one last time and leaves the VMs running), then takes the lease
over well inside the self-fence interval."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

TAKEOVER_TIMEOUT_S = 5.0
SIGNAL_WAIT_S = 60.0


class StopSignals:
    """SIGTERM and SIGINT ask the daemon to stop; SIGHUP asks it to go for a restart (the next
    run takes over: the VMs stay). Handlers only set flags; the main thread acts on them."""

    def __init__(self) -> None:
        self.stop, self.restart = threading.Event(), threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self.restart.set()
        self.stop.set()

    def wait(self) -> None:
        # An interrupted wait runs the handler on this (the main) thread, which sets the event.
        while not self.stop.wait(SIGNAL_WAIT_S):
            pass


def take_over(pidfile: Path, timeout: float = TAKEOVER_TIMEOUT_S) -> None:
    """Stop the daemon named in `pidfile` (if it is one of ours and alive), then name ourselves."""
    try:
        old = int(pidfile.read_text())
        alive = old != os.getpid() and b"haven" in Path(f"/proc/{old}/cmdline").read_bytes()
    except (OSError, ValueError):
        alive = False
    if alive:
        os.kill(old, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{old}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if Path(f"/proc/{old}").exists():  # hung: it cannot protect anything any more
            os.kill(old, signal.SIGKILL)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(str(os.getpid()))
