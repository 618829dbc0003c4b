"""Clean shutdown and reboot policies, and a host power-cycled faster than its lease TTL, in the pure
manager (`core.departure`), and what the manager reads of them from the store (`runtime.layout`)."""
from __future__ import annotations

import dataclasses

import pytest

from haven.core.departure import resolve
from haven.core.manager import decide
from haven.model.spec import HostShutdownPolicy, Settings, VmSpec
from haven.model.state import (
    Alive,
    ClusterView,
    Departure,
    HostRecord,
    HostState,
    LocalState,
    Placement,
    VmState,
    VmStatus,
)
from haven.runtime.layout import Layout, read_snapshot
from haven.sim.store import MemoryStore

from .helpers import host, running, view

HOSTS = [host("h1"), host("h2"), host("h3")]
FREEZE, FAILOVER, MIGRATE = HostShutdownPolicy.FREEZE, HostShutdownPolicy.FAILOVER, HostShutdownPolicy.MIGRATE


def with_host(v: ClusterView, name: str, **fields: object) -> ClusterView:
    """`v` with host `name`'s view changed; `record` takes a dict of HostRecord fields."""
    hv = v.hosts[name]
    if isinstance(fields.get("record"), dict):
        base = hv.record or HostRecord(host=name, state=HostState.ONLINE)
        fields["record"] = base.model_copy(update=fields["record"])
    return dataclasses.replace(v, hosts={**v.hosts, name: dataclasses.replace(hv, **fields)})


def leases(v: ClusterView) -> ClusterView:
    """Every host up under lease 1, 2, 3, ... as the manager recorded it."""
    for i, name in enumerate(sorted(v.hosts), start=1):
        v = with_host(v, name, lease=i, record={"lease": i})
    return v


def messages(decision) -> list[str]:
    return [f"{e.subject}: {e.message}" for e in decision.events]


# --- a power cycle faster than the lease ---

def test_a_host_back_under_a_new_lease_restarts_the_vms_it_lost_there_as_a_host_failure():
    vms = [VmSpec(name="web"), VmSpec(name="db", priority=3)]
    v = leases(view(HOSTS, vms, {"web": running("web", "h1"), "db": running("db", "h1", generation=4)}))
    v = with_host(v, "h1", lease=7)  # the old run's statuses are gone: the new run reported nothing
    decision = decide(v, now=10.0)
    record = decision.host_records["h1"]
    assert (record.state, record.lease) == (HostState.ONLINE, 7)
    assert "host h1: online -> online (restarted: lease 7 replaced lease 1 before it expired)" in messages(decision)
    for name, generation in (("web", 1), ("db", 4)):
        p = decision.placements[name]
        # the same host (the one known to hold no copy) and the same generation (its new agent may boot it)
        assert (p.state, p.host, p.generation) == (VmState.STARTING, "h1", generation)
        assert f"vm {name}: running -> recovering (host h1 restarted)" in messages(decision)
    starts = [e for e in decision.events if e.old == "recovering" and e.new == "starting"]
    assert len(starts) == 2  # what the failover metric counts (api.event_stats)


def test_the_manager_waits_for_the_new_run_to_report_before_judging():
    v = leases(view(HOSTS, [VmSpec(name="web")], {"web": running("web", "h1")},
                    statuses=[VmStatus(vm="web", host="h1", generation=1, state=LocalState.RUNNING)]))
    early = decide(with_host(v, "h1", lease=7, reported=False), now=10.0)
    assert not early.placements and not early.host_records


def test_a_vm_the_new_run_still_runs_is_left_alone_and_one_it_is_booting_is_reported():
    vms = [VmSpec(name="kept"), VmSpec(name="booting")]
    statuses = [VmStatus(vm="kept", host="h1", generation=1, state=LocalState.RUNNING),
                VmStatus(vm="booting", host="h1", generation=1, state=LocalState.STARTING)]
    v = leases(view(HOSTS, vms, {"kept": running("kept", "h1"), "booting": running("booting", "h1")},
                    statuses=statuses))
    decision = decide(with_host(v, "h1", lease=7), now=10.0)
    assert "kept" not in decision.placements
    assert decision.placements["booting"].state is VmState.STARTING
    assert decision.host_records["h1"].lease == 7


def test_a_daemon_restart_that_kept_its_lease_is_no_restart():
    v = leases(view(HOSTS, [VmSpec(name="web")], {"web": running("web", "h1")}))
    decision = decide(v, now=10.0)
    assert not decision.placements and not decision.host_records


