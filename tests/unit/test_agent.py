from haven.core.agent import (AgentInput, Kill, MigrateLive, PrepareIncoming, PrepareRestore, Save, Start, reconcile,
                              status_of)
from haven.model.spec import MigrationKind, Settings, VmSpec
from haven.model.state import LocalState, Migration, Placement, VmState, VmStatus
from haven.ports.hypervisor import LocalVm

SPECS = {"a": VmSpec(name="a"), "b": VmSpec(name="b")}


def agent(placements, local=(), now=10.0, renewed=9.8, peers=(), host="h1"):
    return reconcile(AgentInput(
        host=host, now=now, last_renewal_sent=renewed, settings=Settings(), placements=placements,
        specs=SPECS, local={vm.name: vm for vm in local},
        peer_statuses={(s.vm, s.host): s for s in peers}, addresses={"h2": "10.0.0.2"}))


def placed(vm, host, generation=1, state=VmState.STARTING, **extra):
    return Placement(vm=vm, state=state, host=host, generation=generation, **extra)


def test_starts_only_what_is_placed_here_at_its_generation():
    out = agent({"a": placed("a", "h1", 3), "b": placed("b", "h2")})
    assert out.actions == [Start("a", 3)]


def test_self_fences_when_the_last_good_renewal_is_too_old_and_starts_nothing():
    local = [LocalVm("a", 1, LocalState.RUNNING), LocalVm("b", 1, LocalState.STOPPED)]
    fresh = agent({"a": placed("a", "h1")}, local, now=11.49, renewed=10.0)
    assert not fresh.self_fenced
    out = agent({"a": placed("a", "h1"), "b": placed("b", "h1")}, local, now=11.5, renewed=10.0)
    assert out.self_fenced
    assert out.actions == [Kill("a", "self-fence: no lease renewal for 1.500 s")]


def test_kills_a_copy_placed_elsewhere_or_of_an_older_generation():
    local = [LocalVm("a", 1, LocalState.RUNNING), LocalVm("b", 1, LocalState.RUNNING)]
    out = agent({"a": placed("a", "h2", 2), "b": placed("b", "h1", 2)}, local)
    assert Kill("a", "stale copy (placed on h2 generation 2)") in out.actions
    assert any(isinstance(a, Kill) and a.vm == "b" and "stale generation" in a.reason for a in out.actions)
    assert not any(isinstance(a, Start) for a in out.actions)


def test_live_migration_target_prepares_then_source_sends_when_target_is_ready():
    m = Migration(kind=MigrationKind.LIVE, source="h1", target="h2", generation=2, started=5.0)
    p = placed("a", "h1", 1, VmState.MIGRATING, migration=m)
    assert agent({"a": p}, host="h2").actions == [PrepareIncoming("a", 2)]
    running = [LocalVm("a", 1, LocalState.RUNNING)]
    assert agent({"a": p}, running).actions == []  # target not ready yet
    ready = VmStatus(vm="a", host="h2", generation=2, state=LocalState.INCOMING)
    assert agent({"a": p}, running, peers=[ready]).actions == [MigrateLive("a", "h2", "10.0.0.2", m.attempt)]
    failed = [LocalVm("a", 1, LocalState.RUNNING, failed_migration=m.attempt)]
    assert agent({"a": p}, failed, peers=[ready]).actions == []  # do not retry a failed attempt


def test_quick_migration_saves_while_the_target_prepares_a_standby_then_restores_into_it():
    m = Migration(kind=MigrationKind.QUICK, source="h1", target="h2", generation=2, started=5.0)
    source = placed("a", "h1", 1, VmState.MIGRATING, migration=m)
    assert agent({"a": source}, [LocalVm("a", 1, LocalState.RUNNING)]).actions == [Save("a", m.attempt)]
    assert agent({"a": source}, host="h2").actions == [PrepareRestore("a", 2)]
    standby = [LocalVm("a", 2, LocalState.INCOMING)]
    assert agent({"a": source}, standby, host="h2").actions == []  # waits for the state file
    target = placed("a", "h2", 2, VmState.MIGRATING, migration=m, restore_from="/pool/a.state")
    assert agent({"a": target}, standby, host="h2").actions == [Start("a", 2, "/pool/a.state")]
    # no standby (it failed to launch, or the manager picked another target): a new process
    assert agent({"a": target}, host="h2").actions == [Start("a", 2, "/pool/a.state")]
    restoring = [LocalVm("a", 2, LocalState.STARTING)]
    assert agent({"a": target}, restoring, host="h2").actions == []


def test_a_standby_left_by_an_aborted_quick_migration_is_killed():
    back = placed("a", "h1", 1, VmState.RUNNING)
    out = agent({"a": back}, [LocalVm("a", 2, LocalState.INCOMING)], host="h2")
    assert out.actions == [Kill("a", "stale copy (placed on h1 generation 1)")]


def test_a_status_reports_the_local_vm():
    local = LocalVm("a", 1, LocalState.RUNNING, since=3.0, failed_migration="x")
    assert status_of("h1", local) == VmStatus(vm="a", host="h1", generation=1, state=LocalState.RUNNING,
                                              since=3.0, failed_migration="x")


def test_the_paused_source_of_a_finished_live_migration_is_retired_not_killed_as_stale():
    out = agent({"a": placed("a", "h3", 2)}, [LocalVm("a", 1, LocalState.MIGRATED)])
    assert out.actions == [Kill("a", "retired the source copy after migration to h3", retired_to="h3")]
    still_running = agent({"a": placed("a", "h3", 2)}, [LocalVm("a", 1, LocalState.RUNNING)])
    assert still_running.actions == [Kill("a", "stale copy (placed on h3 generation 2)")]
