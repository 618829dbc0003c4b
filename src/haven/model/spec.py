"""What the operator declares: hosts, VMs and cluster settings.

These are validated pydantic models. They are immutable: a change is a new spec written to the store.
Units: memory in MiB, times in seconds.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
MAC_PATTERN = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DesiredState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class MigrationKind(StrEnum):
    LIVE = "live"  # memory copied while the guest runs; no visible outage
    QUICK = "quick"  # save state to shared storage, restore on the target
    COLD = "cold"  # stop, then boot on the target


class PlacementPolicy(StrEnum):
    SPREAD = "spread"  # prefer the least loaded host
    PACK = "pack"  # prefer the most loaded host that still fits


class CpuVendor(StrEnum):
    INTEL = "intel"
    AMD = "amd"
    OTHER = "other"


class HostSpec(Frozen):
    """A physical host: static facts, registered once."""

    name: str = Field(pattern=NAME_PATTERN)
    address: str = Field(min_length=1, description="management address (migration traffic)")
    vcpus: int = Field(gt=0, le=4096)
    memory_mib: int = Field(gt=0)
    cpu_vendor: CpuVendor = CpuVendor.INTEL
    cpu_models: tuple[str, ...] = Field(
        default=("x86-64-v2",), description="CPU models this host can present to a guest"
    )
    pools: tuple[str, ...] = Field(default=("shared",), description="storage pools it reaches")
    labels: dict[str, str] = Field(default_factory=dict)


class PoolKind(StrEnum):
    SHARED = "shared"  # one directory every host reaching the pool sees (NFS, a SAN)
    REPLICATED = "replicated"  # each of two hosts keeps a copy on its own disks


class PoolSpec(Frozen):
    """A storage pool the operator declares. Hosts name the pools they reach; a pool not declared
    is a shared one."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: PoolKind = PoolKind.SHARED
    hosts: tuple[str, ...] = Field(default=(), description="replicated: the two hosts holding a copy")

    @model_validator(mode="after")
    def _pair(self) -> PoolSpec:
        if self.kind is PoolKind.REPLICATED:
            if len(self.hosts) != 2 or self.hosts[0] == self.hosts[1]:
                raise ValueError(f"replicated pool {self.name!r} needs two different hosts "
                                 f"(got {', '.join(self.hosts) or 'none'})")
        elif self.hosts:
            raise ValueError(f"pool {self.name!r}: hosts are named for a replicated pool only "
                             "(a shared pool is reached by the hosts that list it)")
        return self

    def peer(self, host: str) -> str | None:
        """The other host of a replicated pool (None for a host outside it)."""
        if host not in self.hosts:
            return None
        return self.hosts[1] if host == self.hosts[0] else self.hosts[0]


class Disk(Frozen):
    pool: str = Field(min_length=1)
    size_mib: int = Field(default=64, gt=0)
    file: str | None = Field(default=None, description="image path inside the pool; default <vm>-<n>.qcow2")


class Nic(Frozen):
    network: str = Field(default="vmnet", min_length=1)
    mac: str

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        value = value.lower()
        if not MAC_PATTERN.match(value):
            raise ValueError("must look like 52:54:00:12:34:56")
        return value


class RestartPolicy(Frozen):
    max_restarts: int = Field(default=3, ge=0, description="automatic restarts allowed within the window")
    window_s: float = Field(default=600.0, gt=0)
    # Like Proxmox's max_restart and Pacemaker's migration-threshold: a failure is often local to
    # the host (a busy disk, a leftover process), so try it there again before relocating.
    same_host_retries: int = Field(default=1, ge=0, description="restarts on the host a start failed on "
                                   "before moving to a host not tried yet")


