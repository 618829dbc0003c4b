"""What the cluster is doing: records written by the manager and the agents, and the snapshot
(`ClusterView`) the manager decides on.

Every record is an immutable pydantic model stored as JSON in the coordination store
(docs/DESIGN.md section 6). Times are seconds on the writer's clock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from haven.model.replica import PoolSpec, ReplicaRecord
from haven.model.spec import HostShutdownPolicy, HostSpec, MigrationKind, Settings, VmSpec


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostState(StrEnum):
    ONLINE = "online"
    MAINTENANCE = "maintenance"  # draining or drained on the operator's request
    LOST = "lost"  # lease gone, waiting fence_grace (or a power-fence confirmation)
    FENCED = "fenced"  # certainly not running anything: its VMs may be restarted elsewhere
    OFFLINE = "offline"  # declared but not up, and nothing of ours runs there


HOST_UP = frozenset({HostState.ONLINE, HostState.MAINTENANCE})  # running its agent, holding its lease
HOST_GONE = frozenset({HostState.FENCED, HostState.OFFLINE})  # certainly running nothing of ours


class VmState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    MIGRATING = "migrating"
    RECOVERING = "recovering"  # its host is lost: waiting for the fence
    ERROR = "error"  # restart limit hit, or cannot be placed; needs an operator


# Placement states that hold a share of their host (memory, vCPUs, an anti-affinity slot): a
# migrating VM holds its source and its target. Capacity, admission and protection all count these.
HOLDING_STATES = frozenset({VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.MIGRATING})

# Placement states in which the guest is up from the operator's point of view (a migration keeps
# it up, or down for about a second for a quick one).
GUEST_UP_STATES = frozenset({VmState.RUNNING, VmState.MIGRATING})


class LocalState(StrEnum):
    """What one host's hypervisor reports for one VM."""

    STARTING = "starting"  # process up, guest booting
    RUNNING = "running"
    STOPPED = "stopped"  # stopped cleanly on request
    CRASHED = "crashed"  # process died unasked
    FAILED = "failed"  # could not start
    INCOMING = "incoming"  # target of a live migration, waiting for memory, CPUs not running
    MIGRATING_OUT = "migrating_out"  # source of a live migration in progress
    MIGRATED = "migrated"  # source after a completed live migration: paused for good
    SAVING = "saving"  # quick migration: writing state to the shared pool
    SAVED = "saved"  # quick migration: state saved, process gone


# Local states of a VM whose process is gone (only its record is left).
DEAD_LOCAL_STATES = frozenset({LocalState.STOPPED, LocalState.CRASHED, LocalState.FAILED, LocalState.SAVED})

# Local states of a VM whose process died unasked (it crashed, or never came up).
BROKEN_LOCAL_STATES = frozenset({LocalState.CRASHED, LocalState.FAILED})
# ... or stopped: nothing of it runs and nothing was saved to move on with.
ENDED_LOCAL_STATES = BROKEN_LOCAL_STATES | {LocalState.STOPPED}

# Local states in which the guest's CPUs may execute (and so write to its disks).
ACTIVE_LOCAL_STATES = frozenset({LocalState.STARTING, LocalState.RUNNING, LocalState.MIGRATING_OUT,
                                 LocalState.SAVING})


class Migration(Record):
    kind: MigrationKind
    source: str
    target: str
    generation: int  # the generation the VM gets on the target
    started: float
    reason: str = "operator request"
    # The lease the target was recorded up under when the move began (its HostRecord's): a target
    # recorded under another one since restarted, and its run that could hold the guest is gone.
    # 0: not known (a record written before the field existed).
    target_lease: int = 0

    @property
    def attempt(self) -> str:
        """Names this attempt, so a failure report of an earlier one is not mistaken for it."""
        return f"{self.kind.value}:{self.target}:{self.generation}:{self.started:.6f}"


