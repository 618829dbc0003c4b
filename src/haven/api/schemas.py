"""Request and response bodies of the REST API (they make the OpenAPI document)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from haven.core.events import EventKind, SubjectKind
from haven.model.fencing import FenceCheck
from haven.model.service import GuestHealth, MemberFacts, ServiceRequest, ServiceSpec, ServiceState
from haven.model.spec import NAME_PATTERN, HostSpec, MigrationKind, PoolSpec, VmSpec
from haven.model.state import Placement, VmRequest, VmStatus
from haven.plan.topology import Licensing, TopologyInput, Workloads


class Problem(BaseModel):
    """Every error answer: one sentence, and for invalid input one line per problem."""

    detail: str = Field(description="what was wrong and what to do")
    problems: list[str] = Field(default_factory=list, description="'field: problem' lines")


class Usage(BaseModel):
    used: int
    total: int


class HostOut(BaseModel):
    name: str
    state: str = Field(description="online, maintenance, lost, fenced or offline")
    alive: bool = Field(description="the host holds its lease")
    maintenance_requested: bool
    draining: bool = Field(description="maintenance requested and VMs still placed here")
    since: float
    reason: str
    manager: bool = Field(description="the active manager runs on this host")
    memory_mib: Usage = Field(description="memory of placed VMs / host memory")
    memory_reserve_mib: int
    vcpus: Usage = Field(description="vCPUs of placed VMs / host vCPUs (before overcommit)")
    vms: list[str]
    spec: HostSpec
    fence_device: FenceCheck | None = Field(default=None, description="the last periodic check of its "
                                            "power-fence device by the leading manager; null: no device "
                                            "configured (or not checked yet)")


class CopyOut(BaseModel):
    """The replica of one of a VM's disks on a replicated pool, as the primary's agent last recorded it."""

    disk: int = Field(description="index in the VM's disks")
    host: str = Field(description="the host holding this copy")
    state: str = Field(description="syncing, in-sync or stale")
    since: float = Field(description="when it entered this state (the writer's clock)")
    age_s: float | None = Field(description="seconds from `since` to now on the API's clock (null: not computed)")
    done: int = Field(description="syncing: bytes copied")
    total: int = Field(description="syncing: bytes to copy (0: not known yet)")
    progress: float | None = Field(description="done / total, 0..1 (null: total not known)")
    reason: str


class ReplicasOut(BaseModel):
    """A VM's copies on a replicated pool (null on a VM without one)."""

    primary: str = Field(description="the host whose copies hold every acknowledged write")
    protected: bool = Field(description="every copy is in sync: the VM may fail over to its peer")
    copies: list[CopyOut]
    incoming: str | None = Field(description="a migration to this host is under way")
    promoted_at: float | None = Field(description="the operator started it from a copy that lacked writes")
    write_without_replica: bool = Field(description="the VM keeps writing on its primary alone when "
                                        "neither its replica nor the store answers (availability over safety)")


class VmOut(BaseModel):
    name: str
    state: str = Field(description="the placement's state; 'pending' before the manager placed it")
    host: str | None
    desired: str
    ha: bool
    reason: str
    spec: VmSpec
    placement: Placement | None
    statuses: list[VmStatus]
    request: VmRequest | None
    replicas: ReplicasOut | None = Field(default=None, description="its copies on a replicated pool")


class PoolOut(BaseModel):
    name: str
    kind: str = Field(description="shared or replicated")
    declared: bool = Field(description="declared in the store; false: a shared pool hosts list")
    hosts: list[str] = Field(description="replicated: the two hosts holding a copy; shared: the hosts "
                             "that list it")
    vms: list[str] = Field(description="VMs with a disk on it")
    spec: PoolSpec


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(pattern=NAME_PATTERN, description="the host whose copy to start the VM from")
    accept_data_loss: bool = Field(default=False, description="must be true: the writes that copy lacks "
                                   "are lost")


