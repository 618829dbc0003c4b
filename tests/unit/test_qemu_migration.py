"""The migration phases of the QEMU driver — live migration out and in, save, restore into a
standby — against fake QEMUs on real unix sockets (no root, no QEMU)."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.drivers.qemu_incoming import IncomingMigration
from haven.drivers.qemu_outgoing import OutgoingMigration
from haven.drivers.qemu_vm import S, VmRecord
from haven.ports.hypervisor import HypervisorError

from .fake_qmp import STATE
from .qemu_host import Host, host, wait_for


@pytest.fixture
def h() -> Iterator[Host]:
    with host() as made:
        yield made


def reaches(vm: VmRecord, state: S, timeout: float = 5.0) -> VmRecord:
    wait_for(lambda: vm.state is state or vm.state is S.FAILED and state is not S.FAILED, timeout)
    assert vm.state is state, (vm.state, vm.detail)
    return vm


def meta(vm: VmRecord) -> dict:
    return json.loads(vm.paths.meta.read_text())


# --- source: live migration ---

def test_live_migration_ends_migrated_with_qemus_figures(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    OutgoingMigration(h.config, h.table).live(vm, "h2", "10.0.0.2", "attempt-1")
    assert vm.state is S.MIGRATING_OUT and vm.attempt == "attempt-1"  # at once, before the thread runs
    reaches(vm, S.MIGRATED)
    assert vm.detail == "to h2: 321 ms, downtime 12 ms"  # the lab's demo parses this line
    assert vm.stats["downtime_ms"] == 12 and vm.stats["transferred_bytes"] == len(STATE)
    assert qemu.arguments("migrate-set-parameters") == [
        {"max-bandwidth": h.config.migration_bandwidth, "downtime-limit": h.config.downtime_limit_ms}]
    assert qemu.arguments("migrate") == [{"uri": h.config.migration_uri("10.0.0.2", "web")}]
    assert qemu.running() and qemu.status == "postmigrate"  # paused for good, kept until kill
    wait_for(lambda: meta(vm)["state"] == "migrated")  # written just after the state
    assert vm.failed_migration == ""


def test_a_refused_connection_is_retried_while_the_target_launches(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    qemu.refuse = ["Failed to connect socket: Connection refused"] * 2
    OutgoingMigration(h.config, h.table).live(vm, "h2", "10.0.0.2", "attempt-1")
    reaches(vm, S.MIGRATED)
    assert len(qemu.arguments("migrate")) == 3


def test_a_target_that_never_listens_leaves_the_source_running(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    qemu.refuse = ["Failed to connect socket: Connection refused"] * 1000
    OutgoingMigration(h.config, h.table).live(vm, "h2", "10.0.0.2", "attempt-1")
    reaches(vm, S.RUNNING, timeout=h.config.connect_retry_s + 3)
    assert vm.failed_migration == "attempt-1" and "refused" in vm.detail, vm.detail
    assert vm.attempt == "" and qemu.status == "running"
    wait_for(lambda: meta(vm)["failed_migration"] == "attempt-1")  # written just after the state


def test_other_failures_are_not_retried(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    qemu.refuse = ["Unable to write to socket: Broken pipe"]
    OutgoingMigration(h.config, h.table).live(vm, "h2", "10.0.0.2", "attempt-1")
    wait_for(lambda: vm.failed_migration == "attempt-1")
    assert vm.state is S.RUNNING and "migration failed: Unable to write" in vm.detail
    assert len(qemu.arguments("migrate")) == 1


def test_cancel_leaves_the_source_running(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    qemu.endless = True
    out = OutgoingMigration(h.config, h.table)
    out.live(vm, "h2", "10.0.0.2", "attempt-1")
    wait_for(lambda: "migrate" in qemu.names())
    out.cancel(vm)
    reaches(vm, S.RUNNING)
    assert vm.failed_migration == "attempt-1" and vm.detail == "migration cancelled: cancelled"
    out.cancel(vm)  # nothing under way: nothing sent
    assert qemu.names().count("migrate_cancel") == 1


def test_only_a_running_vm_moves(h: Host) -> None:
    vm, qemu = h.vm(S.STARTING)
    out = OutgoingMigration(h.config, h.table)
    with pytest.raises(HypervisorError, match="it is starting"):
        out.live(vm, "h2", "10.0.0.2", "a")
    with pytest.raises(HypervisorError, match="it is starting"):
        out.save(vm, str(h.root / "pool" / "web.state"), "a")
    assert vm.state is S.STARTING and qemu.names() == []


def test_a_killed_vms_migration_stops_writing_its_record(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    qemu.endless = True
    OutgoingMigration(h.config, h.table).live(vm, "h2", "10.0.0.2", "attempt-1")
    wait_for(lambda: "query-migrate" in qemu.names())
    h.table.retire(vm)  # what kill() does first; then the process dies
    qemu.exit()
    h.table.set(vm, None, S.STOPPED, detail="killed")
    polls = qemu.names().count("query-migrate")
    time.sleep(0.3)
    assert qemu.names().count("query-migrate") <= polls + 1  # the thread gave up
    assert vm.state is S.STOPPED and vm.detail == "killed" and vm.failed_migration == ""


# --- source: save ---

def test_save_writes_the_state_through_a_passed_descriptor_then_quits(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    path = h.config.state_path(vm.spec, 1)
    OutgoingMigration(h.config, h.table).save(vm, path, "quick-1")
    assert vm.state is S.SAVING and vm.detail == path
    reaches(vm, S.SAVED)
    assert vm.detail == path and Path(path).read_bytes() == STATE
    assert not Path(path + ".partial").exists()
    assert qemu.names()[:4] == ["stop", "migrate-set-parameters", "getfd", "migrate"]
    assert qemu.arguments("migrate-set-parameters") == [{"max-bandwidth": h.config.save_bandwidth}]
    assert qemu.arguments("migrate") == [{"uri": "fd:haven-state"}]
    assert qemu.names()[-1] == "quit" and not qemu.running()
    assert vm.stats["state_bytes"] == len(STATE) and "stop_to_quit_s" in vm.stats
    assert meta(vm)["intent"] == "saved"  # its exit means SAVED, also to a restarted agent


def test_a_failed_save_continues_the_vm_and_removes_the_partial_file(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    path = h.config.state_path(vm.spec, 1)
    qemu.refuse = ["No space left on device"]
    OutgoingMigration(h.config, h.table).save(vm, path, "quick-1")
    wait_for(lambda: vm.failed_migration == "quick-1")
    assert vm.state is S.RUNNING and vm.detail == "save failed: No space left on device"
    assert qemu.status == "running" and qemu.names()[-1] == "cont"  # the save had paused it
    assert not Path(path).exists() and not Path(path + ".partial").exists()
    assert vm.save_path == "" and qemu.running()


def test_an_unreachable_monitor_fails_the_save_back_to_running(h: Host) -> None:
    vm, qemu = h.vm(S.RUNNING)
    qemu.errors["migrate-set-parameters"] = "Parameter 'max-bandwidth' expects a size"
    OutgoingMigration(h.config, h.table).save(vm, h.config.state_path(vm.spec, 1), "quick-1")
    wait_for(lambda: vm.failed_migration == "quick-1")
    assert vm.state is S.RUNNING and "QmpError" in vm.detail and qemu.status == "running"
    assert "migrate_cancel" in qemu.names()


# --- target: live migration in ---

def test_a_live_target_runs_once_the_migrated_vm_arrives(h: Host) -> None:
    vm, qemu = h.vm(S.INCOMING, origin="incoming", status="inmigrate")
    incoming = IncomingMigration(h.config, h.table)
    assert incoming.listen_uri("web") == h.config.migration_uri("10.0.0.1", "web")
    watcher = threading.Thread(target=incoming.watch_live, args=(vm, vm.token), daemon=True)
    watcher.start()
    wait_for(lambda: qemu.names().count("query-status") >= 2)
    assert vm.state is S.INCOMING and "cont" not in qemu.names()  # its CPUs never run meanwhile
    qemu.status = "paused"  # migrated while the source was paused: continued here
    watcher.join(5)
    assert vm.state is S.RUNNING and "cont" in qemu.names()


# --- target: restore into a standby ---

def test_restore_into_a_standby_loads_the_state_and_runs(h: Host) -> None:
    vm, qemu = h.vm(S.INCOMING, origin="standby", status="inmigrate", generation=2)
    state = Path(h.config.state_path(vm.spec, 1))
    state.parent.mkdir(parents=True)
    state.write_bytes(b"saved state")
    assert IncomingMigration(h.config, h.table).restore(vm, str(state))
    assert vm.state is S.STARTING and vm.detail == "restoring"
    reaches(vm, S.RUNNING)
    assert qemu.loaded == b"saved state" and qemu.status == "running"
    # query-status is polled until the load ends: how many times depends on the machine's load
    polled = [name for i, name in enumerate(qemu.names()) if i == 0 or name != qemu.names()[i - 1]]
    assert polled == ["getfd", "migrate-incoming", "query-status", "cont", "query-status"]
    assert vm.origin == "restore" and "restore_s" in vm.stats
    wait_for(lambda: not state.exists())  # removed once the VM runs again (just after the state)


def test_a_restore_keeps_the_state_file_if_asked(h: Host) -> None:
    with host(keep_state_files=True) as keep:
        vm, qemu = keep.vm(S.INCOMING, origin="standby", status="inmigrate")
        state = keep.root / "pool" / "web.state"
        state.parent.mkdir(parents=True)
        state.write_bytes(b"saved state")
        IncomingMigration(keep.config, keep.table).restore(vm, str(state))
        reaches(vm, S.RUNNING)
        assert state.exists()


def test_a_missing_state_file_fails_the_restore_and_ends_the_standby(h: Host) -> None:
    vm, qemu = h.vm(S.INCOMING, origin="standby", status="inmigrate")
    assert IncomingMigration(h.config, h.table).restore(vm, str(h.root / "pool" / "gone.state"))
    reaches(vm, S.FAILED)
    assert "missing" in vm.detail
    wait_for(lambda: not qemu.running())


def test_a_refused_restore_fails_and_ends_the_standby(h: Host) -> None:
    vm, qemu = h.vm(S.INCOMING, origin="standby", status="inmigrate")
    state = h.root / "pool" / "web.state"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"garbage")
    qemu.fail_incoming = "load of migration failed: Invalid argument"
    IncomingMigration(h.config, h.table).restore(vm, str(state))
    reaches(vm, S.FAILED)
    assert vm.detail.startswith("restore failed:") and "Invalid argument" in vm.detail
    wait_for(lambda: not qemu.running())


def test_a_quick_migration_between_two_fake_hosts(h: Host) -> None:
    """The state the source wrote is the state the target loaded, through a file on the shared pool."""
    with host(host_name="h2", pools={"shared": h.root / "pool"}) as h2:
        src, src_qemu = h.vm(S.RUNNING)
        dst, dst_qemu = h2.vm(S.INCOMING, origin="standby", status="inmigrate", generation=2)
        path = h.config.state_path(src.spec, 1)
        assert h2.config.state_path(src.spec, 1) == path  # both hosts see the same file
        OutgoingMigration(h.config, h.table).save(src, path, "quick-1")
        reaches(src, S.SAVED)
        assert IncomingMigration(h2.config, h2.table).restore(dst, path)
        reaches(dst, S.RUNNING)
        assert dst_qemu.loaded == STATE and not src_qemu.running() and dst_qemu.running()
