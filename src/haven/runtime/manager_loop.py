"""The manager loop: win the leader key, then read a snapshot -> `core.manager.decide` -> write.

Every host runs one; only the holder of the leader key acts. The key is bound to the host's own
lease, and every write is a transaction guarded by the key's value, so a manager that lost its
lease (or was deposed) cannot write (docs/DESIGN.md section 3).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Collection, Mapping

from haven.core.decision import Decision
from haven.core.events import Event, EventKind, SubjectKind
from haven.core.index import ClusterIndex, changed_vms
from haven.core.manager import decide
from haven.model.state import ClusterView
from haven.ports.clock import Clock
from haven.ports.fencer import Fencer
from haven.ports.store import Compare, EventType, Put, Store, StoreError, WatchEvent
from haven.runtime.layout import (
    DecodeCache,
    Layout,
    decision_ops,
    encode_event,
    leader_guard,
    read_snapshot,
    trim_events,
)
from haven.runtime.power_fencing import PowerFencing, Spawn, run_inline
from haven.runtime.service_round import ServiceInputs, as_event, decide_round, service_ops

EventSink = Callable[[Event], None]
TRIM_EVERY = 200  # events written between two trims of the event log
FULL_REFRESH_S = 30.0  # re-read everything this often even without a watch event: a safety net


class ManagerLoop:
    def __init__(self, name: str, store: Store, clock: Clock, layout: Layout, lease_id: Callable[[], int],
                 emit: EventSink, fencer: Fencer | None = None,
                 decoded: DecodeCache | None = None, spawn: Spawn = run_inline,
                 store_regained_at: Callable[[], float] = lambda: -math.inf,
                 silent_hosts: Callable[[], Mapping[str, int]] = dict) -> None:
        self.name = name
        self.store = store
        self.clock = clock
        self.layout = layout
        self.lease_id = lease_id  # the host's lease: the leader key dies with the host
        self.emit = emit
        self.leader_value: str | None = None
        self.leader_revision = 0  # the store revision at which we won the key
        self.since = 0.0
        # power fencing, for hosts with a fence device (runtime.power_fencing)
        self.fencing = PowerFencing(name, fencer, clock, self._write_event, spawn, silent_hosts)
        self.event_seq = 0
        self.decoded = decoded if decoded is not None else DecodeCache()  # loops reading one store may share one
        self.view: ClusterView | None = None
        self.services = ServiceInputs()  # guest-cluster services, from the same read as `view`
        self.index: ClusterIndex | None = None
        self.stale = True
        self.read_at = 0.0
        self.leader_key_present = False
        self.campaigned_at = -math.inf
        self.store_regained_at = store_regained_at  # LeaseKeeper.store_regained_at: core.failsafe's hold

    @property
    def leading(self) -> bool:
        return self.leader_value is not None

    def _office(self, kind: EventKind, now: float) -> Event:
        """An event about this host's hold on the leader key."""
        return Event(now, "manager", kind, subject_kind=SubjectKind.HOST, name=self.name, host=self.name)

    def campaign(self) -> bool:
        lease = self.lease_id()
        if not lease:
            return False
        now = self.clock.now()
        value = json.dumps({"host": self.name, "since": round(now, 6)})
        key = self.layout.manager()
        # The election's event is written with the win itself: the daemon ships no event of the
        # manager's own, and the log (hence haven_manager_changes) must show every new manager.
        elected = self._office(EventKind.MANAGER_ELECTED, now)
        try:
            result = self.store.txn([Compare(key, mod_revision=0)], [
                Put(key, value, lease), Put(self.layout.event(elected, self.event_seq), encode_event(elected))])
            held = None if result.succeeded else self.store.get(key)
        except StoreError:
            return False
        if result.succeeded:
            self.leader_value, self.leader_revision, self.since, self.stale = value, result.revision, now, True
            self.event_seq += 1
            self.emit(elected)
            return True
        if held is not None and json.loads(held.value).get("host") == self.name:
            # Our own key from before this daemon restarted: carry on with it (writes stay
            # guarded by its value; it goes with the lease it is bound to).
            self.leader_value, self.leader_revision, self.since, self.stale = held.value, held.mod_revision, now, True
            self.emit(self._office(EventKind.MANAGER_RESUMED, now))
            return True
        return False

    def _update_index(self, view: ClusterView) -> None:
        """Keep the decision's aggregates in step with the store, touching only what changed."""
        before = self.view
        if self.index is None or before is None or before.hosts.keys() != view.hosts.keys():
            self.index = ClusterIndex.build(view)
        else:
            self.index.update(view, changed_vms(before, view))
        self.view = view

    def mark_stale(self) -> None:
        """The store changed (a watch said so): re-read before the next decision."""
        self.stale = True

    def _current_view(self, now: float) -> ClusterView | None:
        """The cluster as last read; re-read when a watch, our own write or the clock says so."""
        if self.stale or self.view is None or now - self.read_at >= FULL_REFRESH_S:
            self.stale = False  # before the read: a change that lands during it marks us stale again
            try:
                snapshot = read_snapshot(self.store, self.layout, with_events=False, cache=self.decoded)
            except StoreError:
                self.stale = True
                return None
            self.read_at = now
            self.services = ServiceInputs.of(snapshot)
            self._update_index(snapshot.view(self.since, self.fencing.standing(snapshot)))
        return self.view

    def observe_leader_key(self, event: WatchEvent) -> None:
        """A watch saw the leader key change: a follower campaigns only once it is gone; a leader
        whose key is gone or someone else's (a change newer than its win) knows it was deposed."""
        self.leader_key_present = event.type is EventType.PUT
        if (self.leading and event.mod_revision > self.leader_revision
                and (event.type is EventType.DELETE or event.value != self.leader_value)):
            self.leader_value = None
            self.emit(self._office(EventKind.MANAGER_DEPOSED, self.clock.now()))

    @property
    def fence_confirmed(self) -> Collection[str]:
        """Hosts a device switched off (for `runtime.wake.lost_host_rechecks`)."""
        return self.fencing.confirmed.keys()

    def _fence(self, hosts: list[str]) -> None:
        self.fencing.fence(hosts, self.view)
        self._collect_fences()

    def _collect_fences(self) -> None:
        """The power-offs that came back; a host confirmed off means the store must be read again."""
        if self.fencing.collect():
            self.stale = True

    def _silent_and_up(self, view: ClusterView) -> bool:
        """Does a host whose heartbeats stopped hold, as last read, the lease they named?"""
        return any(host != self.name and (known := view.hosts.get(host)) is not None and known.alive
                   and known.lease == lease for host, lease in self.fencing.silent_hosts().items())

    def _write_event(self, event: Event) -> None:
        """A manager event of its own, into the log: the daemon ships no manager event, so it is
        written here, under the leader guard like every manager write."""
        if self.leader_value is not None:
            with contextlib.suppress(StoreError):
                self.store.txn(leader_guard(self.layout, self.leader_value),
                               [Put(self.layout.event(event, self.event_seq), encode_event(event))])
        self.event_seq += 1
        self.emit(event)

    def step(self) -> Decision | None:
        self._collect_fences()
        now = self.clock.now()
        if not self.leading:
            if self.leader_key_present and now - self.campaigned_at < FULL_REFRESH_S:
                return None  # someone leads; the watch tells us when that ends
            self.campaigned_at = now
            if not self.campaign():
                return None
        if self.view is not None and self._silent_and_up(self.view):
            # Fast fencing switches off on what the store says now, read in this very step: a manager
            # cut off from the store (and so, likely, from its peers' heartbeats) switches no one off.
            self.stale = True
        view = self._current_view(now)
        if view is None:
            return None
        assert self.index is not None
        if view.settings.failsafe:  # read after the snapshot: core.failsafe's argument needs that order
            view = dataclasses.replace(view, store_regained_at=self.store_regained_at())
        self.fencing.fence_silent(view)
        self._collect_fences()  # the simulator's devices answer at once; `on_result` wakes us
        decision = decide(view, now, self.index)
        # Services after VMs: on the host records this very decision settles.
        services = decide_round(self.services, view, decision, now) if self.services.specs else None
        service_events = [as_event(e) for e in services.events] if services else []
        if decision.empty and not decision.events and not service_events and not (services and services.states):
            return decision
        assert self.leader_value is not None
        ops = decision_ops(self.layout, decision, self.event_seq)
        self.event_seq += len(decision.events)
        if services:
            ops += service_ops(self.layout, services)
            ops += [Put(self.layout.event(e, self.event_seq + i), encode_event(e))
                    for i, e in enumerate(service_events)]
            self.event_seq += len(service_events)
        self.stale = True  # whatever happens next, what we read is no longer the store
        try:
            result = self.store.txn(leader_guard(self.layout, self.leader_value), ops)
        except StoreError:
            # Unknown whether it landed: the next iteration reads and decides again. Fence anyway:
            # if it landed, the host is lost for good and no later decision asks again.
            self._fence(decision.fence_hosts)
            return None
        if not result.succeeded:
            self.leader_value = None
            self.emit(self._office(EventKind.MANAGER_DEPOSED, now))
            return None
        for event in (*decision.events, *service_events):
            self.emit(event)
        self._fence(decision.fence_hosts)
        written = len(decision.events) + len(service_events)
        if self.event_seq // TRIM_EVERY != (self.event_seq - written) // TRIM_EVERY:
            with contextlib.suppress(StoreError):
                trim_events(self.store, self.layout, view.settings.event_log_size)
        return decision
