from dataclasses import replace

import pytest

from haven.core.events import EventKind
from haven.core.manager import decide
from haven.model.spec import MigrationKind, RestartPolicy, Settings, VmSpec
from haven.model.state import HostState, LocalState, Migration, Placement, VmState, VmStatus

from .helpers import host, running, view

HOSTS = [host("h1"), host("h2"), host("h3")]


def test_a_lost_host_keeps_its_vms_until_the_fence_grace_has_passed():
    vms = [VmSpec(name="web", priority=3)]
    placements = {"web": running("web", "h1")}
    first = decide(view(HOSTS, vms, placements, alive={"h2", "h3"}, since=0.0), now=10.0)
    assert first.host_records["h1"].state is HostState.LOST
    assert first.placements["web"].state is VmState.RECOVERING
    assert first.placements["web"].host == "h1"  # not reassigned yet
    lost = {"h1": HostState.LOST, "h2": HostState.ONLINE, "h3": HostState.ONLINE}
    early = decide(view(HOSTS, vms, {"web": first.placements["web"]}, alive={"h2", "h3"}, records=lost,
                        since=10.0), now=10.2)
    assert "web" not in early.placements and not early.host_records
    late = decide(view(HOSTS, vms, {"web": first.placements["web"]}, alive={"h2", "h3"}, records=lost,
                       since=10.0), now=10.3)
    messages = [e.message for e in late.events]
    assert "lost -> fenced (grace 0.3 s)" in messages
    assert late.host_records["h1"].state is HostState.OFFLINE  # nothing left on it
    moved = late.placements["web"]
    assert moved.state is VmState.STARTING and moved.host in ("h2", "h3") and moved.generation == 2
    assert any("recovering -> starting on" in e.message for e in late.events)


def test_a_new_manager_restarts_the_grace_on_its_own_clock():
    vms = [VmSpec(name="web", priority=3)]
    recovering = Placement(vm="web", state=VmState.RECOVERING, host="h1", generation=1)
    lost = {"h1": HostState.LOST, "h2": HostState.ONLINE, "h3": HostState.ONLINE}
    decision = decide(view(HOSTS, vms, {"web": recovering}, alive={"h2", "h3"}, records=lost, since=0.0,
                           manager_since=50.0), now=50.1)
    assert not decision.host_records and not decision.placements


def test_recovery_in_priority_order_when_room_is_short():
    small = [host("h1", memory=2048), host("h2", memory=1280)]
    vms = [VmSpec(name="low", memory_mib=1024, priority=1), VmSpec(name="high", memory_mib=1024, priority=3)]
    placements = {"low": running("low", "h1"), "high": running("high", "h1")}
    fenced = {"h1": HostState.FENCED, "h2": HostState.ONLINE}
    decision = decide(view(small, vms, placements, alive={"h2"}, records=fenced,
                           settings=Settings(memory_reserve_mib=256)), now=5.0)
    assert decision.placements["high"].state is VmState.STARTING
    assert decision.placements["high"].host == "h2"
    assert decision.placements["low"].state is VmState.RECOVERING
    assert "no host can take it" in decision.placements["low"].reason


def test_crashes_restart_in_place_until_the_limit_then_error():
    vms = [VmSpec(name="web", priority=2, restart=RestartPolicy(max_restarts=1, window_s=60))]
    crashed = VmStatus(vm="web", host="h2", generation=1, state=LocalState.CRASHED)
    first = decide(view(HOSTS, vms, {"web": running("web", "h2")}, statuses=[crashed]), now=5.0)
    again = first.placements["web"]
    assert (again.state, again.host, again.generation, again.restarts) == (VmState.STARTING, "h2", 2, (5.0,))
    crashed2 = VmStatus(vm="web", host="h2", generation=2, state=LocalState.CRASHED)
    second = decide(view(HOSTS, vms, {"web": again.model_copy(update={"state": VmState.RUNNING})},
                         statuses=[crashed2]), now=9.0)
    assert second.placements["web"].state is VmState.ERROR
    assert "restart limit" in second.placements["web"].reason


