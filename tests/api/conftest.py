"""A small cluster in a MemoryStore, and an API client over it.

h1 (manager) runs web and db, h2 runs cache, h3 is empty; batch is stopped; broken is in error.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi.testclient import TestClient

from haven.api import create_app
from haven.api.context import ApiContext
from haven.api.sim_backend import LockedStore
from haven.core.decision import Event
from haven.model.spec import DesiredState, HostSpec, Nic, Settings, VmSpec
from haven.model.state import HostRecord, HostState, Placement, VmState
from haven.ports.store import Store
from haven.runtime.layout import Layout, encode_event
from haven.sim.store import MemoryStore

ADMIN = "admin-secret"
READ = "read-secret"
AUTH_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AUTH_READ = {"Authorization": f"Bearer {READ}"}


@dataclass
class Clock:
    t: float = 100.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Cluster:
    server: MemoryStore
    store: Store
    layout: Layout
    clock: Clock
    reachable: list[bool] = field(default_factory=lambda: [True])
    seq: int = 0

    def dump(self) -> dict[str, str]:
        return self.server.dump()

    def put_host(self, name: str, memory: int = 4096, alive: bool = True,
                 state: HostState = HostState.ONLINE) -> None:
        self.store.put(self.layout.host(name), HostSpec(name=name, address=f"10.0.0.{name[-1]}",
                                                        vcpus=4, memory_mib=memory).model_dump_json())
        self.store.put(self.layout.host_state(name), HostRecord(host=name, state=state).model_dump_json())
        if alive:
            self.store.put(self.layout.alive(name), "{}")

    def put_vm(self, name: str, host: str | None, state: VmState = VmState.RUNNING, memory: int = 512,
               desired: DesiredState = DesiredState.RUNNING, **spec: object) -> None:
        self.store.put(self.layout.vm_spec(name), VmSpec(name=name, memory_mib=memory, desired=desired,
                                                         **spec).model_dump_json())  # type: ignore[arg-type]
        self.store.put(self.layout.placement(name),
                       Placement(vm=name, state=state, host=host, generation=1).model_dump_json())

    def event(self, t: float, subject: str, message: str, source: str = "manager") -> None:
        """A sentence-only event (the form older versions wrote): for tests of paging and streams."""
        self.emit(Event.from_text(t, source, subject, message))

    def emit(self, event: Event) -> None:
        """Write `event` to the log as a daemon would."""
        self.seq += 1
        self.store.put(self.layout.event(event, self.seq), encode_event(event))


def make_cluster() -> Cluster:
    clock = Clock()
    server = MemoryStore(now=clock)
    reachable = [True]
    cluster = Cluster(server, server.client("api", reachable=lambda: reachable[0]), Layout("demo"),
                      clock, reachable)
    cluster.store.put(cluster.layout.config(), Settings(memory_reserve_mib=256).model_dump_json())
    for name in ("h1", "h2", "h3"):
        cluster.put_host(name)
    cluster.store.put(cluster.layout.manager(), json.dumps({"host": "h1"}))
    cluster.put_vm("web", "h1", nics=(Nic(mac="52:54:00:00:00:01"),))
    cluster.put_vm("db", "h1", memory=1024, priority=3)
    cluster.put_vm("cache", "h2", migratable=False)
    cluster.put_vm("batch", None, VmState.STOPPED, desired=DesiredState.STOPPED, priority=0)
    cluster.put_vm("broken", None, VmState.ERROR)
    cluster.event(10.0, "vm web", "stopped -> starting on h1 (generation 1)")
    cluster.event(12.0, "vm web", "starting -> running on h1")
    cluster.event(13.0, "host h3", "offline -> online")
    return cluster


@pytest.fixture
def cluster() -> Cluster:
    return make_cluster()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[TestClient]:
    app = create_app(cluster.store, cluster.layout, admin_token=ADMIN, read_token=READ, clock=cluster.clock)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@contextmanager
def serve(app: object) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the API server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def live(cluster: Cluster) -> Iterator[str]:
    """The API over `cluster` on a real socket (store calls serialised with a lock)."""
    store = LockedStore(cluster.store, threading.RLock())
    cluster.store = store  # type: ignore[assignment]  # tests write through the same lock
    app = create_app(store, cluster.layout, admin_token=ADMIN, read_token=READ, clock=cluster.clock)
    with serve(app) as url:
        _LIVE[url] = app.state.haven
        yield url
        del _LIVE[url]


_LIVE: dict[str, ApiContext] = {}


def live_ctx(url: str) -> ApiContext:
    return _LIVE[url]
