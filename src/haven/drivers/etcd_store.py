"""EtcdStore: the Store port over etcd v3's JSON gateway (`/v3/...`), with httpx.

Why httpx and not etcd3gw: etcd3gw binds one client to one endpoint, raises requests' exceptions,
and its watch thread cannot be stopped promptly or resumed from a revision on another member.
Failover, per-call timeouts, error mapping and a resumable watch are the whole job of this
driver, so it talks to the gateway directly (keys and values are base64 in JSON; int64s are strings).

Failure model:
- Every HTTP attempt has `timeout` (default 1.0 s); every call has an overall `deadline` (default
  2 x timeout) across endpoints. Nothing escapes but StoreError subclasses.
- A request that never left (connection refused, connect timeout) is sent to the next endpoint.
- A request that left but got no answer (read timeout: e.g. a member cut off from the quorum, or
  killed mid-request) is retried on the next endpoint only if repeating it is harmless: reads,
  put, delete, lease grant/refresh/revoke. A txn is NOT repeated (a repeated create would report
  False although the first attempt may have created the key): it raises StoreUnavailable, and the
  next call starts on the next endpoint. The caller re-reads to learn the outcome.
- The endpoint that answered last is remembered and tried first.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

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

log = logging.getLogger(__name__)

# gRPC codes etcd uses when a member cannot serve now (no leader, timeout, shutting down).
_UNAVAILABLE_CODES = {4, 14}  # DEADLINE_EXCEEDED, UNAVAILABLE
_UNAVAILABLE_HINTS = ("no leader", "timed out", "leader changed", "not capable", "stopped",
                      "too many requests", "timeout")
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str | None) -> str:
    return base64.b64decode(s).decode() if s else ""


def _prefix_end(prefix: str) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    b = bytearray(prefix.encode())
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\0"  # with key "\0": the whole keyspace
    b[-1] += 1
    return bytes(b)


def _range(key: str, prefix: bool) -> dict[str, str]:
    if not prefix:
        return {"key": _b64(key)}
    return {"key": _b64(key or "\0"), "range_end": _b64(_prefix_end(key))}


def _kv(d: dict[str, Any]) -> KeyValue:
    return KeyValue(_unb64(d.get("key")), _unb64(d.get("value")), int(d.get("mod_revision", 0)),
                    int(d.get("lease", 0)))


def _revision(resp: dict[str, Any]) -> int:
    return int(resp.get("header", {}).get("revision", 0))


class _Unavailable(Exception):
    """This member cannot serve now (an etcd-level error): try another one."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        # "no leader" is refused before anything is proposed (thanks to the hasleader header):
        # the request surely did not apply, so even a txn may be sent elsewhere.
        self.never_applied = "no leader" in msg