MEMBER = VmSpec(name="db1", priority=2, preferred_hosts=("h2",), restricted=True,
                restart=RestartPolicy(max_restarts=1, window_s=60))


def _member_ends(end: LocalState, ordered: bool, times: int, placement_state: VmState = VmState.RUNNING):
    """`times` ends of the service member db1's QEMU in a row (each generation's), either killed on
    its service's order or not: the placements the manager writes, and the last decision."""
    placement = running("db1", "h2")
    placements, decision = [], None
    for i in range(times):
        generation = placement.generation
        status = VmStatus(vm="db1", host="h2", generation=generation, state=end)
        kills = frozenset({("db1", generation)}) if ordered else frozenset({("db1", generation - 1)})
        cluster = replace(view(HOSTS, [MEMBER], {"db1": placement.model_copy(update={"state": placement_state})},
                               statuses=[status]), ordered_kills=kills)
        decision = decide(cluster, now=10.0 + i)
        placement = decision.placements["db1"]
        placements.append(placement)
    return placements, decision


def test_a_service_members_ordered_kills_restart_it_in_place_but_cost_no_restart_budget():
    # max_restarts + 2 kills within the window, each one haven's own (the member's fencing).
    placements, decision = _member_ends(LocalState.STOPPED, ordered=True, times=3)
    assert [(p.state, p.host, p.generation, p.restarts) for p in placements] == [
        (VmState.STARTING, "h2", 2, ()), (VmState.STARTING, "h2", 3, ()), (VmState.STARTING, "h2", 4, ())]
    assert decision is not None
    assert [e.message for e in decision.events] == [
        ("running -> starting on h2 (generation 4, priority 2, stopped on h2, "
         "killed on its service's order: restart not counted)")]
    # Killed while it was still booting: the same.
    booting, _ = _member_ends(LocalState.STOPPED, ordered=True, times=3, placement_state=VmState.STARTING)
    assert [(p.state, p.generation, p.restarts) for p in booting] == [
        (VmState.STARTING, 2, ()), (VmState.STARTING, 3, ()), (VmState.STARTING, 4, ())]


@pytest.mark.parametrize("end", [LocalState.CRASHED, LocalState.STOPPED])
def test_a_service_members_own_crashes_count_against_its_restart_budget(end: LocalState):
    # The same ends, not ordered (only the generation before each was): the limit, then error.
    placements, _ = _member_ends(end, ordered=False, times=2)
    assert (placements[0].state, placements[0].generation, placements[0].restarts) == (VmState.STARTING, 2, (10.0,))
    assert placements[1].state is VmState.ERROR and "restart limit" in placements[1].reason


def test_drain_live_migrates_migratable_vms_and_quick_migrates_the_rest():
    vms = [VmSpec(name="a"), VmSpec(name="b", migratable=False)]
    placements = {"a": running("a", "h1"), "b": running("b", "h1")}
    decision = decide(view(HOSTS, vms, placements, maintenance={"h1"}), now=1.0)
    assert decision.host_records["h1"].state is HostState.MAINTENANCE
    kinds = {name: p.migration.kind for name, p in decision.placements.items()}
    assert kinds == {"a": MigrationKind.LIVE, "b": MigrationKind.QUICK}
    assert all(p.migration.generation == 2 and p.migration.target != "h1" for p in decision.placements.values())


def test_live_migration_finishes_when_the_target_runs_the_new_generation():
    migration = Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2, started=1.0)
    p = Placement(vm="a", state=VmState.MIGRATING, host="h1", generation=1, migration=migration)
    target = VmStatus(vm="a", host="h2", generation=2, state=LocalState.RUNNING)
    decision = decide(view(HOSTS, [VmSpec(name="a")], {"a": p}, statuses=[target]), now=1.6)
    done = decision.placements["a"]
    assert (done.state, done.host, done.generation, done.migration) == (VmState.RUNNING, "h2", 2, None)
    assert "live from h1, 0.600 s" in decision.events[-1].message


