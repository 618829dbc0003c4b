"""The source article's comparison: one host cluster with VMs as HA roles (Diagram A) against a
guest cluster per workload, two VMs each (Diagram B): OS instances, clusters to manage, licence
cost, host failures survived, and whether dissimilar hosts (CPU vendors) are fine."""
from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from haven.model.spec import CpuVendor


class LicenceModel(StrEnum):
    PER_INSTANCE = "per-instance"  # every OS instance, physical or virtual, needs a licence
    PER_HOST = "per-host"  # a host edition covers unlimited virtual instances on that host


class Workloads(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    count: int = Field(gt=0)
    vcpus: int = Field(default=2, gt=0)
    memory_mib: int = Field(default=4096, gt=0)


class PlanHost(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    vcpus: int = Field(gt=0)
    memory_mib: int = Field(gt=0)
    cpu_vendor: CpuVendor = CpuVendor.INTEL


class Licensing(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    model: LicenceModel = LicenceModel.PER_INSTANCE
    price: float = Field(default=1000.0, ge=0, description="per instance, or per host edition")


class TopologyInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    workloads: Workloads
    hosts: list[PlanHost] = Field(min_length=2)
    licensing: Licensing = Licensing()
    memory_reserve_mib: int = Field(default=1024, ge=0, description="kept free on each host for itself")


class Topology(BaseModel):
    name: str
    os_instances: int
    clusters: int
    licence_cost: float
    host_failures_survived: int
    dissimilar_hosts: str


def _licence(data: TopologyInput, instances: int) -> float:
    if data.licensing.model is LicenceModel.PER_HOST:
        return data.licensing.price * len(data.hosts)
    return data.licensing.price * instances


def members_fit(data: TopologyInput) -> bool:
    """Whether every workload's two members (haven services: always running, each pinned to its
    own host) fit at once: each pair on the two hosts with the most room left."""
    room = sorted(((h.memory_mib - data.memory_reserve_mib) // data.workloads.memory_mib for h in data.hosts),
                  reverse=True)
    for _ in range(data.workloads.count):
        if len(room) < 2 or room[1] < 1:
            return False
        room[0] -= 1
        room[1] -= 1
        room.sort(reverse=True)
    return True


def _failures_survived(data: TopologyInput, vms: int, pairs: bool) -> int:
    """Host failures after which every workload still runs: the smallest surviving hosts must
    hold all its VMs (a host cluster), or one VM of each pair must survive (guest clusters, whose
    members must all fit to begin with)."""
    if pairs and not members_fit(data):
        return 0
    hosts = sorted(data.hosts, key=lambda h: h.memory_mib)
    need = data.workloads.memory_mib
    survived = 0
    for failures in range(1, len(hosts)):
        survivors = hosts[: len(hosts) - failures]  # the worst case: the biggest hosts die
        room = sum((h.memory_mib - data.memory_reserve_mib) // need for h in survivors)
        # a guest cluster's passive VM is already running: it needs no new room, only a survivor
        enough = failures < 2 if pairs else room >= vms
        if not enough:
            break
        survived = failures
    return survived


def compare(data: TopologyInput) -> list[Topology]:
    hosts, n = len(data.hosts), data.workloads.count
    mixed = len({h.cpu_vendor for h in data.hosts}) > 1
    host_cluster = Topology(
        name="A: host cluster",
        os_instances=hosts + n, clusters=1, licence_cost=_licence(data, hosts + n),
        host_failures_survived=_failures_survived(data, n, pairs=False),
        dissimilar_hosts="yes, via the baseline CPU model" + (" (these mix vendors)" if mixed else ""))
    guest_clusters = Topology(
        name="B: guest clusters (haven services, 2 members each)",
        os_instances=hosts + 2 * n, clusters=n, licence_cost=_licence(data, hosts + 2 * n),
        host_failures_survived=_failures_survived(data, 2 * n, pairs=True),
        dissimilar_hosts="yes, no VM moves between hosts")
    return [host_cluster, guest_clusters]
