"""Counters derived from the event log, for metrics the runtime does not export itself.

The event log is bounded, so these are counted by this API process as it sees new events (each
event once, by id); the first scrape counts what the log still holds. A restart of the API starts
from the log again, which Prometheus treats as a counter reset.

Every rule reads the events' fields (`core.events`), never their sentences:
- failover: a VM's state change recovering -> starting (restarted after its host was lost);
- recovery seconds: from a VM's change to recovering to its next change to running;
- migration: from MIGRATION_STARTED (its `migration` kind) to the VM's next change out of
  migrating: MIGRATED counts as `succeeded`, anything else (aborted, crashed, target lost, ...)
  as `failed`;
- migration duration: MIGRATED's `seconds` (request to running on the target);
- migration downtime: MIGRATED's `downtime_s` where the hypervisor measured it; else, for a quick
  migration, its whole duration (the guest is paused from save to restore);
- manager change: MANAGER_ELECTED.
Events written by older versions (kind TEXT) are served but not counted.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from haven.api.schemas import EventOut
from haven.core.events import EventKind, SubjectKind
from haven.model.state import VmState

# The kinds each derived metric counts: a test checks that the runtime emits every one of them.
COUNTED_KINDS: dict[str, frozenset[EventKind]] = {
    "haven_failovers": frozenset({EventKind.STATE_CHANGE}),
    "haven_recovery_seconds": frozenset({EventKind.STATE_CHANGE}),
    "haven_migrations": frozenset({EventKind.MIGRATION_STARTED, EventKind.MIGRATED,
                                   EventKind.MIGRATION_ABORTED}),
    "haven_migration_duration_seconds": frozenset({EventKind.MIGRATED}),
    "haven_migration_downtime_seconds": frozenset({EventKind.MIGRATED}),
    "haven_manager_changes": frozenset({EventKind.MANAGER_ELECTED}),
}

RECOVERY_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
DOWNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        return [(repr(b), c) for b, c in zip(self.buckets, self.counts, strict=True)] + [("+Inf", self.n)]


@dataclass
class EventStats:
    cursor: str = ""
    failovers: int = 0
    manager_changes: int = 0
    migrations: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, result)
    recovery: Histogram = field(default_factory=lambda: Histogram(RECOVERY_BUCKETS))
    downtime: dict[str, Histogram] = field(default_factory=dict)  # by kind
    duration: dict[str, Histogram] = field(default_factory=dict)  # by kind
    _recovering_since: dict[str, float] = field(default_factory=dict)
    _migrating: dict[str, str] = field(default_factory=dict)  # vm -> kind
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, events: Iterable[EventOut]) -> None:
        """Count every event newer than the last one counted (events sorted by id)."""
        with self.lock:
            for event in events:
                if event.id > self.cursor:
                    self._count(event)
                    self.cursor = event.id

    def _observe(self, series: dict[str, Histogram], kind: str, value: float) -> None:
        series.setdefault(kind, Histogram(DOWNTIME_BUCKETS)).observe(value)

    def _count(self, e: EventOut) -> None:
        if e.kind is EventKind.MANAGER_ELECTED:
            self.manager_changes += 1
        if e.subject_kind is not SubjectKind.VM or e.new is None:
            return
        vm, migration = e.name, e.migration.value if e.migration else None
        if e.kind is EventKind.MIGRATION_STARTED:
            self._migrating[vm] = migration or "unknown"
        elif e.old == VmState.MIGRATING and e.new != VmState.MIGRATING:
            kind = self._migrating.pop(vm, None) or migration or "unknown"
            ok = e.kind is EventKind.MIGRATED
            self.migrations[(kind, "succeeded" if ok else "failed")] += 1
            if ok and e.seconds is not None:
                self._observe(self.duration, kind, e.seconds)
            if ok and e.downtime_s is not None:
                self._observe(self.downtime, kind, e.downtime_s)
            elif ok and kind == "quick" and e.seconds is not None:
                self._observe(self.downtime, kind, e.seconds)  # paused from save to restore
        if e.old is None:
            return  # not a state change (waiting, a quick migration's handover)
        if e.new == VmState.RECOVERING:
            self._recovering_since.setdefault(vm, e.t)
        if e.old == VmState.RECOVERING and e.new == VmState.STARTING:
            self.failovers += 1
        if e.new == VmState.RUNNING and vm in self._recovering_since:
            self.recovery.observe(max(0.0, e.t - self._recovering_since.pop(vm)))