def test_a_priority_zero_vm_of_a_restarted_host_is_not_started_again_automatically():
    v = leases(view(HOSTS, [VmSpec(name="batch", priority=0)], {"batch": running("batch", "h1")}))
    decision = decide(with_host(v, "h1", lease=7), now=10.0)
    p = decision.placements["batch"]
    assert (p.state, p.host) == (VmState.ERROR, None)


# --- clean departures ---

@pytest.mark.parametrize(("policy", "reboot", "resolved"), [
    (HostShutdownPolicy.CONDITIONAL, True, FREEZE), (HostShutdownPolicy.CONDITIONAL, False, FAILOVER),
    (FREEZE, False, FREEZE), (FAILOVER, True, FAILOVER), (MIGRATE, True, MIGRATE)])
def test_conditional_freezes_a_reboot_and_fails_a_shutdown_over(policy, reboot, resolved):
    assert resolve(policy, reboot) is resolved


def leaving(policy: HostShutdownPolicy, vms: list[VmSpec], placements: dict[str, Placement],
            statuses: list[VmStatus] = (), announced: bool = True) -> ClusterView:
    """h1 announced a departure under `policy`; `announced`: the manager has recorded it already."""
    v = leases(view(HOSTS, vms, placements, statuses=statuses))
    v = with_host(v, "h1", leaving=Departure(policy=policy, reboot=policy is FREEZE))
    if announced:
        v = with_host(v, "h1", record={"state": HostState.MAINTENANCE, "leaving": policy})
    return v


def test_an_announced_departure_takes_the_host_out_of_placement_and_stops_its_vms():
    for policy in (FREEZE, FAILOVER):
        v = leaving(policy, [VmSpec(name="web")], {"web": running("web", "h1")}, announced=False)
        decision = decide(v, now=10.0)
        record = decision.host_records["h1"]
        assert (record.state, record.leaving) == (HostState.MAINTENANCE, policy)
        assert decision.placements["web"].state is VmState.STOPPING
        assert decision.placements["web"].host == "h1"


def test_migrate_drains_the_departing_host():
    v = leaving(MIGRATE, [VmSpec(name="web")], {"web": running("web", "h1")}, announced=False)
    decision = decide(v, now=10.0)
    assert "host h1: online -> maintenance (shutting down, policy migrate)" in messages(decision)
    p = decision.placements["web"]
    assert p.state is VmState.MIGRATING and p.migration is not None and p.migration.target in ("h2", "h3")


def stopping(vm: str, host: str = "h1") -> Placement:
    return Placement(vm=vm, state=VmState.STOPPING, host=host, generation=1)


def test_freeze_keeps_a_stopped_vm_on_its_host_until_the_host_returns():
    stopped = VmStatus(vm="web", host="h1", generation=1, state=LocalState.STOPPED)
    v = leaving(FREEZE, [VmSpec(name="web")], {"web": stopping("web")}, statuses=[stopped])
    frozen = decide(v, now=11.0).placements["web"]
    assert (frozen.state, frozen.host) == (VmState.STOPPED, "h1")
    # h1 gives its lease back: offline at once (nothing placed to run there), the VM stays frozen
    gone = with_host(v, "h1", alive=False, lease=0, leaving=None)
    gone = dataclasses.replace(gone, vms={"web": dataclasses.replace(gone.vms["web"], placement=frozen, statuses={})})
    decision = decide(gone, now=12.0)
    assert decision.host_records["h1"].state is HostState.OFFLINE
    assert "host h1: maintenance -> offline (left cleanly, policy freeze)" in messages(decision)
    assert not decision.fence_hosts
    assert "web" not in decision.placements  # it stays where it is, frozen
    later = decide(with_host(gone, "h1", record={"state": HostState.OFFLINE}), now=60.0)
    assert not later.placements and not later.events  # not recovered elsewhere meanwhile
    # it boots again under a new lease: online at once, and the VM starts there
    back = with_host(gone, "h1", alive=True, lease=9, record={"state": HostState.OFFLINE})
    decision = decide(back, now=70.0)
    assert decision.host_records["h1"].reason == "returned"
    p = decision.placements["web"]
    assert (p.state, p.host, p.generation) == (VmState.STARTING, "h1", 2)


