"""The pure service decisions: the manager's (`decide_services`) and a member agent's (`plan_member`).

Deterministic cases first (each failure kind, the anti-flap rule, all members down, a clean move,
an isolated host), then a Hypothesis state machine: a small world of hosts, leases, QEMUs and
guests driven through both decisions in any order, checking after every step that the data disk
(and the IP, and the application) is held by at most one running QEMU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from haven.core.service import (
    HostLiveness,
    ServiceView,
    decide_services,
    move_refusal,
    why_not_released,
)
from haven.core.service_agent import (
    Attach,
    Boot,
    Detach,
    DropIp,
    Kill,
    MemberInput,
    MemberPlan,
    Mount,
    RaiseIp,
    RunStart,
    RunStop,
    Step,
    Unmount,
    plan_member,
)
from haven.core.service_events import ServiceEventKind
from haven.model.service import (
    FenceOrder,
    GuestHealth,
    MemberExit,
    MemberFacts,
    ServicePhase,
    ServiceRequest,
    ServiceSpec,
    ServiceState,
    ordered_kills,
)
from haven.model.spec import DesiredState, Disk
from haven.model.state import HostState

MEMBERS = ("db1", "db2", "db3")
HOST_OF = {"db1": "h1", "db2": "h2", "db3": "h3"}
SPEC = ServiceSpec(name="db", members=MEMBERS, start=("db", "start"), stop=("db", "stop"), check=("db", "check"),
                   floating_ip="10.0.9.10/24", data_disk=Disk(pool="shared"), failure_threshold=3,
                   start_timeout_s=20.0, stop_timeout_s=10.0, failed_hold_s=60.0)
NOW = 100.0
LEASES = {"h1": 11, "h2": 12, "h3": 13}


def hosts(**states: HostState) -> dict[str, HostLiveness]:
    """Every host online under its lease, except those given (lost, fenced: no lease)."""
    out = {}
    for name, lease in LEASES.items():
        state = states.get(name, HostState.ONLINE)
        out[name] = HostLiveness(state, lease if state in (HostState.ONLINE, HostState.MAINTENANCE) else None)
    return out


def facts(member: str, generation: int, boot: int = 1, **flags: object) -> MemberFacts:
    """A current report: a running QEMU whose guest answers, holding what `flags` say."""
    base: dict[str, object] = {"qemu": True, "boot": boot, "guest": GuestHealth.ANSWERING}
    return MemberFacts.model_validate({"service": "db", "member": member, "host": HOST_OF[member],
                                       "lease": LEASES[HOST_OF[member]], "generation": generation,
                                       **base, **flags})


def holding(member: str, generation: int, **flags: object) -> MemberFacts:
    return facts(member, generation, **{"disk": True, "mounted": True, "ip": True, "started": True, **flags})


def gone(member: str, generation: int) -> MemberFacts:
    return facts(member, generation, qemu=False, boot=0)


def running_on(member: str, generation: int, **extra: object) -> ServiceState:
    return ServiceState(service="db", phase=ServicePhase.RUNNING, active=member, generation=generation,
                        **extra)  # type: ignore[arg-type]


def decide(state: ServiceState | None, reports: list[MemberFacts], now: float = NOW,
           spec: ServiceSpec = SPEC, request: ServiceRequest | None = None, **host_states: HostState):
    view = ServiceView(spec, state, {f.member: f for f in reports}, request)
    return decide_services({"db": view}, hosts(**host_states), HOST_OF, now)


def plan(member: str, state: ServiceState | None, local: MemberFacts, reports: list[MemberFacts],
         spec: ServiceSpec = SPEC, lease_valid: bool = True, **host_states: HostState) -> MemberPlan:
    return plan_member(MemberInput(spec, state, member, local, {f.member: f for f in reports},
                                   hosts(**host_states), HOST_OF, lease_valid))


def kinds(steps: tuple[Step, ...]) -> list[str]:
    return [type(s).__name__ for s in steps]


# --- the manager ---

def test_a_stopped_service_starts_on_its_preferred_member():
    d = decide(None, [facts(m, 0) for m in MEMBERS])
    new = d.states["db"]
    assert (new.phase, new.active, new.generation, new.since) == (ServicePhase.STARTING, "db1", 1, NOW)
    assert [e.line() for e in d.events] == [
        "t=100.000 manager  service db: stopped -> starting to db1 (generation 1, start requested)"]


def test_it_is_running_once_the_active_member_holds_everything():
    starting = ServiceState(service="db", phase=ServicePhase.STARTING, active="db1", generation=1, since=NOW)
    partial = [holding("db1", 1, started=False), facts("db2", 1), facts("db3", 1)]
    assert decide(starting, partial).states == {}
    assert decide(starting, [holding("db1", 1), facts("db2", 1)]).states["db"].phase is ServicePhase.RUNNING
    # A report from an earlier generation proves nothing about this one.
    not_yet = decide(starting, [holding("db1", 0), facts("db2", 1), facts("db3", 1)]).states.get("db", starting)
    assert not_yet.phase is ServicePhase.STARTING


FAILURES = {
    "QEMU gone": (gone("db1", 3), {}, False),
    "guest agent silent": (holding("db1", 3, guest=GuestHealth.SILENT), {}, True),
    "check failing": (holding("db1", 3, check_failures=3), {}, True),
    "host h1 lost": (holding("db1", 3), {"h1": HostState.LOST}, False),
    "host h1 lost ": (holding("db1", 3), {"h1": HostState.FENCED}, False),  # fenced: lost to the service
}


@pytest.mark.parametrize("failure", FAILURES)
def test_every_failure_of_the_active_member_moves_the_service(failure):
    report, host_states, killed = FAILURES[failure]
    d = decide(running_on("db1", 3), [report, facts("db2", 3), facts("db3", 3)], **host_states)
    new = d.states["db"]
    assert (new.phase, new.active, new.generation) == (ServicePhase.MOVING, "db2", 4)
    assert new.exits == (MemberExit(member="db1", at=NOW, reason=f"db1: {failure.strip()}"),)
    # Killed only where its QEMU may still run and its host can do it; a lost host fences itself.
    assert new.fence == ((FenceOrder(member="db1", boot=1, reason=f"db1: {failure}"),) if killed else ())
    assert [e.message for e in d.events if e.new == "moving"] == [
        f"running -> moving to db2 (generation 4, from db1: db1: {failure.strip()})"]


def test_a_check_below_the_threshold_or_from_an_older_generation_moves_nothing():
    others = [facts("db2", 3), facts("db3", 3)]
    assert decide(running_on("db1", 3), [holding("db1", 3, check_failures=2), *others]).states == {}
    assert decide(running_on("db1", 3), [holding("db1", 2, check_failures=5), *others]).states == {}


def test_the_new_active_member_is_the_healthiest_in_preference_order():
    state = running_on("db3", 5)
    failed = gone("db3", 5)
    # db1 (preferred) is still booting, so db2.
    d = decide(state, [facts("db1", 5, guest=GuestHealth.BOOTING), facts("db2", 5), failed])
    assert d.states["db"].active == "db2"
    d = decide(state, [facts("db1", 5), facts("db2", 5), failed])
    assert d.states["db"].active == "db1"


def test_a_member_that_failed_recently_is_passed_over_unless_it_is_the_only_one():
    left_db1 = (MemberExit(member="db1", at=NOW - 30, reason="db1: check failing"),)
    state = running_on("db2", 5, exits=left_db1)
    reports = [facts("db1", 5), gone("db2", 5), facts("db3", 5)]
    assert decide(state, reports).states["db"].active == "db3"  # not back to db1 within 60 s
    assert decide(state, reports, now=NOW + 31).states["db"].active == "db1"  # the hold is over
    only = [facts("db1", 5), gone("db2", 5), gone("db3", 5)]
    assert decide(state, only).states["db"].active == "db1"  # better than down


def test_a_flapping_check_does_not_bounce_the_service():
    """db1's check fails, passes, fails... The service leaves db1 once and stays away from it."""
    spec = SPEC.model_copy(update={"members": ("db1", "db2")})
    state: ServiceState | None = running_on("db1", 1)
    active_history = []
    for i in range(20):
        now = NOW + i
        flap = 3 if i % 2 == 0 else 0  # db1's check result as it alternates
        gen = state.generation if state else 0
        db1 = (holding if state.active == "db1" else facts)("db1", gen, check_failures=flap)
        db2 = (holding if state.active == "db2" else facts)("db2", gen)
        reports = [db1, db2]
        d = decide(state, reports, now=now, spec=spec)
        state = d.states.get("db", state)
        active_history.append(state.active)
    assert active_history[0] == "db2" and set(active_history) == {"db2"}
    assert state.generation == 2


