"""The manager's decisions: `decide(view, now) -> Decision`, pure.

One iteration walks the hosts (is anyone lost? fenced? back?), then every VM in priority order
(highest first, then name) through its state machine, then proposes balancing moves. Every state
change is one event. A VM leaves a host that stopped answering only once that host is fenced:
its lease is gone and `fence_grace` has passed (or a power fence confirmed it), so its agent has
killed its VMs (docs/DESIGN.md section 3).
"""
from __future__ import annotations

import copy
from typing import Any

from haven.core import affinity, departure, failsafe, replica
from haven.core.decision import Decision, Event, EventKind, SubjectKind
from haven.core.index import ClusterIndex
from haven.core.migration import MigrationSteps
from haven.core.moves import PlannedMoves
from haven.core.round import Round, settle_s
from haven.core.scheduler import Selection, admission_problem, plan_balance
from haven.model.spec import DesiredState, MigrationKind, VmSpec
from haven.model.state import (
    ACTIVE_LOCAL_STATES,
    ENDED_LOCAL_STATES,
    ClusterView,
    HostRecord,
    HostState,
    HostView,
    LocalState,
    Placement,
    RequestAction,
    VmState,
    VmStatus,
    VmView,
)
from haven.model.state import HOST_GONE as GONE
from haven.model.state import HOST_UP as UP


def decide(view: ClusterView, now: float, index: ClusterIndex | None = None) -> Decision:
    """One iteration. `index` (aggregates of `view`, see core.index) is built when not given; a
    manager that keeps it up to date makes an iteration cost what changed, not the cluster."""
    decision = Decision()
    records = {name: _next_host_record(host, view, now, decision) for name, host in view.hosts.items()}
    if index is None or index.failback != view.settings.failback:
        index = ClusterIndex.build(view)
    round_ = Round(view, now, view.settings, records, decision, index)
    orphans = [name for name, hosts in index.by_host.items() if name not in records and hosts]
    restarted = [name for name, host in view.hosts.items() if departure.restarted(host)]
    turns = index.turns([name for name, record in records.items() if record.state is not HostState.ONLINE]
                        + orphans + restarted)
    if index.groups:
        turns |= affinity.split_groups(view, index)
    for name in sorted(turns, key=lambda n: affinity.turn_key(view, index, n)):
        _VmStep(round_, view.vms[name]).run()
    if view.settings.balance:
        _balance(round_)
    _retire_fenced_hosts(round_)
    replica.record_primaries(view, decision, now)
    return decision


# --- hosts ---

