"""Guest-cluster services: the manager's decision (`decide_services`) and a member's host agent's
decision (`plan_member`), pure.

A service's active member holds its data disk, its floating IP and the running application. The
manager chooses the active member and, on a failure, moves the service to the healthiest other
member: fastest detected first, the member's QEMU gone, its guest agent silent, its check failing
`failure_threshold` times in a row, its host lost. A member that failed is killed by its host's
agent (its fencing: haven owns every QEMU) and booted again as a standby.

The safety rule, the guest-cluster form of "never run twice" (docs/DESIGN.md section 3):
**the data disk is attached to at most one running QEMU, ever** (and likewise the floating IP and
the application). The manager's choice alone grants nothing. The agent of the active member
takes anything (attach, mount, raise the IP, start) only while `why_not_released` is None for
every other member at the service's current generation `g`, that is, while each other member
(a) has reported, under its host's current lease, after reading generation `g` or a later one,
    that it holds nothing (its QEMU gone counts: a dead QEMU holds nothing), or
(b) sits on a host the manager has recorded fenced or offline: its lease expired and
    `fence_grace` passed (or a power fence confirmed it off): the rule every resource (a VM, a
    service) waits for before it starts again away from a host that stopped answering.

Why that is enough:
- (a) A member's agent takes the disk only while its member is active in the state it read. Once
  it has read `g` (where someone else is active) it never acts on an older state again (the
  runtime's start rule: a view read under the current lease, never going back). So after "holds
  nothing at >= g" it can only take the disk again under a later generation, whose own gate waits
  for the current holder. A report under an earlier lease does not count: it may describe a
  QEMU from before an isolation.
- (b) An isolated host cannot report, so its member can only be waited out. Its agent kills every
  local QEMU once no renewal succeeded for `ttl - margin` (self-fence, backed by the watchdog),
  before the store can expire its lease at `ttl`; the manager records it fenced only after the
  expiry plus `fence_grace` (for clock-rate skew). Waiting for "fenced" therefore waits for its
  QEMUs to be dead. A host that comes back holds a new lease, so (a) applies to it again, and its
  member is not active in any state it can read, so it takes nothing.
- Each generation has at most one active member, and generations only grow; a race between two
  acquisitions would need two members active in the same state.
The runtime adds what a pure function cannot see: right before `Attach` it checks in one
write-free transaction that the service state is still the one read (its generation) and its
own lease is still the one the view was read under (as `runtime.agent_loop` does for a start).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from haven.core.service_events import ServiceEvent, ServiceEventKind
from haven.model.service import (
    ACTIVE_PHASES,
    FenceOrder,
    GuestHealth,
    MemberExit,
    MemberFacts,
    ServicePhase,
    ServiceRequest,
    ServiceSpec,
    ServiceState,
)
from haven.model.spec import DesiredState
from haven.model.state import HOST_GONE, HOST_UP, HostState


@dataclass(frozen=True, slots=True)
class HostLiveness:
    """What the store says of a host: the manager's record of it and the lease its alive key is
    bound to (None: no alive key). The same facts decide when any resource, VM or service, may
    start again elsewhere."""

    state: HostState
    lease: int | None


Hosts = Mapping[str, HostLiveness]


def current(facts: MemberFacts | None, hosts: Hosts) -> MemberFacts | None:
    """`facts` if written under its host's current lease by a host that is up, else None."""
    if facts is None:
        return None
    host = hosts.get(facts.host)
    if host is None or host.state not in HOST_UP or host.lease != facts.lease:
        return None
    return facts


def why_not_released(member: str, generation: int, facts: Mapping[str, MemberFacts], hosts: Hosts,
                     host_of: Mapping[str, str]) -> str | None:
    """None when `member` certainly holds nothing of the service at `generation` and will not take
    anything under it; otherwise why that is not known (the module docstring says why it is safe)."""
    host = host_of.get(member)
    liveness = hosts.get(host) if host else None
    if liveness is not None and liveness.state in HOST_GONE:
        return None  # lease expired + grace, or powered off: its QEMUs are dead
    if host is None or liveness is None:
        return f"{member}: its host is unknown"
    if liveness.state is HostState.LOST:
        return f"{member}: host {host} lost, not yet fenced"
    report = current(facts.get(member), hosts)
    if report is None:
        return f"{member}: no report from host {host} under its current lease"
    if report.generation < generation:
        return f"{member}: has not yet seen generation {generation}"
    if report.holds:
        return f"{member}: still holds {', '.join(report.holds)}"
    return None


