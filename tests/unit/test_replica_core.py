"""Replicated pools in the pure core: where a VM may start (the manager) and what a host's agent
does with its copies and mirrors."""
from dataclasses import replace

import pytest

from haven.core.decision import Decision
from haven.core.index import ClusterIndex
from haven.core.manager import decide
from haven.core.replica import record_primaries
from haven.core.replica_agent import (
    Mirror,
    Record,
    Release,
    ReplicaInput,
    Serve,
    Unserve,
    before_launch,
    plan_replication,
)
from haven.core.round import Round
from haven.model.replica import CopyState, DiskCopy, PoolKind, PoolSpec, ReplicaRecord
from haven.model.spec import ClusterConfig, Disk, MigrationKind, VmSpec
from haven.model.state import HostState, LocalState, Migration, Placement, VmState, VmStatus
from haven.ports.hypervisor import LocalVm
from haven.ports.replication import MirrorPhase, MirrorState

from .helpers import host, running, view

POOL = PoolSpec(name="pair", kind=PoolKind.REPLICATED, hosts=("h1", "h2"))
HOSTS = [host("h1", pools=("pair",)), host("h2", pools=("pair",)), host("h3")]
VM = VmSpec(name="db", priority=3, disks=(Disk(pool="pair", size_mib=64, file="db-0.raw"),))


def record(state: CopyState, primary: str = "h1", copy_host: str = "h2") -> ReplicaRecord:
    return ReplicaRecord(vm="db", primary=primary, copies=(DiskCopy(disk=0, host=copy_host, state=state),),
                         generation=1)


def pair_view(placement: Placement | None, rec: ReplicaRecord | None, alive=None, records=None, since=0.0,
              statuses=()):
    v = view(HOSTS, [VM], {"db": placement} if placement else {}, alive=alive, records=records, since=since,
             statuses=statuses)
    return replace(v, pools={"pair": POOL}, replicas={"db": rec} if rec else {})


def lost_h1(rec: ReplicaRecord) -> tuple:
    """h1 lost long enough ago that its VMs may be recovered."""
    recovering = Placement(vm="db", state=VmState.RECOVERING, host="h1", generation=1)
    states = {"h1": HostState.LOST, "h2": HostState.ONLINE, "h3": HostState.ONLINE}
    return decide(pair_view(recovering, rec, alive={"h2", "h3"}, records=states), now=10.0), recovering


def test_a_pool_declaration_names_two_hosts_that_list_it_and_no_other():
    with pytest.raises(ValueError, match="two different hosts"):
        PoolSpec(name="pair", kind=PoolKind.REPLICATED, hosts=("h1",))
    with pytest.raises(ValueError, match="h3 lists replicated pool pair"):
        ClusterConfig(hosts=(host("h1", pools=("pair",)), host("h2", pools=("pair",)), host("h3", pools=("pair",))),
                      pools=(POOL,))
    with pytest.raises(ValueError, match="host h2 holds a copy of replicated pool pair"):
        ClusterConfig(hosts=(host("h1", pools=("pair",)), host("h2")), pools=(POOL,))
    with pytest.raises(ValueError, match=r"disk 0 is on replicated pool pair: give it a raw image \(file: web-0.raw\)"):
        ClusterConfig(hosts=tuple(HOSTS), pools=(POOL,), vms=(VmSpec(name="web", disks=(Disk(pool="pair"),)),))
    ClusterConfig(hosts=tuple(HOSTS), pools=(POOL,), vms=(VM,))


def test_a_first_start_records_its_host_as_primary_and_the_other_copy_syncing():
    decision = decide(pair_view(None, None), now=1.0)
    placed = decision.placements["db"]
    assert placed.state is VmState.STARTING and placed.host in ("h1", "h2")  # h3 cannot reach the pool
    rec = decision.replicas["db"]
    assert rec.primary == placed.host
    assert rec.copies == (DiskCopy(disk=0, host=POOL.peer(placed.host), state=CopyState.SYNCING, since=1.0),)


