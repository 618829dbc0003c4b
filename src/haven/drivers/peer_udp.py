"""UdpPeerLink: the failsafe's question over the management network (ports.peers, core.failsafe).

One datagram each way, JSON: a question {"q": "store?", "cluster", "from", "nonce"} and an answer
{"a": "reaches"|"cannot", "cluster", "from", "nonce"}. A peer answers from its keeper's record
(`LeaseKeeper.answer`) on a thread of its own; a daemon that is stopped or hung answers nothing,
which is what the failsafe wants (no answer ends it). With a `key` (the same on every host),
every datagram carries an HMAC-SHA256 of its body and a datagram whose HMAC does not match is
dropped: a forged "cannot" would keep a host's VMs running while the store is up.

`ask` blocks its caller for at most the round's timeout (the renew thread: a round is 0.1 s).
Not wired into the daemon yet: the node config must give each host's management address and port.
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
POLL_S = 0.2


class UdpPeerLink:
    def __init__(self, host: str, cluster: str, bind: Address, addresses: Callable[[], Mapping[str, Address]],
                 answer: Callable[[], Answer], key: bytes | None = None) -> None:
        self.host = host
        self.cluster = cluster
        self.addresses = addresses  # peer host -> where its link listens (from the host specs)
        self.answer = answer
        self.key = key
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
        data = json.dumps(body, sort_keys=True).encode()
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
        if not isinstance(body, dict) or body.get("cluster") != self.cluster:
            return None
        return body

    # --- answering ---

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                datagram, sender = self.server.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            body = self._unpack(datagram)
            if body is None or body.get("q") != "store?" or not isinstance(body.get("nonce"), str):
                continue
            try:
                said = self.answer()
            except Exception:  # an answer we cannot give is no answer (logged): the asker counts it as silence
                log.exception("failsafe answer failed")
                continue
            reply = {"a": said.value, "cluster": self.cluster, "from": self.host, "nonce": body["nonce"]}
            with contextlib.suppress(OSError):
                self.server.sendto(self._pack(reply), sender)

    # --- asking ---

    def ask(self, peers: Sequence[str], timeout: float, done: Callable[[Answers], None]) -> None:
        answers: dict[str, Answer] = {}
        nonce = os.urandom(8).hex()
        addresses = self.addresses()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            question = self._pack({"q": "store?", "cluster": self.cluster, "from": self.host, "nonce": nonce})
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
