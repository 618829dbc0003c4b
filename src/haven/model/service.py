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

from collections.abc import Iterable
from enum import StrEnum

from pydantic import Field, model_validator

# What the operator declares lives with the other declarations (ClusterConfig holds a list of
# services); it is re-exported here, beside what the manager and the agents record.
from haven.model.spec import (  # noqa: F401
    Argv,
    Frozen,
    ServiceSpec,
    check_services,
    pinned_host,
)


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
    fence: tuple[FenceOrder, ...] = ()  # kill orders pending: that QEMU may still run
    # Kill orders no longer pending (that QEMU is gone, or its host), the latest one per member.
    # Kept so the VM layer can tell the end of a member's QEMU that haven ordered (its fencing)
    # from a crash: only a crash counts against the member's restart budget (`ordered_kills`).
    killed: tuple[FenceOrder, ...] = ()
    exits: tuple[MemberExit, ...] = ()  # the latest one per member
    request_id: str = ""  # the last operator request handled

    @model_validator(mode="after")
    def _active(self) -> ServiceState:
        if (self.phase in ACTIVE_PHASES) != (self.active is not None):
            raise ValueError(f"a {self.phase.value} service "
                             f"{'needs' if self.phase in ACTIVE_PHASES else 'has no'} active member")
        return self


def ordered_kills(states: Iterable[ServiceState]) -> frozenset[tuple[str, int]]:
    """(member VM, boot) of every QEMU the service manager ordered killed, pending or done. A
    member's boot is its VM generation, so this is what the VM layer sees through
    `ClusterView.ordered_kills`."""
    return frozenset((o.member, o.boot) for state in states for o in (*state.fence, *state.killed))


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
