from dataclasses import replace

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
