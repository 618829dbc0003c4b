"""core.failsafe: the pure rules, and the property they exist for (a manager never recovers a host
that still runs its VMs under an extension its own host's answers gave)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from haven.core import failsafe
from haven.core.events import EventKind
from haven.core.failsafe import Answer, StoreContact
from haven.core.manager import decide
from haven.model.spec import Settings, VmSpec
from haven.model.state import HostState, Placement, VmState

from .helpers import host, view

ON = Settings(failsafe=True, failsafe_skew_s=0.0)
A = ON.self_fence_after_s  # 1.5
X = failsafe.cut_off_after(ON)  # 0.75


def test_a_host_says_cannot_only_once_its_last_round_trip_is_older_than_x():
    assert failsafe.answer(10.0, 10.0 - X, ON) is Answer.REACHES
    assert failsafe.answer(10.0, 10.0 - X - 1e-9, ON) is Answer.CANNOT
    assert StoreContact().answer(0.0, ON) is Answer.CANNOT  # no round trip yet


def test_a_round_confirms_only_when_every_peer_says_cannot():
    assert failsafe.round_confirms(["h2", "h3"], {"h2": Answer.CANNOT, "h3": Answer.CANNOT})
    assert not failsafe.round_confirms(["h2", "h3"], {"h2": Answer.CANNOT, "h3": Answer.REACHES})
    assert not failsafe.round_confirms(["h2", "h3"], {"h2": Answer.CANNOT, "h3": Answer.SILENT})
    assert not failsafe.round_confirms(["h2", "h3"], {"h2": Answer.CANNOT})  # missing = silent
    assert not failsafe.round_confirms([], {})  # nobody to vouch
    assert failsafe.refusal(["h2", "h3", "h4"], {"h2": Answer.REACHES, "h3": Answer.CANNOT}) == (
        "h2 reaches the store; no answer from h4")


def test_an_extension_counts_from_the_ask_and_a_late_round_changes_nothing():
    assert failsafe.extended_deadline(11.5, now=11.0, asked_at=10.9, settings=ON) == 10.9 + A
    assert failsafe.extended_deadline(11.5, now=11.4, asked_at=9.0, settings=ON) == 11.5  # never back
    assert failsafe.extended_deadline(11.5, now=11.5, asked_at=11.4, settings=ON) == 11.5  # too late


@given(st.floats(0, 100), st.floats(0, 100), st.floats(0, 100), st.floats(0, 100))
def test_an_extension_never_goes_back_nor_past_the_ask_plus_a(deadline, now, asked, _):
    out = failsafe.extended_deadline(deadline, now, asked, ON)
    assert out >= deadline
    assert out == deadline or out == asked + A


@given(st.lists(st.floats(0, 50, allow_nan=False), max_size=30).map(sorted))
def test_regained_is_the_end_of_the_last_round_trip_after_a_gap_longer_than_x(times):
    contact = StoreContact()
    for t in times:
        contact = contact.succeeded(t, ON)
    previous = [-math.inf, *times]
    gaps = [t for before, t in zip(previous, times, strict=False) if t - before > X]
    assert contact.regained_at == (gaps[-1] if gaps else -math.inf)
    assert contact.last_ok == (times[-1] if times else -math.inf)


def test_the_manager_holds_while_its_host_is_cut_off_and_for_a_plus_skew_after():
    contact = StoreContact().succeeded(10.0, ON)  # first contact: after an infinite gap
    assert failsafe.regained_for_manager(contact, 10.5, ON) == 10.0
    assert failsafe.regained_for_manager(contact, 10.0 + X + 0.01, ON) == math.inf  # cut off now
    skewed = ON.model_copy(update={"failsafe_skew_s": 0.5})
    assert failsafe.hold_until(10.0, skewed) == 10.0 + A + 0.5
    assert failsafe.holds(10.0, 11.9, skewed) and not failsafe.holds(10.0, 12.0, skewed)
    assert not failsafe.holds(10.0, 11.5, ON)
    assert not failsafe.holds(math.inf, 99.0, Settings())  # failsafe off: never


# --- the property: P's extensions, all vouched for by M, end before M's manager recovers P ---

events = st.lists(st.floats(0, 10, allow_nan=False, allow_infinity=False), max_size=12).map(sorted)
rounds = st.lists(st.tuples(st.floats(0, 10), st.floats(0, 0.3), st.floats(0, 0.3)), max_size=30)


@settings(max_examples=1000)
@given(contacts=events, asks=rounds, last_renewal=st.floats(0, 4), decided=st.floats(2, 12))
def test_no_recovery_while_a_peer_may_still_run_on_this_hosts_word(contacts, asks, last_renewal, decided):
    """M's round trips end at `contacts`; P's last renewal was sent at `last_renewal`, and P asks
    at t, M answers at t + d1 (by the rule, from its record then), the round is back at + d2.
    Whenever M's manager would recover P at `decided` (P's lease gone at the store: at least a
    TTL after its last renewal, plus the grace), P's deadline is already over."""
    def contact_at(t: float) -> StoreContact:
        record = StoreContact()
        for end in contacts:
            if end <= t:
                record = record.succeeded(end, ON)
        return record

    deadline = last_renewal + A
    for asked, d1, d2 in sorted(asks, key=lambda r: r[0] + r[1] + r[2]):  # in the order they come back
        said = contact_at(asked + d1).answer(asked + d1, ON)
        if said is Answer.CANNOT:  # the other peers agree: only M's word matters here
            deadline = failsafe.extended_deadline(deadline, asked + d1 + d2, asked, ON)
    if decided < last_renewal + ON.lease_ttl_s + ON.fence_grace_s:
        return  # the lease cannot be gone and graced yet
    regained = failsafe.regained_for_manager(contact_at(decided), decided, ON)
    if not failsafe.holds(regained, decided, ON):
        assert deadline <= decided


