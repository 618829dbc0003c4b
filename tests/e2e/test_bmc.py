"""A lab BMC (OpenIPMI's ipmi_sim) driven by the real fence_ipmilan through FenceAgentFencer.

The "host" is a dummy process (`sleep`) this test starts; the BMC's power-off kills it, its
power-on starts another, its power status says whether the one named in the pid file lives.
Needs root and Debian's openipmi, ipmitool and fence-agents. Listens on 127.0.0.1 on a free UDP
port. Run with `-s` to see the figures.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.drivers.fence_agent import FenceAgentFencer, Power
from haven.lab.bmc import Bmc

MISSING = [b for b in ("ipmi_sim", "ipmitool", "fence_ipmilan") if shutil.which(b, path="/usr/sbin:/usr/bin") is None]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (secret files owned by root, as in production)"),
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} "
                       "(apt-get install openipmi ipmitool fence-agents)"),
]

# The dummy host's power status: its pid file names a live (not zombie) process.
ALIVE = ('pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && '
         'state=$(sed "s/.*) //" /proc/$pid/stat 2>/dev/null | cut -d" " -f1) && [ -n "$state" ] && [ "$state" != Z ]')


Host = tuple[Path, subprocess.Popen[bytes]]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    assert port > 20000
    return port


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The dummy host, powered on: a `sleep` whose pid is in the pid file."""
    pidfile = tmp_path / "host.pid"
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    pidfile.write_text(f"{proc.pid}\n")
    yield pidfile, proc
    for pid in {proc.pid, int(pidfile.read_text() or 0)} - {0}:  # also the one the BMC powered on
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=5)


@pytest.fixture
def bmc(tmp_path: Path, host: Host) -> Iterator[Bmc]:
    pidfile, _ = host
    controller = Bmc(
        "h1", tmp_path, "127.0.0.1", free_udp_port(),
        power_off=["sh", "-c", 'kill -9 "$(cat "$1")"', "power-off", str(pidfile)],
        power_on=["sh", "-c", 'sleep 1000 & echo $! > "$1"', "power-on", str(pidfile)],
        power_status=["sh", "-c", ALIVE, "power-status", str(pidfile)])
    try:
        controller.start()
        yield controller
    finally:
        controller.stop()
    assert not controller.running


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - start


def test_fence_ipmilan_powers_a_host_off_through_the_lab_bmc(bmc: Bmc, host: Host) -> None:
    pidfile, first = host
    fencer = FenceAgentFencer({"h1": bmc.fence_device(timeout_s=10.0)})

    status, t_status = timed(fencer.status, "h1")
    assert status is Power.ON
    confirmed, t_off = timed(fencer.power_off, "h1")
    outcome = fencer.last_outcome("h1")
    assert confirmed, outcome
    assert first.wait(timeout=1.0) == -signal.SIGKILL  # the power cut killed the host
    (ok, detail), t_monitor = timed(fencer.monitor, "h1")
    assert ok, detail
    assert fencer.status("h1") is Power.OFF

    # off again: nothing to do, still confirmed (a second fence of the same loss)
    assert fencer.power_off("h1")

    on, t_on = timed(fencer.power_on, "h1")
    assert on[0], on[1]
    booted = int(pidfile.read_text())
    assert booted != first.pid and pid_alive(booted)
    assert fencer.status("h1") is Power.ON
    # a power-on of a running host does not boot a second one
    assert bmc.ipmitool("chassis", "power", "on").returncode == 0
    assert int(pidfile.read_text()) == booted

    print(f"\nfence_ipmilan against ipmi_sim: status {t_status:.3f} s, off+confirm {t_off:.3f} s, "
          f"monitor {t_monitor:.3f} s, on {t_on:.3f} s")


def test_a_stopped_bmc_fails_the_fence_within_the_timeout(bmc: Bmc, host: Host) -> None:
    _, first = host
    timeout = 3.0
    fencer = FenceAgentFencer({"h1": bmc.fence_device(timeout_s=timeout)})
    bmc.stop()
    confirmed, t_off = timed(fencer.power_off, "h1")
    assert confirmed is False
    assert t_off < timeout + 1.0
    outcome = fencer.last_outcome("h1")
    assert outcome is not None and not outcome.ok and outcome.detail
    (ok, detail), t_monitor = timed(fencer.monitor, "h1")
    assert not ok and detail
    assert t_monitor < timeout + 1.0
    assert pid_alive(first.pid)  # nobody cut the power
    print(f"\nBMC stopped: power_off -> False in {t_off:.3f} s ({outcome.detail}); "
          f"monitor -> failure in {t_monitor:.3f} s ({detail})")
