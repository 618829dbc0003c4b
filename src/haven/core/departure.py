"""Hosts that leave on purpose or come back unseen, pure: the clean shutdown and reboot policies,
and a power cycle faster than the lease TTL (docs/DESIGN.md section 5, "Clean departures").

A host that is shut down or rebooted cleanly says so first, on its alive key (`Departure`), with a
policy the cluster chose (`Settings.shutdown_policy`, resolved by `resolve`):
- migrate: the host is drained (maintenance): its VMs live- or quick-migrate away, then it goes;
- freeze: its VMs are stopped and stay placed there (a STOPPED placement that keeps its host); they
  start there again when the host returns, and nowhere else meanwhile;
- failover: its VMs are stopped and, once each is confirmed stopped, started on the other hosts at
  once, without waiting for the lease to expire;
- conditional (Proxmox's default): a reboot freezes (the host is back in a minute), a shutdown
  fails over (it may not be).
Once no VM is placed to run there any more, the host gives its lease back and the manager records
it offline at once: nothing of ours can run there, so there is no fence to wait for. A departure
that did not finish (the lease went while a VM was still placed there) is a lost host as usual.

A host whose lease changed while the manager had it up restarted without the manager seeing its
lease go (a power cycle faster than the TTL). Its VMs died with it: they are reported restarting
(`running -> recovering -> starting`, counted like a recovery) on that same host, at the same
generation. The same host because it is the only place known to hold no copy (the VMs cannot be
moved off a host that holds a valid lease without its word); the same generation because its new
agent may already be booting that one, and nothing else may run it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from haven.core.events import Event, EventKind
from haven.model.spec import DesiredState, HostShutdownPolicy
from haven.model.state import (
    HOLDING_STATES,
    ClusterView,
    HostRecord,
    HostState,
    HostView,
    LocalState,
    Placement,
    VmState,
)
from haven.model.state import HOST_UP as UP

if TYPE_CHECKING:
    from haven.core.round import Round
    from haven.core.scheduler import Selection
    from haven.model.spec import VmSpec
    from haven.model.state import VmStatus, VmView

STOPS = frozenset({HostShutdownPolicy.FREEZE, HostShutdownPolicy.FAILOVER})  # policies that stop the VMs


def resolve(policy: HostShutdownPolicy, reboot: bool) -> HostShutdownPolicy:
    """The policy a departing host announces: `conditional` freezes a reboot and fails a shutdown over."""
    if policy is HostShutdownPolicy.CONDITIONAL:
        return HostShutdownPolicy.FREEZE if reboot else HostShutdownPolicy.FAILOVER
    return policy


def restarted(host: HostView) -> bool:
    """Alive under a lease other than the one the manager recorded it up with: it went down and
    came back before its old lease expired. Known once its new run has reported what it runs
    (until then the statuses of its earlier run are all there is to read)."""
    record = host.record
    return (host.alive and host.reported and record is not None and record.state in UP and record.lease > 0
            and host.lease > 0 and host.lease != record.lease)


def holds(p: Placement, host: str) -> bool:
    """Is `p` a VM placed to run on `host` (there, or arriving by migration)?"""
    return p.state in HOLDING_STATES and (p.host == host or (p.migration is not None and p.migration.target == host))


def _gone(policy: HostShutdownPolicy) -> str:
    return f"left cleanly, policy {policy.value}"


def host_change(host: HostView, record: HostRecord, view: ClusterView) -> tuple[HostState, str] | None:
    """The next state of a host recorded up, when a departure or a restart decides it (None: the
    usual rules do)."""
    name = host.spec.name
    if not host.alive:
        if record.leaving and not any(vm.placement and holds(vm.placement, name) for vm in view.vms.values()):
            return HostState.OFFLINE, _gone(record.leaving)
        return None  # lost, as any host whose lease goes
    want = HostState.MAINTENANCE if host.admin.maintenance or host.leaving else HostState.ONLINE
    if restarted(host):
        return want, f"restarted: lease {host.lease} replaced lease {record.lease} before it expired"
    if host.leaving and record.leaving is not host.leaving.policy:
        verb = "rebooting" if host.leaving.reboot else "shutting down"
        return HostState.MAINTENANCE, f"{verb}, policy {host.leaving.policy.value}"
    return None


def returned_reason(record: HostRecord) -> str:
    """Why a fenced or offline host counts as up again: back from a clean departure it needs no
    settling (it left on purpose; a flapping host does not announce itself)."""
    return "returned" if record.leaving else "rejoined"


class DepartureSteps:
    """Mixed into the manager's per-VM step (`manager._VmStep`), whose helpers it uses."""

    p: Placement
    spec: VmSpec
    vm: VmView
    r: Round

    if TYPE_CHECKING:  # provided by _VmStep
        def status(self, host: str | None, generation: int | None = None) -> VmStatus | None: ...
        def change(self, event: Event | None = None, **fields: object) -> None: ...
        def said(self, kind: EventKind, **facts: Any) -> Event: ...
        def moved(self, old: str, new: str, **facts: Any) -> Event: ...
        def note(self, reason: str) -> None: ...
        def select(self, exclude: tuple[str, ...] = (), prefer: str | None = None) -> Selection: ...
        def recover(self, why: str, prefer: str | None = None) -> None: ...
        def start_on(self, host: str, before: str, why: str, restarts: tuple[float, ...] | None = None,
                     kind: EventKind = EventKind.STATE_CHANGE, **facts: Any) -> None: ...

    def departure_turn(self) -> bool:
        """Handle a VM whose host restarted unseen, is leaving cleanly, or left it frozen. True if
        the VM's step is over."""
        host = self.p.host
        view = self.r.view.hosts.get(host) if host else None
        if host is None or view is None:
            return False
        if self.p.state is VmState.STOPPED:
            return self._frozen(host)
        if restarted(view) and self.p.state in (VmState.RUNNING, VmState.STARTING):
            return self._restart_in_place(host)
        record = self.r.records.get(host)
        policy = record.leaving if record and record.state in UP and view.alive else None
        if policy not in STOPS:
            return False
        assert policy is not None
        if self.p.state in (VmState.RUNNING, VmState.STARTING):
            verb = "rebooting" if view.leaving and view.leaving.reboot else "shutting down"
            self.change(self.moved(self.p.state.value, VmState.STOPPING.value,
                                   reason=f"host {host} {verb}, policy {policy.value}"), state=VmState.STOPPING)
            return True
        if self.p.state is VmState.STOPPING and self.spec.desired is DesiredState.RUNNING:
            status = self.status(host, self.p.generation)
            if status and status.state in (LocalState.RUNNING, LocalState.STARTING):
                return True  # its host is stopping it
            if policy is HostShutdownPolicy.FREEZE:
                frozen = f"frozen on {host} until it returns"
                self.change(self.moved(VmState.STOPPING.value, VmState.STOPPED.value, host=host, reason=frozen),
                            state=VmState.STOPPED, reason=frozen)
            else:
                self._fail_over(host)
            return True
        return False

    def _restart_in_place(self, host: str) -> bool:
        status = self.status(host, self.p.generation)
        if status and status.state is not LocalState.STARTING:
            # Running: it survived (a new run of the daemon that took a new lease re-attached it).
            # Ended: the new run already saw it die; the usual restart rules take it from there.
            return False
        why = f"host {host} restarted"
        if self.spec.desired is not DesiredState.RUNNING or not self.spec.ha:
            self.recover(why)  # stopped, or an error for a priority-0 VM: as for a lost host
            return True
        before = self.p.state.value
        self.change(self.moved(before, VmState.RECOVERING.value, from_host=host, reason=why),
                    state=VmState.RECOVERING)
        self.change(self.said(EventKind.STATE_CHANGE, old=VmState.RECOVERING.value, new=VmState.STARTING.value,
                              host=host, generation=self.p.generation, priority=self.spec.priority,
                              reason=f"{why}: starting it there again"),
                    state=VmState.STARTING, reason="")
        return True

    def _fail_over(self, host: str) -> None:
        why = f"host {host} leaving, policy {HostShutdownPolicy.FAILOVER.value}"
        choice = self.select(exclude=(host,))
        if not choice:
            waiting = f"waiting: {choice.reason}"
            self.change(self.moved(VmState.STOPPING.value, VmState.RECOVERING.value, from_host=host,
                                   reason=f"{why}; {waiting}"), state=VmState.RECOVERING, host=None, reason=waiting)
            return
        assert choice.host is not None
        self.change(self.moved(VmState.STOPPING.value, VmState.RECOVERING.value, from_host=host, reason=why),
                    state=VmState.RECOVERING, host=None)
        self.start_on(choice.host, VmState.RECOVERING.value, why)

    def _frozen(self, host: str) -> bool:
        """A VM a `freeze` departure left stopped on `host`: it waits for that host, then starts there."""
        record = self.r.records.get(host)
        back = record is not None and record.state in UP and not record.leaving
        if self.spec.desired is not DesiredState.RUNNING or (back and record is not None
                                                             and record.state is HostState.MAINTENANCE):
            self.change(host=None, reason="")  # stopped for good, or back in maintenance: not frozen any more
            return False
        if not back:
            self.note(f"frozen on {host} until it returns")
            return True
        if self.r.capacity.why_not(self.spec, host) is None:
            self.start_on(host, VmState.STOPPED.value, f"{host} returned")
            return True
        self.change(host=None, reason="")  # no room there any more: it starts where it can
        return False
