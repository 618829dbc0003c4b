"""The manager's service turn: after the VM decision, `core.service.decide_services` over what the
snapshot holds of services, and the writes that apply it (in the manager's one guarded
transaction, beside the placements).

A cluster without services reads no service key and writes nothing more: it behaves as before.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from haven.core.decision import Decision
from haven.core.events import Event
from haven.core.service import HostLiveness, ServiceDecision, ServiceView, decide_services
from haven.core.service_events import ServiceEvent
from haven.model.service import MemberFacts, ServiceRequest, ServiceSpec, ServiceState, pinned_host
from haven.model.spec import VmSpec
from haven.model.state import ClusterView, HostRecord, HostState
from haven.ports.store import Delete, Put
from haven.runtime.layout import Layout, Snapshot


@dataclass(frozen=True)
class ServiceInputs:
    """What a snapshot holds of services."""

    specs: Mapping[str, ServiceSpec] = field(default_factory=dict)
    states: Mapping[str, ServiceState] = field(default_factory=dict)
    requests: Mapping[str, ServiceRequest] = field(default_factory=dict)
    facts: Mapping[str, MemberFacts] = field(default_factory=dict)  # by member

    @classmethod
    def of(cls, snapshot: Snapshot) -> ServiceInputs:
        return cls(snapshot.services, snapshot.service_states, snapshot.service_requests, snapshot.member_facts)


def member_hosts(vms: Mapping[str, VmSpec]) -> dict[str, str]:
    """Member VM -> the host it is pinned to (every VM pinned to one host; only members matter)."""
    return {name: host for name, vm in vms.items() if (host := pinned_host(vm)) is not None}


def liveness(records: Mapping[str, HostRecord | None], leases: Mapping[str, int | None]) -> dict[str, HostLiveness]:
    """The host facts the service rule reads. A host with no record yet counts as lost: nothing
    is known of it, so nothing may be taken on the strength of it being gone."""
    return {name: HostLiveness(record.state if record is not None else HostState.LOST, leases.get(name))
            for name, record in records.items()}


def view_liveness(view: ClusterView, settled: Mapping[str, HostRecord] | None = None) -> dict[str, HostLiveness]:
    """`liveness` of the cluster's hosts: their records as stored, or as `settled` (this
    manager iteration's new ones) where it has them; a lease only for a host alive under it."""
    records = {name: (settled or {}).get(name, host.record) for name, host in view.hosts.items()}
    leases = {name: host.lease if host.alive and host.lease else None for name, host in view.hosts.items()}
    return liveness(records, leases)


def service_view(inputs: ServiceInputs, name: str) -> ServiceView:
    """One service as the rule reads it: spec, state, its members' reports, a pending request."""
    spec = inputs.specs[name]
    return ServiceView(spec, inputs.states.get(name),
                       {m: f for m in spec.members if (f := inputs.facts.get(m)) is not None},
                       inputs.requests.get(name))


def decide_round(inputs: ServiceInputs, view: ClusterView, decision: Decision, now: float) -> ServiceDecision:
    """The services' turn, on the host records as this iteration settled them."""
    views = {name: service_view(inputs, name) for name in inputs.specs}
    return decide_services(views, view_liveness(view, decision.host_records),
                           member_hosts({n: v.spec for n, v in view.vms.items()}), now)


def as_event(event: ServiceEvent) -> Event:
    """A service event in the cluster's timeline, as a sentence (until the timeline learns a
    `service` subject, `core.service_events`)."""
    return Event.from_text(event.t, event.source, f"service {event.service}", event.message)


def service_ops(layout: Layout, decision: ServiceDecision) -> list[Put | Delete]:
    ops: list[Put | Delete] = []
    for name, state in sorted(decision.states.items()):
        ops.append(Put(layout.service_state(name), state.model_dump_json()))
    for name in sorted(decision.done_requests):
        ops.append(Delete(layout.service_request(name)))
    return ops