def test_a_failed_attempt_aborts_only_its_own_migration():
    migration = Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2, started=1.0)
    p = Placement(vm="a", state=VmState.MIGRATING, host="h1", generation=1, migration=migration)
    old_failure = VmStatus(vm="a", host="h1", generation=1, state=LocalState.RUNNING, failed_migration="older")
    assert "a" not in decide(view(HOSTS, [VmSpec(name="a")], {"a": p}, statuses=[old_failure]), 2.0).placements
    failure = old_failure.model_copy(update={"failed_migration": migration.attempt, "detail": "link down"})
    aborted = decide(view(HOSTS, [VmSpec(name="a")], {"a": p}, statuses=[failure]), 2.0).placements["a"]
    assert (aborted.state, aborted.host, aborted.migration) == (VmState.RUNNING, "h1", None)


def test_operator_migration_to_an_unfit_host_is_refused_with_the_reason():
    from haven.model.state import RequestAction, VmRequest
    tiny = [host("h1"), host("h2", memory=512)]
    cluster = view(tiny, [VmSpec(name="a", memory_mib=1024)], {"a": running("a", "h1")})
    cluster.vms["a"] = replace(cluster.vms["a"], request=VmRequest(id="r1", action=RequestAction.MIGRATE,
                                                                   target="h2"))
    decision = decide(cluster, 1.0)
    assert decision.done_requests == ["a"]
    assert decision.placements["a"].state is VmState.RUNNING
    assert "refused: h2: needs 1024 MiB" in decision.events[0].message


def test_a_live_migration_event_carries_the_hypervisors_downtime():
    migration = Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2, started=1.0)
    p = Placement(vm="a", state=VmState.MIGRATING, host="h1", generation=1, migration=migration)
    statuses = [VmStatus(vm="a", host="h2", generation=2, state=LocalState.RUNNING),
                VmStatus(vm="a", host="h1", generation=1, state=LocalState.MIGRATED,
                         detail="to h2: 465 ms, downtime 23 ms", downtime_ms=23)]
    decision = decide(view(HOSTS, [VmSpec(name="a")], {"a": p}, statuses=statuses), now=1.6)
    event = decision.events[-1]
    assert event.message.endswith("(live from h1, 0.600 s; to h2: 465 ms, downtime 23 ms)")
    assert event.kind is EventKind.MIGRATED and event.downtime_s == 0.023  # the figure, not the words
    assert (event.from_host, event.host, round(event.seconds or 0, 3)) == ("h1", "h2", 0.6)


def test_balancing_leaves_a_vm_on_a_preferred_host_when_failback_would_bring_it_back():
    # web prefers h2 (full) then h1, the hot host. Balancing it to h3 would make failback move it
    # straight back to h1: the swarm saw that ping-pong last a whole minute (seed 3394).
    hosts = [host("h1", memory=4096), host("h2", memory=2048), host("h3", memory=4096)]
    vms = [VmSpec(name="web", memory_mib=1024, preferred_hosts=("h2", "h1")),
           VmSpec(name="filler", memory_mib=1536, preferred_hosts=("h2",)),
           VmSpec(name="a", memory_mib=1280, migratable=False), VmSpec(name="b", memory_mib=1280, migratable=False)]
    placements = {"web": running("web", "h1"), "filler": running("filler", "h2"),
                  "a": running("a", "h1"), "b": running("b", "h1")}
    statuses = [VmStatus(vm=v, host=p.host, generation=1, state=LocalState.RUNNING)
                for v, p in placements.items()]
    moved = {}
    for failback in (False, True):
        settings = Settings(balance=True, failback=failback)
        decision = decide(view(hosts, vms, placements, statuses=statuses, settings=settings), now=10.0)
        moved[failback] = {name for name, p in decision.placements.items() if p.state is VmState.MIGRATING}
    assert moved == {False: {"web"}, True: set()}


