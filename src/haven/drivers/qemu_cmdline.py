"""The QEMU command line for a VmSpec (pure: no processes, no files touched).

    argv = build_cmdline(spec, CmdlineConfig(...), VmPaths.under(run_dir, spec.name),
                         disks=[...], taps=[...], incoming="tcp:10.77.0.11:25123")
"""
from __future__ import annotations

import subprocess
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from haven.model.spec import VmSpec

QEMU = "qemu-system-x86_64"

# Baseline CPU names (x86-64 micro-architecture levels) for QEMUs that do not know them (7.2 does
# not): the oldest named model that has every feature of the level. Nehalem runs cleanly under TCG;
# Haswell/Skylake ask for features TCG lacks (QEMU warns and masks them).
CPU_MODEL_FALLBACKS = {
    "x86-64-v1": "qemu64",
    "x86-64-v2": "Nehalem",
    "x86-64-v2-aes": "Westmere",
    "x86-64-v3": "Haswell-noTSX-IBRS",
    "x86-64-v4": "Skylake-Server-noTSX-IBRS",
}

MIGRATION_PORT_BASE = 24000  # below Linux's ephemeral range (32768-60999)
MIGRATION_PORT_SPAN = 8000


def migration_port(vm: str, base: int = MIGRATION_PORT_BASE, span: int = MIGRATION_PORT_SPAN) -> int:
    """The TCP port a live-migration target listens on for `vm`: derived from the name, so the
    source computes it without asking the target (the port API passes only the host address)."""
    return base + zlib.crc32(vm.encode()) % span


@lru_cache(maxsize=8)
def qemu_cpu_models(binary: str = QEMU) -> frozenset[str]:
    """CPU model names `binary -cpu help` accepts (empty if it cannot be run)."""
    try:
        out = subprocess.run([binary, "-cpu", "help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    names: set[str] = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "x86":
            names.add(words[1])
    return frozenset(names)


def resolve_cpu_model(model: str, known: frozenset[str] | None = None) -> str:
    """`model` if QEMU knows it, else its fallback, else `model` unchanged (QEMU will refuse it)."""
    known = qemu_cpu_models() if known is None else known
    if model in known or model in ("host", "max"):
        return model
    return CPU_MODEL_FALLBACKS.get(model.lower(), model)


@dataclass(frozen=True)
class VmPaths:
    """One VM's entry in the driver's run directory."""

    dir: Path

    @classmethod
    def under(cls, run_dir: str | Path, name: str) -> VmPaths:
        return cls(Path(run_dir) / name)

    @property
    def meta(self) -> Path:
        return self.dir / "meta.json"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def guest_agent(self) -> Path:
        return self.dir / "qga.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def serial(self) -> Path:
        return self.dir / "serial.log"

    @property
    def stderr(self) -> Path:
        return self.dir / "qemu.stderr"


GUEST_AGENT_PORT = "org.qemu.guest_agent.0"  # the name qemu-ga looks for


@dataclass(frozen=True)
class DiskArg:
    path: str
    format: str = "qcow2"  # qcow2 | raw
    cache: str = "none"  # none (O_DIRECT, right for shared storage) | writeback


@dataclass(frozen=True)
class CmdlineConfig:
    accel: str = "tcg"  # tcg | kvm
    binary: str = QEMU
    machine: str = "pc"
    tb_size_mib: int = 32  # TCG translation cache (LAB-NOTES: ~30 MiB less RSS than the default)
    kernel: str | None = None
    initrd: str | None = None
    base_append: str = "console=ttyS0 quiet panic=1"
    image_locking: bool = True  # off only for lab tests that must see a double start (LAB-NOTES)
    cpu_models: frozenset[str] | None = None  # None: ask the binary
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def disk_format(path: str) -> str:
    return "qcow2" if path.endswith(".qcow2") else "raw"


def kernel_append(spec: VmSpec, base: str) -> str:
    parts = [base.strip(), f"haven.name={spec.name}", spec.kernel_args.strip()]
    return " ".join(p for p in parts if p)


def build_cmdline(spec: VmSpec, config: CmdlineConfig, paths: VmPaths, disks: list[DiskArg],
                  taps: list[str], incoming: str | None = None, daemonize: bool = True) -> list[str]:
    """argv for `spec`: one virtio-blk per disk, one virtio-net per NIC (fixed MAC, on its tap),
    serial to a file, one QMP socket, the guest agent's channel, optional `-incoming` (tcp:ADDR:PORT,
    or defer: a standby for a restore)."""
    if len(disks) != len(spec.disks):
        raise ValueError(f"{spec.name}: {len(spec.disks)} disks in the spec, {len(disks)} paths given")
    if len(taps) != len(spec.nics):
        raise ValueError(f"{spec.name}: {len(spec.nics)} NICs in the spec, {len(taps)} taps given")
    if config.accel == "tcg":
        accel = f"tcg,tb-size={config.tb_size_mib}" if config.tb_size_mib else "tcg"
    elif config.accel == "kvm":
        accel = "kvm"
    else:
        raise ValueError(f"unknown accelerator {config.accel!r}")
    argv = [
        config.binary,
        "-name", f"guest={spec.name},debug-threads=on",
        "-machine", config.machine,
        "-accel", accel,
        "-cpu", resolve_cpu_model(spec.cpu_model, config.cpu_models),
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-serial", f"file:{paths.serial}",
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
        "-pidfile", str(paths.pidfile),
        "-msg", "timestamp=on",
    ]
    if config.kernel:
        argv += ["-kernel", config.kernel]
        if config.initrd:
            argv += ["-initrd", config.initrd]
        argv += ["-append", kernel_append(spec, config.base_append)]
    for i, disk in enumerate(disks):
        direct = "on" if disk.cache == "none" else "off"
        locking = "" if config.image_locking else ",locking=off"
        argv += ["-blockdev", (f"driver=file,filename={_escape(disk.path)},node-name=file{i},"
                               f"cache.direct={direct}{locking}"),
                 "-blockdev", f"driver={disk.format},file=file{i},node-name=disk{i}",
                 "-device", f"virtio-blk-pci,drive=disk{i},id=vd{i}"]
    for i, (nic, tap) in enumerate(zip(spec.nics, taps, strict=True)):
        argv += ["-netdev", f"tap,id=net{i},ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net{i},mac={nic.mac},id=nic{i}"]
    # Every VM gets the guest agent's channel: a guest running `qemu-ga` can then be pinged and
    # run commands (guest-cluster services); one without it costs an idle virtio-serial device.
    argv += ["-device", "virtio-serial-pci,id=vserial0",
             "-chardev", f"socket,path={_escape(str(paths.guest_agent))},server=on,wait=off,id=qga0",
             "-device", f"virtserialport,chardev=qga0,name={GUEST_AGENT_PORT}"]
    if incoming:
        argv += ["-incoming", incoming]
    if daemonize:
        argv.append("-daemonize")
    argv += list(config.extra_args)
    return argv


def _escape(value: str) -> str:
    """QEMU option values: a comma is written as two commas."""
    return value.replace(",", ",,")