def _next_host_record(host: HostView, view: ClusterView, now: float, decision: Decision) -> HostRecord:
    name, record = host.spec.name, host.record
    want_maintenance = host.admin.maintenance or host.leaving is not None
    new: tuple[HostState, str] | None = None
    grace: float | None = None  # set when the grace ran out: a fact of the event
    if record is None:
        if host.alive:
            new = (HostState.MAINTENANCE if want_maintenance else HostState.ONLINE, "registered")
        elif _has_vms(view, name):
            new = (HostState.LOST, "no lease when this manager started")
        else:
            new = (HostState.OFFLINE, "not running")
    elif record.state in UP:
        if change := departure.host_change(host, record, view):
            new = change
        elif not host.alive:
            new = (HostState.LOST, "lease gone")  # expired, or given up by a self-fenced host
            decision.fence_hosts.append(name)
        elif host.fence_confirmed:  # its heartbeats stopped and its device switched it off
            new = (HostState.LOST, "powered off before its lease ran out")
        elif want_maintenance and record.state is HostState.ONLINE:
            new = (HostState.MAINTENANCE, "drain requested")
        elif not want_maintenance and record.state is HostState.MAINTENANCE:
            new = (HostState.ONLINE, "resumed")
    elif record.state is HostState.LOST:
        # The grace runs on this manager's clock: a new manager starts it afresh.
        waited = now - max(record.since, view.manager_since)
        if host.alive and not host.fence_confirmed:
            new = (HostState.MAINTENANCE if want_maintenance else HostState.ONLINE, "rejoined")
        elif host.fence_confirmed:
            new = (HostState.FENCED, "power fence confirmed")
        elif waited >= view.settings.fence_grace_s:
            if failsafe.holds(view.store_regained_at, now, view.settings):
                return _failsafe_hold(record, view, now, decision)
            grace = view.settings.fence_grace_s
            new = (HostState.FENCED, f"grace {grace:g} s")
    elif host.alive and not host.fence_confirmed:  # fenced or offline, now back (not its switched-off lease)
        new = (HostState.MAINTENANCE if want_maintenance else HostState.ONLINE, departure.returned_reason(record))
    if new is None:
        assert record is not None
        return record
    state, reason = new
    # The lease it is up under, and the departure it announced (kept once gone: see core.departure).
    leaving = (host.leaving.policy if host.leaving else None) if host.alive else record.leaving if record else None
    updated = HostRecord(host=name, state=state, since=now, reason=reason, lease=host.lease, leaving=leaving)
    decision.host_records[name] = updated
    before = record.state.value if record else "unknown"
    decision.events.append(Event(now, "manager", EventKind.STATE_CHANGE, subject_kind=SubjectKind.HOST, name=name,
                                 old=before, new=state.value, reason=reason, grace_s=grace))
    return updated


FAILSAFE_HOLD = "failsafe: this manager's host was cut off from the store; waiting {wait:g} s after it came back"


def _failsafe_hold(record: HostRecord, view: ClusterView, now: float, decision: Decision) -> HostRecord:
    """A lost host stays lost while core.failsafe holds: a peer this host told "cannot reach the
    store" may run its VMs until then. Said once (the record keeps the reason and its `since`)."""
    reason = FAILSAFE_HOLD.format(wait=view.settings.self_fence_after_s + view.settings.failsafe_skew_s)
    if record.reason == reason:
        return record
    updated = record.model_copy(update={"reason": reason})
    decision.host_records[record.host] = updated
    decision.events.append(Event(now, "manager", EventKind.WAITING, subject_kind=SubjectKind.HOST,
                                 name=record.host, new=record.state.value, reason=reason))
    return updated


def _has_vms(view: ClusterView, host: str) -> bool:
    return any(vm.placement and (vm.placement.host == host or
                                 (vm.placement.migration and vm.placement.migration.target == host))
               for vm in view.vms.values())


def _retire_fenced_hosts(r: Round) -> None:
    """A fenced host with nothing left on it is simply offline."""
    for name, record in r.records.items():
        if record.state is not HostState.FENCED:
            continue
        placements = (r.placement(vm) for vm in r.index.by_host.get(name, ()))
        if not any(p and name in (p.host, p.migration.target if p.migration else None) for p in placements):
            r.decision.host_records[name] = HostRecord(host=name, state=HostState.OFFLINE, since=r.now,
                                                       reason="no VMs left")
            r.decision.events.append(Event(r.now, "manager", EventKind.STATE_CHANGE, subject_kind=SubjectKind.HOST,
                                           name=name, old=HostState.FENCED.value, new=HostState.OFFLINE.value,
                                           reason="no VMs left"))


# --- VMs ---

