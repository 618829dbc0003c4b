"""Serve a simulated cluster: virtual time follows wall time x speed.

A background thread advances the `SimCluster` every `tick_s`; every store call of the API goes
through `LockedStore`, which takes the same lock and advances the simulation first, so the API
always reads the simulation at the current virtual time and never while it is mid-step. The
simulator itself is single-threaded and needs no locking of its own.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from haven.ports.store import Compare, Delete, KeyValue, Lease, Put, Store, TxnResult, WatchEvent
from haven.sim.cluster import SimCluster
from haven.sim.faults import apply_fault


class LockedStore:
    """A Store whose every call holds `lock` and first calls `before` (with the lock held)."""

    def __init__(self, store: Store, lock: threading.RLock, before: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._lock = lock
        self._before = before

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._before()
            return fn(*args, **kwargs)

    def get(self, key: str) -> KeyValue | None:
        return self._call(self._store.get, key)

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        return self._call(self._store.get_prefix, prefix)

    def put(self, key: str, value: str, lease: int = 0) -> int:
        return self._call(self._store.put, key, value, lease)

    def delete(self, key: str, prefix: bool = False) -> None:
        self._call(self._store.delete, key, prefix)

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        return self._call(self._store.txn, compares, success, failure)

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        return self._call(self._store.create, key, value, lease)

    def lease_grant(self, ttl: float) -> Lease:
        return self._call(self._store.lease_grant, ttl)

    def lease_refresh(self, lease: Lease) -> None:
        self._call(self._store.lease_refresh, lease)

    def lease_revoke(self, lease: Lease) -> None:
        self._call(self._store.lease_revoke, lease)

    def watch_prefix(self, prefix: str, callback: Callable[[WatchEvent], None],
                     start_revision: int = 0) -> Callable[[], None]:
        cancel = self._call(self._store.watch_prefix, prefix, callback, start_revision)
        return lambda: self._call(cancel)

    def close(self) -> None:
        self._call(self._store.close)


class SimBackend:
    """Runs `cluster` in real time x `speed` on a background thread (`start` / `stop`)."""

    def __init__(self, cluster: SimCluster, speed: float = 1.0, *, scenario: str = "",
                 tick_s: float = 0.05, wall: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.cluster = cluster
        self.speed = speed
        self.scenario = scenario
        self.tick_s = tick_s
        self.lock = threading.RLock()
        self._wall = wall
        self._wall0 = wall()
        self._virtual0 = cluster.now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None  # set if the simulation raised: time stops, the API goes on

    def advance(self) -> None:
        """Bring the simulation to the virtual time matching the wall clock."""
        with self.lock:
            if self.error is not None:
                return
            target = self._virtual0 + (self._wall() - self._wall0) * self.speed
            if target > self.cluster.now:
                try:
                    self.cluster.advance_to(target)
                except Exception as error:  # noqa: BLE001 - reported through info(), not fatal
                    self.error = f"{type(error).__name__}: {error}"

    def store(self, name: str = "api") -> LockedStore:
        return LockedStore(self.cluster.client(name), self.lock, self.advance)

    def clock(self) -> float:
        with self.lock:
            self.advance()
            return self.cluster.now

    # -- SimControl for the API ------------------------------------------------------------

    def fault(self, line: str) -> None:
        with self.lock:
            self.advance()
            apply_fault(self.cluster, line)

    def info(self) -> dict[str, Any]:
        with self.lock:
            self.advance()
            return {"scenario": self.scenario, "time": round(self.cluster.now, 3), "speed": self.speed,
                    "error": self.error}

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="haven-sim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.advance()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