def test_failover_starts_a_stopped_vm_elsewhere_before_the_lease_goes():
    stopped = VmStatus(vm="web", host="h1", generation=1, state=LocalState.STOPPED)
    v = leaving(FAILOVER, [VmSpec(name="web")], {"web": stopping("web")}, statuses=[stopped])
    decision = decide(v, now=11.0)
    p = decision.placements["web"]
    assert p.state is VmState.STARTING and p.host in ("h2", "h3") and p.generation == 2
    assert "vm web: stopping -> recovering (host h1 leaving, policy failover)" in messages(decision)
    still = VmStatus(vm="web", host="h1", generation=1, state=LocalState.RUNNING)
    waiting = leaving(FAILOVER, [VmSpec(name="web")], {"web": stopping("web")}, statuses=[still])
    assert "web" not in decide(waiting, now=11.0).placements  # not before h1 says it stopped


def test_a_departure_that_did_not_finish_is_a_lost_host():
    v = leaving(FAILOVER, [VmSpec(name="web")], {"web": stopping("web")})
    gone = with_host(v, "h1", alive=False, lease=0, leaving=None)
    decision = decide(gone, now=12.0)
    assert decision.host_records["h1"].state is HostState.LOST and decision.fence_hosts == ["h1"]


def test_a_withdrawn_departure_resumes_the_host():
    v = leaving(FREEZE, [], {})
    decision = decide(with_host(v, "h1", leaving=None), now=12.0)
    record = decision.host_records["h1"]
    assert (record.state, record.leaving) == (HostState.ONLINE, None)


def test_an_operator_stop_on_a_departing_host_is_an_ordinary_stop():
    stopped = VmStatus(vm="web", host="h1", generation=1, state=LocalState.STOPPED)
    v = leaving(FAILOVER, [VmSpec(name="web", desired="stopped")], {"web": stopping("web")}, statuses=[stopped])
    p = decide(v, now=11.0).placements["web"]
    assert (p.state, p.host) == (VmState.STOPPED, None)


# --- what the manager reads from the store ---

def test_the_alive_key_carries_the_lease_and_the_departure_and_old_statuses_mean_not_reported_yet():
    layout, store = Layout("c"), MemoryStore(lambda: 0.0)
    client = store.client("t")
    client.put(layout.host("h1"), host("h1").model_dump_json())
    old, new = client.lease_grant(10.0), client.lease_grant(10.0)
    status = VmStatus(vm="web", host="h1", generation=1, state=LocalState.RUNNING).model_dump_json()
    client.put(layout.status("h1", "web"), status, lease=old.id)
    departure = Departure(policy=FREEZE, reboot=True)
    client.put(layout.alive("h1"), Alive(since=1.0, leaving=departure).model_dump_json(), lease=new.id)
    hv = read_snapshot(client, layout).view().hosts["h1"]
    assert (hv.alive, hv.lease, hv.leaving, hv.reported) == (True, new.id, departure, False)
    client.put(layout.status("h1", "web"), status, lease=new.id)  # the new run's first report
    assert read_snapshot(client, layout).view().hosts["h1"].reported
    client.put(layout.alive("h1"), '{"since": 2.0}', lease=new.id)  # as versions before the field wrote it
    assert read_snapshot(client, layout).view().hosts["h1"].leaving is None


def test_settings_name_the_policy_and_refuse_an_unknown_one():
    assert Settings().shutdown_policy is MIGRATE
    assert Settings(shutdown_policy="conditional").shutdown_policy is HostShutdownPolicy.CONDITIONAL
    with pytest.raises(ValueError, match="shutdown_policy"):
        Settings(shutdown_policy="hibernate")


def test_a_live_migration_whose_source_died_goes_on_on_the_target_never_back():
    """The move may have finished unreported before the source was killed (a self-fence, then a new
    lease): the target is the one place a copy can run, so the VM goes there, not back."""
    from haven.model.spec import MigrationKind
    from haven.model.state import Migration
    m = Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2, started=5.0)
    p = Placement(vm="web", state=VmState.MIGRATING, host="h1", generation=1, migration=m)
    incoming = VmStatus(vm="web", host="h2", generation=2, state=LocalState.INCOMING)
    decision = decide(view(HOSTS, [VmSpec(name="web")], {"web": p}, statuses=[incoming]), now=6.0)
    moved = decision.placements["web"]
    assert (moved.state, moved.host, moved.generation, moved.migration) == (VmState.STARTING, "h2", 2, None)
