"""MemoryStore: the simulator's in-memory twin of etcd.

Deterministic: no threads, no real clock. Time is whatever `now()` (the simulator's virtual clock)
says. Semantics follow etcd v3 where the contract tests can check them:

- one global revision; every write that changes something (put, a delete that deletes, a txn that
  applies at least one change, a lease revoke/expiry that deletes keys) bumps it once;
- a lease expires `ttl` seconds after its last refresh (at `expiry <= now`), deleting its keys;
- `Compare(value=...)` on an absent key is false; `Compare(mod_revision=0)` means "absent";
- watch callbacks run synchronously after the write is applied, in revision order (a txn's events
  in op order). A write made from inside a callback is delivered after the current event has
  reached every watcher, so every watcher sees one global order.

Partitions: each client has `reachable()`. Calls on an unreachable client raise StoreUnavailable,
and its watches are held back (like a broken watch stream) and catch up, in order, on the next
delivery after it is reachable again: any client call or write, or `MemoryStore.deliver()`.
"""
from __future__ import annotations

import bisect
import itertools
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from haven.ports.store import (
    Compare,
    Delete,
    EventType,
    KeyValue,
    Lease,
    LeaseLost,
    Put,
    StoreError,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
)


@dataclass
class _Lease:
    id: int
    ttl: float
    expiry: float
    keys: set[str] = field(default_factory=set)


@dataclass
class _Watcher:
    id: int
    prefix: str
    callback: Callable[[WatchEvent], None]
    reachable: Callable[[], bool]
    next_seq: int  # sequence number of the next event to consider
    min_revision: int = 0  # skip events older than this (a start_revision in the future)
    cancelled: bool = False


