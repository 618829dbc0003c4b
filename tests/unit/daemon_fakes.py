"""Fakes for running the daemon's real threads without QEMU or etcd: the simulator's in-memory
store behind a lock (with injectable delays and hangs), and a thread-safe fake hypervisor that
checks every launch against the store's placement at that very moment."""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from haven.model.spec import VmSpec
from haven.model.state import ACTIVE_LOCAL_STATES, DEAD_LOCAL_STATES, LocalState, Placement
from haven.ports.hypervisor import HypervisorError, LocalVm
from haven.ports.store import StoreUnavailable
from haven.runtime.layout import Layout
from haven.sim.store import MemoryStore

STORE_METHODS = ("get", "get_prefix", "put", "delete", "txn", "create", "lease_grant", "lease_refresh",
                 "lease_revoke", "watch_prefix")


class FakeNetwork:
    """Who reaches the store, and how slow it is: one lock serialises the in-memory store."""

    def __init__(self, seed: int = 0) -> None:
        self.lock = threading.RLock()
        self.server = MemoryStore(time.monotonic)
        self.cut: set[str] = set()
        self.watch_resumes: dict[str, float] = {}  # a healed host's watch reconnects at this time
        self.reconnect_s = 0.3  # as the daemon's watch backoff: the watch lags the calls after a heal
        self.hang_s = 0.0  # > 0: every call of every host blocks this long, then fails
        self.max_delay_s = 0.0  # random delay before each call (a busy store, a slow network)
        self.rng = random.Random(seed)

    def client(self, name: str) -> LockedStore:
        return LockedStore(self, name)

    def cut_off(self, name: str) -> None:
        with self.lock:
            self.cut.add(name)

    def heal(self) -> None:
        with self.lock:
            for name in self.cut:
                self.watch_resumes[name] = time.monotonic() + self.reconnect_s
            self.cut = set()

    def watch_connected(self, name: str) -> bool:
        return name not in self.cut and time.monotonic() >= self.watch_resumes.get(name, 0.0)


class LockedStore:
    """The Store port for one host: the in-memory store, reachable unless the network says not."""

    def __init__(self, net: FakeNetwork, name: str) -> None:
        self.net = net
        self.name = name
        self.inner = net.server.client(name, lambda: name not in net.cut)
        self.watcher = net.server.client(name, lambda: net.watch_connected(name))

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in STORE_METHODS:
            raise AttributeError(method)
        target = getattr(self.watcher if method == "watch_prefix" else self.inner, method)

        def call(*args: Any, **kwargs: Any) -> Any:
            net = self.net
            if net.hang_s:
                time.sleep(net.hang_s)
                raise StoreUnavailable(f"store hangs for {self.name}")
            if net.max_delay_s:
                with net.lock:
                    delay = net.rng.uniform(0, net.max_delay_s)
                time.sleep(delay)
            with net.lock:
                return target(*args, **kwargs)
        return call

    def close(self) -> None:
        self.inner.close()
        self.watcher.close()


@dataclass
class Launch:
    vm: str
    host: str
    generation: int
    at: float
    stale: str = ""  # why the launch broke the start rule, if it did


@dataclass
class ThreadedFakeHypervisor:
    """A host's hypervisor for thread tests: starts finish at once; every launch is checked against
    the store's placement of that moment (the start rule); kills are timed."""

    host: str
    net: FakeNetwork
    layout: Layout
    launches: list[Launch] = field(default_factory=list)
    kills: list[tuple[str, float]] = field(default_factory=list)
    on_change: Callable[[], None] = lambda: None
    vms: dict[str, LocalVm] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _launch(self, spec: VmSpec, generation: int, incoming: bool) -> None:
        kv = self.net.server.peek(self.layout.placement(spec.name))
        p = Placement.model_validate_json(kv.value) if kv else None
        if incoming:
            ok = p is not None and p.migration is not None and (p.migration.target, p.migration.generation) == (
                self.host, generation)
        else:
            ok = p is not None and (p.host, p.generation) == (self.host, generation)
        where = f"{p.host} generation {p.generation}" if p else "nowhere"
        self.launches.append(Launch(spec.name, self.host, generation, time.monotonic(),
                                    "" if ok else f"placed on {where}"))

    def list(self) -> dict[str, LocalVm]:
        with self.lock:
            return dict(self.vms)

    def _set(self, name: str, generation: int, state: LocalState) -> None:
        self.vms[name] = LocalVm(name, generation, state, "", time.monotonic())

    def start(self, spec: VmSpec, generation: int, restore_from: str | None = None) -> None:
        with self.lock:
            old = self.vms.get(spec.name)
            if old and old.state not in DEAD_LOCAL_STATES and old.state is not LocalState.INCOMING:
                raise HypervisorError(f"{spec.name} is {old.state.value}")
            with self.net.lock:
                self._launch(spec, generation, incoming=False)
            self._set(spec.name, generation, LocalState.RUNNING)
        self.on_change()

    def prepare_incoming(self, spec: VmSpec, generation: int) -> None:
        with self.lock, self.net.lock:
            self._launch(spec, generation, incoming=True)
            self._set(spec.name, generation, LocalState.INCOMING)
        self.on_change()

    prepare_restore = prepare_incoming

    def stop(self, name: str) -> None:
        self.kill(name)

    def kill(self, name: str) -> None:
        with self.lock:
            vm = self.vms.get(name)
            if vm is None or vm.state in DEAD_LOCAL_STATES:
                return
            self._set(name, vm.generation, LocalState.STOPPED)
            self.kills.append((name, time.monotonic()))
        self.on_change()

    def forget(self, name: str) -> None:
        with self.lock:
            self.vms.pop(name, None)

    def migrate_live(self, name: str, target_host: str, target_address: str, attempt: str) -> None:
        raise HypervisorError("not in this fake")

    def cancel_migration(self, name: str) -> None:
        pass

    def save(self, name: str, path: str, attempt: str) -> None:
        raise HypervisorError("not in this fake")

    def state_path(self, spec: VmSpec, generation: int) -> str:
        return f"/nowhere/{spec.name}.{generation}"

    def active(self) -> list[str]:
        with self.lock:
            return sorted(n for n, vm in self.vms.items() if vm.state in ACTIVE_LOCAL_STATES)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > ends:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def stale_launches(hypervisors: Sequence[ThreadedFakeHypervisor]) -> list[str]:
    return [f"{launch.vm} on {launch.host} at generation {launch.generation} while {launch.stale}"
            for hv in hypervisors for launch in hv.launches if launch.stale]