def test_a_member_ordered_killed_is_not_chosen_again_even_as_the_last_one_standing():
    # Seen in the lab: the only member's check failed; in the next round its new generation's
    # count was back to 0, it looked healthy, and it was chosen again while its kill was pending.
    down = ServiceState(service="db", phase=ServicePhase.DOWN, generation=3,
                        fence=(FenceOrder(member="db1", boot=1, reason="db1: check failing"),))
    reports = [facts("db1", 3), gone("db2", 3), gone("db3", 3)]
    still = decide(down, reports).states.get("db", down)
    assert (still.phase, still.active) == (ServicePhase.DOWN, None)  # no member that will live: still down
    rebooted = [facts("db1", 3, boot=2), gone("db2", 3), gone("db3", 3)]
    assert decide(down, rebooted).states["db"].active == "db1"  # its next boot is a member like any other


def test_all_members_down_means_down_with_the_reason_then_back_when_one_returns():
    d = decide(running_on("db1", 3), [gone("db1", 3), facts("db2", 3, guest=GuestHealth.SILENT)],
               h3=HostState.FENCED)
    down = d.states["db"]
    assert (down.phase, down.active, down.generation) == (ServicePhase.DOWN, None, 4)
    assert down.reason == "db1: QEMU gone; no healthy member (db1 QEMU gone, db2 guest agent silent, db3 host h3 lost)"
    assert [o.member for o in down.fence] == ["db2"]  # the hung standby is killed, and booted again
    still = decide(down, [gone("db1", 4), facts("db2", 4, guest=GuestHealth.BOOTING)], h3=HostState.FENCED)
    assert still.states["db"].reason == "no healthy member (db1 QEMU gone, db2 booting, db3 host h3 lost)"
    back = decide(down, [facts("db1", 4), facts("db2", 4, boot=2)], h3=HostState.FENCED).states["db"]
    # db2 rather than the preferred db1: db1 is the one that failed just now.
    assert (back.phase, back.active, back.generation) == (ServicePhase.STARTING, "db2", 5)


