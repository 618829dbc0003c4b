"""QemuHypervisor as a whole — launch, watch, stop, kill, re-attach, a quick migration between two
hosts — with `fake_qemu_bin` as its QEMU binary (FakeQemu daemons; no root, no QEMU). The real
thing: tests/e2e/test_qemu_driver.py."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.drivers.qemu import QemuHostConfig, QemuHypervisor
from haven.drivers.qemu_process import alive
from haven.model.spec import VmSpec
from haven.model.state import LocalState as S
from haven.ports.hypervisor import HypervisorError, LocalVm

from .qemu_host import wait_for

BIN = Path(__file__).with_name("fake_qemu_bin.py")


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hq-", dir="/tmp"))  # short: unix socket paths stop at 107 bytes
    binary = path / "qemu"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {BIN} \"$@\"\n")
    binary.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def driver(root: Path, host: str = "h1", **settings: object) -> QemuHypervisor:
    config = QemuHostConfig(host_name=host, run_dir=root / host, pools={"shared": root / "shared"},
                            accel="tcg", binary=str(root / "qemu"), stop_timeout=2.0, **settings)  # type: ignore[arg-type]
    return QemuHypervisor(config)


WEB = VmSpec(name="web", memory_mib=128)  # no disks, no NICs: nothing outside the run dir


def state(hv: QemuHypervisor, wanted: set[S], name: str = "web", timeout: float = 10.0) -> LocalVm:
    wait_for(lambda: hv.list()[name].state in wanted, timeout)
    return hv.list()[name]


@pytest.fixture
def hv(root: Path) -> Iterator[QemuHypervisor]:
    made = driver(root)
    yield made
    for name in list(made.list()):
        made.kill(name)
    made.close()


def test_boot_stop_forget(hv: QemuHypervisor) -> None:
    changed = threading.Event()
    hv.on_change = changed.set
    hv.start(WEB, 1)
    assert hv.list()["web"].state is S.STARTING
    vm = state(hv, {S.RUNNING, S.FAILED})
    assert vm.state is S.RUNNING and vm.generation == 1, vm
    # on_change runs on the driver's thread just after the state is recorded: wait for it
    assert changed.wait(2.0) and hv.pid("web") is not None
    with pytest.raises(HypervisorError, match="is running"):
        hv.start(WEB, 2)
    with pytest.raises(HypervisorError, match="still runs here"):
        hv.forget("web")
    hv.stop("web")  # ACPI power button: the fake guest powers off at once
    vm = state(hv, {S.STOPPED})
    assert vm.detail == "stopped" and hv.pid("web") is None
    hv.forget("web")
    assert hv.list() == {} and not (hv.config.run_dir / "web").exists()


def test_a_start_qemu_refuses_fails_with_its_message(hv: QemuHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_FAIL", 'Failed to get "write" lock')
    hv.start(WEB, 1)
    vm = state(hv, {S.FAILED})
    assert vm.detail == 'QEMU failed to start (rc 1): Failed to get "write" lock', vm


def test_a_crash_is_seen_without_asking_and_kill_is_idempotent(hv: QemuHypervisor) -> None:
    hv.start(WEB, 1)
    state(hv, {S.RUNNING})
    changed = threading.Event()
    hv.on_change = changed.set
    os.kill(hv.pid("web") or 0, signal.SIGKILL)
    assert changed.wait(2.0)  # the watcher's pidfd, no list() needed
    assert hv.list()["web"].state is S.CRASHED
    hv.kill("web")
    assert hv.list()["web"].state is S.CRASHED  # the crash stays on record
    hv.start(WEB, 2)
    state(hv, {S.RUNNING})
    pid = hv.pid("web")
    hv.kill("web")
    assert hv.list()["web"].state is S.STOPPED and hv.list()["web"].detail == "killed"
    assert hv.pid("web") is None and not alive(pid, "")  # gone (or a zombie until init reaps it)
    hv.kill("web")
    hv.kill("nothing-here")


def test_a_new_driver_takes_back_the_running_qemus(root: Path, hv: QemuHypervisor) -> None:
    hv.start(WEB, 7)
    state(hv, {S.RUNNING})
    pid = hv.pid("web")
    again = driver(root)
    try:
        vm = again.list()["web"]
        assert vm.state is S.RUNNING and vm.generation == 7 and again.pid("web") == pid
    finally:
        again.close()


def test_a_quick_migration_restores_into_the_standby(root: Path, hv: QemuHypervisor) -> None:
    target = driver(root, "h2")
    try:
        hv.start(WEB, 1)
        state(hv, {S.RUNNING})
        target.prepare_restore(WEB, 2)
        assert target.list()["web"].state is S.INCOMING
        path = hv.state_path(WEB, 1)
        hv.save("web", path, "quick-1")
        saved = state(hv, {S.SAVED, S.RUNNING})
        assert saved.state is S.SAVED and saved.detail == path and Path(path).is_file(), saved
        wait_for(lambda: target.pid("web") is not None)
        standby = target.pid("web")
        target.start(WEB, 2, restore_from=path)
        assert state(target, {S.RUNNING, S.FAILED}).state is S.RUNNING
        assert target.pid("web") == standby
        wait_for(lambda: not Path(path).exists())  # removed just after the VM runs
        assert hv.vm_stats("web")["state_bytes"] > 0 and "restore_s" in target.vm_stats("web")
    finally:
        for name in list(target.list()):
            target.kill(name)
        target.close()


def test_a_restore_without_a_standby_launches_one(hv: QemuHypervisor, root: Path) -> None:
    path = Path(hv.state_path(WEB, 1))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"state")
    t0 = time.monotonic()
    hv.start(WEB, 2, restore_from=str(path))
    assert state(hv, {S.RUNNING, S.FAILED}).state is S.RUNNING
    assert time.monotonic() - t0 < 10
    wait_for(lambda: not path.exists())  # removed just after the VM runs