# --- member health ---

class Condition(StrEnum):
    """A member's condition as the manager sees it. The failures come in the order they are
    detected, fastest first."""

    HEALTHY = "healthy"
    QEMU_GONE = "QEMU gone"
    GUEST_SILENT = "guest agent silent"
    CHECK_FAILED = "check failing"
    HOST_LOST = "host lost"
    BOOTING = "booting"  # not a failure: a standby on its way
    NO_REPORT = "no report"  # not a failure: its host has not reported under its current lease yet


FAILURES = (Condition.QEMU_GONE, Condition.GUEST_SILENT, Condition.CHECK_FAILED, Condition.HOST_LOST)


def condition(spec: ServiceSpec, state: ServiceState, member: str, facts: Mapping[str, MemberFacts],
              hosts: Hosts, host_of: Mapping[str, str]) -> Condition:
    host = host_of.get(member)
    liveness = hosts.get(host) if host else None
    if liveness is None or liveness.state not in HOST_UP:
        return Condition.HOST_LOST
    report = current(facts.get(member), hosts)
    if report is None:
        return Condition.NO_REPORT
    if not report.qemu:
        return Condition.QEMU_GONE
    if report.guest is GuestHealth.SILENT:
        return Condition.GUEST_SILENT
    if report.guest is GuestHealth.BOOTING:
        return Condition.BOOTING
    # Only the active member runs the check, and only this generation's count is about it.
    if (member == state.active and report.generation == state.generation
            and report.check_failures >= spec.failure_threshold):
        return Condition.CHECK_FAILED
    return Condition.HEALTHY


def fully_up(spec: ServiceSpec, report: MemberFacts | None, generation: int) -> bool:
    return (report is not None and report.generation == generation and report.started and report.ip
            and (spec.data_disk is None or (report.disk and report.mounted)))


# --- the manager ---

@dataclass(frozen=True, slots=True)
class ServiceView:
    spec: ServiceSpec
    state: ServiceState | None = None
    facts: Mapping[str, MemberFacts] = field(default_factory=dict)  # by member
    request: ServiceRequest | None = None


@dataclass
class ServiceDecision:
    states: dict[str, ServiceState] = field(default_factory=dict)  # changed ones only
    done_requests: list[str] = field(default_factory=list)
    events: list[ServiceEvent] = field(default_factory=list)


def decide_services(views: Mapping[str, ServiceView], hosts: Hosts, host_of: Mapping[str, str],
                    now: float) -> ServiceDecision:
    """One manager iteration over every service, in name order. `hosts` are the host records as
    this iteration of the (VM) manager settled them; `host_of` maps each member VM to its host."""
    out = ServiceDecision()
    for name in sorted(views):
        _Step(views[name], hosts, host_of, now, out).run()
    return out


def move_refusal(spec: ServiceSpec, state: ServiceState | None, facts: Mapping[str, MemberFacts], hosts: Hosts,
                 host_of: Mapping[str, str], target: str | None, now: float) -> str | None:
    """Why an operator's move of the service to `target` (None: the best other healthy member)
    is refused now, or None if the manager would start it. The one owner of that rule:
    `decide_services` applies it to a request, the API asks it before writing one."""
    return _Step(ServiceView(spec, state, facts), hosts, host_of, now, ServiceDecision()).move(target)[1]