def test_failed_starts_retry_in_place_then_only_on_hosts_not_tried_yet():
    vms = [VmSpec(name="web", priority=2, restart=RestartPolicy(max_restarts=5, window_s=60))]
    placement = Placement(vm="web", state=VmState.STARTING, host="h1", generation=1)
    hosts_seen = []
    for step in range(3):
        failed = VmStatus(vm="web", host=placement.host, generation=placement.generation, state=LocalState.FAILED)
        placement = decide(view(HOSTS, vms, {"web": placement}, statuses=[failed]), now=1.0 + step).placements["web"]
        assert placement.state is VmState.STARTING
        hosts_seen.append(placement.host)
    # Old code excluded only the last failed host: h1, h2, then back to h1 while h3 was free.
    assert hosts_seen == ["h1", "h2", "h3"]
    assert placement.failed_on == ("h1", "h1", "h2")
    up = VmStatus(vm="web", host="h3", generation=placement.generation, state=LocalState.RUNNING)
    assert decide(view(HOSTS, vms, {"web": placement}, statuses=[up]), now=5.0).placements["web"].failed_on == ()
    none = RestartPolicy(max_restarts=5, window_s=60, same_host_retries=0)
    first = Placement(vm="web", state=VmState.STARTING, host="h1", generation=1)
    failed = VmStatus(vm="web", host="h1", generation=1, state=LocalState.FAILED)
    moved = decide(view(HOSTS, [vms[0].model_copy(update={"restart": none})], {"web": first}, statuses=[failed]),
                   now=1.0).placements["web"]
    assert moved.host == "h2"


def test_a_stopped_vm_starts_on_the_host_it_last_ran_on():
    vms = [VmSpec(name="web", preferred_hosts=("h1",))]
    stopping = Placement(vm="web", state=VmState.STOPPING, host="h3", generation=1)
    stopped = decide(view(HOSTS, vms, {"web": stopping}), now=1.0).placements["web"]
    assert (stopped.state, stopped.host, stopped.last_host) == (VmState.STOPPED, None, "h3")
    started = decide(view(HOSTS, vms, {"web": stopped}), now=2.0).placements["web"]
    assert (started.state, started.host) == (VmState.STARTING, "h3")
    # Records written before these fields existed still load.
    old = Placement.model_validate({"vm": "web", "state": "stopped", "generation": 1})
    assert old.failed_on == () and old.last_host is None


def test_a_stop_while_waiting_for_room_gives_the_stop_as_the_reason():
    vms = [VmSpec(name="web", priority=2, desired="stopped")]
    waiting = Placement(vm="web", state=VmState.RECOVERING, host=None, generation=1, reason="waiting: no room")
    decision = decide(view(HOSTS, vms, {"web": waiting}), now=5.0)
    assert decision.placements["web"].state is VmState.STOPPED
    assert [e.message for e in decision.events] == ["recovering -> stopped (stop requested)"]  # was "room available"


# --- placement policies (issue 9) ---

def _ran(placements):
    return [VmStatus(vm=v, host=p.host, generation=p.generation, state=LocalState.RUNNING)
            for v, p in placements.items()]


def test_a_restricted_vm_waits_for_its_own_hosts_rather_than_start_elsewhere():
    vm = VmSpec(name="db", priority=3, preferred_hosts=("h1", "h2"), restricted=True)
    records = {"h1": HostState.FENCED, "h2": HostState.OFFLINE, "h3": HostState.ONLINE}
    decision = decide(view(HOSTS, [vm], {"db": running("db", "h1")}, alive={"h3"}, records=records), now=5.0)
    waiting = decision.placements["db"]
    assert (waiting.state, waiting.host) == (VmState.RECOVERING, None)
    assert waiting.reason == ("waiting: allowed only on h1, h2: h1 not accepting VMs (down, draining or settling); "
                              "h2 not accepting VMs (down, draining or settling)")
    free = vm.model_copy(update={"restricted": False})
    moved = decide(view(HOSTS, [free], {"db": running("db", "h1")}, alive={"h3"}, records=records), now=5.0)
    assert (moved.placements["db"].state, moved.placements["db"].host) == (VmState.STARTING, "h3")


