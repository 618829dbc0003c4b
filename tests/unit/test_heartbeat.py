"""Direct heartbeats over UDP on loopback: a peer heard is not silent, one that stopped is (and
the manager is woken once), one never heard is not, another cluster's datagrams are ignored."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from haven.drivers.heartbeat import Address, Heartbeats

from .daemon_fakes import wait_for


@contextmanager
def running(host: str, peers: dict[str, Address], wakes: list[str]) -> Iterator[tuple[Heartbeats, threading.Event]]:
    beats = Heartbeats(host, "c1", ("127.0.0.1", 0), lambda: peers, lambda: int(host[1:]) * 10, interval_s=0.02,
                       timeout_s=0.15, on_silent=lambda: wakes.append(host))
    stopping = threading.Event()
    sender = threading.Thread(target=beats.run, args=(stopping,), daemon=True)
    sender.start()
    try:
        yield beats, stopping
    finally:
        stopping.set()
        sender.join(2)
        beats.close()


def test_a_peer_whose_heartbeats_stop_is_silent_and_wakes_the_manager_once() -> None:
    peers: dict[str, Address] = {}
    wakes: list[str] = []
    with running("h1", peers, wakes) as (h1, _), running("h2", peers, wakes) as (h2, h2_stopping):
        peers.update({"h1": h1.address, "h2": h2.address, "h3": ("127.0.0.1", 9)})  # h3: never heard
        wait_for(lambda: "h2" in h1.heard and "h1" in h2.heard, 2.0, "heartbeats both ways")
        assert h1.silent() == {} and h2.silent() == {}
        h2_stopping.set()  # h2's daemon stops sending
        wait_for(lambda: h1.silent() == {"h2": 20}, 2.0, "h2 (under its lease 20) silent for h1")
        time.sleep(0.1)
        assert wakes == ["h1"]  # once, when it fell silent; h3, never heard, is not silent


def test_datagrams_of_another_cluster_or_garbage_are_ignored() -> None:
    wakes: list[str] = []
    with running("h1", {}, wakes) as (h1, _):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(json.dumps({"hb": "x1", "cluster": "other", "lease": 1}).encode(), h1.address)
            sock.sendto(b"\xff not json", h1.address)
            sock.sendto(json.dumps({"hb": "x3", "cluster": "c1"}).encode(), h1.address)  # no lease
            sock.sendto(json.dumps({"hb": "x2", "cluster": "c1", "lease": 7}).encode(), h1.address)
        wait_for(lambda: "x2" in h1.heard, 2.0, "the good heartbeat")
        assert "x1" not in h1.heard and "x3" not in h1.heard
