"""Backends for the Store contract suite: MemoryStore on a manual virtual clock, and EtcdStore
against a real 1-member etcd (session-scoped; skipped if the `etcd` binary is missing)."""
from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from haven.ports.store import Store
from haven.sim.store import MemoryStore

ETCD_MISSING = "etcd binary not found (Debian package etcd-server); etcd backend not tested"


def need_etcd() -> None:
    if shutil.which("etcd") is None:
        pytest.skip(ETCD_MISSING)


class Backend:
    """What a contract test needs beyond the Store: a unique key prefix and a way to let time
    pass (virtual for memory, real for etcd)."""

    name: str
    store: Store
    prefix: str

    def new_client(self) -> Store:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def wait_for(self, pred: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
        """Let time pass until pred() holds; False if it still does not after `timeout`."""
        waited = 0.0
        while not pred():
            if waited >= timeout:
                return False
            self.sleep(step)
            waited += step
        return True


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        self.now = 0.0
        self.server = MemoryStore(lambda: self.now)
        self.store = self.server.client("test")
        self.prefix = "/t/"

    def new_client(self) -> Store:
        return self.server.client("other")

    def sleep(self, seconds: float) -> None:
        # As the simulator does: stop at every lease expiry on the way, expire, go on.
        target = self.now + seconds
        while (due := self.server.next_expiry()) is not None and due <= target:
            self.now = max(self.now, due)
            self.server.expire(self.now)
        self.now = target


class EtcdBackend(Backend):
    name = "etcd"

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self._clients: list[Store] = []
        self.store = self.new_client()
        self.prefix = f"/t/{uuid.uuid4().hex[:8]}/"  # the cluster is shared by the session

    def new_client(self) -> Store:
        from haven.drivers.etcd_store import EtcdStore

        client = EtcdStore(self.endpoints)
        self._clients.append(client)
        return client

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    need_etcd()
    from haven.lab.etcd import EtcdCluster

    with EtcdCluster(tmp_path_factory.mktemp("etcd1"), members=1) as cluster:
        yield cluster


@pytest.fixture
def etcd3(tmp_path: object) -> Iterator[object]:
    """A fresh 3-member cluster for tests that kill or pause members."""
    need_etcd()
    from haven.lab.etcd import EtcdCluster

    with EtcdCluster(tmp_path, members=3) as cluster:  # type: ignore[arg-type]
        yield cluster


@pytest.fixture(params=["memory", "etcd"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        b: Backend = MemoryBackend()
        yield b
        b.store.close()
        return
    cluster = request.getfixturevalue("etcd_cluster")
    eb = EtcdBackend(cluster.endpoints)
    yield eb
    eb.close()
