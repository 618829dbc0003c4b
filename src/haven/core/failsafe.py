"""Failsafe: a host keeps its VMs while only the store is down (`Settings.failsafe`, off by default).

Pure rules, no I/O and no clock: every time is passed in, on the clock of the host that applies
the rule (`A` below is `Settings.self_fence_after_s` = lease TTL - self-fence margin).

Agent side (a host whose renewals fail). It asks every peer (every other host in the host specs
it last read) "can you reach the store?". A round asked at host time `t` in which every peer
answers "I cannot reach it either" extends its self-fence deadline to `t + A`: from the ask,
never from the answers' arrival (`extended_deadline`). A round that comes back after the
deadline changes nothing: the VMs are due to die, a late word cannot revive the right to run
them. A peer that answers "I reach it", or does not answer in time, ends the failsafe: that
round extends nothing, so the host self-fences at the deadline in force (its normal one, or what
earlier complete rounds made it, at most `A` after their ask) unless a later round confirms in
time or a renewal succeeds. It does not drop back to the normal deadline: the argument below
needs nothing from the answers that did not confirm, and a host whose store returned a moment
before its peers' (a round out while they renewed) would kill its VMs for nothing. A failed round
early in an outage (a peer renewed a moment ago) is followed by rounds that confirm once that
peer's last contact is X old. A host with no peer to ask gets no extension.

Answering. A host answers "I cannot reach the store" only while its last successful store round
trip ended more than `X = cut_off_after(settings)` ago (`answer`), else "I reach it". A host
that is off or hung says nothing.

Manager side. `regained` is the end of the first successful store round trip of the manager's
host after a gap longer than `X` (`StoreContact.succeeded`). A lost host is not fenced before
`regained + A + failsafe_skew_s` on the manager's clock (`hold_until`), and not at all while the
manager's host is itself in such a gap (`regained_for_manager` gives +inf then). A power fence
confirmation ends the wait (the host is off); a manager whose host had the store throughout has
`regained` = -inf and waits no longer than without the failsafe.

Why that is enough. Say the manager on host M recovers lost host P's VMs at time r (grace over,
no hold), and P still runs them at some time >= r. P's normal deadline ends before its lease can
expire at the store, so before r (as without the failsafe). Past it, P runs only under an
extension t + A from a complete round asked at t and back before the deadline it replaced had
passed; M is one of P's peers, so the round holds M's "cannot", given at some a >= t. Follow that
chain back from the time P still ran: a round whose answer from M came at or after r was back
after r, so the deadline before it was still open after r; the chain cannot reach P's normal
deadline that way, so it holds a round with a < r and t + A > r. M said "cannot" at a: its last
contact ended more than X before a. At r, M was not in such a gap (it would hold with +inf), so
a contact ended in (a, r] after a gap longer than X: `regained` > a >= t. Then r >= regained + A
+ skew > t + A: a contradiction. The answer and `regained` come from one record of round trips,
so a renewal sent before an answer but ended after it counts after the answer.
Clock rates: safe while A / rate_P <= (A + failsafe_skew_s) / rate_M (defaults: rates within
about 14 % of each other).

Not covered: a host that registers for the first time while P is cut from the store is not in
P's peer list, so nothing makes its manager hold; add hosts while the store is healthy.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from haven.model.spec import Settings


class Answer(StrEnum):
    REACHES = "reaches"  # "I reach the store"
    CANNOT = "cannot"  # "I cannot reach the store either"
    SILENT = "silent"  # no answer within the round's timeout (off, hung, cut off, lost)


def cut_off_after(settings: Settings) -> float:
    """X: a host counts as cut off from the store once its last good round trip is older than this.

    1.5 renew intervals. Above one interval plus a round trip, so a healthy host renewing every
    interval never says "cannot" (0.25 s of slack at the defaults for a slow round trip; a false
    "cannot" is safe anyway, it only makes its manager hold). Not 2 intervals: in a full outage
    a peer's last renewal may end up to an interval after the asking host's last one, and the
    asker needs a whole round of "cannot" before its own deadline (A = 3 intervals at the
    defaults): 1 + 1.5 intervals + asking every renewal retry (0.1 s) + the round fit in 1.5 s,
    1 + 2 intervals + the round do not."""
    return 1.5 * settings.renew_interval


def answer(now: float, last_contact: float, settings: Settings) -> Answer:
    return Answer.CANNOT if now - last_contact > cut_off_after(settings) else Answer.REACHES


def round_confirms(peers: Collection[str], answers: Mapping[str, Answer]) -> bool:
    """Every peer (at least one) said "cannot reach"."""
    return bool(peers) and all(answers.get(peer) is Answer.CANNOT for peer in peers)


def refusal(peers: Collection[str], answers: Mapping[str, Answer]) -> str:
    """Why a round does not confirm, in words for the log ("" if it does)."""
    if not peers:
        return "no peer to ask"
    reaching = sorted(p for p in peers if answers.get(p) is Answer.REACHES)
    silent = sorted(p for p in peers if answers.get(p, Answer.SILENT) is Answer.SILENT)
    parts = ([f"{', '.join(reaching)} reach{'es' if len(reaching) == 1 else ''} the store"] if reaching else []) + (
        [f"no answer from {', '.join(silent)}"] if silent else [])
    return "; ".join(parts)


def extended_deadline(deadline: float, now: float, asked_at: float, settings: Settings) -> float:
    """The self-fence deadline after a complete round of "cannot" asked at `asked_at`, back at
    `now`. Too late (the deadline passed) changes nothing: the self-fence owns the host."""
    if now >= deadline:
        return deadline
    return max(deadline, asked_at + settings.self_fence_after_s)


@dataclass(frozen=True, slots=True)
class StoreContact:
    """A host's record of its store round trips (its clock): what it answers and what its
    manager holds for come from this one record."""

    last_ok: float = -math.inf  # when the last successful round trip ended
    regained_at: float = -math.inf  # the end of the last one after a gap longer than X

    def succeeded(self, now: float, settings: Settings) -> StoreContact:
        gap = now - self.last_ok > cut_off_after(settings)
        return StoreContact(now, now if gap else self.regained_at)

    def answer(self, now: float, settings: Settings) -> Answer:
        return answer(now, self.last_ok, settings)


def regained_for_manager(contact: StoreContact, now: float, settings: Settings) -> float:
    """What the manager's view carries: +inf while this host would answer "cannot" (a gap not
    over yet: its end is not known), else the end of the last gap."""
    return math.inf if contact.answer(now, settings) is Answer.CANNOT else contact.regained_at


def hold_until(regained_at: float, settings: Settings) -> float:
    """The manager's clock: no lost host is fenced on lease expiry before this."""
    return regained_at + settings.self_fence_after_s + settings.failsafe_skew_s


def holds(regained_at: float, now: float, settings: Settings) -> bool:
    return settings.failsafe and now < hold_until(regained_at, settings)