class VmSpec(Frozen):
    """A virtual machine as the operator wants it."""

    name: str = Field(pattern=NAME_PATTERN)
    vcpus: int = Field(default=1, gt=0, le=512)
    memory_mib: int = Field(default=128, ge=72, description="72 MiB is the smallest guest that boots")
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    cpu_model: str = "x86-64-v2"
    priority: int = Field(default=2, ge=0, le=3, description="0 = never auto-start, 3 = recover first")
    # Each item is one priority level: a host name, or a list of hosts preferred equally (among
    # them the usual ranking picks). A flat list of names keeps meaning "in this order".
    preferred_hosts: tuple[str | tuple[str, ...], ...] = Field(
        default=(), description="hosts in order of preference; an item that is a list of hosts is one "
        "level of equally preferred hosts")
    restricted: bool = Field(default=False, description="run only on preferred_hosts: stay down rather "
                             "than start anywhere else")
    failback: bool | None = Field(default=None, description="move back when a more preferred host returns; "
                                  "unset: the cluster's failback setting")
    anti_affinity_group: str | None = Field(default=None, description="VMs of one group never share a host")
    affinity_group: str | None = Field(default=None, min_length=1,
                                       description="VMs of one group always share a host (keep together)")
    restart: RestartPolicy = RestartPolicy()
    migratable: bool = Field(default=True, description="false: never live-migrate (quick migration only)")
    desired: DesiredState = DesiredState.RUNNING
    kernel_args: str = Field(default="", description="extra guest kernel arguments (lab guests)")
    # Availability over safety, for a VM on a replicated pool: when its replica is lost and the
    # store cannot be told, keep acknowledging writes on the primary alone (a failover may then
    # lose them) instead of holding the guest's writes until the store answers.
    write_without_replica: bool = Field(default=False, description="replicated pool: when neither the "
                                        "replica nor the store answers, keep writing on this host alone")

    @field_validator("preferred_hosts", mode="before")
    @classmethod
    def _preference_levels(cls, value: object) -> object:
        if not isinstance(value, (list, tuple)):
            return value  # pydantic says what is wrong
        items: list[str | tuple[str, ...]] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                items.append(item)
            elif isinstance(item, (list, tuple)) and all(isinstance(name, str) for name in item):
                items.append(tuple(item))
            else:
                raise ValueError(f"item {i} must be a host name or a list of host names (got {item!r})")
        return tuple(items)

    @field_validator("preferred_hosts", mode="after")
    @classmethod
    def _each_host_once(cls, value: tuple[str | tuple[str, ...], ...]) -> tuple[str | tuple[str, ...], ...]:
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not item:
                raise ValueError(f"item {i} is an empty list: give a host name or a list of host names")
            for name in (item,) if isinstance(item, str) else item:
                if name in seen:
                    raise ValueError(f"host {name!r} is named twice")
                seen.add(name)
        return value

    @model_validator(mode="after")
    def _policies(self) -> VmSpec:
        if self.restricted and not self.preferred_hosts:
            raise ValueError("restricted needs preferred_hosts: the hosts the VM may run on")
        if self.affinity_group and self.affinity_group == self.anti_affinity_group:
            raise ValueError(f"affinity_group and anti_affinity_group are both {self.affinity_group!r}: "
                             "a VM cannot be kept with and apart from the same group")
        return self

    @property
    def preference_levels(self) -> tuple[tuple[str, ...], ...]:
        """`preferred_hosts` as levels of equally preferred hosts, most preferred first."""
        return tuple((item,) if isinstance(item, str) else item for item in self.preferred_hosts)

    @property
    def preferred_set(self) -> frozenset[str]:
        return frozenset(name for level in self.preference_levels for name in level)

    def preference_rank(self, host: str | None) -> int:
        """0 for the most preferred level; len(levels) for a host not preferred at all."""
        for rank, level in enumerate(self.preference_levels):
            if host in level:
                return rank
        return len(self.preferred_hosts)

    def allows(self, host: str) -> bool:
        """May the VM run on `host` at all? (Only its preferred hosts when restricted.)"""
        return not self.restricted or host in self.preferred_set

    def fails_back(self, cluster_failback: bool) -> bool:
        """Does this VM move back to a more preferred host? Its own `failback`, else the cluster's."""
        return cluster_failback if self.failback is None else self.failback

    @property
    def ha(self) -> bool:
        """An HA VM is restarted automatically after a failure."""
        return self.priority > 0

    @property
    def pools(self) -> frozenset[str]:
        return frozenset(d.pool for d in self.disks)