def test_a_vms_own_failback_overrides_the_cluster_setting():
    placements = {"web": running("web", "h2")}
    for cluster, own, expected in ((False, True, VmState.MIGRATING), (True, False, None),
                                   (True, None, VmState.MIGRATING), (False, None, None)):
        vm = VmSpec(name="web", preferred_hosts=("h1",), failback=own)
        decision = decide(view(HOSTS, [vm], placements, statuses=_ran(placements),
                               settings=Settings(failback=cluster)), now=5.0)
        moved = decision.placements.get("web")
        assert (moved.state if moved else None) is expected, (cluster, own)
        if moved:
            assert moved.migration.target == "h1"


GROUP = [VmSpec(name="app", memory_mib=1024, priority=3, affinity_group="app"),
         VmSpec(name="cache", memory_mib=1024, priority=1, affinity_group="app")]


def test_keep_together_vms_start_on_one_host_where_they_all_fit_before_anything_else_takes_it():
    hosts = [host("h1", memory=2048), host("h2", memory=2048), host("h3")]
    other = VmSpec(name="other", memory_mib=2048, priority=2)
    decision = decide(view(hosts, [*GROUP, other], settings=Settings(host_failures_to_tolerate=0)), now=1.0)
    placed = {name: (p.state, p.host) for name, p in decision.placements.items()}
    # Neither h1 nor h2 holds both; by priority alone `other` would take h3's room before cache.
    assert placed["app"] == placed["cache"] == (VmState.STARTING, "h3")
    assert placed["other"] == (VmState.STOPPED, None)


def test_a_keep_together_group_that_fits_nowhere_stays_down_rather_than_split():
    group = [spec.model_copy(update={"memory_mib": 2048}) for spec in GROUP]
    decision = decide(view(HOSTS, group, settings=Settings(host_failures_to_tolerate=0)), now=1.0)
    assert {p.state for p in decision.placements.values()} == {VmState.STOPPED}
    assert decision.placements["app"].reason == ("cannot start: no host can take it "
                                                 "(3 host(s): together with cache: needs 2048 MiB)")
    assert "together with app" in decision.placements["cache"].reason


def test_keep_together_vms_recover_onto_one_host():
    filler = VmSpec(name="filler", memory_mib=3000, priority=0)
    placements = {"app": running("app", "h1"), "cache": running("cache", "h1"), "filler": running("filler", "h2")}
    records = {"h1": HostState.FENCED, "h2": HostState.ONLINE, "h3": HostState.ONLINE}
    decision = decide(view(HOSTS, [*GROUP, filler], placements, alive={"h2", "h3"}, records=records), now=5.0)
    app, cache = decision.placements["app"], decision.placements["cache"]
    assert app.state is cache.state is VmState.STARTING and app.host == cache.host == "h3"


def _migrate(cluster, vm, kind, target=None):
    from haven.model.state import RequestAction, VmRequest
    cluster.vms[vm] = replace(cluster.vms[vm], request=VmRequest(id="r1", action=RequestAction.MIGRATE,
                                                                 kind=kind, target=target))
    return cluster


def test_an_operator_migration_of_one_member_moves_its_group_or_is_refused():
    placements = {"app": running("app", "h1"), "cache": running("cache", "h1")}
    cluster = _migrate(view(HOSTS, GROUP, placements, statuses=_ran(placements)), "cache", MigrationKind.LIVE, "h2")
    moved = decide(cluster, now=1.0).placements
    assert {name: (p.state, p.migration.target) for name, p in moved.items()} == {
        "app": (VmState.MIGRATING, "h2"), "cache": (VmState.MIGRATING, "h2")}
    pinned = [GROUP[0], GROUP[1].model_copy(update={"migratable": False})]
    cluster = _migrate(view(HOSTS, pinned, placements, statuses=_ran(placements)), "app", MigrationKind.LIVE)
    refused = decide(cluster, now=1.0)
    assert [p.state for p in refused.placements.values()] == [VmState.RUNNING]  # app: request handled, not moved
    assert [e.message for e in refused.events] == [
        "live migration refused: keep-together group app moves as one and cache is not live-migratable (use quick)"]


