"""Direct heartbeats between hosts over the management network (UDP), for fast power fencing.

Every daemon sends a small datagram to every peer each `interval_s`, naming the lease it holds,
and records when it last heard each peer. The leading manager asks `silent()`: the peers it heard
before but not for `timeout_s`, with the lease their last heartbeat named; it acts only on a host
still up under that lease (a host back under a new lease is not silent for its old heartbeats).
A heartbeat only says "this host's daemon runs and its management network works": it never lets
anything run (that is the lease's job), and silence is acted on only through a fence device's
confirmed power-off (`ManagerLoop._fence_silent_hosts`). So a lost datagram costs at most
a needless power-off of a host that has a device, and a forged one only delays a fast fence until
the lease runs out: neither touches the safety argument (docs/DESIGN.md section 3).

A peer never heard is not silent: a manager that starts after a host died, or a host whose
heartbeats a firewall drops, falls back to lease expiry rather than a power-off on first sight.
"""
from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("haven.heartbeat")
Address = tuple[str, int]
MAX_DATAGRAM = 512
POLL_S = 0.2  # the receiver's wait between checks for `close`


class Heartbeats:
    def __init__(self, host: str, cluster: str, bind: Address, peers: Callable[[], Mapping[str, Address]],
                 lease: Callable[[], int], interval_s: float, timeout_s: float,
                 on_silent: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.cluster = cluster
        self.lease = lease  # this host's lease now (0: none)
        self.peers = peers  # peer host -> where its heartbeats listen (from the host specs)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.on_silent = on_silent  # a peer fell silent: wake the manager
        self.clock = clock
        self.lock = threading.Lock()
        self.heard: dict[str, tuple[float, int]] = {}  # peer -> when its last heartbeat came (this host's
        # clock), and the lease it named
        self.reported: set[str] = set()  # silent peers the last check already reported
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.sock.settimeout(POLL_S)
        self.closed = threading.Event()
        self.receiver = threading.Thread(target=self._receive, name="heartbeat-in", daemon=True)
        self.receiver.start()

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def silent(self) -> dict[str, int]:
        """Peers heard before whose heartbeats stopped `timeout_s` ago or more -> the lease their
        last heartbeat named."""
        now = self.clock()
        with self.lock:
            return {peer: lease for peer, (at, lease) in self.heard.items() if now - at >= self.timeout_s}

    def run(self, stopping: threading.Event) -> None:
        """The sender (a daemon thread): a heartbeat to every peer each interval, and a wake-up
        for the manager when a peer falls silent."""
        while not stopping.wait(self.interval_s):
            message = json.dumps({"hb": self.host, "cluster": self.cluster, "lease": self.lease()}).encode()
            for peer, address in list(self.peers().items()):
                if peer != self.host:
                    with contextlib.suppress(OSError):  # unreachable now: it will hear of it
                        self.sock.sendto(message, address)
            silent = set(self.silent())
            if silent - self.reported:
                log.info("heartbeats stopped: %s", ", ".join(sorted(silent - self.reported)))
                self.on_silent()
            self.reported = silent

    def _receive(self) -> None:
        while not self.closed.is_set():
            try:
                datagram = self.sock.recv(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            try:
                body = json.loads(datagram)
            except ValueError:
                continue
            if (isinstance(body, dict) and body.get("cluster") == self.cluster and isinstance(body.get("hb"), str)
                    and isinstance(body.get("lease"), int)):
                with self.lock:
                    self.heard[body["hb"]] = (self.clock(), body["lease"])

    def close(self) -> None:
        self.closed.set()
        self.receiver.join(2 * POLL_S)
        self.sock.close()