def test_a_lost_primary_fails_over_to_an_in_sync_replica_which_becomes_primary():
    decision, _ = lost_h1(record(CopyState.IN_SYNC))
    placed = decision.placements["db"]
    assert (placed.state, placed.host) == (VmState.STARTING, "h2")
    rec = decision.replicas["db"]
    assert rec.primary == "h2" and rec.generation == placed.generation
    assert rec.copies[0].host == "h1" and rec.copies[0].state is CopyState.STALE


@pytest.mark.parametrize("state", [CopyState.STALE, CopyState.SYNCING])
def test_a_lost_primary_never_fails_over_to_a_replica_that_lacks_writes(state):
    decision, recovering = lost_h1(record(state))
    placed = decision.placements.get("db", recovering)
    assert placed.state is VmState.RECOVERING and placed.host is None  # waits: h1 down, h2 behind
    assert f"its copy there lacks writes ({state.value}); h1 has them" in placed.reason
    assert "db" not in decision.replicas


def test_every_placement_path_asks_the_copy_rule_through_the_round_capacity():
    def capacity(rec: ReplicaRecord):  # what a migration, a drain or a failover is checked against
        v = pair_view(running("db", "h1"), rec)
        return Round(v, 1.0, v.settings, {n: h.record for n, h in v.hosts.items()}, Decision(),
                     ClusterIndex.build(v)).capacity

    assert capacity(record(CopyState.STALE)).why_not(VM, "h2") == "its copy there lacks writes (stale); h1 has them"
    assert capacity(record(CopyState.IN_SYNC)).why_not(VM, "h2") is None


# --- the agent ---

def agent_input(host: str, rec: ReplicaRecord, mirror: MirrorPhase = MirrorPhase.ABSENT, answers: bool = True,
                exports: frozenset = frozenset(), local_state: LocalState | None = LocalState.RUNNING,
                placement: Placement | None = None) -> ReplicaInput:
    placement = placement or running("db", rec.primary)
    local = {"db": LocalVm("db", placement.generation, local_state)} if local_state and host == rec.primary else {}
    return ReplicaInput(host=host, now=5.0, records={"db": rec}, placements={"db": placement}, local=local,
                        addresses={"h1": "10.0.0.1", "h2": "10.0.0.2"}, exports=exports,
                        mirrors={("db", 0): MirrorState(mirror, 10, 100)}, answers={("db", 0): answers})


def test_the_replica_host_serves_its_copy_while_the_vm_runs_elsewhere_and_stops_when_it_starts_here():
    rec = record(CopyState.IN_SYNC)
    assert plan_replication(agent_input("h2", rec)) == [Serve("db", 0)]
    assert plan_replication(agent_input("h2", rec, exports=frozenset({("db", 0)}))) == []
    starting_here = Placement(vm="db", state=VmState.STARTING, host="h2", generation=2)
    assert plan_replication(agent_input("h2", rec, exports=frozenset({("db", 0)}), placement=starting_here)) == [
        Unserve("db", 0)]


def test_the_primary_mirrors_when_the_replica_answers_and_records_it_in_sync_once_ready():
    rec = record(CopyState.STALE)
    assert plan_replication(agent_input("h1", rec)) == [Mirror("db", 0, "h2", "10.0.0.2")]
    syncing = plan_replication(agent_input("h1", rec, MirrorPhase.SYNCING))
    assert [(a.copy.state, a.copy.done) for a in syncing] == [(CopyState.SYNCING, 10)]
    ready = plan_replication(agent_input("h1", record(CopyState.SYNCING), MirrorPhase.IN_SYNC))
    assert [a.copy.state for a in ready if isinstance(a, Record)] == [CopyState.IN_SYNC]
    assert plan_replication(agent_input("h1", record(CopyState.IN_SYNC), MirrorPhase.IN_SYNC)) == []


