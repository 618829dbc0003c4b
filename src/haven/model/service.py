"""Guest-cluster services: what the operator declares and what the manager and the agents record.

A service, the second kind of resource beside the VM (docs/DESIGN.md section 10), is an
application that fails over between two or more member VMs, each pinned to its own host and
always running as a warm standby. The active member holds the service's floating IP and, if it
has one, its data disk (a file on a shared pool, hot-plugged into that member only).
haven talks to the guest through the QEMU guest agent, so no cluster software runs in the guest.

Who writes what (docs/DESIGN.md section 6 gains `/haven/<cluster>/services/<name>/...`):
- `ServiceSpec`: the operator (API, YAML).
- `ServiceState`: the manager, guarded by its leader key. `generation` is the service's fencing
  token: it grows every time `active` changes, so a report names the decision it was made under.
- `MemberFacts`: the agent of the member's host, under that host's lease. `lease` and `generation`
  say how fresh it is: a report made under an older lease, or before the current generation was
  read, proves nothing about now.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from haven.model.spec import NAME_PATTERN, DesiredState, Disk, Frozen, HostSpec, VmSpec

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


class ServicePhase(StrEnum):
    STOPPED = "stopped"  # desired stopped, and no member holds anything
    STARTING = "starting"  # `active` chosen from stopped or down: it takes the disk and IP, runs start
    RUNNING = "running"  # `active` holds everything and the start command succeeded
    MOVING = "moving"  # `active` is a new member: the old one releases (or is killed), then it takes over
    STOPPING = "stopping"  # no active member: every member releases
    DOWN = "down"  # desired running, but no member can run it (`reason` says why)


ACTIVE_PHASES = frozenset({ServicePhase.STARTING, ServicePhase.RUNNING, ServicePhase.MOVING})


class GuestHealth(StrEnum):
    """The member's guest agent, as its host's agent last saw it."""

    BOOTING = "booting"  # not answered yet since this QEMU started
    ANSWERING = "answering"
    SILENT = "silent"  # answered in this boot, then not within ping_timeout_s: a hung guest


class FenceOrder(Frozen):
    """The manager's order to kill one member's QEMU: the one started as `boot`, not a later one."""

    member: str
    boot: int
    reason: str


class MemberExit(Frozen):
    """The service left `member` because it failed, at `at` (manager's clock): the anti-flap memory."""

    member: str
    at: float
    reason: str


class ServiceAction(StrEnum):
    MOVE = "move"


class ServiceRequest(Frozen):
    """Operator intent for a service, beyond its desired state."""

    id: str = Field(min_length=1)
    action: ServiceAction = ServiceAction.MOVE
    target: str | None = None  # None: the best other member


class ServiceState(Frozen):
    """The manager's decision for one service."""

    service: str
    phase: ServicePhase = ServicePhase.STOPPED
    active: str | None = None
    generation: int = Field(default=0, ge=0)
    since: float = 0.0  # when phase, active or generation last changed (manager's clock)
    reason: str = ""
    fence: tuple[FenceOrder, ...] = ()
    exits: tuple[MemberExit, ...] = ()  # the latest one per member
    request_id: str = ""  # the last operator request handled

    @model_validator(mode="after")
    def _active(self) -> ServiceState:
        if (self.phase in ACTIVE_PHASES) != (self.active is not None):
            raise ValueError(f"a {self.phase.value} service "
                             f"{'needs' if self.phase in ACTIVE_PHASES else 'has no'} active member")
        return self


class MemberFacts(Frozen):
    """What a member's host agent reports about it; bound to the host's lease."""

    service: str
    member: str
    host: str
    lease: int  # the host's lease this report was written under
    generation: int = Field(ge=0)  # the service generation the agent had read when it looked
    boot: int = 0  # names the running QEMU (grows with every start of it); 0: none
    qemu: bool = False
    guest: GuestHealth = GuestHealth.BOOTING
    check_failures: int = Field(default=0, ge=0)  # consecutive, at `generation`
    disk: bool = False  # the data disk is plugged into this member's QEMU
    mounted: bool = False
    ip: bool = False  # the floating IP is up in this guest
    started: bool = False  # the start command succeeded and no stop since
    since: float = 0.0
    detail: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> MemberFacts:
        if not self.qemu and (self.holds or self.boot):
            raise ValueError("a member whose QEMU is not running holds nothing and has no boot")
        if self.qemu and not self.boot:
            raise ValueError("a running QEMU needs its boot number")
        if self.mounted and not self.disk:
            raise ValueError("the data disk cannot be mounted when it is not attached")
        return self

    @property
    def holds(self) -> tuple[str, ...]:
        """What of the service this member still holds, in words (empty when nothing)."""
        return tuple(name for name, held in (("the disk", self.disk), ("the mount", self.mounted),
                                             ("the IP", self.ip), ("the application", self.started)) if held)


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
