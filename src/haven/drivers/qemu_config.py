"""The settings of one host's QEMU driver (`QemuHostConfig`), and what follows from them alone:
where a VM's disks and saved state live, which port its live migration uses, the command-line
options every VM of the host shares."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from haven.drivers.qemu_accel import DEFAULT_ACCEL_CACHE, probe_accel
from haven.drivers.qemu_boot import DirectBoot
from haven.drivers.qemu_cmdline import MIGRATION_PORT_BASE, QEMU, CmdlineConfig, migration_port
from haven.model.spec import VmSpec
from haven.ports.hypervisor import HypervisorError

MIB = 1024 * 1024

TapFor = Callable[[VmSpec, int], str]


@dataclass(frozen=True)
class QemuHostConfig:
    """host_name: this host's name (details, errors). run_dir: per-VM entries (local, not shared).
    pools: pool name -> directory (shared storage). address: this host's management address,
    where incoming live migrations listen. network_namespace: run QEMU under `ip netns exec`
    (lab hosts). tap_for(spec, nic_index) -> tap name on this host's VM bridge (created by the
    caller). guest: boot VMs from this kernel and initrd (None: VMs boot whatever their disks
    hold). accel: auto | kvm | tcg (`resolved()` turns auto into what works here)."""

    host_name: str
    run_dir: Path
    pools: Mapping[str, Path]
    address: str = "127.0.0.1"
    network_namespace: str | None = None
    tap_for: TapFor | None = None
    guest: DirectBoot | None = None
    accel: str = "auto"
    binary: str = QEMU
    machine: str = "pc"
    image_locking: bool = True  # off only for lab tests that must see a double start (LAB-NOTES)
    stop_timeout: float = 30.0  # guest shutdown before the kill
    launch_timeout: float = 60.0  # QEMU's daemonizing parent must be done by then
    qmp_timeout: float = 3.0
    migration_bandwidth_mib: int = 256
    downtime_limit_ms: int = 100
    save_bandwidth_mib: int = 4096  # a save pauses the guest: go as fast as the disk takes it
    connect_retry_s: float = 10.0  # a live-migration target may still be launching
    migration_port_base: int = MIGRATION_PORT_BASE
    keep_state_files: bool = False
    accel_cache: Path | None = field(default=DEFAULT_ACCEL_CACHE)

    def __post_init__(self) -> None:
        # Accept str/PathLike as callers naturally have them; store Paths, pools read-only.
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "pools", MappingProxyType({name: Path(path) for name, path in self.pools.items()}))
        if self.accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, not {self.accel!r}")

    def resolved(self) -> QemuHostConfig:
        """This config with `accel` auto replaced by the probe's answer (kvm only if it boots here)."""
        if self.accel != "auto":
            return self
        return dataclasses.replace(self, accel=probe_accel(self.guest, self.binary, self.accel_cache))

    def cmdline(self) -> CmdlineConfig:
        if self.accel == "auto":
            raise ValueError("resolve accel auto first (QemuHostConfig.resolved)")
        guest = self.guest
        return CmdlineConfig(accel=self.accel, binary=self.binary, machine=self.machine,
                             kernel=guest.kernel if guest else None, initrd=guest.initrd if guest else None,
                             image_locking=self.image_locking)

    @property
    def migration_bandwidth(self) -> int:
        return self.migration_bandwidth_mib * MIB

    @property
    def save_bandwidth(self) -> int:
        return self.save_bandwidth_mib * MIB

    def migration_uri(self, address: str, vm: str) -> str:
        """Where the live-migration target of `vm` listens on the host at `address`: the port
        comes from the name, so the source computes it without asking the target."""
        return f"tcp:{address}:{migration_port(vm, self.migration_port_base)}"

    def pool_dir(self, pool: str) -> Path:
        try:
            return self.pools[pool]
        except KeyError:
            raise HypervisorError(f"{self.host_name}: pool {pool!r} not reachable here") from None

    def disk_paths(self, spec: VmSpec) -> list[Path]:
        return [self.pool_dir(d.pool) / (d.file or f"{spec.name}-{i}.qcow2") for i, d in enumerate(spec.disks)]

    def state_path(self, spec: VmSpec, generation: int) -> str:
        """A quick migration's state file: on the VM's first pool, which the target sees too."""
        pool = spec.disks[0].pool if spec.disks else next(iter(sorted(self.pools)), None)
        if pool is None:
            raise HypervisorError(f"{self.host_name}: no pool for the saved state of {spec.name}")
        return str(self.pool_dir(pool) / ".haven-state" / f"{spec.name}-g{generation}.state")