class _VmStep(MigrationSteps, PlannedMoves, departure.DepartureSteps):
    """One VM's turn in one iteration."""

    def __init__(self, r: Round, vm: VmView) -> None:
        self.r = r
        self.vm = vm
        self.spec = vm.spec
        self.p = r.current.get(vm.spec.name) or vm.placement or Placement(
            vm=vm.spec.name, state=VmState.STOPPED, since=r.now)

    # -- bookkeeping --

    def status(self, host: str | None, generation: int | None = None) -> VmStatus | None:
        status = self.vm.statuses.get(host) if host else None
        if status and generation is not None and status.generation != generation:
            return None
        return status

    def change(self, event: Event | None = None, **fields: object) -> None:
        """Write a new placement; log `event` (a state change) if given."""
        old = self.p
        new = old.model_copy(update=fields)
        if new.host is None and old.host is not None and "last_host" not in fields:
            new = new.model_copy(update={"last_host": old.host})
        if new.state != old.state or new.host != old.host or new.generation != old.generation:
            new = new.model_copy(update={"since": self.r.now})
        self.p = new
        self.r.replaced(old, new, self.spec)
        self.r.decision.placements[self.spec.name] = new
        if event:
            self.event(event)

    def event(self, event: Event) -> None:
        self.r.decision.events.append(event)

    def said(self, kind: EventKind, **facts: Any) -> Event:
        """An event about this VM, from the manager, now."""
        return Event(self.r.now, "manager", kind, subject_kind=SubjectKind.VM, name=self.spec.name, **facts)

    def moved(self, old: str, new: str, **facts: Any) -> Event:
        """This VM's state change from `old` to `new`."""
        return self.said(EventKind.STATE_CHANGE, old=old, new=new, **facts)

    def note(self, reason: str) -> None:
        """Record why the VM waits, logging it only when the reason changes."""
        if reason != self.p.reason:
            self.change(self.said(EventKind.WAITING, new=self.p.state.value, reason=reason), reason=reason)

    def select(self, exclude: tuple[str, ...] = (), prefer: str | None = None) -> Selection:
        if self.spec.affinity_group:
            return affinity.select(self.r, self.spec, exclude, prefer)
        return self.r.capacity.select(self.spec, exclude, prefer)

    def step_for(self, name: str) -> _VmStep:
        """The step of `name` in this round: this one, or a group-mate's."""
        return self if name == self.spec.name else _VmStep(self.r, self.r.view.vms[name])

    # -- the state machine --

    def run(self) -> None:
        if self.departure_turn():
            return
        if self.vm.request and self.vm.request.id != self.p.request_id:
            self.handle_request()
        getattr(self, f"on_{self.p.state.value}")()

    def handle_request(self) -> None:
        request = self.vm.request
        assert request is not None
        self.r.decision.done_requests.append(self.spec.name)
        self.change(request_id=request.id)
        if request.action is RequestAction.ACKNOWLEDGE:
            if self.p.state is VmState.ERROR:
                self.change(self.moved(VmState.ERROR.value, VmState.STOPPED.value, reason="acknowledged"),
                            state=VmState.STOPPED, host=None,
                            restarts=(), failed_on=(), last_host=None, reason="")
            return
        if request.action is RequestAction.PROMOTE:
            self.promote(request.target)
            return
        refusal = (affinity.move_refusal(self.r, self.spec, self.p, request.kind, request.target)
                   if self.spec.affinity_group else self.migration_refusal(request.kind, request.target))
        if refusal:
            self.event(self.said(EventKind.MIGRATION_REFUSED, migration=request.kind, reason=refusal,
                                 from_host=self.p.host, to_host=request.target))
            return
        assert self.p.host is not None
        moving = affinity.movers(self.r, self.spec, self.p.host)
        target = request.target or affinity.move_target(self.r, moving, self.p.host).host
        assert target is not None
        self.move_together(moving, target, "operator request", request.kind)

    def promote(self, target: str | None) -> None:
        """The operator's override for a lost primary: start on `target` from its copy, accepting
        the loss of what it lacks (replicated pools)."""
        refusal = replica.promote_refusal(self.r.view, self.spec, self.p, target, self.r.capacity)
        if refusal:
            self.note(f"promote refused: {refusal}")
            return
        assert target is not None
        self.start_on(target, self.p.state.value, "promoted by the operator: writes its copy lacks are lost")
        self.r.decision.replicas[self.spec.name] = replica.promoted(self.r.view, self.spec.name, target,
                                                                    self.p.generation, self.r.now)

    def on_stopped(self) -> None:
        if self.spec.desired is not DesiredState.RUNNING:
            return
        choice = self.select(prefer=self.p.last_host)
        if not choice and self.relocate_group():
            choice = self.select()
        if not choice:
            self.note(f"cannot start: {choice.reason}")
            return
        assert choice.host is not None
        problem = admission_problem(self.spec, choice.host, self.r.capacity.loads, self.r.specs,
                                    self.r.settings)
        if problem:
            self.note(problem)
            return
        self.start_on(choice.host, "stopped", "start requested")

    def start_on(self, host: str, before: str, why: str, restarts: tuple[float, ...] | None = None,
                 kind: EventKind = EventKind.STATE_CHANGE, **facts: Any) -> None:
        generation = self.p.generation + 1
        self.change(self.said(kind, old=before, new=VmState.STARTING.value, host=host, generation=generation,
                              priority=self.spec.priority, reason=why, **facts), state=VmState.STARTING, host=host,
                    generation=generation, migration=None, restore_from=None, reason="",
                    restarts=self.p.restarts if restarts is None else restarts)

    def host_trouble(self) -> bool:
        """Handle a lost or fenced host; True if the VM's step is over."""
        state = self.r.host_state(self.p.host)
        if state is HostState.LOST:
            self.change(self.moved(self.p.state.value, VmState.RECOVERING.value, from_host=self.p.host,
                                   reason=f"host {self.p.host} lost"),
                        state=VmState.RECOVERING, migration=None, restore_from=None)
            return True
        if state in GONE or state is None:
            self.p = self.p.model_copy(update={"state": VmState.RECOVERING})
            self.recover(f"host {self.p.host} {state.value if state else 'unknown'}")
            return True
        return False

    def recover(self, why: str, prefer: str | None = None) -> None:
        before = self.vm.placement.state.value if self.vm.placement else "stopped"
        if self.spec.desired is not DesiredState.RUNNING:
            self.change(self.moved(before, VmState.STOPPED.value, reason=why), state=VmState.STOPPED, host=None,
                        migration=None)
            return
        if not self.spec.ha:
            self.change(self.moved(before, VmState.ERROR.value, reason=f"{why}; priority 0 VMs are not restarted "
                                   "automatically: acknowledge to start it"),
                        state=VmState.ERROR, host=None, migration=None, reason=f"{why}; priority 0")
            return
        # No exclusion: the old host is lost, fenced or gone, so never a candidate (or, settled
        # again, the preferred one), and the reason stays the same from one iteration to the next.
        choice = self.select(prefer=prefer)
        if not choice and self.relocate_group():
            choice = self.select()
        if not choice:
            waiting = f"waiting: {choice.reason}"
            if before != VmState.RECOVERING.value:
                self.change(self.moved(before, VmState.RECOVERING.value, reason=f"{why}; {waiting}"),
                            state=VmState.RECOVERING, host=None, migration=None, restore_from=None, reason=waiting)
            elif self.p.host is not None:
                self.change(self.said(EventKind.WAITING, new=VmState.RECOVERING.value, reason=f"{why}; {waiting}"),
                            host=None, migration=None, restore_from=None, reason=waiting)
            else:
                self.note(waiting)
            return
        assert choice.host is not None
        self.start_on(choice.host, "recovering" if before != "stopped" else before, why)

    def restart(self, why: str, failed_host: str, prefer_same: bool) -> None:
        window = self.spec.restart.window_s
        # A service member's QEMU that haven itself killed (its fencing, on the service manager's
        # order) did not crash: it starts again on its host, but costs none of its restart budget.
        charged = (self.spec.name, self.p.generation) not in self.r.view.ordered_kills
        recent = (*(t for t in self.p.restarts if self.r.now - t < window), *((self.r.now,) if charged else ()))
        before = self.p.state.value
        if charged and len(recent) > self.spec.restart.max_restarts:
            self.change(self.moved(before, VmState.ERROR.value, reason=f"{why}; restart limit "
                                   f"{self.spec.restart.max_restarts} in {window:g} s reached"),
                        state=VmState.ERROR, host=None, migration=None,
                        restore_from=None, restarts=recent, reason=f"restart limit reached: {why}")
            return
        if not self.spec.ha or self.spec.desired is not DesiredState.RUNNING:
            self.change(self.moved(before, VmState.STOPPED.value, reason=why), state=VmState.STOPPED, host=None,
                        migration=None, restore_from=None, restarts=recent)
            return
        failed_on = (*self.p.failed_on, failed_host) if failed_host and charged else self.p.failed_on
        # Retries in place only on the first host it failed on: once moved, a host that failed it
        # is not tried again while another is free.
        in_place = set(failed_on) == {failed_host} and len(failed_on) <= self.spec.restart.same_host_retries
        if prefer_same or in_place or not charged:
            choice = self.select(prefer=failed_host)
        else:
            # Only hosts not tried yet: excluding just the last one can bounce the VM between two
            # bad hosts while a third is free. When every host has failed it, start over.
            choice = self.select(exclude=tuple(sorted(set(failed_on))))
            if not choice:
                failed_on = ()
                choice = self.select()
        if not choice:
            self.change(self.moved(before, VmState.RECOVERING.value, reason=f"{why}; waiting: {choice.reason}"),
                        state=VmState.RECOVERING, host=None, migration=None, restore_from=None,
                        restarts=recent, failed_on=failed_on, reason=choice.reason)
            return
        assert choice.host is not None
        count = (f"restart {len(recent)} of {self.spec.restart.max_restarts}" if charged
                 else "killed on its service's order: restart not counted")
        self.start_on(choice.host, before, f"{why}, {count}", restarts=recent)
        self.change(failed_on=failed_on)

    def on_starting(self) -> None:
        if self.host_trouble():
            return
        host = self.p.host
        status = self.status(host, self.p.generation)
        if self.spec.desired is DesiredState.STOPPED:
            self.change(self.moved(VmState.STARTING.value, VmState.STOPPING.value, reason="stop requested"),
                        state=VmState.STOPPING)
        elif status and status.state is LocalState.RUNNING:
            self.change(self.moved(VmState.STARTING.value, VmState.RUNNING.value, host=host,
                                   generation=self.p.generation), state=VmState.RUNNING, restore_from=None,
                        failed_on=())
        elif status and status.state in ENDED_LOCAL_STATES:
            # STOPPED unasked: killed while booting (a watchdog or a self-fence); start it again
            self.restart(f"start failed on {host}: {status.detail or status.state.value}", host or "", False)
        elif self.r.now - self.p.since > self.r.settings.start_timeout_s:
            self.restart(f"not running on {host} after {self.r.settings.start_timeout_s:g} s", host or "", False)

    def on_running(self) -> None:
        if self.host_trouble():
            return
        host = self.p.host
        assert host is not None
        status = self.status(host, self.p.generation)
        if self.spec.desired is DesiredState.STOPPED:
            self.change(self.moved(VmState.RUNNING.value, VmState.STOPPING.value, reason="stop requested"),
                        state=VmState.STOPPING)
        elif status and status.state in ENDED_LOCAL_STATES:
            self.restart(f"{status.state.value} on {host}", host, True)
        elif status and status.state is LocalState.MIGRATED:
            self.handed_over(host)
        elif self.r.host_state(host) is HostState.MAINTENANCE:
            self.leave_draining_host(host)
        elif ((self.spec.affinity_group and self.rejoin_group(host))
              or (self.p.drained_from and self.return_after_maintenance(host, self.p.drained_from))):
            return  # rejoining its group, or going back to the host a drain moved it from
        elif self.spec.fails_back(self.r.settings.failback):
            self.fail_back(host)

    def handed_over(self, host: str) -> None:
        """Placed here at this generation, yet its QEMU here handed the guest over to a migration
        target: a live migration the manager aborted because its target was lost, on a word from
        this host ("migrating out") that was out of date (the switchover happened, unreported, the
        store out of reach), or that timed out as the switchover came. Nothing runs here: the guest
        went to that target. Start it again as after a crash once that target runs it no more: no
        host is lost (a lost one is fenced, or back under a new lease, first), and no other host
        reports it active or incoming (a target cut off from the store may run it while its last
        word there is "incoming", until its lease goes)."""
        if any(record.state is HostState.LOST for record in self.r.records.values()) or any(
                other != host and (status.state in ACTIVE_LOCAL_STATES or status.state is LocalState.INCOMING)
                for other, status in self.vm.statuses.items()):
            return
        self.restart(f"handed over from {host} by a live migration that was aborted", host, True)

    def on_stopping(self) -> None:
        state = self.r.host_state(self.p.host)
        status = self.status(self.p.host, self.p.generation)
        if state in GONE:
            self.change(self.moved(VmState.STOPPING.value, VmState.STOPPED.value, from_host=self.p.host,
                                   reason=f"host {self.p.host} {state.value}"), state=VmState.STOPPED, host=None)
        elif state is HostState.LOST:
            return  # wait for the fence: the VM may still run until then
        elif status is None or status.state not in (LocalState.RUNNING, LocalState.STARTING):
            self.change(self.moved(VmState.STOPPING.value, VmState.STOPPED.value, host=self.p.host),
                        state=VmState.STOPPED, host=None)

    def on_recovering(self) -> None:
        host = self.p.host
        state = self.r.host_state(host)
        if host is not None and state is HostState.LOST:
            return
        if host is not None and state in UP:
            # Back before the fence: its agent killed the VM when its lease ran out. Let the host
            # prove itself stable first (a flapping host would kill the VM again and again).
            record = self.r.records[host]
            if self.r.now < record.since + settle_s(record, self.r.settings):
                self.note(f"waiting for {host} to settle (back before the fence)")
                return
            self.recover(f"host {host} back before the fence", prefer=host)
            return
        if host and state:
            why = f"host {host} {state.value}"
        else:  # it was waiting with no host: a stop request, or room to start it, ends the wait
            why = "stop requested" if self.spec.desired is not DesiredState.RUNNING else "room available"
        self.recover(why)

    def on_error(self) -> None:
        pass


