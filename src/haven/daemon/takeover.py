"""A daemon restart is a handover: the new run, loaded and attached to the QEMUs, asks the old one
to go (SIGHUP: it renews the lease one last time and leaves the VMs running), then takes the lease
over well inside the self-fence interval."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

TAKEOVER_TIMEOUT_S = 5.0


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
