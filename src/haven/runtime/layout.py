"""Where everything lives in the store (docs/DESIGN.md section 6) and how it is encoded.

One prefix per cluster:

    /haven/<cluster>/config                  Settings
    /haven/<cluster>/hosts/<host>            HostSpec (static facts)
    /haven/<cluster>/hostadmin/<host>        HostAdmin (operator intent: maintenance)
    /haven/<cluster>/hoststate/<host>        HostRecord (manager)
    /haven/<cluster>/fencedev/<host>         FenceCheck (the leading manager's device monitor)
    /haven/<cluster>/alive/<host>            bound to the host's lease
    /haven/<cluster>/manager                 leader key, bound to the manager's lease
    /haven/<cluster>/vms/<vm>/spec           VmSpec (API)
    /haven/<cluster>/vms/<vm>/placement      Placement (manager)
    /haven/<cluster>/vms/<vm>/request        VmRequest (API), deleted by the manager once handled
    /haven/<cluster>/status/<host>/<vm>      VmStatus (agent), bound to the host's lease
    /haven/<cluster>/events/<key>            bounded event log
    /haven/<cluster>/services/<svc>/spec     ServiceSpec (API)
    /haven/<cluster>/services/<svc>/state    ServiceState (manager)
    /haven/<cluster>/services/<svc>/request  ServiceRequest (API), deleted by the manager once handled
    /haven/<cluster>/members/<host>/<vm>     MemberFacts (agent), bound to the host's lease
    /haven/<cluster>/pools/<pool>            PoolSpec (operator: the replicated pools)
    /haven/<cluster>/replicas/<vm>           ReplicaRecord (manager: primary; primary's agent: copies)

Statuses live under the host rather than the VM so that one host's reports vanish with its lease
and an agent reads its own in one prefix get.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar, cast

from pydantic import BaseModel

from haven.core.decision import Decision
from haven.core.events import Event, from_dict, to_dict
from haven.model.fencing import FenceCheck
from haven.model.replica import PoolSpec, ReplicaRecord
from haven.model.service import MemberFacts, ServiceRequest, ServiceSpec, ServiceState, ordered_kills
from haven.model.spec import HostSpec, Settings, VmSpec
from haven.model.state import (
    Alive,
    ClusterView,
    HostAdmin,
    HostRecord,
    HostView,
    Placement,
    VmRequest,
    VmStatus,
    VmView,
)
from haven.ports.store import Compare, Delete, KeyValue, Put, Store, StoreError


class KeyKind(StrEnum):
    """What a key of the layout holds."""

    CONFIG = "config"
    HOST = "hosts"
    HOST_ADMIN = "hostadmin"
    HOST_STATE = "hoststate"
    FENCE_CHECK = "fencedev"
    ALIVE = "alive"
    MANAGER = "manager"
    VM_SPEC = "spec"
    PLACEMENT = "placement"
    REQUEST = "request"
    STATUS = "status"
    EVENT = "events"
    SERVICE_SPEC = "service spec"
    SERVICE_STATE = "service state"
    SERVICE_REQUEST = "service request"
    MEMBER_FACTS = "member facts"
    POOL = "pools"
    REPLICA = "replicas"


@dataclass(frozen=True, slots=True)
class StoreKey:
    """A key of the layout, parsed (`Layout.parse`): what it holds, and for which host and VM."""

    kind: KeyKind
    host: str = ""  # hosts/, hostadmin/, hoststate/, alive/ and status/ keys
    vm: str = ""  # vms/, status/ and members/ keys
    service: str = ""  # services/ keys
    pool: str = ""  # pools/ keys


_SINGLE_KEYS = {"config": KeyKind.CONFIG, "manager": KeyKind.MANAGER}  # <root>config
_HOST_KEYS = {"hosts": KeyKind.HOST, "hostadmin": KeyKind.HOST_ADMIN, "hoststate": KeyKind.HOST_STATE,
              "fencedev": KeyKind.FENCE_CHECK,
              "alive": KeyKind.ALIVE}  # <root>hosts/<host>
_VM_KEYS = {"spec": KeyKind.VM_SPEC, "placement": KeyKind.PLACEMENT, "request": KeyKind.REQUEST}  # <root>vms/<vm>/spec
_SERVICE_KEYS = {"spec": KeyKind.SERVICE_SPEC, "state": KeyKind.SERVICE_STATE,
                 "request": KeyKind.SERVICE_REQUEST}  # <root>services/<svc>/state


@dataclass(frozen=True)
class Layout:
    cluster: str

    @functools.cached_property  # key -> parsed, for the bounded kinds (not events): loops parse the same keys all day
    def _parsed(self) -> dict[str, StoreKey]:
        return {}

    def parse(self, key: str) -> StoreKey | None:
        """The one reader of key names (the methods below are their one writer). None for a key
        this layout does not define."""
        hit = self._parsed.get(key)
        if hit is not None:
            return hit
        parsed = self._parse(key)
        if parsed is not None and parsed.kind is not KeyKind.EVENT:
            self._parsed[key] = parsed
        return parsed

    def _parse(self, key: str) -> StoreKey | None:
        if not key.startswith(self.root):
            return None
        parts = key[len(self.root):].split("/")
        head, n = parts[0], len(parts)
        if n == 3:
            if head == "vms":  # the most common kind first
                kind = _VM_KEYS.get(parts[2])
                return StoreKey(kind, vm=parts[1]) if kind else None
            if head == "status":
                return StoreKey(KeyKind.STATUS, host=parts[1], vm=parts[2])
            if head == "services":
                kind = _SERVICE_KEYS.get(parts[2])
                return StoreKey(kind, service=parts[1]) if kind else None
            if head == "members":
                return StoreKey(KeyKind.MEMBER_FACTS, host=parts[1], vm=parts[2])
        elif n == 2:
            host_kind = _HOST_KEYS.get(head)
            if host_kind:
                return StoreKey(host_kind, host=parts[1])
            if head == "events":
                return StoreKey(KeyKind.EVENT)
            if head == "replicas":
                return StoreKey(KeyKind.REPLICA, vm=parts[1])
            if head == "pools":
                return StoreKey(KeyKind.POOL, pool=parts[1])
        elif n == 1 and head in _SINGLE_KEYS:
            return StoreKey(_SINGLE_KEYS[head])
        return None

    @functools.cached_property  # every key starts with it: build it once
    def root(self) -> str:
        return f"/haven/{self.cluster}/"

    def config(self) -> str:
        return self.root + "config"

    def host(self, host: str) -> str:
        return f"{self.root}hosts/{host}"

    def host_admin(self, host: str) -> str:
        return f"{self.root}hostadmin/{host}"

    def host_state(self, host: str) -> str:
        return f"{self.root}hoststate/{host}"

    def fence_check(self, host: str) -> str:
        return f"{self.root}fencedev/{host}"

    def alive(self, host: str) -> str:
        return f"{self.root}alive/{host}"

    def manager(self) -> str:
        return self.root + "manager"

    def vm(self, vm: str) -> str:
        return f"{self.root}vms/{vm}/"

    def vm_spec(self, vm: str) -> str:
        return self.vm(vm) + "spec"

    def placement(self, vm: str) -> str:
        return self.vm(vm) + "placement"

    def request(self, vm: str) -> str:
        return self.vm(vm) + "request"

    def status_prefix(self, host: str) -> str:
        return f"{self.root}status/{host}/"

    def status(self, host: str, vm: str) -> str:
        return self.status_prefix(host) + vm

    def events(self) -> str:
        return self.root + "events/"

    def services(self) -> str:
        return self.root + "services/"

    def service_spec(self, service: str) -> str:
        return f"{self.services()}{service}/spec"

    def service_state(self, service: str) -> str:
        return f"{self.services()}{service}/state"

    def service_request(self, service: str) -> str:
        return f"{self.services()}{service}/request"

    def members(self) -> str:
        return self.root + "members/"

    def member_facts_prefix(self, host: str) -> str:
        return f"{self.members()}{host}/"

    def member_facts(self, host: str, vm: str) -> str:
        return self.member_facts_prefix(host) + vm

    def pool(self, pool: str) -> str:
        return f"{self.root}pools/{pool}"

    def replica(self, vm: str) -> str:
        return f"{self.root}replicas/{vm}"

    def event(self, event: Event, seq: int) -> str:
        # Sortable by time; the source and a sequence keep keys from different writers apart.
        source = event.source.replace(" ", "-")
        return f"{self.events()}{event.t:016.6f}-{source}-{seq:06d}"


def encode_event(event: Event) -> str:
    """The event's fields as JSON, with its rendered subject and message for older readers."""
    return json.dumps(to_dict(event))