class _Step:
    """One service's turn in one manager iteration."""

    def __init__(self, view: ServiceView, hosts: Hosts, host_of: Mapping[str, str], now: float,
                 out: ServiceDecision) -> None:
        self.spec, self.view, self.hosts, self.host_of, self.now, self.out = view.spec, view, hosts, host_of, now, out
        self.old = view.state or ServiceState(service=view.spec.name, since=now)
        self.st = self.old
        self.conditions = {m: condition(self.spec, self.old, m, view.facts, hosts, host_of)
                           for m in self.spec.members}

    # -- bookkeeping --

    def report(self, member: str) -> MemberFacts | None:
        return current(self.view.facts.get(member), self.hosts)

    def said(self, kind: ServiceEventKind, **facts: object) -> ServiceEvent:
        return ServiceEvent(self.now, "manager", kind, self.spec.name, **facts)  # type: ignore[arg-type]

    def change(self, event: ServiceEvent | None = None, **fields: object) -> None:
        new = ServiceState.model_validate({**dict(self.st), **fields})  # validated again
        if (new.phase, new.active, new.generation) != (self.st.phase, self.st.active, self.st.generation):
            new = new.model_copy(update={"since": self.now})
        self.st = new
        if event is not None:
            self.out.events.append(event)

    def enter(self, phase: ServicePhase, active: str | None, reason: str, from_member: str | None = None) -> None:
        """A new phase or active member; the generation grows whenever the active member changes."""
        generation = self.st.generation + (active != self.st.active)
        self.change(self.said(ServiceEventKind.STATE_CHANGE, old=self.st.phase.value, new=phase.value, member=active,
                              from_member=from_member, generation=generation, reason=reason),
                    phase=phase, active=active, generation=generation, reason=reason)

    def note(self, reason: str) -> None:
        """Say why the service waits, once per reason."""
        if reason != self.st.reason:
            self.change(self.said(ServiceEventKind.WAITING, new=self.st.phase.value, reason=reason), reason=reason)

    def order_kill(self, member: str, boot: int, why: str) -> None:
        if any(o.member == member and o.boot == boot for o in self.st.fence):
            return
        self.change(self.said(ServiceEventKind.FENCE_ORDERED, member=member, reason=why),
                    fence=(*self.st.fence, FenceOrder(member=member, boot=boot, reason=why)))

    def blockers(self, members: tuple[str, ...]) -> dict[str, str]:
        """The members of `members` not known to hold nothing at the current generation, and why."""
        found = {m: why_not_released(m, self.st.generation, self.view.facts, self.hosts, self.host_of)
                 for m in members}
        return {m: why for m, why in found.items() if why is not None}

    def kill_slow_releasers(self, blockers: dict[str, str]) -> None:
        """A clean release has `stop_timeout_s`; a member still holding on after it is killed."""
        if self.now - self.st.since < self.spec.stop_timeout_s:
            return
        for member in blockers:
            report = self.report(member)
            if report is not None and report.qemu:
                self.order_kill(member, report.boot, f"{member} did not release within {self.spec.stop_timeout_s:g} s")

    # -- choosing a member --

    def recently_failed(self, member: str) -> bool:
        return any(d.member == member and self.now - d.at < self.spec.failed_hold_s for d in self.st.exits)

    def doomed(self, member: str) -> bool:
        """Ordered killed (this boot of it): healthy as it may look, it is about to die."""
        report = self.report(member)
        return report is not None and any(o.member == member and o.boot == report.boot for o in self.st.fence)

    def choose(self, exclude: tuple[str, ...] = ()) -> str | None:
        """The healthy member to run the service: never one ordered killed; not one it left
        because of a failure within `failed_hold_s` (the anti-flap rule) unless no other is
        healthy; then the preferred order."""
        order = self.spec.order
        healthy = [m for m in order if m not in exclude and self.conditions[m] is Condition.HEALTHY
                   and not self.doomed(m)]
        return min(healthy, key=lambda m: (self.recently_failed(m), order.index(m)), default=None)

    def nobody(self) -> str:
        return f"no healthy member ({self.members_said()})"

    def members_said(self) -> str:
        return ", ".join(f"{m} {self.describe(m)}" for m in self.spec.members)

    def describe(self, member: str) -> str:
        cond = self.conditions[member]
        if cond is Condition.HOST_LOST:
            return f"host {self.host_of.get(member, '?')} lost"
        return cond.value

    # -- the state machine --

    def run(self) -> None:
        self.prune_fence()
        self.fence_silent_standbys()
        request = self.view.request
        if request is not None and request.id != self.st.request_id:
            self.handle_request(request)
        if self.spec.desired is DesiredState.STOPPED:
            self.stop()
        elif self.st.phase in ACTIVE_PHASES:
            self.on_active()
        else:
            self.start()
        if self.st != self.old:
            self.out.states[self.spec.name] = self.st

    def prune_fence(self) -> None:
        """Drop kill orders that are done: that QEMU is gone, or its host is."""
        def pending(order: FenceOrder) -> bool:
            host = self.hosts.get(self.host_of.get(order.member, ""))
            if host is not None and host.state in HOST_GONE:
                return False
            report = self.report(order.member)
            return report is None or (report.qemu and report.boot == order.boot)
        kept = tuple(o for o in self.st.fence if pending(o))
        if kept != self.st.fence:
            done = [o for o in self.st.fence if o not in kept]
            # The latest done order per member stays on record for the VM layer (`ordered_kills`).
            killed = (*(k for k in self.st.killed if all(o.member != k.member for o in done)),
                      *{o.member: o for o in done}.values())
            self.change(fence=kept, killed=killed)

    def fence_silent_standbys(self) -> None:
        """A standby whose guest hung is no standby: kill it, its agent boots it again."""
        for member in self.spec.members:
            report = self.report(member)
            if member != self.st.active and self.conditions[member] is Condition.GUEST_SILENT and report:
                self.order_kill(member, report.boot, f"{member}: guest agent silent (standby)")

    def move(self, requested: str | None) -> tuple[str | None, str | None]:
        """An operator's move to `requested` (None: the best other member): the member it goes
        to, and why it is refused (None: it is not)."""
        active = self.st.active
        target = requested or self.choose(exclude=(active or "",))
        if self.st.phase is not ServicePhase.RUNNING or active is None:
            return target, f"the service is {self.st.phase.value}, not running"
        if target is None:
            return None, f"no other healthy member ({self.members_said()})"
        if target not in self.spec.members:
            return target, f"{target} is not a member"
        if target == active:
            return target, f"already on {target}"
        if self.conditions[target] is not Condition.HEALTHY:
            return target, f"{target} is {self.describe(target)}"
        return target, None

    def handle_request(self, request: ServiceRequest) -> None:
        self.out.done_requests.append(self.spec.name)
        self.change(request_id=request.id)
        target, refusal = self.move(request.target)
        if refusal is not None:
            self.out.events.append(self.said(ServiceEventKind.MOVE_REFUSED, reason=refusal))
            return
        assert target is not None
        self.enter(ServicePhase.MOVING, target, "operator request", from_member=self.st.active)

    def start(self) -> None:
        """Stopped, stopping or down, wanted running: take the best healthy member."""
        target = self.choose()
        if target is not None:
            why = "start requested" if self.st.phase is not ServicePhase.DOWN else f"{target} is healthy"
            self.enter(ServicePhase.STARTING, target, why)
        elif self.st.phase is ServicePhase.DOWN:
            self.note(self.nobody())
        else:
            self.enter(ServicePhase.DOWN, None, self.nobody())

    def stop(self) -> None:
        if self.st.phase is ServicePhase.STOPPED:
            return
        if self.st.phase in ACTIVE_PHASES:
            self.enter(ServicePhase.STOPPING, None, "stop requested", from_member=self.st.active)
        blockers = self.blockers(self.spec.members)
        if not blockers:
            self.enter(ServicePhase.STOPPED, None, "")
            return
        self.kill_slow_releasers(blockers)
        self.note(f"waiting for {next(iter(blockers.values()))}")

    def leave(self, why: str) -> None:
        """The active member failed: kill it if its QEMU may still run, and move on."""
        failed = self.st.active
        assert failed is not None
        report = self.report(failed)
        if report is not None and report.qemu:
            self.order_kill(failed, report.boot, why)
        exits = (*(d for d in self.st.exits if d.member != failed),
                      MemberExit(member=failed, at=self.now, reason=why))
        self.change(exits=exits)
        target = self.choose(exclude=(failed,))
        if target is not None:
            self.enter(ServicePhase.MOVING, target, why, from_member=failed)
        else:
            self.enter(ServicePhase.DOWN, None, f"{why}; {self.nobody()}", from_member=failed)

    def on_active(self) -> None:
        active = self.st.active
        assert active is not None
        cond = self.conditions[active]
        if cond in FAILURES:
            self.leave(f"{active}: {self.describe(active)}")
            return
        if self.st.phase is ServicePhase.RUNNING:
            return
        if fully_up(self.spec, self.report(active), self.st.generation):
            self.enter(ServicePhase.RUNNING, active, "")
            return
        blockers = self.blockers(tuple(m for m in self.spec.members if m != active))
        self.kill_slow_releasers(blockers)
        if blockers:
            self.note(f"waiting for {next(iter(blockers.values()))}")
        elif self.now - self.st.since >= self.spec.start_timeout_s:
            self.leave(f"{active}: not running {self.spec.start_timeout_s:g} s after it was chosen")
