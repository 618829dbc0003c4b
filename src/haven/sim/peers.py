"""SimPeerLink: the failsafe's question over the simulated management network (ports.peers)."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from haven.core.failsafe import Answer
from haven.ports.peers import Answers

if TYPE_CHECKING:
    from haven.sim.cluster import SimHost

ONE_WAY_S = 0.002  # a datagram across the management network (virtual seconds)


class SimPeerLink:
    """A question reaches a peer one way later if the two hosts are connected then; the peer
    answers from its own keeper if it is powered and its daemon is not hung; the answer arrives
    one way later if they are still connected and the asker's daemon runs."""

    def __init__(self, host: SimHost) -> None:
        self.host = host

    def _link_up(self, peer: str) -> bool:
        return self.host.cluster.world.network.hosts_connected(self.host.name, peer)

    def ask(self, peers: Sequence[str], timeout: float, done: Callable[[Answers], None]) -> None:
        cluster, me = self.host.cluster, self.host
        loop = cluster.loop
        answers: dict[str, Answer] = {}
        over = False

        def finish() -> None:
            nonlocal over
            if not over:
                over = True
                timer.cancel()
                done({peer: answers.get(peer, Answer.SILENT) for peer in peers})

        def arrive(peer: str, said: Answer) -> None:
            if over or not self._link_up(peer) or not me.powered or me.hung:
                return
            answers[peer] = said
            if len(answers) == len(peers):
                finish()

        def receive(peer: str) -> None:
            other = cluster.hosts.get(peer)
            if other is None or not other.powered or other.hung or other.keeper is None or not self._link_up(peer):
                return
            said = other.keeper.answer()
            loop.after(ONE_WAY_S, lambda: arrive(peer, said))

        timer = loop.after(me.clock.world_delay(timeout), finish)
        for peer in peers:
            loop.after(ONE_WAY_S, functools.partial(receive, peer))
