"""core.drain: which drains cannot finish, decided on a view alone."""
from __future__ import annotations

from haven.core.drain import drain_refusal
from haven.model.spec import DesiredState, MigrationKind, Settings, VmSpec
from haven.model.state import Migration, Placement, VmState

from .helpers import host, running, view

SETTINGS = Settings(memory_reserve_mib=0, host_failures_to_tolerate=0)


def test_a_drain_with_room_is_not_refused() -> None:
    vms = [VmSpec(name="a", memory_mib=1024), VmSpec(name="b", memory_mib=1024)]
    cluster = view([host("h1"), host("h2", memory=2048)], vms,
                   {"a": running("a", "h1"), "b": running("b", "h1")}, settings=SETTINGS)
    assert drain_refusal(cluster, "h1") is None


def test_only_vms_that_end_up_on_the_host_must_move() -> None:
    """A VM migrating to the host counts, one leaving it does not (its target is booked), nor one
    meant to stop."""
    vms = [VmSpec(name="in", memory_mib=1024), VmSpec(name="out", memory_mib=1024),
           VmSpec(name="off", memory_mib=1024, desired=DesiredState.STOPPED)]
    arriving = Placement(vm="in", state=VmState.MIGRATING, host="h3", generation=1, migration=Migration(
        kind=MigrationKind.LIVE, source="h3", target="h1", generation=2, started=0.0))
    leaving = Placement(vm="out", state=VmState.MIGRATING, host="h1", generation=1, migration=Migration(
        kind=MigrationKind.LIVE, source="h1", target="h2", generation=2, started=0.0))
    cluster = view([host("h1"), host("h2", memory=1024), host("h3")], vms,
                   {"in": arriving, "out": leaving, "off": running("off", "h1")}, alive={"h1", "h2"},
                   settings=SETTINGS)
    refusal = drain_refusal(cluster, "h1")
    assert refusal is not None
    assert refusal.problems == (("VM in (1024 MiB, priority 2) cannot move: h2, the only other online host, "
                                "has 0 MiB free (1024 MiB missing)"),)


def test_a_drain_already_asked_for_is_not_checked_again() -> None:
    cluster = view([host("h1"), host("h2", memory=512)], [VmSpec(name="a", memory_mib=1024)],
                   {"a": running("a", "h1")}, settings=SETTINGS, maintenance={"h1"})
    assert drain_refusal(cluster, "h1") is None


def test_a_host_that_is_down_is_refused_with_no_vm_lines() -> None:
    cluster = view([host("h1"), host("h2")], [], alive={"h2"}, settings=SETTINGS)
    refusal = drain_refusal(cluster, "h1")
    assert refusal is not None and refusal.problems == ()
    assert refusal.detail.startswith("host h1 is lost: it runs no VM to drain")


def test_the_scheduler_filters_are_the_reasons() -> None:
    vm = VmSpec(name="a", memory_mib=256, cpu_model="EPYC")
    cluster = view([host("h1", cpu_models=["x86-64-v2", "EPYC"]), host("h2")], [vm], {"a": running("a", "h1")},
                   settings=SETTINGS)
    refusal = drain_refusal(cluster, "h1")
    assert refusal is not None
    assert refusal.problems == (("VM a (256 MiB, priority 2) cannot move: h2, the only other online host, "
                                "cannot present CPU model EPYC"),)


def test_a_keep_together_group_moves_as_one() -> None:
    """Each member would fit on h2 alone; together they do not, so neither moves."""
    vms = [VmSpec(name="app", memory_mib=1024, affinity_group="g"),
           VmSpec(name="cache", memory_mib=512, affinity_group="g")]
    cluster = view([host("h1"), host("h2", memory=1024)], vms,
                   {"app": running("app", "h1"), "cache": running("cache", "h1")}, settings=SETTINGS)
    refusal = drain_refusal(cluster, "h1")
    assert refusal is not None
    assert refusal.detail.startswith("the drain of h1 cannot finish: 2 VMs (app, cache) have nowhere to go")
    assert refusal.problems == (
        ("VM app (1024 MiB, priority 2) cannot move with cache (group g, 1536 MiB together): h2, the only "
        "other online host, has 1024 MiB free (512 MiB missing)"),
        "VM cache (512 MiB, priority 2) cannot move: it moves only with app (keep-together group g)")


def test_a_group_member_joins_the_rest_of_its_group() -> None:
    """Part of the group already runs on h3: the member on h1 may only go there."""
    vms = [VmSpec(name="app", memory_mib=1024, affinity_group="g"),
           VmSpec(name="cache", memory_mib=1024, affinity_group="g")]
    cluster = view([host("h1"), host("h2"), host("h3", memory=1024)], vms,
                   {"app": running("app", "h1"), "cache": running("cache", "h3")}, settings=SETTINGS)
    refusal = drain_refusal(cluster, "h1")
    assert refusal is not None
    assert refusal.problems == (("VM app (1024 MiB, priority 2) cannot move: h3, the only host its group runs on, "
                                "has 0 MiB free (1024 MiB missing)"),)