class Placement(Record):
    """The manager's decision for one VM. `generation` is the fencing token: an agent starts
    the VM only for the current generation, on `host`."""

    vm: str
    state: VmState
    host: str | None = None
    generation: int = 0
    since: float = 0.0
    migration: Migration | None = None
    restore_from: str | None = None  # quick migration: start from this saved state
    restarts: tuple[float, ...] = ()  # times of automatic restarts after crashes / failed starts
    # Hosts the VM failed on since it last came up, in order, once per failure: the restart
    # policy retries a host `same_host_retries` times, then moves on to the hosts not tried yet.
    failed_on: tuple[str, ...] = ()
    last_host: str | None = None  # where it was last placed: a stopped VM starts there again
    # The host a drain moved it away from: it goes back there when that host is resumed
    # (`Settings.return_after_maintenance`). Defaults so that records written before still load.
    drained_from: str | None = None
    reason: str = ""
    request_id: str = ""  # the last operator request handled


class VmStatus(Record):
    """An agent's report for one VM on its host; bound to the host's lease."""

    vm: str
    host: str
    generation: int
    state: LocalState
    since: float = 0.0
    detail: str = ""
    failed_migration: str = ""  # attempt id of the last outgoing migration that failed here
    downtime_ms: float | None = None  # migrated: the guest's final pause as measured (the manager's event carries it)


class HostRecord(Record):
    """The manager's view of a host's state; survives manager failover."""

    host: str
    state: HostState
    since: float = 0.0
    reason: str = ""
    # The lease it held when recorded up: a host alive under another one restarted unseen (a power
    # cycle faster than the lease TTL). 0: not known (a record written before the field existed).
    lease: int = 0
    leaving: HostShutdownPolicy | None = None  # the clean departure it announced (see `Departure`)


class Departure(Record):
    """A clean shutdown or reboot a host announced on its alive key, so it dies with its lease."""

    policy: HostShutdownPolicy  # migrate, freeze or failover (conditional is resolved by the host)
    reboot: bool = False


class Alive(Record):
    """The value of a host's alive key, which is bound to its lease."""

    since: float = 0.0  # the host's clock when it wrote the key
    leaving: Departure | None = None


class HostAdmin(Record):
    """Operator intent for a host."""

    maintenance: bool = False
    request_id: str = ""


class RequestAction(StrEnum):
    MIGRATE = "migrate"
    ACKNOWLEDGE = "acknowledge"  # clear an error and try again
    PROMOTE = "promote"  # start from the copy on `target` although it lacks writes (replicated pools)


class VmRequest(Record):
    """Operator intent for a VM, beyond its desired state."""

    id: str
    action: RequestAction
    kind: MigrationKind = MigrationKind.LIVE
    target: str | None = None  # None: the best host


# The snapshot types below live only in memory (never stored): plain slotted dataclasses, as a
# manager builds one per iteration over every host and VM.

NO_ADMIN = HostAdmin()  # frozen: one instance serves as every view's default


@dataclass(frozen=True, slots=True)
class HostView:
    spec: HostSpec
    alive: bool  # its lease key exists
    record: HostRecord | None = None
    admin: HostAdmin = NO_ADMIN
    fence_confirmed: bool = False  # a power fence reported it off (under the lease it held then, if any)
    lease: int = 0  # the lease its alive key is bound to (0: not alive, or not known)
    leaving: Departure | None = None  # it announced a clean shutdown or reboot
    reported: bool = True  # False while statuses of an earlier lease remain: its new run has not reported yet


@dataclass(frozen=True, slots=True)
class VmView:
    spec: VmSpec
    placement: Placement | None = None
    statuses: dict[str, VmStatus] = field(default_factory=dict)  # by host
    request: VmRequest | None = None


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One immutable snapshot of everything the manager reads in one iteration."""

    settings: Settings
    hosts: dict[str, HostView]
    vms: dict[str, VmView]
    manager_since: float = 0.0  # when the current manager took office (its clock)
    pools: dict[str, PoolSpec] = field(default_factory=dict)  # declared pools (the replicated ones)
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)  # by VM: its replicated disks' copies
    # (VM, generation) of every QEMU haven killed or will kill on a service manager's order: a
    # member's fencing (`model.service.ordered_kills`). Its end is restarted like a crash but not
    # charged to the VM's restart budget.
    ordered_kills: frozenset[tuple[str, int]] = frozenset()
    # With `Settings.failsafe`: when the manager's host reached the store again after a gap (its
    # clock; +inf while it is cut off, -inf if never): lost hosts wait for core.failsafe.hold_until.
    store_regained_at: float = -math.inf
