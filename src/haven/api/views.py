"""Turn a store snapshot into what the API returns. Pure functions over `Snapshot`."""
from __future__ import annotations

import dataclasses
from collections import Counter

from haven.api.schemas import (
    CopyOut,
    EventOut,
    HostOut,
    MemberOut,
    PoolOut,
    ProtectionOut,
    ReplicasOut,
    ServiceOut,
    SummaryOut,
    Usage,
    VmOut,
)
from haven.core.events import Event
from haven.core.protection import Protection, ServiceHealth, assess, host_state, service_health
from haven.core.service import Hosts, ServiceView
from haven.model.replica import DiskCopy, ReplicaRecord
from haven.model.service import ServicePhase
from haven.model.spec import DesiredState, PoolKind, PoolSpec
from haven.model.state import HOLDING_STATES, ClusterView, HostState, VmState
from haven.ports.store import KeyValue
from haven.runtime import service_round
from haven.runtime.layout import Snapshot, decode_event
from haven.runtime.service_round import ServiceInputs, member_hosts, view_liveness

PENDING = "pending"  # a VM spec the manager has not placed yet


def vm_state(snap: Snapshot, name: str) -> str:
    placement = snap.placements.get(name)
    return placement.state.value if placement else PENDING


def vms_on(snap: Snapshot, host: str) -> list[str]:
    """VMs holding resources on `host` (a migrating VM counts on source and target)."""
    names = []
    for name, p in sorted(snap.placements.items()):
        if name in snap.specs and p.state in HOLDING_STATES and (
                p.host == host or (p.migration is not None and p.migration.target == host)):
            names.append(name)
    return names


def host_out(snap: Snapshot, view: ClusterView, name: str) -> HostOut:
    hv = view.hosts[name]
    spec = hv.spec
    placed = vms_on(snap, name)
    state = host_state(hv)
    here_now = [vm for vm in placed if snap.placements[vm].host == name]
    return HostOut(
        name=name, state=state.value, alive=hv.alive, maintenance_requested=hv.admin.maintenance,
        draining=hv.admin.maintenance and bool(here_now),
        since=hv.record.since if hv.record else 0.0, reason=hv.record.reason if hv.record else "",
        manager=snap.manager == name,
        memory_mib=Usage(used=sum(snap.specs[vm].memory_mib for vm in placed), total=spec.memory_mib),
        memory_reserve_mib=snap.settings.memory_reserve_mib,
        vcpus=Usage(used=sum(snap.specs[vm].vcpus for vm in placed), total=spec.vcpus),
        vms=placed, spec=spec, fence_device=snap.fence_checks.get(name))


def vm_out(snap: Snapshot, name: str, now: float | None = None) -> VmOut:
    """The VM as the API shows it; `now` (the API's clock) gives its copies' ages."""
    spec = snap.specs[name]
    placement = snap.placements.get(name)
    statuses = sorted(snap.statuses.get(name, {}).values(), key=lambda s: s.host)
    record = snap.replicas.get(name)
    return VmOut(name=name, state=vm_state(snap, name), host=placement.host if placement else None,
                 desired=spec.desired.value, ha=spec.ha, reason=placement.reason if placement else "",
                 spec=spec, placement=placement, statuses=statuses, request=snap.requests.get(name),
                 replicas=replicas_out(record, spec.write_without_replica, now) if record else None)


# --- replicated pools ---

def age(since: float, now: float) -> float:
    """Seconds from `since` (a writer's clock) to `now` (the API's), never negative."""
    return round(max(0.0, now - since), 3)


def copy_out(copy: DiskCopy, now: float | None) -> CopyOut:
    return CopyOut(disk=copy.disk, host=copy.host, state=copy.state.value, since=copy.since,
                   age_s=age(copy.since, now) if now is not None else None, done=copy.done, total=copy.total,
                   progress=round(min(1.0, copy.done / copy.total), 4) if copy.total else None,
                   reason=copy.reason)


def replicas_out(record: ReplicaRecord, write_without_replica: bool, now: float | None) -> ReplicasOut:
    return ReplicasOut(primary=record.primary, protected=record.protected,
                       copies=[copy_out(c, now) for c in record.copies], incoming=record.incoming,
                       promoted_at=record.promoted_at, write_without_replica=write_without_replica)


def pool_out(snap: Snapshot, pool: PoolSpec) -> PoolOut:
    hosts = list(pool.hosts) if pool.kind is PoolKind.REPLICATED else \
        sorted(name for name, spec in snap.hosts.items() if pool.name in spec.pools)
    vms = sorted(name for name, spec in snap.specs.items() if pool.name in spec.pools)
    return PoolOut(name=pool.name, kind=pool.kind.value, declared=pool.name in snap.pools, hosts=hosts, vms=vms,
                   spec=pool)


# --- services ---