class PromoteOut(BaseModel):
    """How stale the copy a promotion starts from is, when it was asked for."""

    message: str
    request_id: str
    target: str
    state: str = Field(description="the copy's state: syncing or stale")
    since: float = Field(description="when it entered that state (the writer's clock)")
    stale_s: float = Field(description="seconds from `since` to now on the API's clock")
    reason: str
    vm: VmOut


class MemberOut(BaseModel):
    """One member VM of a service: where it is pinned and what its host's agent last reported."""

    name: str = Field(description="the member VM")
    host: str | None = Field(description="the host it is pinned to (null: not pinned to exactly one)")
    host_state: str | None = Field(description="that host's state, as in /hosts")
    vm_state: str = Field(description="the member VM's placement state, as in /vms")
    active: bool = Field(description="the service runs (or is being taken over) here")
    condition: str = Field(description="as the manager judges it: healthy, booting, no report, QEMU gone, "
                           "guest agent silent, check failing or host lost")
    reported: bool = Field(description="its host's agent has reported under the host's current lease; "
                           "false: the fields below are an older report, or none")
    qemu: bool = Field(description="its QEMU runs")
    guest: GuestHealth | None = Field(description="the guest agent: booting, answering or silent (hung); "
                                      "null: never reported")
    holds_disk: bool = Field(description="the data disk is attached to this member")
    disk_mounted: bool
    holds_ip: bool = Field(description="the floating IP is up in this guest")
    app_started: bool = Field(description="the start command succeeded and no stop since")
    check_failures: int = Field(description="consecutive failed checks")
    detail: str = Field(description="the agent's own words")
    facts: MemberFacts | None = Field(description="the agent's report as stored")


class ServiceOut(BaseModel):
    name: str
    phase: str = Field(description="stopped, starting, running, moving, stopping or down; 'pending' before "
                       "the manager has started it")
    desired: str
    active: str | None = Field(description="the member that runs it (or takes it over)")
    active_host: str | None = Field(description="the active member's host")
    generation: int = Field(description="grows every time the active member changes")
    reason: str
    since: float = Field(description="when phase, active or generation last changed (manager's clock)")
    floating_ip: str
    standbys: list[str] = Field(description="healthy members other than the active one: where it can "
                                "fail over to now")
    members: list[MemberOut] = Field(description="in order of preference")
    spec: ServiceSpec
    state: ServiceState | None = Field(description="the manager's record; null before its first decision")
    request: ServiceRequest | None = Field(description="an operator's move not yet handled")


class ServiceMoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(default=None, pattern=NAME_PATTERN,
                               description="a member VM of the service; null: the best other healthy member")


class ProtectionOut(BaseModel):
    level: str = Field(description="protected, degraded or down")
    mood: str = Field(description="content, worried or ill")
    reason: str


class SummaryOut(BaseModel):
    cluster: str
    time: float = Field(description="seconds on the API's clock (virtual time in a simulation)")
    manager: str | None = Field(description="host of the active manager, null if none")
    hosts: dict[str, int] = Field(description="number of hosts by state")
    vms: dict[str, int] = Field(description="number of VMs by state")
    services: dict[str, int] = Field(default_factory=dict, description="number of services by phase")
    protection: ProtectionOut
    simulation: dict[str, object] | None = None