def test_a_member_that_does_not_release_in_time_is_killed():
    moving = ServiceState(service="db", phase=ServicePhase.MOVING, active="db2", generation=4, since=NOW)
    stuck = holding("db1", 4, started=False)  # its stop ran, the unmount hangs
    reports = [stuck, facts("db2", 4), facts("db3", 4)]
    waiting = decide(moving, reports, now=NOW + 5).states["db"]
    assert waiting.fence == () and waiting.reason == "waiting for db1: still holds the disk, the mount, the IP"
    killed = decide(moving, reports, now=NOW + 10).states["db"]
    assert killed.fence == (FenceOrder(member="db1", boot=1, reason="db1 did not release within 10 s"),)
    # Done once its QEMU is gone or another boot of it runs: the order is dropped.
    assert decide(killed, [facts("db1", 4, boot=2), facts("db2", 4)], now=NOW + 11).states["db"].fence == ()


def test_a_done_kill_order_stays_on_record_for_the_vm_layer_the_latest_per_member():
    order = FenceOrder(member="db1", boot=1, reason="db1 did not release within 10 s")
    moving = ServiceState(service="db", phase=ServicePhase.MOVING, active="db2", generation=4, since=NOW,
                          fence=(order,))
    done = decide(moving, [gone("db1", 4), facts("db2", 4), facts("db3", 4)]).states["db"]
    # Its QEMU is gone: no longer pending, but the VM layer must still see that haven ended it.
    assert (done.fence, done.killed) == ((), (order,))
    assert ordered_kills([moving]) == ordered_kills([done]) == {("db1", 1)}
    # The next order for that member, once done, replaces it; another member's stays.
    db3 = FenceOrder(member="db3", boot=4, reason="r")
    again = done.model_copy(update={"fence": (FenceOrder(member="db1", boot=2, reason="r2"),), "killed": (order, db3)})
    later = decide(again, [facts("db1", 4, boot=3), facts("db2", 4), facts("db3", 4, boot=5)]).states["db"]
    assert later.fence == () and later.killed == (db3, FenceOrder(member="db1", boot=2, reason="r2"))
    assert ordered_kills([later]) == {("db1", 2), ("db3", 4)}


def test_a_member_that_does_not_come_up_in_time_is_left():
    starting = ServiceState(service="db", phase=ServicePhase.STARTING, active="db1", generation=1, since=NOW)
    reports = [holding("db1", 1, started=False), facts("db2", 1), facts("db3", 1)]
    assert decide(starting, reports, now=NOW + 19).states == {}
    new = decide(starting, reports, now=NOW + 20).states["db"]
    assert (new.phase, new.active, new.generation) == (ServicePhase.MOVING, "db2", 2)
    assert new.fence[0].member == "db1"


def test_stop_releases_everywhere_then_stopped():
    spec = SPEC.model_copy(update={"desired": DesiredState.STOPPED})
    stopping = decide(running_on("db1", 3), [holding("db1", 3), facts("db2", 3), facts("db3", 3)], spec=spec)
    state = stopping.states["db"]
    assert (state.phase, state.active, state.generation) == (ServicePhase.STOPPING, None, 4)
    assert decide(state, [holding("db1", 4), facts("db2", 4), facts("db3", 4)], spec=spec).states["db"].reason \
        == "waiting for db1: still holds the disk, the mount, the IP, the application"
    done = decide(state, [facts("db1", 4), facts("db2", 4), facts("db3", 4)], spec=spec).states["db"]
    assert (done.phase, done.generation) == (ServicePhase.STOPPED, 4)