class HostShutdownPolicy(StrEnum):
    """What becomes of a host's VMs when the host is shut down or rebooted cleanly (Proxmox HA's
    `shutdown_policy`). Only a clean stop announces itself; a power cut is a host failure."""

    MIGRATE = "migrate"  # move them away first (a drain), then go
    FREEZE = "freeze"  # stop them, keep them placed there: they start there again when it returns
    FAILOVER = "failover"  # stop them and start them on the other hosts at once
    CONDITIONAL = "conditional"  # a reboot freezes (it is back soon), a shutdown fails over


class Settings(Frozen):
    """Cluster-wide knobs. Defaults follow docs/DESIGN.md section 4."""

    lease_ttl_s: float = Field(default=2.0, ge=1.0, le=60.0)
    renew_interval_s: float | None = Field(default=None, gt=0, description="default: TTL / 4")
    self_fence_margin_s: float = Field(default=0.5, gt=0)
    fence_grace_s: float = Field(default=0.3, ge=0)
    # Fast fencing (drivers.peer_udp's heartbeats): a host with a fence device whose direct heartbeats stop for
    # this long is switched off, and its VMs restart once the device confirms, without waiting for
    # its lease to run out. Off (None) by default: under heavy load a silent host may be healthy.
    heartbeat_timeout_s: float | None = Field(default=None, gt=0, description="power-fence a host with a fence "
                                              "device whose heartbeats stop this long (default: off)")
    heartbeat_interval_s: float = Field(default=0.1, gt=0, description="how often each host sends heartbeats")
    peer_port: int = Field(default=7580, ge=1, le=65535, description="UDP port of the daemons' own link "
                           "(heartbeats, the failsafe's question) on every host's management address")
    # Loops wake on store watches, local VM changes and deadlines; the ticks are only a safety net.
    manager_tick_s: float = Field(default=1.0, gt=0)
    agent_tick_s: float = Field(default=1.0, gt=0)
    host_settle_s: float = Field(default=5.0, ge=0, description="a host back from lost gets no VMs before this")
    vcpu_overcommit: float = Field(default=4.0, ge=1.0)
    memory_reserve_mib: int = Field(default=256, ge=0, description="kept free on every host for itself")
    host_failures_to_tolerate: int = Field(default=1, ge=0)
    placement_policy: PlacementPolicy = PlacementPolicy.SPREAD
    balance: bool = False
    balance_threshold: float = Field(default=0.2, gt=0, le=1.0, description="memory load above the mean")
    balance_max_moves: int = Field(default=2, ge=1)
    max_parallel_migrations: int = Field(default=2, ge=1, description="per source host")
    failback: bool = Field(default=False, description="move VMs back when a preferred host returns")
    return_after_maintenance: bool = Field(default=True, description="when a drained host is resumed, the "
                                           "VMs its drain moved away go back to it")
    shutdown_policy: HostShutdownPolicy = Field(default=HostShutdownPolicy.MIGRATE, description="what a host's "
                                                "VMs do when it is shut down or rebooted cleanly")
    migration_timeout_s: float = Field(default=60.0, gt=0)
    start_timeout_s: float = Field(default=60.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)
    event_log_size: int = Field(default=1000, ge=10)
    # core.failsafe: keep VMs running while every host agrees that only the store is out of reach.
    failsafe: bool = Field(default=False, description="while no host reaches the store, hosts keep their VMs "
                           "(each asks every peer; any peer that reaches the store or does not answer ends it)")
    failsafe_skew_s: float = Field(default=0.5, ge=0, allow_inf_nan=False,
                                   description="clock-rate allowance added to a manager's wait after its host "
                                   "reached the store again (with failsafe)")

    @property
    def renew_interval(self) -> float:
        return self.renew_interval_s or self.lease_ttl_s / 4

    @property
    def self_fence_after_s(self) -> float:
        """Seconds after the send time of the last good renewal at which a host kills its VMs."""
        return self.lease_ttl_s - self.self_fence_margin_s

    @model_validator(mode="after")
    def _timings(self) -> Settings:
        if self.self_fence_margin_s >= self.lease_ttl_s:
            raise ValueError("self_fence_margin_s must be smaller than lease_ttl_s")
        if self.renew_interval >= self.self_fence_after_s:
            raise ValueError("renew_interval_s must be shorter than lease_ttl_s - self_fence_margin_s")
        if self.heartbeat_timeout_s is not None and self.heartbeat_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(f"heartbeat_timeout_s ({self.heartbeat_timeout_s:g} s) must be at least two "
                             f"heartbeat intervals ({2 * self.heartbeat_interval_s:g} s): one lost datagram "
                             "must not switch a host off")
        # A full outage: a peer's last renewal may end an interval after ours, it answers "cannot"
        # 1.5 intervals later (core.failsafe.cut_off_after), and the round must be back (0.2 s:
        # the retry and the round's timeout) before our deadline; else the failsafe never starts.
        if self.failsafe and 2.5 * self.renew_interval + 0.2 >= self.self_fence_after_s:
            raise ValueError(f"failsafe needs lease_ttl_s - self_fence_margin_s ({self.self_fence_after_s:g} s) "
                             f"longer than 2.5 renew intervals + 0.2 s ({2.5 * self.renew_interval + 0.2:g} s): "
                             "shorten renew_interval_s or lengthen lease_ttl_s")
        return self


