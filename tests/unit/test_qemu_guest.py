"""`QemuGuest`: the guest port over the QEMU driver translates names and errors, nothing more."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from haven.drivers.guest_agent import ExecResult, GuestAgentError
from haven.drivers.qemu_guest import QemuGuest
from haven.ports.guest import GuestError
from haven.ports.hypervisor import HypervisorError


class _Agent:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def ping(self, timeout: float) -> bool:
        return not self.fail

    def exec(self, argv: list[str], timeout: float, silence: float | None = None) -> ExecResult:
        if self.fail:
            raise GuestAgentError("no answer within 1 s")
        return ExecResult(3, "out", "err")


class _Config:
    root = Path("/pools")
    guest = None

    def pool_dir(self, pool: str) -> Path:
        return self.root / pool


class _Hypervisor:
    """The few QemuHypervisor methods the adapter calls."""

    def __init__(self) -> None:
        self.config = _Config()
        self.calls: list[tuple[Any, ...]] = []
        self.vms = {"db1": _Agent(False), "hung": _Agent(True)}
        self.monitor_fails = False

    def guest_agent(self, name: str) -> _Agent:
        if name not in self.vms:
            raise HypervisorError(f"no VM {name}")
        return self.vms[name]

    def attach_disk(self, name: str, device_id: str, path: str) -> None:
        self.calls.append(("attach", name, device_id, path))

    def detach_disk(self, name: str, device_id: str) -> None:
        self.calls.append(("detach", name, device_id))

    def pid(self, name: str) -> int | None:
        return 42 if name in self.vms else None

    def attached_disks(self, name: str) -> set[str]:
        if self.monitor_fails:
            raise HypervisorError("monitor closed")
        return {"svc-db"}


def guest() -> tuple[QemuGuest, _Hypervisor]:
    hv = _Hypervisor()
    return QemuGuest(hv), hv  # type: ignore[arg-type]


def test_exec_returns_the_exit_status_and_output_and_turns_silence_into_a_guest_error():
    port, _ = guest()
    result = port.exec("db1", ("db", "check"), 1.0)
    assert (result.exit_code, result.stdout, result.stderr, result.ok) == (3, "out", "err", False)
    with pytest.raises(GuestError, match="hung: no answer"):
        port.exec("hung", ("db", "check"), 1.0)
    with pytest.raises(GuestError):
        port.exec("gone", ("db", "check"), 1.0)


def test_ping_is_false_for_a_silent_or_unknown_guest():
    port, _ = guest()
    assert port.ping("db1", 1.0) and not port.ping("hung", 1.0) and not port.ping("gone", 1.0)


def test_a_pool_relative_image_is_attached_from_the_pools_directory(monkeypatch):
    port, hv = guest()
    monkeypatch.setattr("haven.drivers.qemu_guest.create_disk", lambda *args: None)
    port.attach_disk("db1", "svc-db", "san/db-data.qcow2", 16)
    port.detach_disk("db1", "svc-db")
    assert hv.calls == [("attach", "db1", "svc-db", "/pools/san/db-data.qcow2"), ("detach", "db1", "svc-db")]


def test_disks_of_a_dead_qemu_are_none_but_a_silent_monitor_is_not_read_as_none():
    port, hv = guest()
    assert port.attached_disks("gone") == set() and port.attached_disks("db1") == {"svc-db"}
    hv.monitor_fails = True
    with pytest.raises(HypervisorError):
        port.attached_disks("db1")


def test_a_missing_data_disk_is_created_empty_in_its_pool_before_the_attach(tmp_path, monkeypatch):
    port, hv = guest()
    hv.config.root = tmp_path
    made: list[tuple[str, int, str]] = []
    monkeypatch.setattr("haven.drivers.qemu_guest.create_disk",
                        lambda path, size, fmt, fs: made.append((str(path), size, fmt)))
    port.attach_disk("db1", "svc-db", "san/db-data.qcow2", 16)
    assert made == [(str(tmp_path / "san" / "db-data.qcow2"), 16, "qcow2")]
    assert hv.calls == [("attach", "db1", "svc-db", str(tmp_path / "san" / "db-data.qcow2"))]
    (tmp_path / "san").mkdir()
    (tmp_path / "san" / "db-data.qcow2").write_bytes(b"kept")
    port.attach_disk("db1", "svc-db", "san/db-data.qcow2", 16)
    assert len(made) == 1  # an image that exists is never made again: it holds the service's data


def test_steps_run_in_one_shell_and_the_exit_status_names_the_first_that_failed():
    port, hv = guest()
    ran: list[list[str]] = []

    def exec_(argv: list[str], timeout: float, silence: float | None = None) -> ExecResult:
        ran.append(argv)
        return ExecResult(101 if "fail" in argv[2] else 0, "", "no disk")

    hv.vms["db1"].exec = exec_  # type: ignore[method-assign]
    steps = [["mount", "/dev/vdb", "/srv data"], ["ip", "addr", "add"], ["db", "start"]]
    assert port.exec_steps("db1", steps, 5.0)[0] == 3
    assert ran[0][:2] == ["/bin/sh", "-c"] and "mount /dev/vdb '/srv data' || exit 100" in ran[0][2]
    count, result = port.exec_steps("db1", [["true"], ["fail"], ["db", "start"]], 5.0)
    assert (count, result.exit_code, result.stderr) == (1, 101, "no disk")  # the first ran, the second failed