class EventOut(BaseModel):
    """One event: its fields (read these), and its sentence as the timeline shows it. Only the
    fields its kind needs are set; an event written by an older version is kind `text`."""

    id: str = Field(description="opaque, increasing in the order events were written")
    t: float = Field(description="seconds on the writer's clock")
    source: str = Field(description="who wrote it: manager, agent <host>, store, ...")
    kind: EventKind
    subject_kind: SubjectKind
    name: str = Field(description="the host's or VM's name ('' for the cluster)")
    old: str | None = Field(None, description="the state before, when the event changes it")
    new: str | None = Field(None, description="the state after (waiting: the state it stays in)")
    host: str | None = Field(None, description="VM: where it starts, runs or stopped; agent: its host")
    generation: int | None = None
    reason: str = ""
    priority: int | None = None
    migration: MigrationKind | None = None
    from_host: str | None = Field(None, description="the host a VM leaves (migration source, lost host)")
    to_host: str | None = Field(None, description="a migration's target")
    seconds: float | None = Field(None, description="a duration: the migration's, or the lease's age "
                                  "at a self-fence")
    grace_s: float | None = None
    downtime_s: float | None = Field(None, description="a live migration's final pause, as measured")
    detail: str = Field("", description="the hypervisor's own words")
    lease: int | None = None
    count: int | None = Field(None, description="VMs killed")
    action: str = ""
    subject: str = Field(description="rendered: 'vm web', 'host h1', 'cluster'")
    message: str = Field(description="rendered from the fields; do not parse it")
    line: str = Field(description="the timeline line: t, source, subject, message")


class EventPage(BaseModel):
    events: list[EventOut]
    next: str | None = Field(description="pass as `after` to get the following events")


class MigrateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: MigrationKind = MigrationKind.LIVE
    target: str | None = Field(default=None, pattern=NAME_PATTERN,
                               description="a host of this cluster; null lets the scheduler choose")


class DrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(default=False, description="drain even if some VM cannot move (it then stays "
                        "where it is) or the host is down (it stays in maintenance when it returns)")


class WorkloadsIn(Workloads):
    count: int = Field(gt=0, le=100_000)


class LicensingIn(Licensing):
    price: float = Field(default=1000.0, ge=0, le=1e9, description="per instance, or per host edition")


class TopologyIn(TopologyInput):
    """The planner's input with bounds, so a licence cost stays a finite number."""

    workloads: WorkloadsIn
    licensing: LicensingIn = LicensingIn()


class Accepted(BaseModel):
    """A write accepted: the intent is in the store, the cluster acts on it."""

    message: str
    request_id: str | None = None
    vm: VmOut | None = None
    host: HostOut | None = None
    service: ServiceOut | None = None
    pool: PoolOut | None = None


class FaultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: str = Field(min_length=1, max_length=200, examples=["power off h1"])


SPEC_UPDATE = "VmSpecUpdate"  # VmSpec as PUT reads it: the name is the URL's (made by api.app)
SERVICE_SPEC_UPDATE = "ServiceSpecUpdate"  # the same for ServiceSpec
POOL_SPEC_UPDATE = "PoolSpecUpdate"  # the same for PoolSpec (PUT /pools/{name})

Responses = dict[int | str, dict[str, Any]]  # FastAPI's `responses=` (extra OpenAPI answers)

ERRORS: Responses = {code: {"model": Problem, "description": text} for code, text in (
    (401, "no, malformed or wrong token"), (403, "a read-only token for a change"), (503, "the store is unreachable"))}
READ_ERRORS: Responses = {code: answer for code, answer in ERRORS.items() if code != 403}  # any token may read
NOT_FOUND: Responses = {404: {"model": Problem, "description": "no such VM, host or service"}}
PROMOTE_REFUSED: Responses = {409: {"model": Problem, "description": "the promotion is not possible now: the VM "
                                     "runs, its copy lacks nothing, or the target cannot take it"}}
POWER_REFUSED: Responses = {
    409: {"model": Problem, "description": "the host is up, or the node serving the API has no fence device for it"},
    502: {"model": Problem, "description": "the fence device did not switch the host on (its words)"}}
CONFLICT: Responses = {409: {"model": Problem, "description": "not possible in the current state"}}
DRAIN_REFUSED: Responses = {409: {"model": Problem, "description": "the drain cannot finish (one problem line per "
                                   "VM that cannot move) or the host is down; send force to drain anyway"}}
INVALID: Responses = {422: {"model": Problem, "description": "invalid request: one line per problem"}}
