"""The failsafe's asking side (core.failsafe): on a failed renewal, ask every peer, one round at a time.

The keeper calls `ask` from a failed renewal (the simulator's renew event, where a call to an
unreachable store fails at once); the daemon also asks from `run`, every round's timeout while a
renewal is overdue (a real store client may take its whole deadline to fail). The answers come
back through `PeerLink` on whatever thread it uses and go to `LeaseKeeper.failsafe_round`, which
moves the deadline. `on_change` then tells the runtime that
the deadline moved, possibly back (the daemon wakes its fence thread, the simulator its deadline
timer): a round that ends the failsafe may make the self-fence due at once.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Collection

from haven.core import failsafe
from haven.ports.peers import Answers, PeerLink
from haven.ports.store import Lease
from haven.runtime.lease import LeaseKeeper

# A round's answers must be back within this: on one management network a question and its answer
# take well under a millisecond; the retry interval of renewals (0.1 s) bounds it so that rounds
# do not pile up, and Settings' check for failsafe counts it.
ROUND_TIMEOUT_S = 0.1


class Failsafe:
    def __init__(self, keeper: LeaseKeeper, link: PeerLink, peers: Callable[[], Collection[str]],
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.keeper = keeper
        self.link = link
        self.peers = peers  # the hosts in the host specs this host last read (its own name may be there)
        self.on_change = on_change
        self._lock = threading.Lock()
        self._asking = False

    def ask(self, lease: Lease) -> None:
        """A renewal of `lease` failed: ask every peer, unless a round is out already."""
        keeper = self.keeper
        if not keeper.settings.failsafe:
            return
        with self._lock:
            if self._asking:
                return
            self._asking = True
        peers = sorted(set(self.peers()) - {keeper.host.name})
        asked_at = keeper.clock.now()
        if not peers:
            self._answered(lease, asked_at, peers, {})
            return
        self.link.ask(peers, ROUND_TIMEOUT_S, lambda answers: self._answered(lease, asked_at, peers, answers))

    def _answered(self, lease: Lease, asked_at: float, peers: list[str], answers: Answers) -> None:
        with self._lock:
            self._asking = False
        confirmed = failsafe.round_confirms(peers, answers)
        why = (f"{', '.join(peers)} cannot reach the store either" if confirmed
               else failsafe.refusal(peers, answers))
        self.keeper.failsafe_round(lease, asked_at, confirmed, why)
        self.on_change()

    def run(self, stopping: threading.Event) -> None:
        """The daemon's failsafe thread: ask each round's length while this host's renewal is overdue."""
        while not stopping.wait(ROUND_TIMEOUT_S):
            lease = self.keeper.failsafe_due()
            if lease is not None:
                self.ask(lease)