def test_drain_moves_a_group_to_one_host_and_remembers_where_from():
    placements = {"app": running("app", "h1"), "cache": running("cache", "h1")}
    decision = decide(view(HOSTS, GROUP, placements, statuses=_ran(placements), maintenance={"h1"}), now=1.0)
    app, cache = decision.placements["app"], decision.placements["cache"]
    assert app.state is cache.state is VmState.MIGRATING
    assert app.migration.target == cache.migration.target != "h1"
    assert app.drained_from == cache.drained_from == "h1"


def test_vms_a_drain_moved_return_when_their_host_is_resumed():
    placements = {name: running(name, "h2").model_copy(update={"drained_from": "h1"}) for name in ("app", "cache")}
    statuses = _ran(placements)
    back = decide(view(HOSTS, GROUP, placements, statuses=statuses), now=1.0)
    assert [(p.state, p.migration.target, p.migration.reason, p.drained_from) for p in back.placements.values()] \
        == [(VmState.MIGRATING, "h1", "back to h1 after maintenance", None)] * 2
    # Still in maintenance: nothing yet. The setting off: they stay and forget it.
    still = decide(view(HOSTS, GROUP, placements, statuses=statuses, maintenance={"h1"},
                        records={"h1": HostState.MAINTENANCE, "h2": HostState.ONLINE, "h3": HostState.ONLINE}),
                   now=1.0)
    assert not still.placements
    off = decide(view(HOSTS, GROUP, placements, statuses=statuses,
                      settings=Settings(return_after_maintenance=False)), now=1.0)
    assert [(p.state, p.drained_from) for p in off.placements.values()] == [(VmState.RUNNING, None)] * 2
    # No room left on it: the VM stays, says why, and forgets it.
    filler = VmSpec(name="filler", memory_mib=3500, priority=0)
    crowded = {**placements, "filler": running("filler", "h1")}
    full = decide(view(HOSTS, [*GROUP, filler], crowded, statuses=_ran(crowded)), now=1.0)
    assert full.placements["app"].state is VmState.RUNNING and full.placements["app"].drained_from is None
    assert full.events[0].message == ("running: stays on h2: h1 cannot take it back after maintenance "
                                      "(needs 1024 MiB, 340 MiB free)")
    # A host back from a restart settles first: the VMs wait for it and remember.
    from haven.model.state import HostRecord
    settling = view(HOSTS, GROUP, placements, statuses=statuses)
    settling.hosts["h1"] = replace(settling.hosts["h1"], record=HostRecord(host="h1", state=HostState.ONLINE,
                                                                           since=0.5, reason="rejoined"))
    assert not decide(settling, now=1.0).placements
    # Records written before the field existed still load.
    assert Placement.model_validate({"vm": "web", "state": "running", "host": "h1"}).drained_from is None


def test_a_group_found_apart_comes_back_together_on_its_leaders_host():
    # cache ran on h2 before its spec joined app's group (or its part of a group move failed).
    placements = {"app": running("app", "h1"), "cache": running("cache", "h2")}
    decision = decide(view(HOSTS, GROUP, placements, statuses=_ran(placements)), now=1.0)
    assert set(decision.placements) == {"cache"}
    moving = decision.placements["cache"]
    assert (moving.state, moving.migration.target, moving.migration.reason) == (
        VmState.MIGRATING, "h1", "rejoin group app on h1")
    crowded = [*GROUP, VmSpec(name="filler", memory_mib=2000, priority=0)]
    full = {**placements, "filler": running("filler", "h1")}
    waiting = decide(view(HOSTS, crowded, full, statuses=_ran(full)), now=1.0).placements["cache"]
    assert (waiting.state, waiting.reason) == (VmState.RUNNING,
                                               "apart from group app, which runs on h1: needs 1024 MiB, 816 MiB free")