def test_a_lost_replica_is_recorded_stale_before_its_mirror_is_released():
    actions = plan_replication(agent_input("h1", record(CopyState.IN_SYNC), MirrorPhase.IN_SYNC, answers=False))
    assert len(actions) == 1 and isinstance(actions[0], Release)
    assert actions[0].first is not None and actions[0].first.state is CopyState.STALE
    assert actions[0].first.reason == "the replica did not answer"
    again = plan_replication(agent_input("h1", record(CopyState.STALE), MirrorPhase.IN_SYNC, answers=False))
    assert again == [Release("db", 0, None)]  # already recorded: release at once
    broken = plan_replication(agent_input("h1", record(CopyState.IN_SYNC), MirrorPhase.BROKEN))
    assert isinstance(broken[0], Release) and broken[0].first.reason == "the replica reported an error"


def test_a_vm_not_running_at_its_placement_generation_is_not_mirrored():
    rec = record(CopyState.STALE)
    old_boot = agent_input("h1", rec, placement=running("db", "h1", generation=2))  # local QEMU is generation 2...
    assert plan_replication(replace(old_boot, local={"db": LocalVm("db", 1, LocalState.RUNNING)})) == []
    assert plan_replication(agent_input("h1", rec, local_state=LocalState.STARTING)) == []


def test_a_restart_on_the_primary_first_makes_its_in_sync_copies_syncing():
    new = before_launch(record(CopyState.IN_SYNC), "h1", 7.0)
    assert new is not None and new.copies[0].state is CopyState.SYNCING and new.copies[0].since == 7.0
    assert before_launch(record(CopyState.STALE), "h1", 7.0) is None
    assert before_launch(record(CopyState.IN_SYNC), "h2", 7.0) is None  # not its primary: the manager flipped it


def test_an_operator_may_promote_a_stale_copy_of_a_vm_that_runs_nowhere_and_the_record_says_so():
    from haven.model.state import RequestAction, VmRequest
    stopped = Placement(vm="db", state=VmState.RECOVERING, host=None, generation=3)
    states = {"h1": HostState.OFFLINE, "h2": HostState.ONLINE, "h3": HostState.ONLINE}

    def ask(target, placement=stopped, rec=None):
        v = pair_view(placement, rec or record(CopyState.STALE), alive={"h2", "h3"}, records=states)
        request = VmRequest(id="r1", action=RequestAction.PROMOTE, target=target)
        v.vms["db"] = replace(v.vms["db"], request=request)
        return decide(v, now=20.0)

    done = ask("h2")
    placed, rec = done.placements["db"], done.replicas["db"]
    assert (placed.state, placed.host, placed.generation) == (VmState.STARTING, "h2", 4)
    assert rec.primary == "h2" and rec.promoted_at == 20.0 and rec.generation == 4
    assert rec.copies[0].host == "h1" and rec.copies[0].state is CopyState.STALE

    def said(decision) -> str:
        return " | ".join(e.message for e in decision.events)

    assert "promote refused: name the host whose copy to start from (h2)" in said(ask("h3"))
    assert "promote only a VM that runs nowhere" in said(ask("h2", running("db", "h1")))
    assert "promote refused: the copy on h2 lacks nothing" in said(ask("h2", rec=record(CopyState.IN_SYNC)))


def test_a_migration_to_the_replica_makes_it_the_only_safe_host_until_it_ends():
    """After the switchover the target writes alone before any record can say so: from the
    migration's start, the record names it `incoming`, and only it may take the VM."""
    migrating = Placement(vm="db", state=VmState.MIGRATING, host="h1", generation=1,
                          migration=Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2,
                                              started=1.0))
    rec = record(CopyState.IN_SYNC)
    v = pair_view(running("db", "h1"), rec)
    decision = Decision(placements={"db": migrating})
    record_primaries(v, decision, 2.0)
    incoming = decision.replicas["db"]
    assert incoming.incoming == "h2" and incoming.primary == "h1"
    assert incoming.holds_everything("h2") and not incoming.holds_everything("h1")
    aborted = Decision(placements={"db": running("db", "h1")})
    record_primaries(replace(v, replicas={"db": incoming}), aborted, 3.0)
    assert aborted.replicas["db"].incoming is None and aborted.replicas["db"].holds_everything("h1")
    done = Decision(placements={"db": running("db", "h2", generation=2)})
    record_primaries(replace(v, replicas={"db": incoming}), done, 3.0)
    assert done.replicas["db"].primary == "h2" and done.replicas["db"].incoming is None
    assert done.replicas["db"].copies[0].host == "h1" and done.replicas["db"].copies[0].state is CopyState.STALE