def decode_event(value: str) -> Event:
    """An event as `encode_event` wrote it, or in the old (t, source, subject, message) form.
    Raises ValueError, KeyError or TypeError for what is not an event."""
    data = json.loads(value)
    if not isinstance(data, dict):
        raise TypeError("an event is a JSON object")
    return from_dict(data)


# Defaults for records not in the store; frozen, so one instance serves every snapshot.
DEFAULT_SETTINGS = Settings()
NO_ADMIN = HostAdmin()


@dataclass
class Snapshot:
    """Everything under the cluster prefix, decoded, read at one revision."""

    settings: Settings
    hosts: dict[str, HostSpec]
    admin: dict[str, HostAdmin]
    records: dict[str, HostRecord]
    alive: set[str]
    manager: str | None
    specs: dict[str, VmSpec]
    placements: dict[str, Placement]
    requests: dict[str, VmRequest]
    statuses: dict[str, dict[str, VmStatus]]  # vm -> host -> status
    events: list[Event]
    alive_keys: dict[str, tuple[int, Alive]] = field(default_factory=dict)  # host -> (its lease, the key's value)
    unreported: set[str] = field(default_factory=set)  # hosts that still have statuses of an earlier lease
    fence_checks: dict[str, FenceCheck] = field(default_factory=dict)  # host -> its fence device's last check
    services: dict[str, ServiceSpec] = field(default_factory=dict)
    service_states: dict[str, ServiceState] = field(default_factory=dict)
    service_requests: dict[str, ServiceRequest] = field(default_factory=dict)
    member_facts: dict[str, MemberFacts] = field(default_factory=dict)  # by member VM
    pools: dict[str, PoolSpec] = field(default_factory=dict)
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)  # by VM

    def view(self, manager_since: float = 0.0, fence_confirmed: Iterable[str] = ()) -> ClusterView:
        confirmed = set(fence_confirmed)
        hosts = {
            name: HostView(spec=spec, alive=name in self.alive,
                                           record=self.records.get(name),
                                           admin=self.admin.get(name, NO_ADMIN),
                                           fence_confirmed=name in confirmed,
                                           lease=self.alive_keys[name][0] if name in self.alive_keys else 0,
                                           leaving=self.alive_keys[name][1].leaving if name in self.alive_keys
                                           else None,
                                           reported=name not in self.unreported)
            for name, spec in sorted(self.hosts.items())
        }
        vms = {
            name: VmView(spec=spec, placement=self.placements.get(name),
                                         statuses=self.statuses.get(name, {}),
                                         request=self.requests.get(name))
            for name, spec in sorted(self.specs.items())
        }
        return ClusterView(settings=self.settings, hosts=hosts, vms=vms,
                                           manager_since=manager_since, pools=self.pools, replicas=self.replicas,
                                           ordered_kills=ordered_kills(self.service_states.values()))


