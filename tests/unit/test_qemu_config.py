"""QemuHostConfig: the QEMU driver's settings and what follows from them alone."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from haven.drivers.qemu_boot import DirectBoot
from haven.drivers.qemu_cmdline import migration_port
from haven.drivers.qemu_config import QemuHostConfig
from haven.model.spec import Disk, VmSpec
from haven.ports.hypervisor import HypervisorError


def config(**extra) -> QemuHostConfig:
    base = dict(host_name="h1", run_dir="/run/haven/vms", pools={"shared": "/srv/shared"}, accel="tcg")
    base.update(extra)
    return QemuHostConfig(**base)  # type: ignore[arg-type]


def test_paths_are_normalised_and_the_settings_frozen() -> None:
    c = config()
    assert c.run_dir == Path("/run/haven/vms") and c.pools == {"shared": Path("/srv/shared")}
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.stop_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.pools["other"] = Path("/x")  # type: ignore[index]
    with pytest.raises(ValueError):
        config(accel="hvf")


def test_disks_state_and_migration_addresses() -> None:
    c = config(migration_port_base=30000)
    spec = VmSpec(name="web", disks=(Disk(pool="shared"), Disk(pool="shared", file="data.raw")))
    assert c.disk_paths(spec) == [Path("/srv/shared/web-0.qcow2"), Path("/srv/shared/data.raw")]
    assert c.state_path(spec, 3) == "/srv/shared/.haven-state/web-g3.state"
    assert c.migration_uri("10.0.0.2", "web") == f"tcp:10.0.0.2:{migration_port('web', 30000)}"
    with pytest.raises(HypervisorError, match="pool 'elsewhere' not reachable"):
        c.disk_paths(VmSpec(name="db", disks=(Disk(pool="elsewhere"),)))
    assert c.migration_bandwidth == 256 * 1024 * 1024


def test_command_line_settings() -> None:
    c = config(guest=DirectBoot("/g/vmlinuz", "/g/initrd"), image_locking=False, machine="q35")
    cmd = c.cmdline()
    assert (cmd.accel, cmd.kernel, cmd.initrd, cmd.machine, cmd.image_locking) == (
        "tcg", "/g/vmlinuz", "/g/initrd", "q35", False)
    assert c.resolved() is c  # nothing to probe
    with pytest.raises(ValueError):
        config(accel="auto").cmdline()  # resolve first