@pytest.mark.parametrize(("state", "target", "reports", "why"), [
    (running_on("db1", 3), "db1", [], "already on db1"),
    (running_on("db1", 3), "web", [], "web is not a member"),
    (running_on("db1", 3), "db2", [facts("db2", 3, guest=GuestHealth.BOOTING)], "db2 is booting"),
    (ServiceState(service="db", phase=ServicePhase.MOVING, active="db2", generation=4), "db3", [],
     "the service is moving, not running"),
])
def test_a_move_that_cannot_be_done_is_refused_and_said_so(state, target, reports, why):
    d = decide(state, [holding(state.active, state.generation), *reports],
               request=ServiceRequest(id="r1", target=target))
    assert d.done_requests == ["db"] and d.states["db"].request_id == "r1"
    assert d.states["db"].active == state.active
    assert any(e.message == f"move refused: {why}" for e in d.events)
    reports = {f.member: f for f in [holding(state.active, state.generation), *reports]}
    assert move_refusal(SPEC, state, reports, hosts(), HOST_OF, target, NOW) == why


MOVES = [
    (running_on("db1", 3), None, [facts("db2", 3), facts("db3", 3)], {}),
    (running_on("db1", 3), "db3", [facts("db2", 3), facts("db3", 3)], {}),
    (running_on("db1", 3), None, [facts("db2", 3, guest=GuestHealth.BOOTING), gone("db3", 3)], {}),
    (running_on("db1", 3), "db2", [facts("db2", 3)], {"h2": HostState.LOST}),
    (running_on("db1", 3), None, [facts("db2", 3), facts("db3", 3)], {"h2": HostState.FENCED, "h3": HostState.LOST}),
    # db2 is ordered killed (this boot): healthy as it looks, it is no target.
    (running_on("db1", 3, fence=(FenceOrder(member="db2", boot=1, reason="r"),)), None,
     [facts("db2", 3), gone("db3", 3)], {}),
    (running_on("db1", 3, fence=(FenceOrder(member="db2", boot=1, reason="r"),)), "db2",
     [facts("db2", 3, boot=2), gone("db3", 3)], {}),
    (ServiceState(service="db", phase=ServicePhase.STARTING, active="db1", generation=1), None, [], {}),
    (None, "db2", [], {}),
]


@pytest.mark.parametrize(("state", "target", "reports", "host_states"), MOVES)
def test_move_refusal_is_the_rule_the_manager_applies_to_a_request(state, target, reports, host_states):
    """The API asks `move_refusal`; the manager applies it to a request: one rule, one answer."""
    reports = [holding(state.active, state.generation), *reports] if state and state.active else reports
    refusal = move_refusal(SPEC, state, {f.member: f for f in reports}, hosts(**host_states), HOST_OF, target, NOW)
    d = decide(state, reports, request=ServiceRequest(id="r1", target=target), **host_states)
    refused = [e.reason for e in d.events if e.kind is ServiceEventKind.MOVE_REFUSED]
    moved = [e for e in d.events if e.reason == "operator request"]
    assert refused == ([] if refusal is None else [refusal])
    assert len(moved) == (refusal is None)


def test_move_refusal_names_why_and_the_target_when_there_is_one():
    reports = {f.member: f for f in [holding("db1", 3), facts("db2", 3, guest=GuestHealth.BOOTING), gone("db3", 3)]}
    assert move_refusal(SPEC, running_on("db1", 3), reports, hosts(), HOST_OF, None, NOW) == \
        "no other healthy member (db1 healthy, db2 booting, db3 QEMU gone)"
    assert move_refusal(SPEC, running_on("db1", 3), reports, hosts(), HOST_OF, "db3", NOW) == "db3 is QEMU gone"
    reports["db2"] = facts("db2", 3)
    assert move_refusal(SPEC, running_on("db1", 3), reports, hosts(), HOST_OF, None, NOW) is None
    assert move_refusal(SPEC, None, reports, hosts(), HOST_OF, "db2", NOW) == "the service is stopped, not running"


# --- the release rule ---

