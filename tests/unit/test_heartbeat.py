"""Heartbeats over the peer link on loopback: a peer heard is not silent, one that stopped is (and
the manager is woken once), one never heard is not, a forged or foreign heartbeat is ignored."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from haven.core.failsafe import Answer
from haven.drivers.peer_udp import Address, UdpPeerLink

from .daemon_fakes import wait_for

TIMEOUT_S = 0.15


@contextmanager
def beating(host: str, peers: dict[str, Address], wakes: list[str], key: bytes = b"k",
            cluster: str = "c1") -> Iterator[tuple[UdpPeerLink, threading.Event]]:
    link = UdpPeerLink(host, cluster, ("127.0.0.1", 0), lambda: peers, lambda: Answer.REACHES,
                       lease=lambda: int(host[1:]) * 10, key=key)
    stopping = threading.Event()
    sender = threading.Thread(target=link.run_heartbeats, args=(stopping, 0.02, TIMEOUT_S, lambda: wakes.append(host)),
                              daemon=True)
    sender.start()
    try:
        yield link, stopping
    finally:
        stopping.set()
        sender.join(2)
        link.close()


def test_a_peer_whose_heartbeats_stop_is_silent_and_wakes_the_manager_once() -> None:
    peers: dict[str, Address] = {}
    wakes: list[str] = []
    with beating("h1", peers, wakes) as (h1, _), beating("h2", peers, wakes) as (h2, h2_stopping):
        peers.update({"h1": h1.address, "h2": h2.address, "h3": ("127.0.0.1", 9)})  # h3: never heard
        wait_for(lambda: "h2" in h1.heard and "h1" in h2.heard, 2.0, "heartbeats both ways")
        assert h1.silent(TIMEOUT_S) == {} and h2.silent(TIMEOUT_S) == {}
        h2_stopping.set()  # h2's daemon stops sending
        wait_for(lambda: h1.silent(TIMEOUT_S) == {"h2": 20}, 2.0, "h2 (under its lease 20) silent for h1")
        time.sleep(0.1)
        assert wakes == ["h1"]  # once, when it fell silent; h3, never heard, is not silent


def test_heartbeats_without_the_key_or_of_another_cluster_are_ignored() -> None:
    peers: dict[str, Address] = {}
    wakes: list[str] = []
    with beating("h1", peers, wakes) as (h1, _), beating("x1", peers, wakes, key=b"guess") as (x1, _), \
            beating("x2", peers, wakes, cluster="c2") as (x2, _), beating("h2", peers, wakes) as (h2, _):
        peers.update({"h1": h1.address, "x1": x1.address, "x2": x2.address, "h2": h2.address})
        wait_for(lambda: "h2" in h1.heard, 2.0, "the good heartbeat")
        time.sleep(0.1)
        assert set(h1.heard) == {"h2"}


def test_a_daemon_going_for_a_restart_is_not_silent_while_it_said_it_would_be_away() -> None:
    peers: dict[str, Address] = {}
    wakes: list[str] = []
    with beating("h1", peers, wakes) as (h1, _), beating("h2", peers, wakes) as (h2, h2_stopping):
        peers.update({"h1": h1.address, "h2": h2.address})
        wait_for(lambda: "h2" in h1.heard, 2.0, "h2 heard")
        h2_stopping.set()
        h2.announce_away(1.0)  # the restart's handover
        time.sleep(3 * TIMEOUT_S)
        assert h1.silent(TIMEOUT_S) == {}, "counted silent during the announced restart"
        wait_for(lambda: h1.silent(TIMEOUT_S) == {"h2": 20}, 3.0, "silent once the absence ran out")
