"""The fence-device monitor: check every device before it is needed, and say so when one breaks.

The leading manager runs it, not each host for its own device: the devices are configured on the
nodes that may manage (a BMC password is not for every host), a device is only ever used by the
manager, and the path that matters is the manager's to the device, not the host's own. A device
check (`Fencer.monitor`) may block for the device's timeout, so the daemon runs `check` on a
thread of its own and a hung agent never stalls a decision; the simulator calls it from a timer.

Each check is stored per host (`FenceCheck` at `fencedev/<host>`, under the leader guard, so a
deposed manager cannot overwrite its successor's), and a change between ok and failing is an
event (a device failing at its first check is one too).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable

from haven.core.events import Event, EventKind, SubjectKind
from haven.model.fencing import FenceCheck
from haven.ports.clock import Clock
from haven.ports.fencer import Fencer
from haven.ports.store import Put, Store, StoreError
from haven.runtime.layout import Layout, leader_guard

log = logging.getLogger("haven.fencing")
EventSink = Callable[[Event], None]
SOURCE = "fencing"  # events with their own source: the daemon's event log ships them


class FenceMonitor:
    def __init__(self, fencer: Fencer, hosts: Iterable[str], store: Store, layout: Layout,
                 leader_value: Callable[[], str | None], emit: EventSink, clock: Clock,
                 wall: Callable[[], float]) -> None:
        self.fencer = fencer
        self.hosts = sorted(hosts)
        self.store = store
        self.layout = layout
        self.leader_value = leader_value  # this host's hold on the leader key (None: not leading)
        self.emit = emit
        self.clock = clock  # stamps the events, as every event of this host
        self.wall = wall  # `checked_at`, for a reader on another host: Unix time in the daemon
        self.known: dict[str, bool] = {}  # host -> ok at the last check this manager made

    def check(self) -> None:
        """Check every device once, if this host's manager leads; store and report the results."""
        if self.leader_value() is None:
            self.known.clear()  # a manager that leads again starts afresh: its first failure is news
            return
        for host in self.hosts:
            if not self.fencer.has_device(host):
                continue
            ok, detail = self.fencer.monitor(host)
            leader = self.leader_value()
            if leader is None:
                return  # deposed during the check: the new manager reports
            with contextlib.suppress(StoreError):  # the next check writes again
                record = FenceCheck(ok=ok, detail=detail, checked_at=round(self.wall(), 3))
                self.store.txn(leader_guard(self.layout, leader),
                               [Put(self.layout.fence_check(host), record.model_dump_json())])
            before = self.known.get(host)
            self.known[host] = ok
            if before != ok and (before is not None or not ok):
                self.emit(Event(self.clock.now(), SOURCE, EventKind.FENCE_DEVICE, subject_kind=SubjectKind.HOST,
                                name=host, new="ok" if ok else "failing", reason="" if ok else detail))

    def run(self, stopping: threading.Event, interval_s: float) -> None:
        """The daemon's monitor thread: a check every `interval_s` until `stopping` is set."""
        while not stopping.wait(interval_s):
            try:
                self.check()
            except Exception:  # the monitor must outlive a bug in one check (logged)
                log.exception("fence device check failed")