# --- guest-cluster services (model.service holds what the manager and agents record of them) ---

# A command run in the guest through the guest agent, as an argv list (no shell unless asked for).
Argv = tuple[str, ...]

class ServiceSpec(Frozen):
    """A service as the operator wants it. Times in seconds."""

    name: str = Field(pattern=NAME_PATTERN)
    members: tuple[str, ...] = Field(min_length=2, description="member VM names, each pinned to its own host")
    start: Argv = Field(min_length=1, description="starts the application in the guest")
    stop: Argv = Field(min_length=1, description="stops it; must end with nothing using the data disk")
    check: Argv = Field(min_length=1, description="exit status 0 = healthy")
    floating_ip: str = Field(description="address/prefix raised inside the active member, e.g. 10.0.9.10/24")
    data_disk: Disk | None = None
    mount_point: str = Field(default="/srv/data", description="where the data disk is mounted in the guest")
    preferred_member: str | None = Field(default=None, description="default: the first member")
    check_interval_s: float = Field(default=2.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1, description="consecutive failed checks that move the service")
    ping_timeout_s: float = Field(default=1.0, gt=0, description="a guest agent silent this long is hung")
    check_timeout_s: float = Field(default=5.0, gt=0, description="a check that has not ended by then failed")
    start_timeout_s: float = Field(default=60.0, gt=0, description="to take the disk and IP and start")
    stop_timeout_s: float = Field(default=30.0, gt=0, description="for a clean release, before a kill")
    # The anti-flap rule: a member the service left because it failed is not chosen again within
    # this time while another healthy member is there (it may still be the last one standing).
    failed_hold_s: float = Field(default=300.0, ge=0)
    desired: DesiredState = DesiredState.RUNNING

    @field_validator("members")
    @classmethod
    def _members(cls, members: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for member in members:
            if not re.fullmatch(NAME_PATTERN, member):
                raise ValueError(f"member {member!r} is not a valid VM name")
            if member in seen:
                raise ValueError(f"member {member!r} is listed twice")
            seen.add(member)
        return members

    @field_validator("start", "stop", "check")
    @classmethod
    def _argv(cls, argv: Argv) -> Argv:
        if not argv[0]:
            raise ValueError("the program (first word) must not be empty")
        return argv

    @field_validator("floating_ip")
    @classmethod
    def _floating_ip(cls, value: str) -> str:
        if "/" not in value:
            raise ValueError(f"{value!r} needs a prefix length, e.g. {value}/24")
        try:
            iface = ipaddress.IPv4Interface(value)
        except ValueError as e:
            raise ValueError(f"{value!r} is not an IPv4 address/prefix: {e}") from None
        net = iface.network
        if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
            raise ValueError(f"{iface.ip} cannot be a service address")
        if net.prefixlen <= 30 and iface.ip in (net.network_address, net.broadcast_address):
            raise ValueError(f"{iface.ip} is the network or broadcast address of {net}")
        return str(iface)

    @field_validator("mount_point")
    @classmethod
    def _mount_point(cls, value: str) -> str:
        if not value.startswith("/") or value == "/":
            raise ValueError("must be an absolute path other than /")
        return value

    @model_validator(mode="after")
    def _preferred(self) -> ServiceSpec:
        if self.preferred_member is not None and self.preferred_member not in self.members:
            raise ValueError(f"preferred_member {self.preferred_member!r} is not one of the members "
                             f"({', '.join(self.members)})")
        return self

    @property
    def order(self) -> tuple[str, ...]:
        """The members in order of preference: the preferred one, then as declared."""
        first = self.preferred_member or self.members[0]
        return (first, *(m for m in self.members if m != first))

    @property
    def data_file(self) -> str | None:
        """The data disk's image inside its pool (None without a data disk)."""
        if self.data_disk is None:
            return None
        return self.data_disk.file or f"{self.name}-data.qcow2"


# --- whole-config checks ---

def pinned_host(vm: VmSpec) -> str | None:
    """The host a member VM is pinned to: its only preferred host (None unless it names exactly
    one). A member never moves: the service moves between members instead."""
    named = [host for item in vm.preferred_hosts for host in ((item,) if isinstance(item, str) else item)]
    return named[0] if len(named) == 1 else None


def check_services(services: Iterable[ServiceSpec], vms: Iterable[VmSpec], hosts: Iterable[HostSpec]) -> list[str]:
    """Problems only the whole config shows, one clear sentence each ([] when none)."""
    vm_by_name = {vm.name: vm for vm in vms}
    host_by_name = {h.name: h for h in hosts}
    problems: list[str] = []
    owner: dict[str, str] = {}  # member VM -> service
    names: set[str] = set()
    ips: dict[str, str] = {}
    disks: dict[tuple[str, str], str] = {}
    for vm in vm_by_name.values():
        for n, d in enumerate(vm.disks):
            disks[(d.pool, d.file or f"{vm.name}-{n}.qcow2")] = f"vm {vm.name}"
    for svc in services:
        where = f"service {svc.name}"
        if svc.name in names:
            problems.append(f"{where}: the name is used twice")
        names.add(svc.name)
        address = svc.floating_ip.split("/")[0]
        if address in ips:
            problems.append(f"{where}: floating IP {address} is already service {ips[address]}'s")
        ips.setdefault(address, svc.name)
        if svc.data_disk is not None and svc.data_file is not None:
            key = (svc.data_disk.pool, svc.data_file)
            if key in disks:
                problems.append(f"{where}: data disk {key[1]} on pool {key[0]} is already used by {disks[key]}")
            disks.setdefault(key, where)
        on_host: dict[str, str] = {}
        for member in svc.members:
            member_vm = vm_by_name.get(member)
            if member_vm is None:
                problems.append(f"{where}: member {member} is not a declared VM")
                continue
            if member in owner:
                problems.append(f"{where}: vm {member} is already a member of service {owner[member]}")
            owner.setdefault(member, svc.name)
            host = pinned_host(member_vm)
            if host is None:
                problems.append(f"{where}: member {member} must be pinned to one host "
                                "(give it exactly one preferred host)")
                continue
            if host not in host_by_name:
                problems.append(f"{where}: member {member} is pinned to {host}, which is not a declared host")
                continue
            if host in on_host:
                problems.append(f"{where}: members {on_host[host]} and {member} are both on host {host}; "
                                "one host failure would take both")
            on_host.setdefault(host, member)
            if svc.data_disk is not None and svc.data_disk.pool not in host_by_name[host].pools:
                problems.append(f"{where}: host {host} (member {member}) cannot reach pool {svc.data_disk.pool} "
                                "of the data disk")
    return problems


class ClusterConfig(Frozen):
    """A whole cluster declaration, as loaded from YAML."""

    name: str = Field(default="demo", pattern=NAME_PATTERN)
    settings: Settings = Settings()
    hosts: tuple[HostSpec, ...] = ()
    vms: tuple[VmSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()  # guest clusters over member VMs (model.service)
    pools: tuple[PoolSpec, ...] = ()  # only the replicated ones need declaring (model.replica)

    @model_validator(mode="after")
    def _references(self) -> ClusterConfig:
        problems: list[str] = []
        for kind, items in (("host", self.hosts), ("vm", self.vms)):
            seen: set[str] = set()
            for item in items:
                if item.name in seen:
                    problems.append(f"{kind} name {item.name!r} is used twice")
                seen.add(item.name)
        host_names = {h.name for h in self.hosts}
        macs: dict[str, str] = {}
        for vm in self.vms:
            for pref in sorted(vm.preferred_set):
                if pref not in host_names:
                    problems.append(f"vm {vm.name}: preferred host {pref!r} is not a declared host")
            for nic in vm.nics:
                if nic.mac in macs:
                    problems.append(f"vm {vm.name}: MAC {nic.mac} is already used by vm {macs[nic.mac]}")
                macs[nic.mac] = vm.name
        problems += affinity_problems(self.vms)
        problems += pool_problems(self.pools, self.hosts, self.vms)
        problems += check_services(self.services, self.vms, self.hosts)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def affinity_problems(vms: Iterable[VmSpec]) -> list[str]:
    """Groups that can never be placed: keep-together members kept apart by an anti-affinity group
    or restricted to hosts no member shares; anti-affinity members restricted to fewer hosts than
    there are of them."""
    vms = list(vms)
    groups: dict[str, list[VmSpec]] = {}
    apart_groups: dict[str, list[VmSpec]] = {}
    for vm in vms:
        if vm.affinity_group:
            groups.setdefault(vm.affinity_group, []).append(vm)
        if vm.anti_affinity_group and vm.restricted:
            apart_groups.setdefault(vm.anti_affinity_group, []).append(vm)
    problems: list[str] = []
    for group, members in sorted(apart_groups.items()):
        allowed = frozenset().union(*(vm.preferred_set for vm in members))
        if len(allowed) < len(members):
            names = ", ".join(sorted(vm.name for vm in members))
            problems.append(f"anti-affinity group {group!r}: vms {names} are restricted to "
                            f"{len(allowed)} host(s) between them ({', '.join(sorted(allowed))})")
    for group, members in sorted(groups.items()):
        apart: dict[str, str] = {}
        for vm in sorted(members, key=lambda v: v.name):
            if vm.anti_affinity_group in apart:
                problems.append(f"vm {vm.name}: keep-together group {group!r} also holds vm "
                                f"{apart[vm.anti_affinity_group]} of its anti-affinity group "
                                f"{vm.anti_affinity_group!r}: they can never share a host")
            elif vm.anti_affinity_group:
                apart[vm.anti_affinity_group] = vm.name
        restricted = [vm for vm in members if vm.restricted]
        if restricted:
            common = frozenset.intersection(*(vm.preferred_set for vm in restricted))
            if not common:
                names = ", ".join(sorted(vm.name for vm in restricted))
                problems.append(f"keep-together group {group!r}: vms {names} are restricted to hosts "
                                "they do not share")
    return problems


def pool_problems(pools: Iterable[PoolSpec], hosts: Iterable[HostSpec], vms: Iterable[VmSpec]) -> list[str]:
    """A replicated pool's two hosts are declared and list it, and no other host does; a disk on
    one is a raw image (docs/LAB-NOTES.md: a qcow2 replica behind a writeback cache lost writes)."""
    hosts, vms = list(hosts), list(vms)
    problems: list[str] = []
    seen: set[str] = set()
    for pool in pools:
        if pool.name in seen:
            problems.append(f"pool name {pool.name!r} is used twice")
        seen.add(pool.name)
        if pool.kind is not PoolKind.REPLICATED:
            continue
        declared = {h.name for h in hosts}
        for name in pool.hosts:
            if name not in declared:
                problems.append(f"replicated pool {pool.name}: host {name!r} is not a declared host")
        for host in hosts:
            listed = pool.name in host.pools
            if host.name in pool.hosts and not listed:
                problems.append(f"host {host.name} holds a copy of replicated pool {pool.name}: add it to its pools")
            elif host.name not in pool.hosts and listed:
                problems.append(f"host {host.name} lists replicated pool {pool.name}, which lives on "
                                f"{' and '.join(pool.hosts)} only")
        for vm in vms:
            for n, disk in enumerate(vm.disks):
                if disk.pool == pool.name and not (disk.file or "").endswith(".raw"):
                    problems.append(f"vm {vm.name}: disk {n} is on replicated pool {pool.name}: give it a raw "
                                    f"image (file: {vm.name}-{n}.raw)")
    return problems