def _may_balance(spec: VmSpec, host: str | None, cluster_failback: bool) -> bool:
    rank, levels = spec.preference_rank(host), len(spec.preference_levels)
    return rank == levels if spec.fails_back(cluster_failback) else (rank > 0 or levels == 0)


def _runs_on(vm: VmView, p: Placement) -> bool:
    status = vm.statuses.get(p.host) if p.host else None
    return status is not None and status.generation == p.generation and status.state is LocalState.RUNNING


def _balance(r: Round) -> None:
    placements = list(r.placements())
    if any(p.state is VmState.MIGRATING for p in placements):
        return
    specs = r.specs
    # Only VMs that run for sure and were left alone this round. A VM on its first preferred host
    # stays; with failback on, so does a VM on any of its preferred hosts: failback would bring it
    # back to the room it left (ping-pong).
    # Grouped VMs only move as a group, which balancing does not plan.
    movable = [p.vm for p in placements
               if p.state is VmState.RUNNING and p.vm not in r.current and _runs_on(r.view.vms[p.vm], p)
               and specs[p.vm].migratable and specs[p.vm].ha and not specs[p.vm].affinity_group
               and _may_balance(specs[p.vm], p.host, r.settings.failback)]
    loads = {name: copy.deepcopy(load) for name, load in r.capacity.loads.items()}  # planning only
    for move in plan_balance(loads, specs, movable, r.settings, replica.confine(r.view)):
        _VmStep(r, r.view.vms[move.vm]).begin_migration(MigrationKind.LIVE, move.target, "balancing")
