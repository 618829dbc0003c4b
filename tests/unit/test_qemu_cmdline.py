"""The QEMU command-line builder, without QEMU."""
from __future__ import annotations

from pathlib import Path

import pytest

from haven.drivers.qemu_cmdline import (CmdlineConfig, DiskArg, VmPaths, build_cmdline, kernel_append,
                                        migration_port, resolve_cpu_model)
from haven.model.spec import Disk, Nic, VmSpec

KNOWN = frozenset({"qemu64", "Nehalem", "Haswell-noTSX-IBRS", "Westmere"})


def spec(**extra) -> VmSpec:
    base = dict(name="web", vcpus=2, memory_mib=256, disks=(Disk(pool="shared"),),
                nics=(Nic(mac="52:54:00:AA:00:01"),), kernel_args="haven.ip=10.78.0.100/24")
    base.update(extra)
    return VmSpec(**base)


def config(**extra) -> CmdlineConfig:
    base = dict(accel="tcg", kernel="/g/vmlinuz", initrd="/g/initrd.img", cpu_models=KNOWN)
    base.update(extra)
    return CmdlineConfig(**base)


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_full_command_line() -> None:
    paths = VmPaths.under("/run/haven", "web")
    argv = build_cmdline(spec(), config(), paths, [DiskArg("/pool/web-0.qcow2")], ["tap-web"])
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-m") == ["256"] and option(argv, "-smp") == ["2"]
    assert option(argv, "-accel") == ["tcg,tb-size=32"]
    assert option(argv, "-cpu") == ["Nehalem"]  # x86-64-v2 mapped: QEMU 7.2 does not know the name
    assert option(argv, "-serial") == ["file:/run/haven/web/serial.log"]
    assert option(argv, "-qmp") == ["unix:/run/haven/web/qmp.sock,server=on,wait=off"]
    assert option(argv, "-pidfile") == ["/run/haven/web/qemu.pid"]
    assert option(argv, "-kernel") == ["/g/vmlinuz"] and option(argv, "-initrd") == ["/g/initrd.img"]
    append = option(argv, "-append")[0]
    assert "console=ttyS0" in append and "haven.name=web" in append and "haven.ip=10.78.0.100/24" in append
    assert option(argv, "-blockdev") == [
        "driver=file,filename=/pool/web-0.qcow2,node-name=file0,cache.direct=on",
        "driver=qcow2,file=file0,node-name=disk0"]
    assert option(argv, "-netdev") == ["tap,id=net0,ifname=tap-web,script=no,downscript=no"]
    assert option(argv, "-device") == ["virtio-blk-pci,drive=disk0,id=vd0",
                                       "virtio-net-pci,netdev=net0,mac=52:54:00:aa:00:01,id=nic0",
                                       "virtio-serial-pci,id=vserial0",
                                       "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    assert option(argv, "-chardev") == ["socket,path=/run/haven/web/qga.sock,server=on,wait=off,id=qga0"]
    assert "-nodefaults" in argv and option(argv, "-display") == ["none"]
    assert argv[-1] == "-daemonize" and "-incoming" not in argv


def test_incoming_kvm_no_kernel_writeback_and_no_locking() -> None:
    argv = build_cmdline(spec(cpu_model="Haswell-noTSX-IBRS"), config(accel="kvm", kernel=None, image_locking=False),
                         VmPaths(Path("/r/web")), [DiskArg("/p/a,b.raw", "raw", "writeback")], ["t0"],
                         incoming="tcp:10.77.0.11:25000", daemonize=False)
    assert option(argv, "-accel") == ["kvm"]
    assert option(argv, "-cpu") == ["Haswell-noTSX-IBRS"]
    assert "-kernel" not in argv and "-append" not in argv
    assert option(argv, "-blockdev")[0] == "driver=file,filename=/p/a,,b.raw,node-name=file0,cache.direct=off,locking=off"
    assert option(argv, "-blockdev")[1].startswith("driver=raw,")
    assert option(argv, "-incoming") == ["tcp:10.77.0.11:25000"]
    assert "-daemonize" not in argv


def test_several_disks_and_nics_and_mismatches() -> None:
    s = spec(disks=(Disk(pool="a"), Disk(pool="b")), nics=(Nic(mac="52:54:00:00:00:01"), Nic(mac="52:54:00:00:00:02")))
    argv = build_cmdline(s, config(), VmPaths(Path("/r/web")), [DiskArg("/a/0.qcow2"), DiskArg("/b/1.qcow2")],
                         ["ta", "tb"])
    assert [d for d in option(argv, "-device") if d.startswith("virtio-blk")] == [
        "virtio-blk-pci,drive=disk0,id=vd0", "virtio-blk-pci,drive=disk1,id=vd1"]
    assert option(argv, "-netdev")[1].startswith("tap,id=net1,ifname=tb,")
    with pytest.raises(ValueError):
        build_cmdline(s, config(), VmPaths(Path("/r/web")), [DiskArg("/a/0.qcow2")], ["ta", "tb"])
    with pytest.raises(ValueError):
        build_cmdline(s, config(), VmPaths(Path("/r/web")), [DiskArg("/a"), DiskArg("/b")], ["ta"])
    with pytest.raises(ValueError):
        build_cmdline(s, config(accel="hvf"), VmPaths(Path("/r/web")), [DiskArg("/a"), DiskArg("/b")], ["ta", "tb"])


def test_cpu_models() -> None:
    assert resolve_cpu_model("x86-64-v2", KNOWN) == "Nehalem"
    assert resolve_cpu_model("x86-64-v1", KNOWN) == "qemu64"
    assert resolve_cpu_model("x86-64-v2", KNOWN | {"x86-64-v2"}) == "x86-64-v2"  # a newer QEMU knows it
    assert resolve_cpu_model("Westmere", KNOWN) == "Westmere"
    assert resolve_cpu_model("host", frozenset()) == "host"
    assert resolve_cpu_model("Nonsense", KNOWN) == "Nonsense"  # QEMU refuses it: the start fails


def test_migration_port_is_stable_and_in_range() -> None:
    ports = {migration_port(f"vm{i}") for i in range(200)}
    assert all(24000 <= p < 32000 for p in ports)
    assert migration_port("web") == migration_port("web")
    assert len(ports) > 190


def test_kernel_append() -> None:
    assert kernel_append(spec(kernel_args=""), "console=ttyS0") == "console=ttyS0 haven.name=web"
