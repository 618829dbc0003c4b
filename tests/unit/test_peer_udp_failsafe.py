"""drivers.peer_udp on loopback: questions, answers, silence, and forged answers dropped."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from haven.core.failsafe import Answer
from haven.drivers.peer_udp import UdpPeerLink
from haven.ports.peers import Answers

LOOPBACK = ("127.0.0.1", 0)


@pytest.fixture
def links() -> Iterator[dict[str, UdpPeerLink]]:
    said = {"h1": Answer.CANNOT, "h2": Answer.CANNOT, "h3": Answer.REACHES}
    made: dict[str, UdpPeerLink] = {}
    for name in said:
        made[name] = UdpPeerLink(name, "c1", LOOPBACK, lambda: {n: link.address for n, link in made.items()},
                                 lambda name=name: said[name], key=b"secret")
    yield made
    for link in made.values():
        link.close()


def _ask(link: UdpPeerLink, peers: list[str], timeout: float = 0.5) -> Answers:
    got: list[Answers] = []
    link.ask(peers, timeout, got.append)
    assert len(got) == 1
    return got[0]


def test_each_peer_answers_from_its_own_record(links):
    assert _ask(links["h1"], ["h2", "h3"]) == {"h2": Answer.CANNOT, "h3": Answer.REACHES}


def test_a_closed_or_unknown_peer_is_silent(links):
    links["h2"].close()
    assert _ask(links["h1"], ["h2", "h9"], timeout=0.2) == {"h2": Answer.SILENT, "h9": Answer.SILENT}


def test_an_answer_without_the_key_or_for_another_cluster_is_dropped(links):
    # A forger that knows the format but not the key, and a link of another cluster.
    stranger = UdpPeerLink("h2", "c1", LOOPBACK, dict, lambda: Answer.CANNOT, key=b"guess")
    other_cluster = UdpPeerLink("h3", "c2", LOOPBACK, dict, lambda: Answer.CANNOT, key=b"secret")
    try:
        asker = links["h1"]
        asker.addresses = lambda: {"h2": stranger.address, "h3": other_cluster.address}
        assert _ask(asker, ["h2", "h3"], timeout=0.2) == {"h2": Answer.SILENT, "h3": Answer.SILENT}
    finally:
        stranger.close()
        other_cluster.close()
