"""A QEMU driver host for unit tests: its config and VM table, and VMs whose QEMU is a FakeQemu."""
from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from haven.drivers.qemu_cmdline import VmPaths
from haven.drivers.qemu_config import QemuHostConfig
from haven.drivers.qemu_process import MonotonicClock
from haven.drivers.qemu_vm import VmRecord, VmTable
from haven.model.spec import Disk, VmSpec
from haven.model.state import LocalState

from .fake_qmp import FakeQemu


@dataclass
class Host:
    root: Path
    config: QemuHostConfig
    table: VmTable
    fakes: list[FakeQemu] = field(default_factory=list)
    notices: list[float] = field(default_factory=list)  # when on_change was called

    def qemu(self, name: str = "web", status: str = "running") -> FakeQemu:
        """A fake QEMU serving `name`'s monitor socket (as a launch would leave it)."""
        paths = VmPaths.under(self.config.run_dir, name)
        paths.dir.mkdir(parents=True, exist_ok=True)
        fake = FakeQemu(paths.qmp, status)
        self.fakes.append(fake)
        return fake

    def vm(self, state: LocalState, origin: str = "boot", name: str = "web", status: str = "running",
           generation: int = 1) -> tuple[VmRecord, FakeQemu]:
        """A VM record in the table, its QEMU a fake in run state `status`."""
        fake = self.qemu(name, status)
        vm = VmRecord(name, generation, spec(name), VmPaths.under(self.config.run_dir, name), state,
                      self.table.clock.now(), origin=origin, pid=fake.pid, starttime=fake.starttime,
                      qmp_timeout=self.config.qmp_timeout)
        self.table.add(vm)
        return vm, fake


def spec(name: str = "web") -> VmSpec:
    return VmSpec(name=name, memory_mib=128, disks=(Disk(pool="shared", size_mib=32),))


@contextmanager
def host(**settings: object) -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="hq-", dir="/tmp"))  # short: unix socket paths stop at 107 bytes
    base: dict[str, object] = dict(host_name="h1", run_dir=root / "run", pools={"shared": root / "pool"},
                                   address="10.0.0.1", accel="tcg", qmp_timeout=1.0, connect_retry_s=0.5)
    base.update(settings)
    config = QemuHostConfig(**base)  # type: ignore[arg-type]
    h = Host(root, config, VmTable("h1", MonotonicClock()))
    h.table.on_change = lambda: h.notices.append(time.monotonic())
    try:
        yield h
    finally:
        for fake in h.fakes:
            fake.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
