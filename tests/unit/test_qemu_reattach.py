"""Re-attaching after an agent restart: a new driver on the same run dir takes back the QEMUs the
old one left (fake QEMUs on real unix sockets; no root, no QEMU)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.drivers.qemu_incoming import IncomingMigration
from haven.drivers.qemu_outgoing import OutgoingMigration
from haven.drivers.qemu_process import MonotonicClock
from haven.drivers.qemu_reattach import Reattacher
from haven.drivers.qemu_vm import S, VmRecord, VmTable
from haven.drivers.qemu_watch import VmWatcher

from .fake_qmp import STATE
from .qemu_host import Host, host, wait_for


@pytest.fixture
def h() -> Iterator[Host]:
    with host() as made:
        yield made


def restart(h: Host) -> VmTable:
    """The old driver is gone (its threads stop writing); a new one reads the run dir."""
    for vm in h.table.records():
        h.table.retire(vm)
    table = VmTable(h.config.host_name, MonotonicClock())
    Reattacher(h.config, table, VmWatcher(table, None), OutgoingMigration(h.config, table),
               IncomingMigration(h.config, table)).run()
    return table


def again(table: VmTable, name: str = "web") -> VmRecord:
    vm = table.get(name)
    assert vm is not None
    return vm


def test_a_running_vm_is_taken_back_undisturbed(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING, generation=7)
    vm2 = again(restart(h))
    assert vm2 is not vm and vm2.state is S.RUNNING and vm2.generation == 7 and vm2.pid == qemu.pid
    assert qemu.names() == ["query-status", "query-migrate"] and qemu.running()


def test_a_vm_that_died_meanwhile_is_reported_as_its_exit(h: Host) -> None:
    h.vm(S.RUNNING)
    h.vm(S.INCOMING, origin="incoming", name="target", status="inmigrate")
    for fake in h.fakes:
        fake.exit()
    table = restart(h)
    assert again(table).state is S.CRASHED and again(table).detail.startswith("QEMU exited unasked")
    assert again(table, "target").state is S.FAILED
    assert again(table, "target").detail.startswith("incoming migration failed")


def test_a_save_under_way_is_followed_to_its_end(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    qemu.endless = True
    path = h.config.state_path(vm.spec, 1)
    OutgoingMigration(h.config, h.table).save(vm, path, "quick-1")
    wait_for(lambda: "query-migrate" in qemu.names())
    table = restart(h)
    vm2 = again(table)
    assert vm2.state is S.SAVING and vm2.attempt == "quick-1"
    qemu.complete()
    wait_for(lambda: vm2.state is S.SAVED)
    assert vm2.detail == path and Path(path).read_bytes() == STATE and not qemu.running()


def test_a_save_that_failed_while_no_agent_watched_goes_back_to_running(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    h.table.set(vm, vm.token, S.SAVING, attempt="quick-3", save_path=h.config.state_path(vm.spec, 1))
    qemu.refuse = ["No space left on device"]
    vm.monitor.execute("stop")  # the old driver began the save, then died before it failed
    vm.monitor.execute("migrate", {"uri": "exec:cat > /dev/full"})
    vm2 = again(restart(h))
    wait_for(lambda: vm2.state is S.RUNNING)
    assert vm2.failed_migration == "quick-3" and vm2.detail == "save interrupted by an agent restart"
    assert qemu.status == "running" and qemu.names()[-1] == "cont"  # the save had paused it


def test_a_standby_and_a_live_target_are_taken_back_as_incoming(h: Host) -> None:
    h.vm(S.INCOMING, origin="standby", name="standby", status="inmigrate")
    _, target = h.vm(S.INCOMING, origin="incoming", name="target", status="inmigrate")
    table = restart(h)
    assert again(table, "standby").state is S.INCOMING
    live = again(table, "target")
    assert live.state is S.INCOMING
    target.status = "running"  # the migrated VM arrives: the resumed watch sees it
    wait_for(lambda: live.state is S.RUNNING)