def test_another_member_counts_as_released_only_on_proof():
    def why(report: MemberFacts | None, generation: int = 4, **host_states: HostState) -> str | None:
        return why_not_released("db1", generation, {"db1": report} if report else {}, hosts(**host_states), HOST_OF)

    assert why(facts("db1", 4)) is None  # holds nothing, seen this generation
    assert why(facts("db1", 5)) is None  # or a later one
    assert why(gone("db1", 4)) is None  # its own host reports its QEMU dead
    assert why(None, h1=HostState.FENCED) is None  # lease expired + grace: self-fenced
    assert why(None, h1=HostState.OFFLINE) is None
    assert why(facts("db1", 3)) == "db1: has not yet seen generation 4"
    assert why(gone("db1", 3)) == "db1: has not yet seen generation 4"  # it may have booted again since
    assert why(holding("db1", 4, started=False)) == "db1: still holds the disk, the mount, the IP"
    assert why(facts("db1", 4), h1=HostState.LOST) == "db1: host h1 lost, not yet fenced"
    assert why(None) == "db1: no report from host h1 under its current lease"
    old_lease = facts("db1", 4).model_copy(update={"lease": 5})
    assert why(old_lease) == "db1: no report from host h1 under its current lease"


# --- the agent ---

STARTING_ON_DB2 = ServiceState(service="db", phase=ServicePhase.MOVING, active="db2", generation=4)


def test_the_new_active_member_waits_until_the_old_one_released():
    old = holding("db1", 3)
    p = plan("db2", STARTING_ON_DB2, facts("db2", 4), [old, facts("db2", 4), facts("db3", 4)])
    assert p.steps == () and p.waiting == "waiting for db1: has not yet seen generation 4"


def test_a_clean_move_runs_stop_unmount_detach_then_attach_mount_ip_start():
    """Through both decisions: the operator's move, the old member's release, the new member's start."""
    reports = {"db1": holding("db1", 3), "db2": facts("db2", 3), "db3": facts("db3", 3)}
    d = decide(running_on("db1", 3), list(reports.values()), request=ServiceRequest(id="r1", target="db2"))
    state = d.states["db"]
    assert (state.phase, state.active, state.generation, state.fence) == (ServicePhase.MOVING, "db2", 4, ())
    done: list[Step] = []
    for member, local in (("db2", facts("db2", 4)), ("db1", reports["db1"]), ("db3", facts("db3", 4)),
                          ("db2", facts("db2", 4))):
        steps = plan(member, state, local, list(reports.values())).steps
        done += steps
        reports[member] = local.model_copy(update={"generation": 4, "started": False, "ip": False, "mounted": False,
                                                   "disk": False})
    assert done == [RunStop("db1", ("db", "stop")), DropIp("db1", "10.0.9.10/24"), Unmount("db1", "/srv/data"),
                    Detach("db1", "shared", "db-data.qcow2"), Attach("db2", "shared", "db-data.qcow2", 4),
                    Mount("db2", "/srv/data"), RaiseIp("db2", "10.0.9.10/24"), RunStart("db2", ("db", "start"))]
    up = decide(state, [facts("db1", 4), holding("db2", 4), facts("db3", 4)]).states["db"]
    assert (up.phase, up.active, up.generation) == (ServicePhase.RUNNING, "db2", 4)


def test_an_isolated_members_disk_moves_only_once_its_host_is_fenced():
    last_word = holding("db1", 3)  # h1 is cut off: this is what the store last heard
    d = decide(running_on("db1", 3), [last_word, facts("db2", 3), facts("db3", 3)], h1=HostState.LOST)
    state = d.states["db"]
    assert (state.active, state.generation, state.fence) == ("db2", 4, ())  # no one to give the kill to
    others = [facts("db2", 4), facts("db3", 4)]
    lost = plan("db2", state, facts("db2", 4), [last_word, *others], h1=HostState.LOST)
    assert lost.steps == () and lost.waiting == "waiting for db1: host h1 lost, not yet fenced"
    assert decide(state, [last_word, *others], h1=HostState.LOST).states["db"].reason \
        == "waiting for db1: host h1 lost, not yet fenced"
    fenced = plan("db2", state, facts("db2", 4), [last_word, *others], h1=HostState.FENCED)
    assert kinds(fenced.steps) == ["Attach", "Mount", "RaiseIp", "RunStart"]


def test_a_hung_member_cannot_release_and_is_killed_and_booted_again():
    hung = holding("db1", 4, guest=GuestHealth.SILENT)
    p = plan("db1", STARTING_ON_DB2, hung, [])
    assert p.steps == () and "guest agent silent" in p.waiting
    ordered = STARTING_ON_DB2.model_copy(update={"fence": (FenceOrder(member="db1", boot=1, reason="hung"),)})
    assert plan("db1", ordered, hung, []).steps == (Kill("db1", "fenced: hung"), Boot("db1"))
    # The order names that QEMU: the standby booted after it is left alone.
    assert plan("db1", ordered, facts("db1", 4, boot=2), []).steps == ()