def service_facts(view: ClusterView, snap: Snapshot) -> tuple[Hosts, dict[str, str]]:
    """The host facts and member hosts the manager decides services on (`runtime.service_round`),
    from the store as it is now."""
    return view_liveness(view), member_hosts(snap.specs)


def service_view(snap: Snapshot, name: str) -> ServiceView:
    return service_round.service_view(ServiceInputs.of(snap), name)


def service_healths(snap: Snapshot, view: ClusterView) -> list[ServiceHealth]:
    hosts, host_of = service_facts(view, snap)
    return [service_health(service_view(snap, name), hosts, host_of) for name in sorted(snap.services)]


def service_phase(snap: Snapshot, name: str) -> str:
    """The manager's phase; before its first decision 'pending', or 'stopped' for a service
    declared stopped (the manager writes nothing for one that never ran)."""
    state = snap.service_states.get(name)
    if state is not None:
        return state.phase.value
    return ServicePhase.STOPPED.value if snap.services[name].desired is DesiredState.STOPPED else PENDING


def service_out(snap: Snapshot, view: ClusterView, name: str) -> ServiceOut:
    service = service_view(snap, name)
    spec, state = service.spec, service.state
    hosts, host_of = service_facts(view, snap)
    health = service_health(service, hosts, host_of)
    members = []
    for member, cond in health.conditions.items():
        facts = snap.member_facts.get(member)
        host = host_of.get(member)
        current = facts is not None and host is not None and hosts.get(host) is not None \
            and hosts[host].lease == facts.lease
        members.append(MemberOut(
            name=member, host=host, host_state=host_state(view.hosts[host]).value if host in view.hosts else None,
            vm_state=vm_state(snap, member) if member in snap.specs else "undeclared",
            active=member == health.active, condition=cond.value, reported=current,
            qemu=bool(facts and facts.qemu), guest=facts.guest if facts else None,
            holds_disk=bool(facts and facts.disk), disk_mounted=bool(facts and facts.mounted),
            holds_ip=bool(facts and facts.ip), app_started=bool(facts and facts.started),
            check_failures=facts.check_failures if facts else 0, detail=facts.detail if facts else "",
            facts=facts))
    return ServiceOut(
        name=name, phase=service_phase(snap, name), desired=spec.desired.value, active=health.active,
        active_host=host_of.get(health.active) if health.active else None,
        generation=state.generation if state else 0, reason=state.reason if state else "",
        since=state.since if state else 0.0, floating_ip=spec.floating_ip, standbys=list(health.standbys),
        members=members, spec=spec, state=state, request=service.request)


def protection(snap: Snapshot, view: ClusterView) -> Protection:
    """The pet's mood: HA VMs, services and replicated pairs (`core.protection.assess`)."""
    return assess(view, service_healths(snap, view))


def summary(snap: Snapshot, cluster: str, now: float,
            simulation: dict[str, object] | None = None) -> SummaryOut:
    view = snap.view()
    hosts = Counter(host_state(h).value for h in view.hosts.values())
    vms = Counter(vm_state(snap, name) for name in snap.specs)
    services = Counter(service_phase(snap, name) for name in snap.services)
    level = protection(snap, view)
    return SummaryOut(
        cluster=cluster, time=now, manager=snap.manager,
        hosts={s.value: hosts.get(s.value, 0) for s in HostState},
        vms={**{s.value: vms.get(s.value, 0) for s in VmState}, PENDING: vms.get(PENDING, 0)},
        services={**{s.value: services.get(s.value, 0) for s in ServicePhase}, PENDING: services.get(PENDING, 0)},
        protection=ProtectionOut(level=level.level, mood=level.mood, reason=level.reason),
        simulation=simulation)


def event_id(kv: KeyValue, prefix: str) -> str:
    # The revision orders events by write; the key orders events written in one transaction.
    return f"{kv.mod_revision:012d}-{kv.key[len(prefix):]}"


_SHOWN = tuple(f.name for f in dataclasses.fields(Event) if f.name in EventOut.model_fields)


def event_out(event: Event, id_: str) -> EventOut:
    """The event's fields, and its rendered subject, message and line."""
    return EventOut(id=id_, subject=event.subject, message=event.message, line=event.line(),
                    **{name: getattr(event, name) for name in _SHOWN})


def events_from(items: list[KeyValue], prefix: str) -> list[EventOut]:
    """Decode event keys, oldest write first. Undecodable entries are skipped, not fatal."""
    events = []
    for kv in items:
        try:
            event: Event = decode_event(kv.value)
            events.append(event_out(event, event_id(kv, prefix)))
        except (ValueError, KeyError, TypeError):
            continue
    events.sort(key=lambda e: e.id)
    return events


def page(events: list[EventOut], after: str | None, limit: int) -> list[EventOut]:
    """Events after the cursor (oldest first), or without a cursor the newest `limit` events."""
    if after is None:
        return events[-limit:] if limit else []
    return [e for e in events if e.id > after][:limit]
