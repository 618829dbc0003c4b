"""The management network between hosts, for the failsafe's one question (core.failsafe)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from haven.core.failsafe import Answer

Answers = Mapping[str, Answer]  # peer host -> its answer


class PeerLink(Protocol):
    """Asks peers "can you reach the store?" and serves this host's own answer to theirs.

    An implementation answers a peer's question with the host's current `LeaseKeeper.answer()`
    (its own record of store round trips; say nothing while the daemon cannot), and asks without
    blocking its caller for long: the renew thread calls `ask`."""

    def ask(self, peers: Sequence[str], timeout: float, done: Callable[[Answers], None]) -> None:
        """Ask each of `peers` once. Call `done` exactly once, with an answer for every peer
        (`Answer.SILENT` for one that did not answer within `timeout` seconds of the ask), as
        soon as all answered or the timeout ran out; from any thread."""
