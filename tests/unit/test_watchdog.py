"""The watchdog process, run for real: it kills the host's QEMUs at the armed deadline, ignores a
deadline left by another boot, and stops at once on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haven.daemon.watchdog import BOOT_ID_ENV, FileWatchdog

from .daemon_fakes import wait_for


def start_watchdog(host_dir: Path, boot: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "haven.cli.main", "node", "watchdog", "--deadline-file",
         str(host_dir / "watchdog.deadline"), "--run-dir", str(host_dir / "vms")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, BOOT_ID_ENV: boot})


def fake_qemu(host_dir: Path, vm: str) -> subprocess.Popen[bytes]:
    """A process the watchdog takes for this host's QEMU (its name and pid file say so)."""
    proc = subprocess.Popen(["bash", "-c", "exec -a qemu-system-x86_64 sleep 60"])
    wait_for(lambda: b"qemu-system" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), 5.0, "the fake QEMU")
    (host_dir / "vms" / vm).mkdir(parents=True)
    (host_dir / "vms" / vm / "qemu.pid").write_text(str(proc.pid))
    return proc


def in_sigtimedwait(pid: int) -> bool:
    """Is process `pid` asleep in the kernel's sigtimedwait (/proc/PID/wchan)? (Its SigBlk shows
    nothing then: the kernel unblocks the signals waited for while it waits.)"""
    return Path(f"/proc/{pid}/wchan").read_text().startswith("do_sigtimedwait")


def stop(*procs: subprocess.Popen) -> None:  # type: ignore[type-arg]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_the_watchdog_kills_the_hosts_qemus_at_the_armed_deadline(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOT_ID_ENV, "boot-a")
    qemu = fake_qemu(tmp_path, "web")
    watchdog = start_watchdog(tmp_path, "boot-a")
    try:
        deadline = time.monotonic() + 1.0
        FileWatchdog(tmp_path / "watchdog.deadline").arm(deadline)
        wait_for(lambda: qemu.poll() is not None, 5.0, "the fake QEMU to be killed")
        # Never before the deadline; how soon after depends on the machine's load (seen 1.5 s
        # late while a whole test run shared the two cores), and wait_for bounds it.
        assert time.monotonic() >= deadline
        assert (tmp_path / "watchdog.deadline.fired").exists()
    finally:
        stop(qemu, watchdog)


def test_a_deadline_left_by_another_boot_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOT_ID_ENV, "boot-old")
    FileWatchdog(tmp_path / "watchdog.deadline").arm(time.monotonic() - 20.0)  # the crashed run's
    qemu = fake_qemu(tmp_path, "web")
    watchdog = start_watchdog(tmp_path, "boot-new")
    try:
        wait_for(lambda: not (tmp_path / "watchdog.deadline").exists(), 5.0, "the old deadline to be dropped")
        time.sleep(0.3)
        assert qemu.poll() is None, "a deadline from another boot killed this boot's QEMU"
        assert not (tmp_path / "watchdog.deadline.fired").exists()
    finally:
        stop(qemu)
        watchdog.send_signal(signal.SIGTERM)
        out, _ = watchdog.communicate(timeout=5)
    assert "ignored a deadline left by another boot (boot-old)" in out


def test_sigterm_stops_the_watchdog_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOT_ID_ENV, "boot-a")
    watchdog = start_watchdog(tmp_path, "boot-a")
    try:
        FileWatchdog(tmp_path / "watchdog.deadline").arm(time.monotonic() + 60.0)  # a long sleep ahead
        # Asleep in sigtimedwait, where it takes SIGTERM itself (a loaded machine may take seconds
        # to get there; a signal sent before would kill the interpreter still starting).
        wait_for(lambda: in_sigtimedwait(watchdog.pid), 30.0, "the watchdog asleep in sigtimedwait")
        sent = time.monotonic()
        watchdog.send_signal(signal.SIGTERM)
        watchdog.wait(5)
        assert time.monotonic() - sent < 0.5
        assert watchdog.returncode == 0
    finally:
        stop(watchdog)
