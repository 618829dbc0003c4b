"""Where everything lives in the store (docs/DESIGN.md section 6) and how it is encoded.

One prefix per cluster:

    /haven/<cluster>/config                  Settings
    /haven/<cluster>/hosts/<host>            HostSpec (static facts)
    /haven/<cluster>/hostadmin/<host>        HostAdmin (operator intent: maintenance)
    /haven/<cluster>/hoststate/<host>        HostRecord (manager)
    /haven/<cluster>/alive/<host>            bound to the host's lease
    /haven/<cluster>/manager                 leader key, bound to the manager's lease
    /haven/<cluster>/vms/<vm>/spec           VmSpec (API)
    /haven/<cluster>/vms/<vm>/placement      Placement (manager)
    /haven/<cluster>/vms/<vm>/request        VmRequest (API), deleted by the manager once handled
    /haven/<cluster>/status/<host>/<vm>      VmStatus (agent), bound to the host's lease
    /haven/<cluster>/events/<key>            bounded event log

Statuses live under the host rather than the VM so that one host's reports vanish with its lease
and an agent reads its own in one prefix get.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel

from haven.core.decision import Decision, Event
from haven.model.spec import HostSpec, Settings, VmSpec
from haven.model.state import (ClusterView, HostAdmin, HostRecord, HostView, Placement, VmRequest,
                               VmStatus, VmView)
from haven.ports.store import Compare, Delete, KeyValue, Put, Store


@dataclass(frozen=True)
class Layout:
    cluster: str

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

    def event(self, event: Event, seq: int) -> str:
        # Sortable by time; the source and a sequence keep keys from different writers apart.
        source = event.source.replace(" ", "-")
        return f"{self.events()}{event.t:016.6f}-{source}-{seq:06d}"


def encode_event(event: Event) -> str:
    return json.dumps({"t": event.t, "source": event.source, "subject": event.subject,
                       "message": event.message})


def decode_event(value: str) -> Event:
    data = json.loads(value)
    return Event(data["t"], data["source"], data["subject"], data["message"])


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

    def view(self, manager_since: float = 0.0, fence_confirmed: Iterable[str] = ()) -> ClusterView:
        confirmed = set(fence_confirmed)
        hosts = {
            name: HostView(spec=spec, alive=name in self.alive,
                                           record=self.records.get(name),
                                           admin=self.admin.get(name, NO_ADMIN),
                                           fence_confirmed=name in confirmed)
            for name, spec in sorted(self.hosts.items())
        }
        vms = {
            name: VmView(spec=spec, placement=self.placements.get(name),
                                         statuses=self.statuses.get(name, {}),
                                         request=self.requests.get(name))
            for name, spec in sorted(self.specs.items())
        }
        return ClusterView(settings=self.settings, hosts=hosts, vms=vms,
                                           manager_since=manager_since)


M = TypeVar("M", bound=BaseModel)


class DecodeCache:
    """Decoded values by key and mod revision: a loop re-reads the same records many times.
    Loops reading the same store may share one (a key at a revision has one value); the values
    are frozen models, safe to share."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[int, BaseModel]] = {}

    def __call__(self, model: type[M], kv: KeyValue) -> M:
        hit = self._items.get(kv.key)
        if hit is not None and hit[0] == kv.mod_revision and kv.mod_revision:
            return hit[1]  # type: ignore[return-value]
        value = model.model_validate_json(kv.value)
        self._items[kv.key] = (kv.mod_revision, value)
        return value


def _no_cache(model: type[M], kv: KeyValue) -> M:
    return model.model_validate_json(kv.value)


def decode(layout: Layout, items: Iterable[KeyValue],
           cache: Callable[[type[M], KeyValue], M] = _no_cache) -> Snapshot:
    snap = Snapshot(DEFAULT_SETTINGS, {}, {}, {}, set(), None, {}, {}, {}, {}, [])
    skip = len(layout.root)
    for kv in items:
        parts = kv.key[skip:].split("/")
        kind = parts[0]
        if kind == "vms" and len(parts) == 3:  # the most common kinds first
            vm, what = parts[1], parts[2]
            if what == "spec":
                snap.specs[vm] = cache(VmSpec, kv)
            elif what == "placement":
                snap.placements[vm] = cache(Placement, kv)
            elif what == "request":
                snap.requests[vm] = cache(VmRequest, kv)
        elif kind == "status" and len(parts) == 3:
            status = cache(VmStatus, kv)
            snap.statuses.setdefault(status.vm, {})[status.host] = status
        elif kind == "config":
            snap.settings = cache(Settings, kv)
        elif kind == "hosts":
            snap.hosts[parts[1]] = cache(HostSpec, kv)
        elif kind == "hostadmin":
            snap.admin[parts[1]] = cache(HostAdmin, kv)
        elif kind == "hoststate":
            snap.records[parts[1]] = cache(HostRecord, kv)
        elif kind == "alive":
            snap.alive.add(parts[1])
        elif kind == "manager":
            snap.manager = json.loads(kv.value).get("host")
        elif kind == "events":
            snap.events.append(decode_event(kv.value))
    return snap


STATE_PREFIXES = ("config", "hosts/", "hostadmin/", "hoststate/", "alive/", "manager", "vms/", "status/")


def read_snapshot(store: Store, layout: Layout, with_events: bool = True,
                  cache: Callable[[type[M], KeyValue], M] = _no_cache) -> Snapshot:
    """The whole cluster state. Without events it skips the (large) event log, reading prefix by
    prefix; the loops are level-triggered, so a snapshot spanning a few revisions is harmless."""
    if with_events:
        return decode(layout, store.get_prefix(layout.root), cache)
    items: list[KeyValue] = []
    for prefix in STATE_PREFIXES:
        items += store.get_prefix(layout.root + prefix)
    return decode(layout, items, cache)


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
    for vm in sorted(decision.done_requests):
        ops.append(Delete(layout.request(vm)))
    for i, event in enumerate(decision.events):
        ops.append(Put(layout.event(event, seq_start + i), encode_event(event)))
    return ops


def leader_guard(layout: Layout, leader_value: str) -> list[Compare]:
    """Manager writes hold only while the leader key is still ours."""
    return [Compare(layout.manager(), value=leader_value)]