def test_only_a_standby_is_booted_again_by_its_agent():
    assert plan("db1", STARTING_ON_DB2, gone("db1", 4), []).steps == (Boot("db1"),)
    p = plan("db2", STARTING_ON_DB2, gone("db2", 4), [])
    assert p.steps == () and "the manager moves the service" in p.waiting


def test_nothing_is_taken_without_a_lease_or_with_a_stale_view():
    reports = [facts("db1", 4), facts("db3", 4)]
    assert plan("db2", STARTING_ON_DB2, facts("db2", 4), reports, lease_valid=False).steps == ()
    assert plan("db2", STARTING_ON_DB2, facts("db2", 4), reports).steps  # the same, with a lease
    ahead = plan("db2", STARTING_ON_DB2, facts("db2", 4), [facts("db1", 5), facts("db3", 4)])
    assert ahead.steps == () and "older than the reports of db1" in ahead.waiting


def test_a_guest_still_booting_takes_nothing():
    p = plan("db2", STARTING_ON_DB2, facts("db2", 4, guest=GuestHealth.BOOTING), [facts("db1", 4), facts("db3", 4)])
    assert p.steps == () and p.waiting == "guest agent booting"


# --- the property: one holder, whatever happens ---

# Lease TTL, self-fence at TTL - margin, fence grace: a long grace, so that a slow clock's
# self-fence can come well after the lease expired (the window the grace is there for).
TTL, FENCE_AFTER, GRACE = 2.0, 1.5, 1.0
QUICK = SPEC.model_copy(update={"start_timeout_s": 4.0, "stop_timeout_s": 2.0, "failed_hold_s": 5.0})


@dataclass
class Qemu:
    """The truth about one member's QEMU and guest."""

    boot: int
    guest: GuestHealth = GuestHealth.BOOTING
    disk: bool = False
    mounted: bool = False
    ip: bool = False
    started: bool = False
    check_broken: bool = False


@dataclass
class Host:
    lease: int
    renewed: float
    powered: bool = True
    cut: bool = False  # cut off from the store
    slow: float = 1.0  # its clock runs this many times slower than true time
    snapshot: tuple[ServiceState | None, dict[str, MemberFacts], dict[str, HostLiveness]] | None = None


@dataclass
class World:
    now: float = 0.0
    hosts: dict[str, Host] = field(default_factory=dict)
    qemu: dict[str, Qemu | None] = field(default_factory=dict)
    state: ServiceState | None = None  # the store
    reports: dict[str, MemberFacts] = field(default_factory=dict)
    alive: dict[str, int] = field(default_factory=dict)  # host -> lease, while its key exists
    expired_at: dict[str, float] = field(default_factory=dict)
    counter: int = 100
    spec: ServiceSpec = QUICK
    request: ServiceRequest | None = None

    def next(self) -> int:
        self.counter += 1
        return self.counter

    def liveness(self) -> dict[str, HostLiveness]:
        """The host records as the VM manager keeps them: online, lost, then fenced after the grace."""
        out = {}
        for name in self.hosts:
            if name in self.alive:
                out[name] = HostLiveness(HostState.ONLINE, self.alive[name])
            else:
                fenced = self.now - self.expired_at[name] >= GRACE
                out[name] = HostLiveness(HostState.FENCED if fenced else HostState.LOST, None)
        return out

    def local(self, member: str, generation: int) -> MemberFacts:
        q, host = self.qemu[member], HOST_OF[member]
        if q is None:
            return MemberFacts(service="db", member=member, host=host, lease=self.hosts[host].lease,
                               generation=generation)
        return MemberFacts(service="db", member=member, host=host, lease=self.hosts[host].lease, generation=generation,
                           qemu=True, boot=q.boot, guest=q.guest, disk=q.disk, mounted=q.mounted, ip=q.ip,
                           started=q.started, check_failures=QUICK.failure_threshold if q.check_broken and q.started
                           else 0)

    def run(self, member: str, steps: tuple[Step, ...], limit: int) -> None:
        """Carry out up to `limit` steps, stopping at the first that cannot be done."""
        for step in steps[:limit]:
            q = self.qemu[member]
            if isinstance(step, Boot):
                self.qemu[member] = Qemu(boot=self.next())
                continue
            if q is None:
                return
            if isinstance(step, Kill):
                self.qemu[member] = None
            elif isinstance(step, Attach):
                q.disk = True  # QMP alone: no guest needed
            elif q.guest is not GuestHealth.ANSWERING:
                return  # everything else needs the guest agent (device_del needs the guest's consent)
            elif isinstance(step, Detach):
                q.disk = False
            else:
                attr = {RunStop: ("started", False), DropIp: ("ip", False), Unmount: ("mounted", False),
                        Mount: ("mounted", True), RaiseIp: ("ip", True), RunStart: ("started", True)}[type(step)]
                setattr(q, *attr)


