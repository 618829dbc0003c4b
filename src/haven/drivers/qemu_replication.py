"""The replication port (`ports.replication`) on real hosts: `qemu-storage-daemon` exports of the
copies this host holds, QEMU mirrors of the disks of the VMs it runs (`drivers.replication`).

Each copy is served on its own TCP port, derived from the VM name and disk index as the live
migration port is (the primary computes it without asking), and found again after a daemon
restart through its pid file. The probe reads the NBD server's greeting: a TCP connect alone
succeeds against a server that is stopped (SIGSTOP, a frozen host) since the kernel completes the
handshake, the greeting does not.
"""
from __future__ import annotations

import socket
import zlib
from pathlib import Path

from haven.drivers.qemu import QemuHypervisor
from haven.drivers.replication import ReplicaExport
from haven.model.spec import VmSpec
from haven.ports.hypervisor import HypervisorError
from haven.ports.replication import MirrorPhase, MirrorState, ReplicationError

NBD_PORT_BASE = 16000  # below the live-migration ports (24000-31999)
NBD_PORT_SPAN = 8000
NBD_GREETING = b"NBDMAGIC"
PROBE_TIMEOUT_S = 0.3


def nbd_port(vm: str, disk: int) -> int:
    return NBD_PORT_BASE + zlib.crc32(f"{vm}.{disk}".encode()) % NBD_PORT_SPAN


def export_name(vm: str, disk: int) -> str:
    return f"{vm}.{disk}"  # a VM name has no dot


class QemuReplication:
    def __init__(self, hypervisor: QemuHypervisor) -> None:
        self.hv = hypervisor
        self.config = hypervisor.config
        self.run_dir = self.config.run_dir / "replicas"

    def _export(self, vm: str, disk: int, image: Path, size_mib: int) -> ReplicaExport:
        return ReplicaExport(image, size_mib, self.config.address, nbd_port(vm, disk), export_name(vm, disk),
                             self.run_dir, self.config.network_namespace)

    def exports(self) -> set[tuple[str, int]]:
        served: set[tuple[str, int]] = set()
        for pidfile in sorted(self.run_dir.glob("nbd-*.pid")):
            vm, _, disk = pidfile.name.removeprefix("nbd-").removesuffix(".pid").rpartition(".")
            if vm and disk.isdigit() and self._export(vm, int(disk), Path(), 0).running():
                served.add((vm, int(disk)))
        return served

    def start_export(self, spec: VmSpec, disk: int) -> None:
        try:
            image = self.config.disk_paths(spec)[disk]
            self._export(spec.name, disk, image, spec.disks[disk].size_mib).start()
        except (HypervisorError, IndexError, OSError) as error:
            where = f"{self.config.host_name}: cannot serve disk {disk} of {spec.name}"
            raise ReplicationError(f"{where}: {error}") from error

    def stop_export(self, vm: str, disk: int) -> None:
        self._export(vm, disk, Path(), 0).stop()  # found by its pid file: the image is not needed

    def mirror(self, vm: str, disk: int) -> MirrorState:
        if vm not in self.hv.list():
            return MirrorState(MirrorPhase.ABSENT)
        try:
            return self.hv.replication(vm, disk)
        except HypervisorError as error:
            raise ReplicationError(str(error)) from error

    def start_mirror(self, vm: str, disk: int, peer: str, address: str) -> None:
        try:
            self.hv.start_replication(vm, disk, address, nbd_port(vm, disk), export_name(vm, disk))
        except HypervisorError as error:
            raise ReplicationError(f"{error} (to {peer})") from error

    def replica_answers(self, vm: str, disk: int, peer: str, address: str) -> bool:
        try:
            with socket.create_connection((address, nbd_port(vm, disk)), timeout=PROBE_TIMEOUT_S) as conn:
                greeting = b""
                while len(greeting) < len(NBD_GREETING):
                    chunk = conn.recv(len(NBD_GREETING) - len(greeting))
                    if not chunk:
                        return False
                    greeting += chunk
                return greeting == NBD_GREETING
        except OSError:
            return False

    def release_mirror(self, vm: str, disk: int) -> None:
        try:
            self.hv.release_replication(vm, disk)
        except HypervisorError as error:
            raise ReplicationError(str(error)) from error