def test_a_member_without_room_beside_its_group_moves_the_group_live_where_all_fit():
    filler = VmSpec(name="filler", memory_mib=2000, priority=0)
    placements = {"app": running("app", "h1"), "filler": running("filler", "h1"),
                  "cache": Placement(vm="cache", state=VmState.STOPPED, generation=1)}
    decision = decide(view(HOSTS, [*GROUP, filler], placements, statuses=_ran({"app": placements["app"]}),
                           settings=Settings(host_failures_to_tolerate=0)), now=1.0)
    app, cache = decision.placements["app"], decision.placements["cache"]
    assert (app.state, app.migration.kind, app.migration.reason) == (
        VmState.MIGRATING, MigrationKind.LIVE, "group app makes room for cache")
    assert (cache.state, cache.host) == (VmState.STARTING, app.migration.target)
    # A group member that is not live-migratable is not interrupted: cache waits.
    pinned = [GROUP[0].model_copy(update={"migratable": False}), GROUP[1], filler]
    held = decide(view(HOSTS, pinned, placements, statuses=_ran({"app": placements["app"]}),
                       settings=Settings(host_failures_to_tolerate=0)), now=1.0)
    assert set(held.placements) == {"cache"} and held.placements["cache"].state is VmState.STOPPED
    assert held.placements["cache"].reason.startswith("cannot start: kept with group app on h1")


def _handed_over_to(target_lease_now: int) -> tuple:
    """A live migration h1 -> h2 begun while h2 was up under lease 5; h1 says it handed over, h2
    reports a QEMU still waiting for the guest; h2 recorded up under `target_lease_now`."""
    migration = Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2, started=1.0,
                          target_lease=5)
    p = Placement(vm="a", state=VmState.MIGRATING, host="h1", generation=1, migration=migration)
    statuses = [VmStatus(vm="a", host="h1", generation=1, state=LocalState.MIGRATED),
                VmStatus(vm="a", host="h2", generation=2, state=LocalState.INCOMING)]
    cluster = view(HOSTS, [VmSpec(name="a")], {"a": p}, statuses=statuses)
    h2 = cluster.hosts["h2"]
    assert h2.record is not None
    hosts = {**cluster.hosts, "h2": replace(h2, lease=target_lease_now,
                                            record=h2.record.model_copy(update={"lease": target_lease_now}))}
    return decide(replace(cluster, hosts=hosts), now=3.0), p


def test_a_live_migration_whose_target_restarted_after_the_switchover_starts_it_afresh_there():
    decision, _ = _handed_over_to(7)
    p = decision.placements["a"]
    assert (p.state, p.host, p.generation, p.migration) == (VmState.STARTING, "h2", 2, None)
    assert "host h2 restarted after the switchover" in decision.events[-1].message


def test_a_target_under_the_same_lease_that_has_not_reported_running_yet_is_waited_for():
    decision, _ = _handed_over_to(5)  # its report may simply lag the source's
    assert "a" not in decision.placements


def test_a_vm_whose_qemu_handed_it_over_after_an_abort_restarts_once_the_target_runs_it_no_more():
    # An aborted live migration h1 -> h2 (gen 2) had switched over: h1's QEMU says migrated at the
    # generation the VM is placed at there. Nothing runs on h1.
    handed = VmStatus(vm="a", host="h1", generation=1, state=LocalState.MIGRATED)
    vms, placements = [VmSpec(name="a")], {"a": running("a", "h1")}
    waiting = VmStatus(vm="a", host="h2", generation=2, state=LocalState.INCOMING)  # may run it, cut off
    assert "a" not in decide(view(HOSTS, vms, placements, statuses=[handed, waiting]), now=5.0).placements
    lost = {"h1": HostState.ONLINE, "h2": HostState.LOST, "h3": HostState.ONLINE}
    assert "a" not in decide(view(HOSTS, vms, placements, alive={"h1", "h3"}, records=lost, since=5.0,
                                  statuses=[handed]), now=5.1).placements  # h2 lost, not fenced yet
    restarted = decide(view(HOSTS, vms, placements, statuses=[handed]), now=5.0).placements["a"]
    assert (restarted.state, restarted.generation) == (VmState.STARTING, 2)
