"""QEMU processes seen from the host, without QMP: /proc reads that tell our QEMU from a process
that reuses its pid, signals, the tails of its logs, O_DIRECT support of a pool. Also the
production clock."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path


class MonotonicClock:
    """The production `Clock`: seconds of `time.monotonic()` (the agent's and the driver's)."""

    def now(self) -> float:
        return time.monotonic()


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, starttime) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], rest[19]
    except (OSError, IndexError):
        return None


def alive(pid: int | None, starttime: str) -> bool:
    if not pid:
        return False
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X") and (not starttime or st[1] == starttime)


def wait_dead(pid: int | None, starttime: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, starttime):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def sigkill(pid: int | None, starttime: str) -> None:
    if pid and alive(pid, starttime):
        with contextlib.suppress(ProcessLookupError):  # it died meanwhile
            os.kill(pid, signal.SIGKILL)


def is_qemu_for(pid: int, qmp_socket: Path) -> bool:
    """Whether `pid` is the QEMU serving `qmp_socket` (not another process that got its pid)."""
    try:
        return str(qmp_socket).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(path: Path, limit: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def qemu_error(path: Path) -> str:
    """QEMU's last error from its stderr, without timestamps and echoed options."""
    lines = [ln.strip() for ln in tail(path, 1500).splitlines() if ln.strip()]
    out: list[str] = []
    for line in lines[-2:]:
        head, sep, rest = line.partition(": ")
        if sep and "qemu-system" in head:  # "<timestamp> qemu-system-x86_64: [-option ...: ]message"
            line = rest.split(": ", 1)[1] if rest.startswith("-") and ": " in rest else rest
        out.append(line)
    return " ".join(out)[-400:]


def supports_o_direct(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".odirect-")
        os.close(fd)
        try:
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
            os.close(fd)
            return True
        finally:
            os.unlink(name)
    except OSError:
        return False
