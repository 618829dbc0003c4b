"""A stand-in for `qemu-system-x86_64` (run as `python3 fake_qemu_bin.py ARGV...`): understands
the options the driver's launches depend on (`-qmp unix:PATH,...`, `-pidfile`, `-incoming`,
`-daemonize`) and ignores the rest. Like QEMU, the parent exits once the daemon serves its
monitor; the daemon is a FakeQemu that is itself the process, and ends on `quit` or power-off.

FAKE_QEMU_FAIL in the environment: refuse to start with that message, as QEMU does (exit 1).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_qmp import FakeQemu  # noqa: E402


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def main(argv: list[str]) -> None:
    failure = os.environ.get("FAKE_QEMU_FAIL")
    if failure:
        sys.stderr.write(f"2026-12-01T00:00:00.000000Z qemu-system-x86_64: {failure}\n")
        sys.exit(1)
    qmp = (option(argv, "-qmp") or "").removeprefix("unix:").split(",")[0]
    pidfile, incoming = option(argv, "-pidfile"), option(argv, "-incoming")
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:  # the parent: exits 0 once the daemon is ready, as QEMU's does
        os.close(ready_w)
        os._exit(0 if os.read(ready_r, 1) else 1)
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fake = FakeQemu(qmp, status="inmigrate" if incoming else "running", stand_in=False)
    if pidfile:
        Path(pidfile).write_text(f"{os.getpid()}\n")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.write(ready_w, b"1")
    os.close(ready_w)
    fake.gone.wait()
    time.sleep(0.05)  # let the last reply (to `quit`) leave
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