def test_the_property_needs_the_hold():
    """M is cut off from 0 to 5 and vouches for P all along; P's last round (4.9) runs until 6.4.
    M's manager sees P's lease gone at 5.1: only the hold (until 6.5) keeps it from recovering."""
    record = StoreContact().succeeded(0.0, ON)
    deadline = 0.0 + A
    for asked in (1.0, 2.0, 3.0, 4.0, 4.9):
        assert record.answer(asked, ON) is Answer.CANNOT
        deadline = failsafe.extended_deadline(deadline, asked + 0.01, asked, ON)
    assert deadline == pytest.approx(6.4)
    back = record.succeeded(5.0, ON)
    regained = failsafe.regained_for_manager(back, 5.1, ON)
    assert regained == 5.0 and failsafe.holds(regained, 5.1, ON)
    assert failsafe.hold_until(regained, ON) >= deadline


def test_a_manager_whose_host_is_cut_off_now_holds_whatever_it_regained_before():
    """M's last contact was at 0 and it vouches for P until 4; its manager reads the store (its
    own call) at 4.1 before its keeper's next renewal: still cut off, so it holds."""
    record = StoreContact().succeeded(0.0, ON)
    deadline = 0.0 + A
    for asked in (1.0, 2.0, 3.0, 4.0):
        deadline = failsafe.extended_deadline(deadline, asked + 0.01, asked, ON)
    assert failsafe.regained_for_manager(record, 4.1, ON) == math.inf
    assert failsafe.holds(math.inf, 4.1, ON) and deadline > 4.1


# --- Settings ---

def test_failsafe_is_off_by_default_and_checks_its_timing():
    assert Settings().failsafe is False and Settings().failsafe_skew_s == 0.5
    with pytest.raises(ValidationError, match="failsafe needs lease_ttl_s - self_fence_margin_s"):
        Settings(failsafe=True, lease_ttl_s=1.0, self_fence_margin_s=0.5)
    with pytest.raises(ValidationError):
        Settings(failsafe_skew_s=-1)
    with pytest.raises(ValidationError):
        Settings(failsafe_skew_s=math.inf)


# --- the manager's hold (core.manager) ---

def _lost_web(settings: Settings, regained: float, now: float):
    vms = [VmSpec(name="web", priority=3)]
    hosts = [host("h1"), host("h2"), host("h3")]
    recovering = Placement(vm="web", state=VmState.RECOVERING, host="h1", generation=1)
    lost = {"h1": HostState.LOST, "h2": HostState.ONLINE, "h3": HostState.ONLINE}
    v = view(hosts, vms, {"web": recovering}, alive={"h2", "h3"}, records=lost, since=10.0, settings=settings)
    return decide(replace(v, store_regained_at=regained), now=now)


def test_a_lost_host_waits_for_the_hold_after_the_grace_and_says_so_once():
    on = Settings(failsafe=True)
    held = _lost_web(on, regained=10.0, now=11.0)  # grace over, hold until 12.0
    assert "web" not in held.placements
    assert held.host_records["h1"].state is HostState.LOST and held.host_records["h1"].since == 10.0
    [event] = held.events
    assert event.kind is EventKind.WAITING and event.name == "h1" and "failsafe" in event.reason
    assert _lost_web(on, regained=math.inf, now=99.0).placements == {}  # cut off now: hold on
    done = _lost_web(on, regained=10.0, now=12.0)
    assert done.placements["web"].state is VmState.STARTING


def test_without_failsafe_or_without_a_gap_nothing_changes():
    assert _lost_web(Settings(), regained=math.inf, now=10.3).placements["web"].state is VmState.STARTING
    on = Settings(failsafe=True)
    assert _lost_web(on, regained=-math.inf, now=10.3).placements["web"].state is VmState.STARTING