LIVE_TO_H2 = Placement(vm="db", state=VmState.MIGRATING, host="h1", generation=1,
                       migration=Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2,
                                           started=1.0))


def target_failed(source: LocalState | None, target: HostState = HostState.FENCED,
                  target_status: LocalState | None = None, rec: ReplicaRecord | None = None) -> Decision:
    """A live migration h1 -> h2 whose target failed (gone, or its QEMU broken) while the source
    reports `source` (None: nothing)."""
    rec = rec or record(CopyState.IN_SYNC).model_copy(update={"incoming": "h2"})
    statuses = [VmStatus(vm="db", host=host, generation=generation, state=state)
                for host, generation, state in (("h1", 1, source), ("h2", 2, target_status)) if state]
    states = {"h1": HostState.ONLINE, "h2": target, "h3": HostState.ONLINE}
    alive = {"h1", "h3"} | ({"h2"} if target is HostState.ONLINE else set())
    return decide(pair_view(LIVE_TO_H2, rec, alive=alive, records=states, statuses=statuses), now=10.0)


@pytest.mark.parametrize("source", [None, LocalState.STOPPED, LocalState.CRASHED])
def test_a_live_migration_whose_target_is_gone_is_not_aborted_onto_a_source_that_runs_it_no_more(source):
    """The source may have switched over unreported (then died: a self-fence), and the target
    written alone since: the copy rule keeps the VM off the source; it waits for the target."""
    decision = target_failed(source)
    placed = decision.placements["db"]
    assert (placed.state, placed.host, placed.generation) == (VmState.RECOVERING, "h2", 2)
    assert "not back on h1: a move to h2 is under way" in decision.events[-1].reason
    assert "db" not in decision.replicas  # still `incoming`: only h2 may take it
    waiting = decide(pair_view(placed, record(CopyState.IN_SYNC).model_copy(update={"incoming": "h2"}),
                               alive={"h1", "h3"},
                               records={"h1": HostState.ONLINE, "h2": HostState.OFFLINE, "h3": HostState.ONLINE}),
                     now=11.0)
    assert waiting.placements["db"].state is VmState.RECOVERING and waiting.placements["db"].host is None


def test_a_live_migration_whose_target_is_gone_goes_back_to_a_source_that_still_runs_it():
    """No switchover yet (the guest runs on the source): the target never wrote alone."""
    placed = target_failed(LocalState.RUNNING).placements["db"]
    assert (placed.state, placed.host, placed.generation) == (VmState.RUNNING, "h1", 1)


def test_a_source_still_saying_migrating_out_is_waited_for_not_trusted():
    """Its word may predate a switchover it could not report (the store out of reach): the VM
    stays migrating until the source says running (the move failed) or migrated."""
    decision = target_failed(LocalState.MIGRATING_OUT)
    assert "db" not in decision.placements or decision.placements["db"].state is VmState.MIGRATING
    assert any("waiting for h1 to say whether the guest left" in (e.reason or "") for e in decision.events)


def test_a_live_migration_of_a_vm_without_a_replica_record_goes_back_to_its_source():
    placed = decide(replace(pair_view(LIVE_TO_H2, None, alive={"h1", "h3"},
                                      records={"h1": HostState.ONLINE, "h2": HostState.FENCED,
                                               "h3": HostState.ONLINE}), pools={}), now=10.0).placements["db"]
    assert (placed.state, placed.host) == (VmState.RUNNING, "h1")


def test_a_live_migration_whose_target_crashed_after_the_source_died_restarts_on_the_target():
    decision = target_failed(LocalState.STOPPED, HostState.ONLINE, LocalState.CRASHED)
    placed = decision.placements["db"]
    assert (placed.state, placed.host, placed.generation) == (VmState.STARTING, "h2", 3)
    assert decision.replicas["db"].primary == "h2" and decision.replicas["db"].incoming is None
