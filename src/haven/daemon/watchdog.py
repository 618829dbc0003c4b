"""The lab's watchdog: a separate process that kills this host's QEMUs once the agent stops
re-arming it in time (the agent hung, was SIGSTOPped, or died). Never /dev/watchdog here.

The agent arms it by writing a deadline (CLOCK_MONOTONIC seconds, shared by every process of the
machine within one boot) and the boot it belongs to into a file. The watchdog sleeps until the
deadline (a re-arm only moves it later, so it then reads the file again) and ignores a deadline
left by another boot: that run's QEMUs died with it, and its clock is not this boot's.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
BOOT_ID_ENV = "HAVEN_BOOT_ID"  # the lab's hosts share one kernel: each power-on names its own boot
IDLE_POLL_S = 0.5  # unarmed: the first deadline is at least TTL - margin after the first arm


def boot_id() -> str:
    return os.environ.get(BOOT_ID_ENV) or BOOT_ID_FILE.read_text().strip()


class FileWatchdog:
    """The Watchdog port, agent side."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.boot = boot_id()
        path.parent.mkdir(parents=True, exist_ok=True)

    def arm(self, deadline: float) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{deadline:.6f} {self.boot}\n")
        os.replace(tmp, self.path)  # atomic: the watchdog never reads half a line

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


def read_deadline(path: Path) -> tuple[float, str] | None:
    """(deadline, boot id) as armed, or None if unarmed or unreadable."""
    try:
        deadline, boot = path.read_text().split()
        return float(deadline), boot
    except (OSError, ValueError):
        return None


def run_watchdog(deadline_file: Path, run_dir: Path, log: Callable[..., None] = print) -> None:
    """Watch until SIGTERM. When the deadline passes, kill every QEMU of the host at once and
    disarm until the agent arms again."""
    this_boot = boot_id()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # taken by sigtimedwait: wakes it at once
    while True:
        armed = read_deadline(deadline_file)
        now = time.monotonic()
        if armed is not None and armed[1] != this_boot:
            deadline_file.unlink(missing_ok=True)
            log(f"watchdog: ignored a deadline left by another boot ({armed[1]})", flush=True)
            armed = None
        if armed is not None and now > armed[0]:
            pids = qemu_pids(run_dir)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.replace(deadline_file, deadline_file.with_name(deadline_file.name + ".fired"))
            log(f"watchdog: deadline passed {now - armed[0]:.3f} s ago: killed {len(pids)} QEMU(s)", flush=True)
            armed = None
        wait = IDLE_POLL_S if armed is None else armed[0] - now + 0.001
        if signal.sigtimedwait({signal.SIGTERM}, max(wait, 0.001)) is not None:
            return
