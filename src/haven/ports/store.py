"""The coordination store port (etcd in production, `sim.store.MemoryStore` in the simulator).

Keys and values are str. Every call either completes or raises `StoreUnavailable` within the
client's deadline (EtcdStore: `deadline`, default 2 x the 1.0 s per-request timeout): a caller
never waits forever on a store it cannot reach. A write that raised StoreUnavailable may or may
not have been applied. Revisions are etcd's: one global counter, bumped once per applied write
(a txn or a lease expiry deleting several keys is one revision).

What the rest of haven builds on these guarantees (docs/DESIGN.md section 3):
- The start rule. A host agent launches a QEMU (start, restore, incoming migration) only on a
  placement it read from the store after its current lease was granted, and only after a
  transaction with no writes confirmed that the placement's mod revision is still the one it read
  and that its alive key (bound to that lease) is still the version it wrote. A watch that broke
  may deliver old events late: a cache fed by it is never enough to start anything.
- Nothing waits on the store before a self-fence: a call here may take the whole deadline, so the
  kill at `ttl - margin` never sits behind one (events are buffered and shipped later).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class StoreError(Exception):
    """Base of store failures."""


class StoreUnavailable(StoreError):
    """The store could not be reached or did not answer in time. Nothing is known about
    whether a write took effect unless the caller checks."""


class LeaseLost(StoreError):
    """The lease has expired or was revoked; keys bound to it are gone."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    lease: int = 0


class EventType(StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: str
    value: str  # empty for DELETE
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """A transaction guard on one key. `mod_revision == 0` means "the key does not exist"."""

    key: str
    mod_revision: int | None = None  # compare the key's mod revision
    value: str | None = None  # or compare its value


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int = 0


@dataclass
class Lease:
    id: int
    ttl: float


class Store(Protocol):
    def get(self, key: str) -> KeyValue | None:
        """One key, or None."""

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        """Every key under `prefix`, sorted by key, read at one revision."""

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Write a key, optionally bound to a lease; returns the new revision."""

    def delete(self, key: str, prefix: bool = False) -> None:
        """Delete a key (or every key under a prefix). Deleting nothing is not an error."""

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        """Atomically: if every compare holds, apply `success`, else `failure`."""

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        """Create the key if absent (atomically). False if it existed."""

    def lease_grant(self, ttl: float) -> Lease:
        """A new lease. The store deletes keys bound to it `ttl` seconds after the last refresh
        it received (never earlier)."""

    def lease_refresh(self, lease: Lease) -> None:
        """Refresh the lease (its TTL restarts now); raises LeaseLost if it is gone."""

    def lease_revoke(self, lease: Lease) -> None:
        """Revoke now: keys bound to it are deleted."""

    def watch_prefix(self, prefix: str, callback: Callable[[WatchEvent], None],
                     start_revision: int = 0) -> Callable[[], None]:
        """Call `callback` for every change under `prefix` (from `start_revision` when given, so a
        reconnect loses nothing), in revision order; a lease expiry arrives as DELETE events.
        Without `start_revision`, every change after this call returns is delivered. Raises
        StoreError if `start_revision` was compacted away. Returns a function that cancels the
        watch. MemoryStore calls back synchronously inside the write; EtcdStore on a background
        thread per watch."""

    def close(self) -> None:
        """Release connections and stop watches."""