M = TypeVar("M", bound=BaseModel)


class Decoder(Protocol):
    """Decodes a stored value into a model (`DecodeCache`, or a plain parse)."""

    def __call__(self, model: type[M], kv: KeyValue) -> M: ...


class DecodeCache:
    """Decoded values by key and mod revision: a loop re-reads the same records many times.
    Loops reading the same store may share one (a key at a revision has one value); the values
    are frozen models, safe to share."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[int, BaseModel]] = {}

    def __call__(self, model: type[M], kv: KeyValue) -> M:
        hit = self._items.get(kv.key)
        if hit is not None and hit[0] == kv.mod_revision and kv.mod_revision:
            return cast(M, hit[1])  # a key holds one model: it was decoded as `model` before
        value = model.model_validate_json(kv.value)
        self._items[kv.key] = (kv.mod_revision, value)
        return value


def _no_cache(model: type[M], kv: KeyValue) -> M:
    return model.model_validate_json(kv.value)


def decode(layout: Layout, items: Iterable[KeyValue],
           cache: Decoder = _no_cache) -> Snapshot:
    snap = Snapshot(DEFAULT_SETTINGS, {}, {}, {}, set(), None, {}, {}, {}, {}, [])
    status_leases: list[tuple[str, str, int]] = []
    for kv in items:
        key = layout.parse(kv.key)
        if key is None:
            continue
        match key.kind:
            case KeyKind.VM_SPEC:
                snap.specs[key.vm] = cache(VmSpec, kv)
            case KeyKind.PLACEMENT:
                snap.placements[key.vm] = cache(Placement, kv)
            case KeyKind.REQUEST:
                snap.requests[key.vm] = cache(VmRequest, kv)
            case KeyKind.STATUS:
                status = cache(VmStatus, kv)
                snap.statuses.setdefault(status.vm, {})[status.host] = status
                status_leases.append((status.vm, status.host, kv.lease))
            case KeyKind.CONFIG:
                snap.settings = cache(Settings, kv)
            case KeyKind.HOST:
                snap.hosts[key.host] = cache(HostSpec, kv)
            case KeyKind.HOST_ADMIN:
                snap.admin[key.host] = cache(HostAdmin, kv)
            case KeyKind.HOST_STATE:
                snap.records[key.host] = cache(HostRecord, kv)
            case KeyKind.FENCE_CHECK:
                snap.fence_checks[key.host] = cache(FenceCheck, kv)
            case KeyKind.ALIVE:
                snap.alive.add(key.host)
                snap.alive_keys[key.host] = (kv.lease, cache(Alive, kv))
            case KeyKind.MANAGER:
                snap.manager = json.loads(kv.value).get("host")
            case KeyKind.EVENT:
                snap.events.append(decode_event(kv.value))
            case KeyKind.SERVICE_SPEC:
                snap.services[key.service] = cache(ServiceSpec, kv)
            case KeyKind.SERVICE_STATE:
                snap.service_states[key.service] = cache(ServiceState, kv)
            case KeyKind.SERVICE_REQUEST:
                snap.service_requests[key.service] = cache(ServiceRequest, kv)
            case KeyKind.MEMBER_FACTS:
                snap.member_facts[key.vm] = cache(MemberFacts, kv)
            case KeyKind.POOL:
                snap.pools[key.pool] = cache(PoolSpec, kv)
            case KeyKind.REPLICA:
                snap.replicas[key.vm] = cache(ReplicaRecord, kv)
    # A status written under an earlier lease of a host alive under another: its new run has not
    # reported yet (its first report rewrites or deletes every status of the earlier one).
    for _vm, host, lease in status_leases:
        current = snap.alive_keys.get(host)
        if lease and current and current[0] and current[0] != lease:
            snap.unreported.add(host)
    return snap


STATE_PREFIXES = ("config", "hosts/", "hostadmin/", "hoststate/", "alive/", "manager", "vms/", "status/",
                  "services/", "members/", "pools/", "replicas/", "fencedev/")


def read_snapshot(store: Store, layout: Layout, with_events: bool = True,
                  cache: Decoder = _no_cache) -> Snapshot:
    """The whole cluster state. Without events it skips the (large) event log, reading prefix by
    prefix; the loops are level-triggered, so a snapshot spanning a few revisions is harmless."""
    if with_events:
        return decode(layout, store.get_prefix(layout.root), cache)
    items: list[KeyValue] = []
    for prefix in STATE_PREFIXES:
        items += store.get_prefix(layout.root + prefix)
    return decode(layout, items, cache)


def read_settings(store: Store, layout: Layout) -> Settings:
    """The cluster's settings, or the defaults if none are stored or the store does not answer."""
    try:
        kv = store.get(layout.config())
    except StoreError:
        kv = None
    return Settings.model_validate_json(kv.value) if kv else Settings()


