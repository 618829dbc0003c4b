"""UdpPeerLink: the daemons' own link over the management network, apart from the store.

It carries two things, both as one JSON datagram on one UDP port per host (`Settings.peer_port`):

- **Heartbeats** (fast fencing): every daemon sends {"hb": lease} to every peer each
  `heartbeat_interval_s` and records when it last heard each peer. A daemon going for a restart
  (the next run takes over and keeps the VMs) says so first ({"hb": lease, "away": seconds}): its
  peers do not count it silent until that long has passed. The leading manager asks
  `silent()`: peers heard before but not for `heartbeat_timeout_s`, with the lease their last
  heartbeat named; it acts only on a host still up under that lease, and only through a fence
  device's confirmed power-off (`ManagerLoop._fence_silent_hosts`). A heartbeat never lets
  anything run: a lost one costs at most a needless power-off, a forged one only delays a fast
  fence until the lease runs out. A peer never heard is not silent (a manager that starts after a
  host died, or a firewall that drops heartbeats, falls back to lease expiry).
- **The failsafe's question** (ports.peers, core.failsafe): {"q": "store?", "nonce"} and the answer
  {"a": "reaches"|"cannot", "nonce"}, from the keeper's record (`LeaseKeeper.answer`) on the
  receiving thread; a daemon that is stopped or hung answers nothing, which ends the failsafe.

With a `key` (the same on every host: `NodeConfig.peer_key_file`) every datagram carries an
HMAC-SHA256 of its body and one whose HMAC does not match is dropped: a forged "cannot" would keep
a host's VMs running while the store is up. `ask` blocks its caller (the renew thread) for at most
the round's timeout.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from haven.core.failsafe import Answer
from haven.ports.peers import Answers

log = logging.getLogger("haven.peers")
Address = tuple[str, int]
MAX_DATAGRAM = 2048
POLL_S = 0.2  # the receiver's wait between checks for `close`
MAX_AWAY_S = 60.0  # the longest absence a restarting daemon may announce


class UdpPeerLink:
    def __init__(self, host: str, cluster: str, bind: Address, addresses: Callable[[], Mapping[str, Address]],
                 answer: Callable[[], Answer], lease: Callable[[], int] = lambda: 0, key: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.cluster = cluster
        self.addresses = addresses  # peer host -> where its link listens (from the host specs)
        self.answer = answer
        self.lease = lease  # this host's lease now (0: none), named in its heartbeats
        self.key = key
        self.clock = clock
        self.lock = threading.Lock()
        self.heard: dict[str, tuple[float, int]] = {}  # peer -> its last heartbeat's arrival, and lease
        self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server.bind(bind)
        self.server.settimeout(POLL_S)  # to notice `close`
        host, port = self.server.getsockname()[:2]
        self.address: Address = (str(host), int(port))  # where this link listens (port 0: the one given)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="peer-link", daemon=True)
        self.thread.start()

    # --- the wire ---

    def _pack(self, body: dict[str, Any]) -> bytes:
        data = json.dumps({**body, "cluster": self.cluster, "from": self.host}, sort_keys=True).encode()
        if self.key is None:
            return data
        return hmac.new(self.key, data, hashlib.sha256).hexdigest().encode() + b" " + data

    def _unpack(self, datagram: bytes) -> dict[str, Any] | None:
        data = datagram
        if self.key is not None:
            mac, _, data = datagram.partition(b" ")
            if not hmac.compare_digest(mac, hmac.new(self.key, data, hashlib.sha256).hexdigest().encode()):
                return None
        try:
            body = json.loads(data)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("cluster") != self.cluster or not isinstance(body.get("from"), str):
            return None
        return body

    # --- receiving: heartbeats and questions ---

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                datagram, sender = self.server.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            body = self._unpack(datagram)
            if body is None:
                continue
            if isinstance(body.get("hb"), int):  # a heartbeat: the lease its sender holds
                away = body.get("away")
                later = float(away) if isinstance(away, (int, float)) and 0 < away <= MAX_AWAY_S else 0.0
                with self.lock:
                    self.heard[body["from"]] = (self.clock() + later, body["hb"])
            elif body.get("q") == "store?" and isinstance(body.get("nonce"), str):
                self._answer(body["nonce"], sender)

    def _answer(self, nonce: str, sender: Address) -> None:
        try:
            said = self.answer()
        except Exception:  # an answer we cannot give is no answer (logged): the asker counts it as silence
            log.exception("failsafe answer failed")
            return
        with contextlib.suppress(OSError):
            self.server.sendto(self._pack({"a": said.value, "nonce": nonce}), sender)

    # --- heartbeats ---

    def silent(self, timeout_s: float) -> dict[str, int]:
        """Peers heard before whose heartbeats stopped `timeout_s` ago or more -> the lease their
        last heartbeat named."""
        now = self.clock()
        with self.lock:
            return {peer: lease for peer, (at, lease) in self.heard.items() if now - at >= timeout_s}

    def run_heartbeats(self, stopping: threading.Event, interval_s: float, timeout_s: float,
                       on_silent: Callable[[], None]) -> None:
        """The sender (a daemon thread): a heartbeat to every peer each interval, and `on_silent`
        (wake the manager) when a peer falls silent."""
        reported: set[str] = set()
        while not stopping.wait(interval_s):
            message = self._pack({"hb": self.lease()})
            for peer, address in list(self.addresses().items()):
                if peer != self.host:
                    with contextlib.suppress(OSError):  # unreachable now: it will be silent
                        self.server.sendto(message, address)
            silent = set(self.silent(timeout_s))
            if silent - reported:
                log.info("heartbeats stopped: %s", ", ".join(sorted(silent - reported)))
                on_silent()
            reported = silent

    def announce_away(self, seconds: float) -> None:
        """Tell every peer this daemon is going for a restart: not silent before `seconds` have
        passed (sent twice: a datagram may be lost)."""
        message = self._pack({"hb": self.lease(), "away": seconds})
        for _ in range(2):
            for peer, address in list(self.addresses().items()):
                if peer != self.host:
                    with contextlib.suppress(OSError):
                        self.server.sendto(message, address)

    # --- asking ---

    def ask(self, peers: Sequence[str], timeout: float, done: Callable[[Answers], None]) -> None:
        answers: dict[str, Answer] = {}
        nonce = os.urandom(8).hex()
        addresses = self.addresses()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            question = self._pack({"q": "store?", "nonce": nonce})
            for peer in peers:
                if peer in addresses:
                    with contextlib.suppress(OSError):  # unreachable now: silent
                        sock.sendto(question, addresses[peer])
            end = time.monotonic() + timeout
            while len(answers) < len(peers):
                left = end - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                try:
                    datagram = sock.recv(MAX_DATAGRAM)
                except OSError:
                    break
                body = self._unpack(datagram)
                if body is None or body.get("nonce") != nonce or body.get("from") not in peers:
                    continue
                with contextlib.suppress(ValueError):
                    said = Answer(str(body.get("a")))
                    if said is not Answer.SILENT:
                        answers[str(body["from"])] = said
        done({peer: answers.get(peer, Answer.SILENT) for peer in peers})

    def close(self) -> None:
        self.closed.set()
        self.thread.join(2 * POLL_S)
        self.server.close()