class EtcdStore:
    def __init__(self, endpoints: Sequence[str], timeout: float = 1.0,
                 deadline: float | None = None, watch_idle: float = 3.0) -> None:
        """`endpoints`: client URLs, e.g. ["http://10.0.0.1:2379", ...]. `timeout`: per HTTP
        attempt, seconds. `deadline`: per call across endpoints (default 2 x timeout).
        `watch_idle`: a watch stream silent this long is reopened on the next member (it
        resumes losslessly): it bounds how long a watch stays on a hung member. Run etcd with
        `--experimental-watch-progress-notify-interval` below it so healthy streams never idle."""
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.deadline = deadline if deadline is not None else 2 * timeout
        self.watch_idle = watch_idle
        self._current = 0  # index of the endpoint that answered last
        # trust_env=False: a proxy from the environment must never sit between us and etcd.
        # hasleader: a member without a leader refuses at once ("no leader") instead of holding
        # the request until our timeout, so failover after a leader loss takes one election.
        self._http = httpx.Client(timeout=timeout, trust_env=False,
                                  headers={"Grpc-Metadata-hasleader": "true"})
        self._watches: set[_Watch] = set()
        self._lock = threading.Lock()

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current]

    # -- transport ------------------------------------------------------------------------

    def _post(self, endpoint: str, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        r = self._http.post(endpoint + path, json=body, timeout=timeout)
        try:
            data: dict[str, Any] = r.json()
        except ValueError:
            raise _Unavailable(f"HTTP {r.status_code}: {r.text[:200]!r}") from None
        err = data.get("error")
        if isinstance(data.get("result"), dict):  # streaming endpoints wrap answers in "result"
            data = data["result"]
        if r.status_code == 200 and not err:
            return data
        msg = str(data.get("message") or err or f"HTTP {r.status_code}")
        if "lease not found" in msg:
            raise LeaseLost(msg)
        if data.get("code") in _UNAVAILABLE_CODES or r.status_code >= 500 \
                or any(h in msg for h in _UNAVAILABLE_HINTS):
            raise _Unavailable(msg)
        raise StoreError(f"etcd {path}: {msg}")

    def _call(self, path: str, body: dict[str, Any], repeatable: bool = True) -> dict[str, Any]:
        """POST to the current endpoint, failing over to the others until the deadline."""
        n = len(self.endpoints)
        end = time.monotonic() + self.deadline
        errors: list[str] = []
        start = self._current
        attempt = 0
        while (remaining := end - time.monotonic()) > 0:
            if attempt and attempt % n == 0:
                time.sleep(min(0.05, remaining))  # a whole round failed: don't spin
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
            i = (start + attempt) % n
            ep = self.endpoints[i]
            attempt += 1
            try:
                data = self._post(ep, path, body, min(self.timeout, remaining))
                self._current = i
                return data
            except _NEVER_SENT as e:
                errors.append(f"{ep}: {type(e).__name__}")
            except _Unavailable as e:
                errors.append(f"{ep}: {e}")
                self._current = (i + 1) % n
                if not (repeatable or e.never_applied):
                    raise StoreUnavailable(f"etcd {path} outcome unknown: {errors[-1]}") from None
            except httpx.HTTPError as e:
                # Sent, no usable answer: next call starts elsewhere; repeat only if harmless.
                errors.append(f"{ep}: {type(e).__name__} {e}")
                self._current = (i + 1) % n
                if not repeatable:
                    raise StoreUnavailable(f"etcd {path} outcome unknown: {errors[-1]}") from None
        raise StoreUnavailable(f"etcd {path} failed within {self.deadline:.1f}s: "
                               + "; ".join(errors[-n:] or ["deadline passed"]))

    # -- keys -----------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        kvs = self._call("/v3/kv/range", _range(key, False)).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        body = {**_range(prefix, True), "sort_order": "ASCEND", "sort_target": "KEY"}
        return [_kv(d) for d in self._call("/v3/kv/range", body).get("kvs", [])]

    def put(self, key: str, value: str, lease: int = 0) -> int:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _revision(self._call("/v3/kv/put", body))

    def delete(self, key: str, prefix: bool = False) -> None:
        self._call("/v3/kv/deleterange", _range(key, prefix))

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        """Not repeated after an ambiguous failure (see module doc): StoreUnavailable then
        means "maybe applied"."""
        body = {"compare": [c for cmp in compares for c in self._compare(cmp)],
                "success": [self._op(op) for op in success],
                "failure": [self._op(op) for op in failure]}
        data = self._call("/v3/kv/txn", body, repeatable=False)
        return TxnResult(bool(data.get("succeeded", False)), _revision(data))

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        return self.txn([Compare(key, mod_revision=0)], [Put(key, value, lease)]).succeeded

    @staticmethod
    def _compare(c: Compare) -> list[dict[str, str]]:
        out = []
        if c.mod_revision is not None:
            out.append({"key": _b64(c.key), "target": "MOD", "result": "EQUAL",
                        "mod_revision": str(c.mod_revision)})
        if c.value is not None:
            out.append({"key": _b64(c.key), "target": "VALUE", "result": "EQUAL",
                        "value": _b64(c.value)})
        if not out:
            raise StoreError(f"Compare on {c.key!r} needs mod_revision or value")
        return out

    @staticmethod
    def _op(op: Put | Delete) -> dict[str, Any]:
        if isinstance(op, Put):
            put = {"key": _b64(op.key), "value": _b64(op.value)}
            if op.lease:
                put["lease"] = str(op.lease)
            return {"request_put": put}
        return {"request_delete_range": _range(op.key, op.prefix)}

    # -- leases ---------------------------------------------------------------------------

    def lease_grant(self, ttl: float) -> Lease:
        """etcd grants whole seconds (rounded up) and at least its minimum TTL (~1.5 s with
        default timings); the returned Lease.ttl is what it granted."""
        data = self._call("/v3/lease/grant", {"TTL": max(1, math.ceil(ttl))})
        return Lease(int(data["ID"]), float(data["TTL"]))

    def lease_refresh(self, lease: Lease) -> None:
        data = self._call("/v3/lease/keepalive", {"ID": str(lease.id)})
        if int(data.get("TTL", 0)) <= 0:  # etcd answers an unknown lease with no TTL
            raise LeaseLost(f"lease {lease.id:x} expired or revoked")

    def lease_revoke(self, lease: Lease) -> None:
        with contextlib.suppress(LeaseLost):  # already gone: revoking is idempotent
            self._call("/v3/lease/revoke", {"ID": str(lease.id)})

    # -- watches --------------------------------------------------------------------------

    def watch_prefix(self, prefix: str, callback: Callable[[WatchEvent], None],
                     start_revision: int = 0) -> Callable[[], None]:
        """Events are delivered on a background thread, in revision order, exactly once across
        reconnects. Without `start_revision` the watch starts after the store's revision at
        the time of this call (read synchronously, so it raises StoreUnavailable if no member
        answers), so a write made after this returns is always seen."""
        probe: dict[str, Any] = {"key": _b64(prefix or "\0"), "keys_only": True, "limit": 1}
        if start_revision <= 0:
            start_revision = _revision(self._call("/v3/kv/range", probe)) + 1
        else:
            try:  # fail now, not in the thread, if that history is gone
                self._call("/v3/kv/range", {**probe, "revision": str(start_revision)})
            except StoreError as e:
                if "compacted" in str(e):
                    raise StoreError(f"compacted: cannot watch {prefix!r} from revision "
                                     f"{start_revision}; re-read and watch anew") from None
                if "future revision" not in str(e):
                    raise
        w = _Watch(self, prefix, callback, start_revision)
        with self._lock:
            self._watches.add(w)
        w.start()
        return w.cancel

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.cancel()
        self._http.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Watch:
    """One prefix watch: a thread holding a streaming /v3/watch, reopened on any failure from
    `next_rev` (the revision after the last one delivered) on the next endpoint."""

    def __init__(self, store: EtcdStore, prefix: str, callback: Callable[[WatchEvent], None],
                 start_revision: int) -> None:
        self.store = store
        self.prefix = prefix
        self.callback = callback
        self.next_rev = start_revision
        self._stopped = threading.Event()
        self._sock: socket.socket | None = None
        self._answered = False  # the current stream has delivered at least one message
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"etcd-watch {prefix}")

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Stop now: no callback starts after this returns (unless called from a callback)."""
        self._stopped.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # unblocks the thread's recv() at once; close() alone would not
                sock.shutdown(socket.SHUT_RDWR)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        with self.store._lock:
            self.store._watches.discard(self)

    def _run(self) -> None:
        n = len(self.store.endpoints)
        i = self.store._current
        backoff = 0.05
        while not self._stopped.is_set():
            ep = self.store.endpoints[i % n]
            self._answered = False
            try:
                self._stream(ep)
            except Exception as e:  # noqa: BLE001 - any failure: reconnect elsewhere
                if self._stopped.is_set():
                    break
                if self._answered:  # it worked for a while: retry promptly
                    backoff = 0.05
                log.info("watch %s on %s broke (%s: %s); resuming from revision %d",
                         self.prefix, ep, type(e).__name__, e, self.next_rev)
                i += 1
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 1.0)

    def _stream(self, endpoint: str) -> None:
        st = self.store
        create: dict[str, Any] = {**_range(self.prefix, True), "start_revision": str(self.next_rev),
                                  "progress_notify": True}
        timeout = httpx.Timeout(st.timeout, read=st.watch_idle)
        # The client's hasleader header makes etcd cancel this stream if the member loses its
        # leader (e.g. cut off), instead of leaving us on a member that sees no new writes.
        with st._http.stream("POST", endpoint + "/v3/watch", json={"create_request": create},
                             timeout=timeout) as resp:
            stream = resp.extensions.get("network_stream")
            self._sock = stream.get_extra_info("socket") if stream is not None else None
            if self._stopped.is_set():
                return
            if resp.status_code != 200:
                raise _Unavailable(f"watch HTTP {resp.status_code}")
            try:
                for line in resp.iter_lines():
                    if self._stopped.is_set():
                        return
                    if line.strip():
                        self._answered = True
                        self._handle(json.loads(line))
            finally:
                self._sock = None
        raise _Unavailable("watch stream ended")

    def _handle(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            raise _Unavailable(str(msg["error"].get("message", msg["error"])))
        res = msg.get("result", {})
        compacted = int(res.get("compact_revision", 0))
        if compacted:
            # History before `compacted` is gone: resume there, loudly. Callers that must not
            # miss anything re-read their prefix on this log line's condition.
            log.error("watch %s: revisions %d..%d compacted away, events lost",
                      self.prefix, self.next_rev, compacted - 1)
            self.next_rev = compacted
            raise _Unavailable("compacted")
        if res.get("canceled"):
            raise _Unavailable(f"watch canceled: {res.get('cancel_reason', '')}")
        last = 0
        for ev in res.get("events", []):
            kv = ev.get("kv", {})
            rev = int(kv.get("mod_revision", 0))
            if rev < self.next_rev:
                continue  # already delivered before a reconnect
            last = rev
            etype = EventType.DELETE if ev.get("type") == "DELETE" else EventType.PUT
            value = "" if etype is EventType.DELETE else _unb64(kv.get("value"))
            if self._stopped.is_set():
                return
            try:
                self.callback(WatchEvent(etype, _unb64(kv.get("key")), value, rev))
            except Exception:  # a buggy callback must not kill the watch
                log.exception("watch %s: callback failed", self.prefix)
        if last:
            self.next_rev = last + 1  # a revision's events always arrive in one message