def trim_events(store: Store, layout: Layout, keep: int) -> int:
    """Delete the oldest events beyond `keep`; returns how many went."""
    items = store.get_prefix(layout.events())
    old = items[:max(0, len(items) - keep)]
    for kv in old:
        store.delete(kv.key)
    return len(old)


def decision_ops(layout: Layout, decision: Decision, seq_start: int = 0) -> list[Put | Delete]:
    """The writes that apply one manager decision (events included)."""
    ops: list[Put | Delete] = []
    for host, record in sorted(decision.host_records.items()):
        ops.append(Put(layout.host_state(host), record.model_dump_json()))
    for vm, placement in sorted(decision.placements.items()):
        ops.append(Put(layout.placement(vm), placement.model_dump_json()))
    for vm, replica in sorted(decision.replicas.items()):
        ops.append(Put(layout.replica(vm), replica.model_dump_json()))
    for vm in sorted(decision.done_requests):
        ops.append(Delete(layout.request(vm)))
    for i, event in enumerate(decision.events):
        ops.append(Put(layout.event(event, seq_start + i), encode_event(event)))
    return ops


def leader_guard(layout: Layout, leader_value: str) -> list[Compare]:
    """Manager writes hold only while the leader key is still ours."""
    return [Compare(layout.manager(), value=leader_value)]