class MemoryStore:
    """The server side: keys, leases, revisions, history, watchers."""

    def __init__(self, now: Callable[[], float], history: int = 10_000) -> None:
        self._now = now
        self.revision = 1  # like a fresh etcd: the first write gets revision 2
        self._kvs: dict[str, KeyValue] = {}
        self._sorted_keys: list[str] = []  # for prefix reads in O(log n + k)
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(1)
        self._history: deque[WatchEvent] = deque(maxlen=history)
        self._seq_end = 0  # sequence number of the next event appended to history
        self._compacted = 0  # revision of the newest event dropped from history
        self._watchers: dict[int, _Watcher] = {}
        self._watch_ids = itertools.count(1)
        self._delivering = False
        self._caught_up = -1  # every watcher had every event up to this sequence number
        self._next_expiry: float | None = None
        self._next_expiry_known = False  # else _next_expiry is stale
        self.lost_watch_events = 0  # events a held-back watcher missed because history wrapped

    def client(self, name: str, reachable: Callable[[], bool] = lambda: True) -> MemoryStoreClient:
        return MemoryStoreClient(self, name, reachable)

    def peek(self, key: str) -> KeyValue | None:
        """The key as the store holds it now, for the simulator's checks (no participant's view)."""
        return self._kvs.get(key)

    def dump(self) -> dict[str, str]:
        return {k: self._kvs[k].value for k in sorted(self._kvs)}

    # -- leases ---------------------------------------------------------------------------

    def next_expiry(self) -> float | None:
        """Earliest lease expiry on the virtual clock, or None without leases."""
        if not self._next_expiry_known:  # the simulator asks after every event: remember it
            self._next_expiry = min([lease.expiry for lease in self._leases.values()], default=None)
            self._next_expiry_known = True
        return self._next_expiry

    def _leases_changed(self) -> None:
        self._next_expiry_known = False

    def expire(self, now: float) -> list[int]:
        """Revoke every lease whose expiry <= now (deleting its keys); the ids, in id order."""
        next_expiry = self.next_expiry()
        if next_expiry is None or next_expiry > now:
            return []
        expired = sorted(i for i, lease in self._leases.items() if lease.expiry <= now)
        for lease_id in expired:
            self._revoke(lease_id)
        return expired

    def restart_leases(self, now: float) -> None:
        """After an outage etcd's new leader gives every lease a full TTL again; so do we."""
        for lease in self._leases.values():
            lease.expiry = now + lease.ttl
        self._leases_changed()

    def _revoke(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        self._leases_changed()
        events = [self._delete_key(k) for k in sorted(lease.keys)]
        self._commit([e for e in events if e is not None])

    # -- writes ---------------------------------------------------------------------------
    # The _apply_* helpers compute events at revision `self.revision + 1`; _commit bumps the
    # revision once if anything changed, records history and delivers to watchers.

    def _put_key(self, key: str, value: str, lease_id: int) -> WatchEvent:
        if lease_id and lease_id not in self._leases:
            raise LeaseLost(f"lease {lease_id} not found")
        rev = self.revision + 1
        old = self._kvs.get(key)
        if old is None:
            bisect.insort(self._sorted_keys, key)
        elif old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._kvs[key] = KeyValue(key, value, rev, lease_id)
        if lease_id:
            self._leases[lease_id].keys.add(key)
        return WatchEvent(EventType.PUT, key, value, rev)

    def _delete_key(self, key: str) -> WatchEvent | None:
        old = self._kvs.pop(key, None)
        if old is None:
            return None
        del self._sorted_keys[bisect.bisect_left(self._sorted_keys, key)]
        if old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        return WatchEvent(EventType.DELETE, key, "", self.revision + 1)

    def _apply(self, ops: Sequence[Put | Delete]) -> list[WatchEvent]:
        # Check leases first so a txn with a bad lease applies nothing (as etcd).
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseLost(f"lease {op.lease} not found")
        events: list[WatchEvent] = []
        for op in ops:
            if isinstance(op, Put):
                events.append(self._put_key(op.key, op.value, op.lease))
            elif op.prefix:
                events += [e for k in self._keys_under(op.key) if (e := self._delete_key(k))]
            elif (e := self._delete_key(op.key)) is not None:
                events.append(e)
        return events

    def _commit(self, events: list[WatchEvent]) -> None:
        if not events:
            return
        self.revision += 1
        for e in events:
            if len(self._history) == self._history.maxlen:
                self._compacted = self._history[0].mod_revision
            self._history.append(e)
        self._seq_end += len(events)
        self.deliver()

    def _keys_under(self, prefix: str) -> list[str]:
        keys = self._sorted_keys
        start = bisect.bisect_left(keys, prefix)
        if not prefix or prefix[-1] == chr(sys.maxunicode):  # no string just after every key under it
            end = start
            while end < len(keys) and keys[end].startswith(prefix):
                end += 1
        else:  # as etcd's range end: the keys under "a/b" sort before "a/c"
            end = bisect.bisect_left(keys, prefix[:-1] + chr(ord(prefix[-1]) + 1), start)
        return keys[start:end]

    def _holds(self, c: Compare) -> bool:
        if c.mod_revision is None and c.value is None:
            raise StoreError(f"Compare on {c.key!r} needs mod_revision or value")
        kv = self._kvs.get(c.key)
        if c.mod_revision is not None and (kv.mod_revision if kv else 0) != c.mod_revision:
            return False
        return c.value is None or (kv is not None and kv.value == c.value)

    # -- watches --------------------------------------------------------------------------

    def _add_watcher(self, prefix: str, callback: Callable[[WatchEvent], None],
                     reachable: Callable[[], bool], start_revision: int) -> _Watcher:
        if 0 < start_revision <= self._compacted:
            raise StoreError(f"compacted: revision {start_revision} is older than the kept "
                             f"history (compacted at {self._compacted}); re-read and watch anew")
        first_seq = self._seq_end - len(self._history)
        seq = self._seq_end
        if start_revision > 0:
            seq = next((first_seq + i for i, e in enumerate(self._history)
                        if e.mod_revision >= start_revision), self._seq_end)
        w = _Watcher(next(self._watch_ids), prefix, callback, reachable, seq, start_revision)
        self._watchers[w.id] = w
        self._caught_up = -1  # it may start behind
        self.deliver()
        return w

    def watch_stream(self, prefix: str, callback: Callable[[WatchEvent], None],
                     reachable: Callable[[], bool]) -> Callable[[], None]:
        """A watch that reconnects by itself (as the real daemon's does): registered even while
        unreachable; its events are held back until the participant reaches the store again."""
        w = self._add_watcher(prefix, callback, reachable, 0)

        def cancel() -> None:
            w.cancelled = True
            self._watchers.pop(w.id, None)
        return cancel

    def deliver(self) -> None:
        """Deliver pending events to every reachable watcher, event by event in global order.
        Re-entrant calls (a callback that writes) return at once; the outer loop picks up
        the new events."""
        if self._delivering or self._caught_up == self._seq_end:
            return
        self._delivering = True
        try:
            while True:
                end = self._seq_end
                first_seq = end - len(self._history)
                pending: list[_Watcher] = []  # in id order: the dict's order, as ids only grow
                held_back = False
                for w in self._watchers.values():
                    if w.next_seq < end:
                        if w.reachable():
                            pending.append(w)
                        else:
                            held_back = True
                if not pending:
                    if not held_back:  # everyone has everything: skip the scan until the next event
                        self._caught_up = end
                    return
                seq = end
                for w in pending:
                    if w.next_seq < first_seq:  # held back longer than history: events lost
                        self.lost_watch_events += first_seq - w.next_seq
                        w.next_seq = first_seq
                    if w.next_seq < seq:
                        seq = w.next_seq
                event = self._history[seq - first_seq]
                for w in pending:
                    if w.next_seq == seq and not w.cancelled:  # a callback may cancel a later watch
                        w.next_seq += 1
                        if event.key.startswith(w.prefix) and event.mod_revision >= w.min_revision:
                            w.callback(event)
        finally:
            self._delivering = False


class MemoryStoreClient:
    """One participant's connection to a MemoryStore; implements the Store port."""

    def __init__(self, server: MemoryStore, name: str, reachable: Callable[[], bool]) -> None:
        self.server = server
        self.name = name
        self._reachable = reachable
        self._watchers: list[_Watcher] = []
        self._closed = False

    def _enter(self) -> MemoryStore:
        if self._closed:
            raise StoreUnavailable(f"store client {self.name} is closed")
        s = self.server
        if not self._reachable():  # first: an unreachable store expires nothing on our behalf
            raise StoreUnavailable(f"store unreachable from {self.name}")
        s.expire(s._now())  # lazily, so no call sees a key whose lease is past expiry
        s.deliver()  # a healed partition catches up before the call
        return s

    def get(self, key: str) -> KeyValue | None:
        return self._enter()._kvs.get(key)

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        s = self._enter()
        return [s._kvs[k] for k in s._keys_under(prefix)]

    def put(self, key: str, value: str, lease: int = 0) -> int:
        s = self._enter()
        s._commit([s._put_key(key, value, lease)])
        return s.revision

    def delete(self, key: str, prefix: bool = False) -> None:
        s = self._enter()
        s._commit(s._apply([Delete(key, prefix)]))

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        s = self._enter()
        ok = all(s._holds(c) for c in compares)
        s._commit(s._apply(success if ok else failure))
        return TxnResult(ok, s.revision)

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        return self.txn([Compare(key, mod_revision=0)], [Put(key, value, lease)]).succeeded

    def lease_grant(self, ttl: float) -> Lease:
        s = self._enter()
        lease_id = next(s._lease_ids)
        s._leases[lease_id] = _Lease(lease_id, ttl, s._now() + ttl)
        s._leases_changed()
        return Lease(lease_id, ttl)

    def lease_refresh(self, lease: Lease) -> None:
        s = self._enter()
        held = s._leases.get(lease.id)
        if held is None:
            raise LeaseLost(f"lease {lease.id} expired or revoked")
        held.expiry = s._now() + held.ttl
        s._leases_changed()

    def lease_revoke(self, lease: Lease) -> None:
        self._enter()._revoke(lease.id)

    def watch_prefix(self, prefix: str, callback: Callable[[WatchEvent], None],
                     start_revision: int = 0) -> Callable[[], None]:
        w = self._enter()._add_watcher(prefix, callback, self._reachable, start_revision)
        self._watchers.append(w)

        def cancel() -> None:
            w.cancelled = True
            self.server._watchers.pop(w.id, None)
        return cancel

    def close(self) -> None:
        for w in self._watchers:
            w.cancelled = True
            self.server._watchers.pop(w.id, None)
        self._watchers.clear()
        self._closed = True
