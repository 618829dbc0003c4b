"""The leading manager's power fencing: which hosts to switch off, and what the devices answered.

A host is switched off through its fence device (`ports.fencer.Fencer`) when the manager's
decision finds it lost (`Decision.fence_hosts`), or, with fast fencing, when its direct heartbeats
stop while it still holds its lease (`fence_silent`). A power-off blocks for the device's round
trip (up to its timeout), so `spawn` runs it apart (the daemon: a thread; the simulator: at once)
and its outcome comes back through a queue, tagged with the request it answers (the number of the
host's loss and the lease the host held then), for the manager's own thread to act on (`collect`).
A confirmation stands for that lease only: a host back under a new one is up, and a late answer
for an earlier loss ends no grace (docs/DESIGN.md section 3).
"""
from __future__ import annotations

import queue
from collections.abc import Callable, Collection, Mapping

from haven.core.events import Event, EventKind, SubjectKind
from haven.model.state import HOST_UP, ClusterView
from haven.ports.clock import Clock
from haven.ports.fencer import FenceOutcome, Fencer
from haven.runtime.layout import Snapshot

Spawn = Callable[[Callable[[], None]], None]
Request = tuple[int, int]  # (the number of the host's loss, the lease it held when asked: 0 for none)


def run_inline(job: Callable[[], None]) -> None:
    job()


class PowerFencing:
    def __init__(self, name: str, fencer: Fencer | None, clock: Clock, write_event: Callable[[Event], None],
                 spawn: Spawn = run_inline, silent_hosts: Callable[[], Mapping[str, int]] = dict) -> None:
        self.name = name  # this manager's host: never fenced by itself
        self.fencer = fencer
        self.clock = clock
        self.write_event = write_event  # the manager's event write, under its leader guard
        self.spawn = spawn
        # Hosts whose direct heartbeats stopped -> the lease their last one named (the daemon's
        # `drivers.peer_udp`, the simulator's network).
        self.silent_hosts = silent_hosts
        self.on_result: Callable[[], None] = lambda: None  # wakes the manager's thread
        self.confirmed: dict[str, int] = {}  # host -> the lease it held when a device switched it off
        self.requests: dict[str, Request] = {}
        self.results: queue.SimpleQueue[tuple[str, Request, bool, FenceOutcome | None]] = queue.SimpleQueue()

    def standing(self, snapshot: Snapshot) -> list[str]:
        """Hosts whose confirmation stands: off since, or still under the lease they held then."""
        return [host for host, lease in self.confirmed.items()
                if host not in snapshot.alive_keys or snapshot.alive_keys[host][0] == lease]

    def fence(self, hosts: Collection[str], view: ClusterView | None) -> None:
        """Switch off hosts just found lost (or silent), once the decision saying so was written
        (or may have been; a manager the leader guard refused switches nothing off). The answers
        come through `collect`; `on_result` says when one is there."""
        for host in hosts:
            self.confirmed.pop(host, None)  # a confirmation is worth one loss, not the next one
            known = view.hosts.get(host) if view else None
            request = (self.requests.get(host, (0, 0))[0] + 1, known.lease if known else 0)
            self.requests[host] = request
            fencer = self.fencer
            if fencer is None or not fencer.has_device(host):
                continue

            def job(host: str = host, request: Request = request, fencer: Fencer = fencer) -> None:
                ok = fencer.power_off(host)
                self.results.put((host, request, ok, fencer.last_outcome(host)))
                self.on_result()

            self.spawn(job)

    def collect(self) -> bool:
        """Act on the power-offs that came back: a confirmation for the host's current request ends
        its wait, one for an earlier request does not; each outcome is an event. True if a host
        was confirmed off (the manager must read the store again before it decides)."""
        confirmed = False
        while True:
            try:
                host, request, ok, outcome = self.results.get_nowait()
            except queue.Empty:
                return confirmed
            if ok and self.requests.get(host) == request:
                self.confirmed[host] = request[1]
                confirmed = True
            self.write_event(self._outcome_event(host, outcome))

    def fence_silent(self, view: ClusterView) -> None:
        """Switch off hosts whose heartbeats stopped while they hold their lease, if they have a
        fence device: a confirmed off recovers their VMs at once, long before the lease would run
        out. Once per lease: a device that failed is not asked again until the host is lost. Only
        while this host hears a strict majority of the hosts up: a two-host cluster, or a manager
        whose own link broke, waits for the lease."""
        if self.fencer is None:
            return
        silent = {host: lease for host, lease in self.silent_hosts().items()
                  if host != self.name and (known := view.hosts.get(host)) is not None and known.alive
                  and known.lease == lease}  # still up under the lease its last heartbeat named
        up = sum(known.alive for known in view.hosts.values())
        if 2 * (up - len(silent)) <= up:
            # This host no longer hears a strict majority of those up (itself included): more
            # likely its own link broke (or it just woke from a pause and has not read the
            # heartbeats waiting for it) than half the cluster died. The lease decides then.
            return
        for host, lease in silent.items():
            known = view.hosts[host]
            if (known.record is None or known.record.state not in HOST_UP or not self.fencer.has_device(host)
                    or self.requests.get(host, (0, -1))[1] == lease):
                continue  # not up, no device, or already asked for this lease
            self.write_event(Event(self.clock.now(), "manager", EventKind.POWER_FENCE, subject_kind=SubjectKind.HOST,
                                   name=host, new="asked", reason="its heartbeats stopped"))
            self.fence([host], view)

    def _outcome_event(self, host: str, outcome: FenceOutcome | None) -> Event:
        ok = outcome is not None and outcome.ok
        return Event(self.clock.now(), "manager", EventKind.POWER_FENCE, subject_kind=SubjectKind.HOST, name=host,
                     new="off" if ok else "failed", seconds=round(outcome.elapsed_s, 3) if outcome else None,
                     detail=outcome.device if ok and outcome else "",
                     reason="" if ok else outcome.detail if outcome else "no outcome reported")
