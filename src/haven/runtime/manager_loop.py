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
import queue
from collections.abc import Callable, Collection, Mapping

from haven.core.decision import Decision
from haven.core.events import Event, EventKind, SubjectKind
from haven.core.index import ClusterIndex, changed_vms
from haven.core.manager import decide
from haven.model.state import HOST_UP, ClusterView
from haven.ports.clock import Clock
from haven.ports.fencer import FenceOutcome, Fencer
from haven.ports.store import Compare, EventType, Put, Store, StoreError, WatchEvent
from haven.runtime.layout import (
    DecodeCache,
    Layout,
    Snapshot,
    decision_ops,
    encode_event,
    leader_guard,
    read_snapshot,
    trim_events,
)
from haven.runtime.service_round import ServiceInputs, as_event, decide_round, service_ops

EventSink = Callable[[Event], None]
Spawn = Callable[[Callable[[], None]], None]
TRIM_EVERY = 200  # events written between two trims of the event log
FULL_REFRESH_S = 30.0  # re-read everything this often even without a watch event: a safety net


def run_inline(job: Callable[[], None]) -> None:
    job()


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
        self.fencer = fencer  # power fencing, for hosts with a fencing device
        self.leader_value: str | None = None
        self.leader_revision = 0  # the store revision at which we won the key
        self.since = 0.0
        # Hosts a device powered off -> the lease each held when asked (0: none). A confirmation
        # stands for that lease only: a host back under a new one is up (`_confirmed`).
        self.fence_confirmed: dict[str, int] = {}
        # Hosts whose direct heartbeats stopped -> the lease their last one named (the daemon's
        # `drivers.peer_udp`, the simulator's network): one still up under that lease and with a
        # fence device is switched off without waiting for the lease to run out.
        self.silent_hosts = silent_hosts
        # A power fence blocks for the device's round trip (up to its timeout): `spawn` runs it
        # apart (the daemon: a thread; the simulator: at once), and its outcome comes back here,
        # tagged with the loss it answers, for the manager's own thread to act on.
        self.spawn = spawn
        self.fence_requests: dict[str, tuple[int, int]] = {}  # host -> (the number of its loss, its lease then)
        self.fence_results: queue.SimpleQueue[tuple[str, tuple[int, int], bool, FenceOutcome | None]] = (
            queue.SimpleQueue())
        self.on_fence_result: Callable[[], None] = lambda: None  # wakes the manager's thread
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
            self._update_index(snapshot.view(self.since, self._confirmed(snapshot)))
        return self.view

    def observe_leader_key(self, event: WatchEvent) -> None:
        """A watch saw the leader key change: a follower campaigns only once it is gone; a leader
        whose key is gone or someone else's (a change newer than its win) knows it was deposed."""
        self.leader_key_present = event.type is EventType.PUT
        if (self.leading and event.mod_revision > self.leader_revision
                and (event.type is EventType.DELETE or event.value != self.leader_value)):
            self.leader_value = None
            self.emit(self._office(EventKind.MANAGER_DEPOSED, self.clock.now()))

    def _confirmed(self, snapshot: Snapshot) -> list[str]:
        """Hosts whose power fence stands: off since, or still under the lease they held then."""
        return [host for host, lease in self.fence_confirmed.items()
                if host not in snapshot.alive_keys or snapshot.alive_keys[host][0] == lease]

    def _power_fence(self, hosts: Collection[str]) -> None:
        """Cut the power of hosts just found lost (or silent), once the decision saying so was
        written (or may have been; a manager the leader guard refused powers nothing off). A
        confirmation goes into the next view (`HostView.fence_confirmed`), which ends the host's
        wait for `fence_grace_s`."""
        for host in hosts:
            self.fence_confirmed.pop(host, None)  # a confirmation is worth one loss, not the next one
            view_host = self.view.hosts.get(host) if self.view else None
            request = (self.fence_requests.get(host, (0, 0))[0] + 1, view_host.lease if view_host else 0)
            self.fence_requests[host] = request
            fencer = self.fencer
            if fencer is None or not fencer.has_device(host):
                continue

            def job(host: str = host, request: tuple[int, int] = request, fencer: Fencer = fencer) -> None:
                ok = fencer.power_off(host)
                self.fence_results.put((host, request, ok, fencer.last_outcome(host)))
                self.on_fence_result()

            self.spawn(job)
        self._collect_fences()

    def _collect_fences(self) -> None:
        """Act on the power fences that came back: a confirmation for the host's current loss ends
        its wait; one for an earlier loss (the host came back and was lost again since) does not."""
        while True:
            try:
                host, request, ok, outcome = self.fence_results.get_nowait()
            except queue.Empty:
                return
            if ok and self.fence_requests.get(host) == request:
                self.fence_confirmed[host] = request[1]
                self.stale = True
            self._fence_event(host, outcome)

    def _fence_silent_hosts(self, view: ClusterView) -> None:
        """Switch off hosts whose heartbeats stopped while they hold their lease, if they have a
        fence device: a confirmed "off" recovers their VMs at once, long before the lease would
        run out. Once per lease: a device that failed is not asked again until the host is lost."""
        if self.fencer is None:
            return
        for host, lease in self.silent_hosts().items():
            hv = view.hosts.get(host)
            if (host == self.name or hv is None or not hv.alive or hv.lease != lease or hv.record is None
                    or hv.record.state not in HOST_UP or not self.fencer.has_device(host)
                    or self.fence_requests.get(host, (0, -1))[1] == hv.lease):
                continue  # not up under the lease it fell silent under, no device, or already asked
            event = Event(self.clock.now(), "manager", EventKind.POWER_FENCE, subject_kind=SubjectKind.HOST,
                          name=host, new="asked", reason="its heartbeats stopped")
            self._write_event(event)
            self._power_fence([host])

    def _fence_event(self, host: str, outcome: FenceOutcome | None) -> None:
        """Say what the power fence came to, in the log too: the daemon ships no manager event,
        so it is written here, under the leader guard like every manager write."""
        ok = outcome is not None and outcome.ok
        event = Event(self.clock.now(), "manager", EventKind.POWER_FENCE, subject_kind=SubjectKind.HOST, name=host,
                      new="off" if ok else "failed", seconds=round(outcome.elapsed_s, 3) if outcome else None,
                      detail=outcome.device if ok and outcome else "",
                      reason="" if ok else outcome.detail if outcome else "no outcome reported")
        self._write_event(event)

    def _write_event(self, event: Event) -> None:
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
        view = self._current_view(now)
        if view is None:
            return None
        assert self.index is not None
        if view.settings.failsafe:  # read after the snapshot: core.failsafe's argument needs that order
            view = dataclasses.replace(view, store_regained_at=self.store_regained_at())
        self._fence_silent_hosts(view)
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
            self._power_fence(decision.fence_hosts)
            return None
        if not result.succeeded:
            self.leader_value = None
            self.emit(self._office(EventKind.MANAGER_DEPOSED, now))
            return None
        for event in (*decision.events, *service_events):
            self.emit(event)
        self._power_fence(decision.fence_hosts)
        written = len(decision.events) + len(service_events)
        if self.event_seq // TRIM_EVERY != (self.event_seq - written) // TRIM_EVERY:
            with contextlib.suppress(StoreError):
                trim_events(self.store, self.layout, view.settings.event_log_size)
        return decision
