"""The QMP client and the per-VM Monitor against a fake QEMU on a real unix socket (no root, no QEMU)."""
from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.drivers.qemu_monitor import MONITOR_ERRORS, Monitor
from haven.drivers.qmp import QmpClient, QmpConnectError, QmpError, pass_fd

from .fake_qmp import FakeQemu


@pytest.fixture
def sock() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hq-", dir="/tmp") as tmp:  # short: unix socket paths
        yield Path(tmp) / "qmp.sock"


@pytest.fixture
def qemu(sock: Path) -> Iterator[FakeQemu]:
    with FakeQemu(sock) as fake:
        yield fake


# --- the client ---

def test_qmp_client(qemu: FakeQemu) -> None:
    qemu.errors["bad"] = "nope"
    qemu.emit("RESUME")
    with QmpClient(qemu.socket_path, timeout=2) as client:
        assert client.greeting["QMP"]["version"]["qemu"]["major"] == 7
        assert client.execute("query-status") == {"status": "running", "running": True}
        assert client.events and client.events[0]["event"] == "RESUME"  # skipped while waiting for the reply
        with pytest.raises(QmpError) as err:
            client.execute("bad")
        assert err.value.desc == "nope" and err.value.klass == "GenericError"
    assert qemu.names() == ["query-status", "bad"]


def test_a_descriptor_passed_over_qmp_reaches_the_monitor(qemu: FakeQemu, sock: Path) -> None:
    state = sock.with_name("vm.state")
    fd = os.open(state, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with QmpClient(qemu.socket_path, timeout=2) as client:
            assert pass_fd(client, "haven-state", fd) == "fd:haven-state"
            assert client.execute("query-status")["status"] == "running"  # the stream goes on
    finally:
        os.close(fd)
    received = qemu.fds.pop("haven-state")
    os.write(received, b"written through the passed descriptor")  # as QEMU's `migrate fd:` does
    os.close(received)
    assert state.read_bytes() == b"written through the passed descriptor"


def test_qmp_client_times_out_on_a_silent_monitor(sock: Path) -> None:
    with FakeQemu(sock, greet=False):
        t0 = time.monotonic()
        with pytest.raises(QmpConnectError):
            QmpClient(str(sock), timeout=0.3).connect()
        assert time.monotonic() - t0 < 1.5
    with pytest.raises(QmpConnectError):
        QmpClient(str(sock.with_name("missing.sock")), timeout=0.3).connect()


# --- the monitor ---

def test_monitor_reads_run_state_and_migration(qemu: FakeQemu) -> None:
    monitor = Monitor(qemu.socket_path, timeout=1.0)
    assert monitor.status() == "running"
    assert monitor.migration() == {}  # none yet
    qemu.status = "inmigrate"
    assert monitor.status() == "inmigrate"
    assert qemu.connections == 3  # one short connection per operation: QEMU serves one client


def test_ensure_running_continues_only_a_paused_vm(qemu: FakeQemu) -> None:
    monitor = Monitor(qemu.socket_path, timeout=1.0)
    monitor.ensure_running()
    assert "cont" not in qemu.names()
    qemu.status = "paused"
    monitor.ensure_running()
    assert qemu.names()[-2:] == ["query-status", "cont"] and qemu.status == "running"


def test_a_session_keeps_one_connection_for_commands_that_belong_together(qemu: FakeQemu, sock: Path) -> None:
    monitor = Monitor(qemu.socket_path, timeout=1.0)
    fd = os.open(sock.with_name("state"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with monitor.session() as q:
            q.execute("migrate", {"uri": pass_fd(q, "haven-state", fd)})
    finally:
        os.close(fd)
    assert qemu.connections == 1 and qemu.names() == ["getfd", "migrate"]
    assert sock.with_name("state").stat().st_size == len(qemu.state)


def test_a_second_user_waits_for_the_first_instead_of_timing_out_in_qemus_backlog(qemu: FakeQemu) -> None:
    """QEMU greets a second client only when the first leaves: without the per-VM lock, a status
    poll during a slow session would time out waiting for the greeting."""
    monitor = Monitor(qemu.socket_path, timeout=0.3)
    inside = threading.Event()

    def slow_session() -> None:
        with monitor.session(timeout=2.0) as q:
            inside.set()
            time.sleep(0.6)  # longer than the poller's timeout
            q.execute("query-status")

    worker = threading.Thread(target=slow_session)
    worker.start()
    assert inside.wait(2.0)
    assert monitor.status() == "running"  # waited for the lock, then got its own connection
    worker.join()
    assert qemu.connections == 2


def test_monitor_errors(qemu: FakeQemu) -> None:
    monitor = Monitor(qemu.socket_path, timeout=0.3)
    qemu.errors["cont"] = "Migration is not finalized"
    with pytest.raises(QmpError):
        monitor.execute("cont")
    qemu.hang = 1.0  # a hung QEMU: the driver must not hang with it
    t0 = time.monotonic()
    with pytest.raises(MONITOR_ERRORS):
        monitor.status()
    assert time.monotonic() - t0 < 1.0
    qemu.hang = 0.0
    qemu.close()  # QEMU gone: its socket refuses
    with pytest.raises(OSError):
        Monitor(qemu.socket_path, timeout=0.3).status()
