"""The host daemon's configuration file (`haven node run --config FILE`)."""
from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from haven.drivers.qemu_boot import DirectBoot
from haven.drivers.qemu_config import QemuHostConfig
from haven.drivers.tap import bridge_taps
from haven.model.fencing import FencingConfig, check_private
from haven.model.load import load_yaml_file, validate
from haven.model.spec import HostSpec, Settings


class ShutdownPolicy(StrEnum):
    CLUSTER = "cluster"  # the cluster's `shutdown_policy`; systemd tells a reboot from a shutdown
    MIGRATE = "migrate"  # drain this host (VMs move away), then leave the cluster
    STOP = "stop"  # stop this host's VMs (they start on the other hosts), then leave the cluster
    KEEP = "keep"  # a restart of the daemon: VMs keep running, the next run resumes the lease


class ApiConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    listen: str = "127.0.0.1"
    port: int = Field(default=8470, ge=1, le=65535)
    admin_token: str = Field(min_length=8)
    read_token: str = Field(min_length=8)


class GuestConfig(BaseModel):
    """Boot VMs from this kernel and initrd (the lab guest, an appliance) instead of their disks."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    kernel: Path
    initrd: Path
    ready_marker: str | None = Field(default=None, description="a serial console line the guest prints once "
                                     "it is up; without it a VM is running once QEMU runs it")
    disk_filesystem: str | None = Field(default=None, description="format new disks with this filesystem "
                                        "(mkfs.<name>), for a guest that cannot make its own")


class NodeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    cluster: str = Field(default="demo")
    etcd: list[str] = Field(min_length=1, description="etcd client URLs")
    host: HostSpec
    pools: dict[str, Path] = Field(description="storage pool name -> directory (shared storage)")
    run_dir: Path = Path("/run/haven")
    watchdog_file: Path | None = Field(default=None, description="deadline file the watchdog process reads "
                                       "(`haven node watchdog`, the lab's)")
    watchdog_device: Path | None = Field(default=None, description="a Linux watchdog device (/dev/watchdog) "
                                         "this daemon holds: the host resets when the agent stops renewing")
    vm_bridge: str | None = Field(default=None, description="bridge for VM NIC taps (created on demand)")
    guest: GuestConfig | None = None
    accel: str = Field(default="auto", pattern="^(auto|kvm|tcg)$")
    store_timeout_s: float = Field(default=0.5, gt=0)
    shutdown: ShutdownPolicy = ShutdownPolicy.CLUSTER
    shutdown_timeout_s: float = Field(default=120.0, gt=0)
    api: ApiConfig | None = None
    migration_bandwidth_mib: int = Field(default=1024, gt=0)
    downtime_limit_ms: int = Field(default=100, gt=0)
    image_locking: bool = Field(default=True, description="QEMU's image locks; the lab turns them off so "
                                "that a fencing bug shows as a double run instead of a lock error")
    fencing: FencingConfig | None = Field(default=None, description="power-fence devices this node's manager "
                                          "may use, per host (checked at load: agent installed, secrets private)")
    peer_key_file: Path | None = Field(default=None, description="a secret shared by every host (mode 0600): "
                                       "the daemons' own link (heartbeats, failsafe) signs every datagram with it")

    @field_validator("peer_key_file")
    @classmethod
    def _private_key(cls, path: Path | None) -> Path | None:
        if path is not None:
            check_private(path, "peer key file")
        return path

    @model_validator(mode="after")
    def _one_watchdog(self) -> NodeConfig:
        if self.watchdog_file is not None and self.watchdog_device is not None:
            raise ValueError("give watchdog_file (the watchdog process's deadline file) or watchdog_device "
                             "(a Linux watchdog device such as /dev/watchdog), not both")
        return self


def qemu_host_config(config: NodeConfig, settings: Settings) -> QemuHostConfig:
    """What the QEMU driver needs of a node's configuration and the cluster's settings."""
    guest = config.guest
    return QemuHostConfig(
        host_name=config.host.name, run_dir=config.run_dir / "vms", pools=config.pools, address=config.host.address,
        tap_for=bridge_taps(config.vm_bridge) if config.vm_bridge else None,
        guest=DirectBoot(str(guest.kernel), str(guest.initrd), guest.ready_marker, guest.disk_filesystem)
        if guest else None,
        accel=config.accel, stop_timeout=settings.stop_timeout_s, image_locking=config.image_locking,
        migration_bandwidth_mib=config.migration_bandwidth_mib, downtime_limit_ms=config.downtime_limit_ms)


def load_node_config(path: str | Path) -> NodeConfig:
    return validate(NodeConfig, load_yaml_file(path) or {}, str(path))
