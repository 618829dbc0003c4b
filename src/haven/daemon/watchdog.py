"""The lab's watchdog: a separate process that kills this host's QEMUs once the agent stops
re-arming it in time (the agent hung, was SIGSTOPped, or died). Never /dev/watchdog here.

The agent arms it by writing a deadline (CLOCK_MONOTONIC seconds, shared by every process of the
machine) to a file; the watchdog polls that file.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class FileWatchdog:
    """The Watchdog port, agent side."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def arm(self, deadline: float) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{deadline:.6f}\n")
        os.replace(tmp, self.path)  # atomic: the watchdog never reads half a number

    def disarm(self) -> None:
        self.path.unlink(missing_ok=True)


def qemu_pids(run_dir: Path) -> list[int]:
    """QEMUs of this host: the pid files in its run directory, checked against /proc."""
    pids = []
    for pidfile in sorted(run_dir.glob("*/qemu.pid")):
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"qemu-system" in cmdline:
            pids.append(pid)
    return pids


def read_deadline(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def run_watchdog(deadline_file: Path, run_dir: Path, interval: float = 0.02,
                 log=print) -> None:  # noqa: ANN001 - a print-like function
    """Poll forever (until SIGTERM). When the deadline passes, kill every QEMU of the host at
    once and disarm until the agent arms again."""
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        deadline = read_deadline(deadline_file)
        now = time.monotonic()
        if deadline is not None and now > deadline:
            pids = qemu_pids(run_dir)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            fired = deadline_file.with_name(deadline_file.name + ".fired")
            os.replace(deadline_file, fired)
            log(f"watchdog: deadline passed {now - deadline:.3f} s ago: killed {len(pids)} QEMU(s)", flush=True)
        time.sleep(interval)