class OneHolder(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = World()
        for i, (member, host) in enumerate(HOST_OF.items()):
            self.w.hosts[host] = Host(lease=i + 1, renewed=0.0)
            self.w.alive[host] = i + 1
            self.w.qemu[member] = Qemu(boot=self.w.next(), guest=GuestHealth.ANSWERING)

    # -- time and the store --

    @rule(dt=st.sampled_from([0.1, 0.3, 0.7, 1.2]))
    def tick(self, dt: float) -> None:
        w = self.w
        w.now += dt
        for name, h in w.hosts.items():
            if h.powered and not h.cut and name in w.alive:
                h.renewed = w.now
            # The self-fence comes at TTL - margin on the host's clock: before the store expires the
            # lease at TTL, or with a slow clock after it, but before the grace has passed too.
            if h.powered and w.now - h.renewed >= FENCE_AFTER * h.slow:
                for member, host in HOST_OF.items():
                    if host == name:
                        w.qemu[member] = None
            if name in w.alive and w.now - h.renewed >= TTL:
                del w.alive[name]
                w.expired_at[name] = h.renewed + TTL
            if h.powered and not h.cut and name not in w.alive:  # a new lease; the old view is void
                h.lease, h.renewed, h.snapshot = w.next(), w.now, None
                w.alive[name] = h.lease
        for q in w.qemu.values():
            if q is not None and q.guest is GuestHealth.BOOTING:
                q.guest = GuestHealth.ANSWERING

    @rule()
    def manager(self) -> None:
        w = self.w
        view = ServiceView(w.spec, w.state, dict(w.reports), w.request)
        d = decide_services({"db": view}, w.liveness(), HOST_OF, w.now)
        w.state = d.states.get("db", w.state)

    @rule(rounds=st.integers(1, 6), order=st.permutations(MEMBERS))
    def settle(self, rounds: int, order: list[str]) -> None:
        """Quiet time: every agent and the manager do their work, without faults."""
        for _ in range(rounds):
            self.tick(0.3)
            self.manager()
            for member in order:
                self.agent(member, True, 8)

    @rule(to=st.sampled_from((None, *MEMBERS)))
    def operator_move(self, to: str | None) -> None:
        self.w.request = ServiceRequest(id=str(self.w.next()), target=to)

    @rule(running=st.booleans())
    def operator_desired(self, running: bool) -> None:
        self.w.spec = QUICK.model_copy(update={"desired": DesiredState.RUNNING if running else DesiredState.STOPPED})

    @rule(member=st.sampled_from(MEMBERS), fresh=st.booleans(), limit=st.integers(0, 8))
    def agent(self, member: str, fresh: bool, limit: int) -> None:
        """The member's agent: reads the store (or acts on what it read before: a lagging watch, or
        a host cut off), decides, does up to `limit` steps, reports if it can reach the store."""
        w = self.w
        h = w.hosts[HOST_OF[member]]
        if not h.powered:
            return
        if fresh and not h.cut:
            h.snapshot = (w.state, dict(w.reports), w.liveness())
        if h.snapshot is None:
            return
        state, reports, liveness = h.snapshot
        generation = state.generation if state else 0
        lease_valid = w.now - h.renewed < FENCE_AFTER * h.slow
        p = plan_member(MemberInput(w.spec, state, member, w.local(member, generation), reports, liveness, HOST_OF,
                                    lease_valid))
        w.run(member, p.steps, limit)
        if not h.cut:
            w.reports[member] = w.local(member, generation)

    # -- faults --

    @rule(member=st.sampled_from(MEMBERS))
    def crash(self, member: str) -> None:
        self.w.qemu[member] = None

    @rule(member=st.sampled_from(MEMBERS))
    def hang(self, member: str) -> None:
        q = self.w.qemu[member]
        if q is not None:
            q.guest = GuestHealth.SILENT

    @rule(member=st.sampled_from(MEMBERS), broken=st.booleans())
    def check(self, member: str, broken: bool) -> None:
        q = self.w.qemu[member]
        if q is not None:
            q.check_broken = broken

    @rule(host=st.sampled_from(sorted(LEASES)), cut=st.booleans())
    def network(self, host: str, cut: bool) -> None:
        self.w.hosts[host].cut = cut

    @rule(host=st.sampled_from(sorted(LEASES)), slow=st.sampled_from([1.0, 1.3, 1.9]))
    def skew(self, host: str, slow: float) -> None:
        """Up to what the grace is for: below (TTL + grace) / (TTL - margin) = 2."""
        self.w.hosts[host].slow = slow

    @rule(host=st.sampled_from(sorted(LEASES)))
    def power_off(self, host: str) -> None:
        self.w.hosts[host].powered = False
        for member, on in HOST_OF.items():
            if on == host:
                self.w.qemu[member] = None

    @precondition(lambda self: any(not h.powered for h in self.w.hosts.values()))
    @rule(host=st.sampled_from(sorted(LEASES)))
    def power_on(self, host: str) -> None:
        self.w.hosts[host].powered = True  # its lease is renewed or granted anew on the next tick

    # -- the invariant --

    @invariant()
    def at_most_one_holder(self) -> None:
        for what in ("disk", "ip", "started"):
            holders = [m for m, q in self.w.qemu.items() if q is not None and getattr(q, what)]
            assert len(holders) <= 1, f"{what} held by {holders} at t={self.w.now:.1f}, state {self.w.state}"

    def teardown(self) -> None:
        """Heal everything: the service must come back on one member (the rule must not just say no)."""
        w = self.w
        w.spec = QUICK
        for h in w.hosts.values():
            h.powered, h.cut = True, False
        for q in w.qemu.values():
            if q is not None:
                q.check_broken = False
        for _ in range(60):
            self.tick(0.5)
            self.manager()
            for member in MEMBERS:
                self.agent(member, True, 8)
            self.at_most_one_holder()
        assert w.state is not None and w.state.phase is ServicePhase.RUNNING, w.state
        active = w.qemu[w.state.active or ""]
        assert active is not None and active.disk and active.ip and active.started


OneHolder.TestCase.settings = settings(max_examples=300, stateful_step_count=60, derandomize=True, database=None,
                                       deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_the_disk_is_never_attached_twice = OneHolder.TestCase


# Two runs of the world above, step by step: the orders that make each half of the rule needed.

def agents(m: OneHolder, order: tuple[str, ...], fresh: bool = True, limit: int = 8) -> None:
    for member in order:
        m.agent(member, fresh, limit)


def test_a_report_from_an_older_generation_does_not_free_the_disk():
    """db1 is chosen, reports 'holding nothing' and is slow to take over; the service moves on. Its
    agent may still act on the state it read (db1 active): db2 must wait for a report made after
    db1 read the new generation, or the disk ends up in both."""
    m = OneHolder()
    agents(m, MEMBERS, limit=0)
    m.manager()
    agents(m, ("db2", "db3", "db1"), limit=0)  # db1 read generation 1 (active, free to take) and took nothing
    assert (m.w.state.active, m.w.state.generation) == ("db1", 1)
    for _ in range(4):
        m.tick(1.2)
        m.manager()
    assert (m.w.state.active, m.w.state.generation) == ("db2", 2)  # not running 4 s after it was chosen
    agents(m, ("db3", "db2"))
    m.agent("db1", fresh=False, limit=8)  # on what it read at generation 1
    m.at_most_one_holder()
    assert m.w.qemu["db1"] is not None and m.w.qemu["db1"].disk and not m.w.qemu["db2"].disk
    m.settle(3, ["db1", "db2", "db3"])  # db1 reads generation 2: killed, booted again; db2 takes over
    assert (m.w.state.phase, m.w.state.active) == (ServicePhase.RUNNING, "db2")


def test_a_slow_clocked_isolated_host_is_waited_out_until_fenced():
    """h1's clock runs slow, so its self-fence comes after its lease expired (the host is lost) but
    before the grace ran out (fenced). db2 must not take the disk in between."""
    m = OneHolder()
    m.settle(6, ["db1", "db2", "db3"])
    assert (m.w.state.phase, m.w.state.active) == (ServicePhase.RUNNING, "db1")
    m.skew("h1", 1.9)
    m.network("h1", True)
    lost_seen = False
    for _ in range(12):
        m.settle(1, ["db3", "db2", "db1"])
        lost_seen |= m.w.liveness()["h1"].state is HostState.LOST and m.w.qemu["db1"] is not None
        m.at_most_one_holder()
    assert lost_seen  # the window was there: lost, and db1 still running with the disk
    assert (m.w.state.phase, m.w.state.active) == (ServicePhase.RUNNING, "db2")


def test_the_timeline_reads_like_a_runbook():
    moving = ServiceState(service="db", phase=ServicePhase.MOVING, active="db2", generation=4)
    up = decide(moving, [facts("db1", 4), holding("db2", 4), facts("db3", 4)])
    stopped = decide(ServiceState(service="db", phase=ServicePhase.STOPPING, generation=5),
                     [facts(m, 5) for m in MEMBERS], spec=SPEC.model_copy(update={"desired": DesiredState.STOPPED}))
    assert [e.line() for e in up.events + stopped.events] == [
        "t=100.000 manager  service db: moving -> running on db2 (generation 4)",
        "t=100.000 manager  service db: stopping -> stopped (generation 5)",
    ]
