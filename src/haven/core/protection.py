"""The cluster's protection level: the mood of the dashboard's pet.

- ``ill`` / ``down``: a desired-running HA VM (priority > 0) is not running, or a desired-running
  service is down (no member runs it);
- ``worried`` / ``degraded``: every HA VM runs, but the cluster could not restart all of them after
  losing ``settings.host_failures_to_tolerate`` hosts, or a running service has no healthy standby
  (one more failure would take it down);
- ``content`` / ``protected``: otherwise.

A service's member VMs are judged through their service, not as HA VMs: each is pinned to its
host and never restarts elsewhere; the service surviving its loss is what protects them.

Pure: no I/O, no clock. The failure check is the scheduler's (`scheduler.failure_shortfall`, the
same one admission control uses): the lost hosts' HA VMs packed into the free memory of the
remaining usable hosts, each keeping ``settings.memory_reserve_mib``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from haven.core.scheduler import failure_shortfall
from haven.core.service import Condition, Hosts, ServiceView, condition
from haven.core.stuck import explain
from haven.model.replica import CopyState, DiskCopy
from haven.model.service import ACTIVE_PHASES, ServicePhase, ServiceState
from haven.model.spec import DesiredState
from haven.model.state import GUEST_UP_STATES, HOLDING_STATES, ClusterView, HostState, HostView, VmView

Level = Literal["protected", "degraded", "down"]
Mood = Literal["content", "worried", "ill"]


@dataclass(frozen=True, slots=True)
class Protection:
    level: Level
    mood: Mood
    reason: str


def host_state(host: HostView) -> HostState:
    """The host's state as the operator should see it: the manager's record, corrected by the
    lease (a host without a lease is never online) and by a pending maintenance request."""
    state = host.record.state if host.record else (HostState.ONLINE if host.alive else HostState.OFFLINE)
    if state == HostState.ONLINE and not host.alive:
        return HostState.LOST
    if state == HostState.ONLINE and host.admin.maintenance:
        return HostState.MAINTENANCE
    return state


def usable(host: HostView) -> bool:
    """Can this host take VMs after a failure?"""
    return host_state(host) == HostState.ONLINE


def _names(items: Iterable[str], limit: int = 3) -> str:
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _protected_vms(view: ClusterView, members: frozenset[str] = frozenset()) -> list[VmView]:
    return [vm for name, vm in sorted(view.vms.items())
            if vm.spec.ha and vm.spec.desired == DesiredState.RUNNING and name not in members]


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """A service as the protection level counts it: the manager's decision and each member's
    condition as the manager sees it (`core.service.condition`)."""

    name: str
    wanted: bool  # desired running
    phase: ServicePhase | None  # None: the manager has not decided on it yet
    active: str | None
    reason: str  # the manager's
    conditions: Mapping[str, Condition]  # every member, in order of preference

    @property
    def standbys(self) -> tuple[str, ...]:
        """The healthy members other than the active one: where it could fail over to now."""
        return tuple(m for m, c in self.conditions.items() if m != self.active and c is Condition.HEALTHY)

    @property
    def down(self) -> bool:
        """Wanted running, but no member is running it or taking it over."""
        return self.wanted and (self.phase is None or self.phase not in ACTIVE_PHASES)


def service_health(service: ServiceView, hosts: Hosts, host_of: Mapping[str, str]) -> ServiceHealth:
    """`service` judged on the same facts the manager decides on (`core.service.decide_services`)."""
    spec = service.spec
    state = service.state or ServiceState(service=spec.name)
    conditions = {m: condition(spec, state, m, service.facts, hosts, host_of) for m in spec.order}
    return ServiceHealth(name=spec.name, wanted=spec.desired == DesiredState.RUNNING,
                         phase=service.state.phase if service.state else None, active=state.active,
                         reason=state.reason, conditions=conditions)


def _service_down(s: ServiceHealth) -> str:
    if s.phase is None:
        return f"service {s.name} has not been started yet"
    return f"service {s.name} is {s.phase.value}" + (f": {s.reason}" if s.reason else "")


def _no_standby(s: ServiceHealth) -> str:
    others = ", ".join(f"{m} {c.value}" for m, c in s.conditions.items() if m != s.active)
    return f"service {s.name} has no healthy standby ({others})"


def _first(sentences: list[str], limit: int = 3) -> str:
    more = f"; and {len(sentences) - limit} more" if len(sentences) > limit else ""
    return "; ".join(sentences[:limit]) + more


def memory_used(view: ClusterView) -> dict[str, int]:
    """MiB held by placed VMs on each host (a migrating VM counts on source and target)."""
    used = dict.fromkeys(view.hosts, 0)
    for vm in view.vms.values():
        p = vm.placement
        if p is None or p.state not in HOLDING_STATES:
            continue
        for host in {p.host, p.migration.target if p.migration else None}:
            if host in used:
                used[host] += vm.spec.memory_mib
    return used


def can_survive(view: ClusterView, failures: int, members: frozenset[str] = frozenset()) -> tuple[bool, str]:
    """Can every running HA VM (but the service `members`, which never move) restart somewhere if
    `failures` usable hosts die? Returns (True, "") or (False, a reason naming the hosts)."""
    if failures <= 0:
        return True, ""
    reserve = view.settings.memory_reserve_mib
    used = memory_used(view)
    hosts = [name for name, host in sorted(view.hosts.items()) if usable(host)]
    ha_on: dict[str, list[tuple[str, int]]] = {name: [] for name in hosts}
    for vm in _protected_vms(view, members):
        p = vm.placement
        if p is not None and p.host in view.hosts and p.state in HOLDING_STATES:
            ha_on.setdefault(p.host, []).append((vm.spec.name, vm.spec.memory_mib))
    # A host that takes no VMs (in maintenance) can still fail and take its HA VMs with it: it is
    # one of the hosts that may be lost, with no room to offer. Leaving it out would call a
    # cluster whose hosts are all in maintenance protected.
    free = {name: view.hosts[name].spec.memory_mib - reserve - used[name] if name in hosts else 0
            for name in ha_on}
    short = failure_shortfall(free, ha_on, failures)
    if short is None:
        return True, ""
    if short.stranded is None:
        return False, (f"only {len(hosts)} usable host(s) ({_names(hosts) or 'none'}): cannot "
                       f"survive {failures} host failure(s)")
    return False, (f"losing {_names(short.lost)} would leave {short.displaced_mib} MiB of HA VMs without "
                   f"room ({short.room_mib} MiB free elsewhere)")


def assess(view: ClusterView, services: Iterable[ServiceHealth] = ()) -> Protection:
    """The cluster's protection level, mood and a one-line reason."""
    services = sorted(services, key=lambda s: s.name)
    members = frozenset(m for s in services for m in s.conditions)
    vms = _protected_vms(view, members)
    down = {vm.spec.name: vm for vm in vms
            if vm.placement is None or vm.placement.state not in GUEST_UP_STATES}
    services_down = [_service_down(s) for s in services if s.down]
    if down or services_down:
        ill = [_first(services_down)] if services_down else []
        if down:
            details = []
            for name, vm in list(down.items())[:3]:
                state = vm.placement.state.value if vm.placement else "not placed"
                details.append(f"{name} ({state})")
            more = f" and {len(down) - 3} more" if len(down) > 3 else ""
            verb = "is" if len(down) == 1 else "are"
            # Say why (no room, a host in maintenance, a restriction...): the operator's next step.
            why = explain(view, list(down.values())[:3], {name: host_state(h) for name, h in view.hosts.items()})
            ill.insert(0, f"HA VM{'s' if len(down) > 1 else ''} {', '.join(details)}{more} {verb} not running{why}")
        return Protection("down", "ill", "; ".join(ill))
    failures = view.settings.host_failures_to_tolerate
    ok, why = can_survive(view, failures, members)
    running = [s for s in services if s.wanted]
    lonely = [_no_standby(s) for s in running if not s.standbys]
    pairs = unprotected_pairs(view)
    if not ok or lonely or pairs:
        worried = [f"all {len(vms)} HA VMs run, but {why}"] if not ok else []
        extra = [f"and {len(pairs) - 3} more"] if len(pairs) > 3 else []
        return Protection("degraded", "worried",
                          "; ".join([*worried, *([_first(lonely)] if lonely else []), *pairs[:3], *extra]))
    if not vms and not running:
        return Protection("protected", "content", "no HA VMs to protect")
    tolerate = f"survives {failures} host failure{'s' if failures != 1 else ''}" if failures else \
        "no host failures to tolerate configured"
    content = [f"all {len(vms)} HA VMs run; the cluster {tolerate}"] if vms else []
    if running:
        n = len(running)
        content.append(f"{'all ' if n > 1 else ''}{n} service{'s' if n != 1 else ''} "
                       f"run{'s' if n == 1 else ''} with a healthy standby")
    return Protection("protected", "content", "; ".join(content))


def unprotected_pairs(view: ClusterView) -> list[str]:
    """One sentence per running VM whose replica does not hold every acknowledged write: a
    failover now would have to wait for its primary (replicated pools)."""
    lines = []
    for name, record in sorted(view.replicas.items()):
        vm = view.vms.get(name)
        if vm is None or vm.placement is None or vm.placement.state not in GUEST_UP_STATES:
            continue
        if not record.protected:
            behind = [c for c in record.copies if c.state is not CopyState.IN_SYNC]
            lines.append(f"vm {name} on {record.primary} has no in-sync replica "
                         f"({', '.join(_copy_words(c) for c in behind)})")
    return lines


def _copy_words(copy: DiskCopy) -> str:
    """'disk 0 on h2 syncing (40%)', 'disk 0 on h2 stale (the replica did not answer)'."""
    detail = f"{100 * copy.done // copy.total}%" if copy.state is CopyState.SYNCING and copy.total else copy.reason
    return f"disk {copy.disk} on {copy.host} {copy.state.value}" + (f" ({detail})" if detail else "")
