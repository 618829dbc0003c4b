"""Counters derived from the event log, for metrics the runtime does not export itself.

The event log is bounded, so these are counted by this API process as it sees new events (each
event once, by id); the first scrape counts what the log still holds. A restart of the API starts
from the log again, which Prometheus treats as a counter reset.

Rules (messages follow `core`'s "old -> new (detail)" transition lines):
- failover: a `vm X` event `recovering -> starting ...`;
- recovery seconds: from a `vm X` event `... -> recovering` to its next `... -> running`;
- migration: from `... -> migrating` (kind: the first of live / quick / cold in the message) to
  `migrating -> <state>`; result `succeeded` when it ends in running (or starting, for a cold
  migration) without "fail" / "abort" / "rollback" in the message, else `failed`;
- migration duration: "(live from h1, 1.224 s)" in the message that ends a migration;
- migration downtime: "downtime 0.12 s" (or "120 ms") if the message reports it; otherwise, for a
  quick migration, its whole duration (the guest is paused from save to restore). A live
  migration's final pause is not in the log, so it is not observed;
- manager change: any event saying a manager took office ("became the active manager",
  "elected", "took over", ...);
- store errors (cluster side): events from source `store` mentioning unavailable / unreachable /
  error / timeout.
"""
from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from haven.api.schemas import EventOut

TRANSITION = re.compile(r"^(?P<old>[a-z_]+) -> (?P<new>[a-z_]+)\b(?P<rest>.*)$")
KIND = re.compile(r"\b(live|quick|cold)\b")
DOWNTIME = re.compile(r"downtime[ =:]*(?P<value>\d+(?:\.\d+)?) ?(?P<unit>ms|s)\b")
FAILED = re.compile(r"fail|abort|roll(?:ed)? ?back|timed? ?out", re.IGNORECASE)
MANAGER = re.compile(r"elected|took office|takes office|took over|takes over|"
                     r"(?:became|becomes|is now) (?:the )?(?:active )?manager|leader(?:ship)? (?:acquired|won)",
                     re.IGNORECASE)
DURATION = re.compile(r"\b(?:live|quick|cold) from \S+, (?P<value>\d+(?:\.\d+)?) s\b")
STORE_ERROR = re.compile(r"unavailable|unreachable|error|timeout|timed out", re.IGNORECASE)

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
        return [(repr(b), c) for b, c in zip(self.buckets, self.counts)] + [("+Inf", self.n)]


@dataclass
class EventStats:
    cursor: str = ""
    failovers: int = 0
    manager_changes: int = 0
    store_errors: int = 0
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

    def _count(self, event: EventOut) -> None:
        if event.source.split()[0] == "store" and STORE_ERROR.search(event.message):
            self.store_errors += 1
        if MANAGER.search(event.message):
            self.manager_changes += 1
        if not event.subject.startswith("vm "):
            return
        vm = event.subject[3:]
        match = TRANSITION.match(event.message)
        if match is None:
            return
        old, new, rest = match["old"], match["new"], match["rest"]
        if new == "recovering":
            self._recovering_since.setdefault(vm, event.t)
        if old == "recovering" and new == "starting":
            self.failovers += 1
        if new == "running" and vm in self._recovering_since:
            self.recovery.observe(max(0.0, event.t - self._recovering_since.pop(vm)))
        if new == "migrating":
            kind = KIND.search(rest)
            self._migrating[vm] = kind[1] if kind else "unknown"
        elif old == "migrating":
            kind = self._migrating.pop(vm, None) or (m[1] if (m := KIND.search(rest)) else "unknown")
            ok = (new == "running" or (new == "starting" and kind == "cold")) and not FAILED.search(rest)
            self.migrations[(kind, "succeeded" if ok else "failed")] += 1
            if not ok:
                return
            duration = DURATION.search(rest)
            if duration:
                self.duration.setdefault(kind, Histogram(DOWNTIME_BUCKETS)).observe(float(duration["value"]))
            downtime = DOWNTIME.search(rest)
            if downtime:
                seconds = float(downtime["value"]) / (1000 if downtime["unit"] == "ms" else 1)
                self.downtime.setdefault(kind, Histogram(DOWNTIME_BUCKETS)).observe(seconds)
            elif kind == "quick" and duration:
                self.downtime.setdefault(kind, Histogram(DOWNTIME_BUCKETS)).observe(float(duration["value"]))
