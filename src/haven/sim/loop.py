"""Virtual time: an event queue and per-host clocks that may run fast or slow."""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Timer:
    at: float
    seq: int
    fn: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Runs callbacks in virtual time order; ties run in scheduling order (deterministic)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Timer]] = []  # tuples compare fast; seq breaks ties
        self._seq = itertools.count()

    def at(self, t: float, fn: Callable[[], None]) -> Timer:
        if t < self.now:
            t = self.now
        timer = Timer(t, next(self._seq), fn)
        heapq.heappush(self._queue, (t, timer.seq, timer))
        return timer

    def after(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.at(self.now + delay, fn)

    def next_time(self) -> float | None:
        while self._queue and self._queue[0][2].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0][0] if self._queue else None

    def pop(self) -> Timer:
        _, _, timer = heapq.heappop(self._queue)
        self.now = timer.at
        return timer


class HostClock:
    """A host's monotonic clock: `rate` host-seconds per virtual second (clock rate skew)."""

    def __init__(self, loop: EventLoop, rate: float = 1.0, offset: float = 0.0) -> None:
        self.loop = loop
        self.rate = rate
        self._base_world = loop.now
        self._base_host = loop.now + offset

    def now(self) -> float:
        return self._base_host + self.rate * (self.loop.now - self._base_world)

    def set_rate(self, rate: float) -> None:
        self._base_host, self._base_world, self.rate = self.now(), self.loop.now, rate

    def to_world(self, host_time: float) -> float:
        return self._base_world + (host_time - self._base_host) / self.rate

    def world_delay(self, host_seconds: float) -> float:
        return host_seconds / self.rate
