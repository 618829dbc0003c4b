"""The Store contract, run against MemoryStore (virtual clock) and EtcdStore (real etcd).

Lease tests use TTL 2 (haven's default). etcd expires a lease 2.1-2.4 s after the last refresh,
so the etcd backend waits up to 4 s; the memory backend expires at exactly 2 s.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest

from haven.ports.store import (
    Compare, Delete, LeaseLost, Put, StoreError, StoreUnavailable, WatchEvent,
)
from haven.sim.store import MemoryStore

if TYPE_CHECKING:
    from conftest import Backend  # the fixture's type; tests/ is not a package

TTL = 2.0


class Events:
    """Thread-safe collector of watch events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[WatchEvent] = []

    def __call__(self, e: WatchEvent) -> None:
        with self._lock:
            self._items.append(e)

    @property
    def items(self) -> list[WatchEvent]:
        with self._lock:
            return list(self._items)

    def seen(self) -> list[tuple[str, str, str]]:
        return [(e.type.value, e.key, e.value) for e in self.items]


# -- keys -----------------------------------------------------------------------------------

def test_put_get_and_sorted_prefix(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    assert s.get(p + "missing") is None
    for k in ["b", "a/2", "c", "a/1"]:
        s.put(p + k, "v-" + k)
    kv = s.get(p + "a/1")
    assert kv is not None and (kv.key, kv.value, kv.lease) == (p + "a/1", "v-a/1", 0)
    assert [kv.key for kv in s.get_prefix(p)] == [p + k for k in ["a/1", "a/2", "b", "c"]]
    assert [kv.value for kv in s.get_prefix(p + "a/")] == ["v-a/1", "v-a/2"]
    assert s.get_prefix(p + "zzz") == []
    s.put(p + "b", "new")
    assert s.get(p + "b").value == "new"  # type: ignore[union-attr]
    s.put(p + "unicode", "é ✓")
    assert s.get(p + "unicode").value == "é ✓"  # type: ignore[union-attr]


def test_delete_and_prefix_delete(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    for k in ["a", "a/x", "a/y", "ab"]:
        s.put(p + k, "1")
    s.delete(p + "nothing")  # not an error
    s.delete(p + "a/", prefix=True)
    assert [kv.key for kv in s.get_prefix(p)] == [p + "a", p + "ab"]
    s.delete(p + "a")
    assert [kv.key for kv in s.get_prefix(p)] == [p + "ab"]


def test_revisions_increase(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    r1 = s.put(p + "k", "1")
    r2 = s.put(p + "k", "2")
    r3 = s.put(p + "other", "x")
    assert r1 < r2 < r3
    assert s.get(p + "k").mod_revision == r2  # type: ignore[union-attr]
    res = s.txn([], [Put(p + "k", "3"), Put(p + "k2", "3")])
    assert res.succeeded and res.revision == r3 + 1  # one txn, one revision
    assert s.get(p + "k2").mod_revision == res.revision  # type: ignore[union-attr]


def test_txn_compare_mod_revision(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    rev = s.put(p + "k", "1")
    ok = s.txn([Compare(p + "k", mod_revision=rev)], [Put(p + "k", "2")], [Put(p + "f", "x")])
    assert ok.succeeded and s.get(p + "k").value == "2"  # type: ignore[union-attr]
    assert s.get(p + "f") is None
    stale = s.txn([Compare(p + "k", mod_revision=rev)], [Put(p + "k", "3")], [Put(p + "f", "x")])
    assert not stale.succeeded
    assert s.get(p + "k").value == "2" and s.get(p + "f").value == "x"  # type: ignore[union-attr]
    # mod_revision 0 = absent; success may delete, also by prefix
    s.put(p + "d/1", "1")
    gone = s.txn([Compare(p + "absent", mod_revision=0)], [Delete(p + "d/", prefix=True)])
    assert gone.succeeded and s.get_prefix(p + "d/") == []
    assert not s.txn([Compare(p + "k", mod_revision=0)], [Delete(p + "k")]).succeeded


def test_txn_compare_value(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    s.put(p + "k", "old")
    assert not s.txn([Compare(p + "k", value="other")], [Put(p + "k", "x")]).succeeded
    assert s.txn([Compare(p + "k", value="old")], [Put(p + "k", "new")]).succeeded
    assert s.get(p + "k").value == "new"  # type: ignore[union-attr]
    # a value compare on an absent key is false (as in etcd), even against ""
    assert not s.txn([Compare(p + "absent", value="")], [Put(p + "absent", "x")]).succeeded
    # all compares must hold
    rev = s.get(p + "k").mod_revision  # type: ignore[union-attr]
    assert not s.txn([Compare(p + "k", value="new"), Compare(p + "k", mod_revision=rev + 100)],
                     [Put(p + "k", "x")]).succeeded


def test_create_if_absent(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    assert s.create(p + "leader", "me")
    assert not s.create(p + "leader", "you")
    assert s.get(p + "leader").value == "me"  # type: ignore[union-attr]
    s.delete(p + "leader")
    assert s.create(p + "leader", "you")


# -- leases ---------------------------------------------------------------------------------

def test_leased_key_vanishes_after_ttl(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    lease = s.lease_grant(TTL)
    assert lease.ttl >= TTL
    s.put(p + "alive", "h1", lease=lease.id)
    assert s.get(p + "alive").lease == lease.id  # type: ignore[union-attr]
    backend.sleep(TTL * 0.75)
    assert s.get(p + "alive") is not None  # never earlier than the TTL
    assert backend.wait_for(lambda: s.get(p + "alive") is None, timeout=4.0 - TTL * 0.75)


def test_memory_lease_expires_exactly_at_ttl() -> None:
    now = [0.0]
    server = MemoryStore(lambda: now[0])
    s = server.client("a")
    lease = s.lease_grant(TTL)
    s.put("/k", "v", lease=lease.id)
    assert server.next_expiry() == TTL
    now[0] = TTL - 0.001
    assert server.expire(now[0]) == [] and s.get("/k") is not None
    now[0] = TTL  # lazy expiry: a call at expiry time never sees the key
    assert s.get("/k") is None and server.next_expiry() is None


def test_refresh_keeps_lease(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    lease = s.lease_grant(TTL)
    s.put(p + "alive", "h1", lease=lease.id)
    for _ in range(6):  # 1.5 x TTL in all, refreshing every TTL/4
        backend.sleep(TTL / 4)
        s.lease_refresh(lease)
    assert s.get(p + "alive") is not None


def test_refresh_after_expiry_raises_lease_lost(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    lease = s.lease_grant(TTL)
    s.put(p + "alive", "h1", lease=lease.id)
    assert backend.wait_for(lambda: s.get(p + "alive") is None, timeout=4.0)
    with pytest.raises(LeaseLost):
        s.lease_refresh(lease)
    with pytest.raises(LeaseLost):  # a write bound to a lost lease fails ...
        s.put(p + "again", "x", lease=lease.id)
    with pytest.raises(LeaseLost):  # ... also in a txn, which then applies nothing
        s.txn([], [Put(p + "t1", "x"), Put(p + "t2", "x", lease=lease.id)])
    assert s.get_prefix(p) == []
    s.lease_revoke(lease)  # revoking a gone lease is not an error


def test_revoke_deletes_keys(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    lease = s.lease_grant(TTL)
    s.put(p + "a", "1", lease=lease.id)
    s.put(p + "b", "1", lease=lease.id)
    s.put(p + "c", "1")
    s.lease_revoke(lease)
    assert [kv.key for kv in s.get_prefix(p)] == [p + "c"]
    with pytest.raises(LeaseLost):
        s.lease_refresh(lease)


# -- watches --------------------------------------------------------------------------------

def test_watch_sees_puts_and_deletes_in_order(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    events = Events()
    cancel = s.watch_prefix(p + "w/", events)
    lease = s.lease_grant(TTL)
    s.put(p + "w/a", "1")
    s.put(p + "other", "not watched")
    s.put(p + "w/b", "2", lease=lease.id)
    s.txn([], [Put(p + "w/c", "3"), Delete(p + "w/a")])
    s.delete(p + "w/c")
    expected = [("put", p + "w/a", "1"), ("put", p + "w/b", "2"), ("put", p + "w/c", "3"),
                ("delete", p + "w/a", ""), ("delete", p + "w/c", ""),
                ("delete", p + "w/b", "")]  # the lease expiry
    assert backend.wait_for(lambda: len(events.items) >= 6, timeout=4.0), events.seen()
    assert events.seen() == expected
    revs = [e.mod_revision for e in events.items]
    assert revs == sorted(revs) and revs[2] == revs[3]  # the txn's events share a revision
    cancel()


def test_watch_from_start_revision_replays(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    r1 = s.put(p + "k", "1")
    s.put(p + "k", "2")
    s.delete(p + "k")
    s.put(p + "k", "3")
    events = Events()
    cancel = s.watch_prefix(p, events, start_revision=r1 + 1)
    assert backend.wait_for(lambda: len(events.items) >= 3, timeout=2.0), events.seen()
    s.put(p + "k", "4")
    assert backend.wait_for(lambda: len(events.items) >= 4, timeout=2.0), events.seen()
    assert events.seen() == [("put", p + "k", "2"), ("delete", p + "k", ""), ("put", p + "k", "3"),
                             ("put", p + "k", "4")]
    cancel()


def test_cancel_stops_delivery(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    events, other = Events(), Events()
    cancel = s.watch_prefix(p, events)
    cancel_other = s.watch_prefix(p, other)
    s.put(p + "a", "1")
    assert backend.wait_for(lambda: len(events.items) == 1, timeout=2.0)
    cancel()
    s.put(p + "b", "2")
    assert backend.wait_for(lambda: len(other.items) == 2, timeout=2.0)
    backend.sleep(0.1)
    assert events.seen() == [("put", p + "a", "1")]
    cancel_other()


def test_watch_on_other_client(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    other = backend.new_client()
    events = Events()
    cancel = other.watch_prefix(p, events)
    s.put(p + "x", "1")
    assert backend.wait_for(lambda: events.seen() == [("put", p + "x", "1")], timeout=2.0)
    cancel()


# -- MemoryStore only: the simulator's partition and ordering semantics ----------------------

def test_memory_unreachable_client_raises_and_its_watch_catches_up() -> None:
    up = [True]
    server = MemoryStore(lambda: 0.0)
    a, b = server.client("a"), server.client("b", reachable=lambda: up[0])
    events = Events()
    b.watch_prefix("/", events)
    up[0] = False
    with pytest.raises(StoreUnavailable):
        b.get("/k")
    a.put("/k", "1")
    assert events.items == []  # held back like a broken stream
    up[0] = True
    server.deliver()
    assert events.seen() == [("put", "/k", "1")]


def test_memory_write_from_callback_keeps_global_order() -> None:
    server = MemoryStore(lambda: 0.0)
    a = server.client("a")
    seen: list[tuple[str, int]] = []

    def react(e: WatchEvent) -> None:
        seen.append(("first", e.mod_revision))
        if e.key == "/x":
            a.put("/y", "reaction")

    a.watch_prefix("/", react)
    a.watch_prefix("/", lambda e: seen.append(("second", e.mod_revision)))
    a.put("/x", "1")
    assert seen == [("first", 2), ("second", 2), ("first", 3), ("second", 3)]


def test_memory_compacted_history() -> None:
    server = MemoryStore(lambda: 0.0, history=3)
    a = server.client("a")
    for i in range(5):
        a.put("/k", str(i))  # revisions 2..6
    with pytest.raises(StoreError, match="compacted"):
        a.watch_prefix("/", Events(), start_revision=3)
    events = Events()
    a.watch_prefix("/", events, start_revision=4)
    assert [e.value for e in events.items] == ["2", "3", "4"]


# -- EtcdStore only: failover, timeouts, watch resumption -----------------------------------

def _store(endpoints: list[str], **kw: float):  # type: ignore[no-untyped-def]
    from haven.drivers.etcd_store import EtcdStore

    return EtcdStore(endpoints, **kw)


def _follower_first(cluster) -> list[str]:  # type: ignore[no-untyped-def]
    """Endpoints with a follower first (the store starts there), then the leader."""
    leader = cluster.leader()
    assert leader is not None
    eps = cluster.endpoints
    f1, f2 = [i for i in range(len(eps)) if i != leader]
    return [eps[f1], eps[leader], eps[f2]]


def test_etcd_failover_after_follower_kill(etcd3) -> None:  # type: ignore[no-untyped-def]
    eps = _follower_first(etcd3)
    with _store(eps) as s:
        s.put("/f/k", "1")
        assert s.current_endpoint == eps[0]
        etcd3.kill_member(etcd3.endpoints.index(eps[0]))
        t0 = time.monotonic()
        s.put("/f/k", "2")  # refused at once, sent to the next member
        elapsed = time.monotonic() - t0
        assert s.get("/f/k").value == "2"  # type: ignore[union-attr]
        assert s.current_endpoint == eps[1]
        assert elapsed < 0.5
        print(f"failover after follower kill: {elapsed * 1000:.1f} ms")


def test_etcd_writes_resume_after_leader_kill(etcd3) -> None:  # type: ignore[no-untyped-def]
    # Survivors hold writes until a new leader is elected (~1.5 s with default etcd timings).
    leader = etcd3.leader()
    eps = etcd3.endpoints
    with _store([eps[leader]] + [e for i, e in enumerate(eps) if i != leader], timeout=0.5) as s:
        s.put("/l/k", "1")
        etcd3.kill_member(leader)
        t0 = time.monotonic()
        while True:
            try:
                s.put("/l/k", "2")
                break
            except StoreUnavailable:
                assert time.monotonic() - t0 < 5.0, "no write succeeded 5 s after leader kill"
        elapsed = time.monotonic() - t0
        assert s.get("/l/k").value == "2"  # type: ignore[union-attr]
        print(f"writes resume after leader kill: {elapsed:.2f} s")


def test_etcd_hung_member_times_out_then_fails_over(etcd3) -> None:  # type: ignore[no-untyped-def]
    # Hang followers only: a hung leader also costs an election (~1-2 s), tested by the lab.
    leader = etcd3.leader()
    assert leader is not None
    f1, f2 = [i for i in range(3) if i != leader]
    eps = etcd3.endpoints
    with _store([eps[f1], eps[leader], eps[f2]], timeout=0.5) as s:
        s.put("/h/k", "1")
        etcd3.pause_member(f1)
        try:
            t0 = time.monotonic()
            s.put("/h/k", "2")  # times out on the hung member, repeated on the next
            assert 0.5 <= time.monotonic() - t0 < 0.5 + 0.5
            assert s.current_endpoint == eps[leader]
            assert s.get("/h/k").value == "2"  # type: ignore[union-attr]
            # A txn is not repeated after an ambiguous timeout: the caller must re-read.
            etcd3.resume_member(f1)
            s.put("/h/k", "3")
            etcd3.pause_member(f2)
            s._current = 2  # type: ignore[attr-defined]  # start on the hung follower f2
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match="outcome unknown"):
                s.create("/h/new", "x")
            assert time.monotonic() - t0 < 0.5 + 0.2
            assert s.current_endpoint != eps[f2]  # the next call starts elsewhere
            assert s.create("/h/new2", "x")
        finally:
            for i in range(3):
                etcd3.resume_member(i)


def test_etcd_unreachable_endpoint_raises_within_deadline() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once we leave: nothing listens there
    with _store([f"http://127.0.0.1:{port}"], timeout=0.3) as s:
        for call in (lambda: s.get("/k"), lambda: s.put("/k", "v"), lambda: s.create("/k", "v"),
                     lambda: s.watch_prefix("/", Events())):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - t0 < s.deadline + 0.2


def test_etcd_watch_resumes_after_its_member_is_killed(etcd3) -> None:  # type: ignore[no-untyped-def]
    eps = _follower_first(etcd3)  # killing the leader would also stall the writes below
    with _store(eps) as s:
        events = Events()
        on = s.current_endpoint  # the watch starts on the current endpoint
        cancel = s.watch_prefix("/r/", events)
        s.put("/r/1", "a")
        assert _wait(lambda: len(events.items) == 1)
        etcd3.kill_member(etcd3.endpoints.index(on))
        for i in range(2, 6):  # written while the watch reconnects elsewhere
            s.put(f"/r/{i}", "b")
        assert _wait(lambda: len(events.items) == 5, 5.0), events.seen()
        assert [e.key for e in events.items] == [f"/r/{i}" for i in range(1, 6)]  # no loss, no dup
        cancel()


def _wait(pred, timeout: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True
