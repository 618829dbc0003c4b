"""The protection level (the pet's mood) from a cluster view."""
from __future__ import annotations

from haven.core.protection import assess, can_survive, host_state
from haven.model.spec import DesiredState, HostSpec, Settings, VmSpec
from haven.model.state import (ClusterView, HostAdmin, HostRecord, HostState, HostView, Placement,
                               VmState, VmView)


def host(name: str, memory: int = 4096, alive: bool = True, state: HostState = HostState.ONLINE,
         maintenance: bool = False) -> HostView:
    return HostView(spec=HostSpec(name=name, address=f"10.0.0.{name[-1]}", vcpus=8, memory_mib=memory),
                    alive=alive, record=HostRecord(host=name, state=state),
                    admin=HostAdmin(maintenance=maintenance))


def vm(name: str, on: str | None, memory: int = 1024, priority: int = 2,
       state: VmState = VmState.RUNNING, desired: DesiredState = DesiredState.RUNNING) -> VmView:
    placement = Placement(vm=name, state=state, host=on, generation=1) if on or state != VmState.RUNNING else None
    return VmView(spec=VmSpec(name=name, memory_mib=memory, priority=priority, desired=desired),
                  placement=placement)


def view(hosts: list[HostView], vms: list[VmView], **settings: object) -> ClusterView:
    return ClusterView(settings=Settings(**{"memory_reserve_mib": 0, **settings}),
                       hosts={h.spec.name: h for h in hosts}, vms={v.spec.name: v for v in vms})


def test_content_when_all_run_and_one_host_loss_fits() -> None:
    p = assess(view([host("h1"), host("h2")], [vm("web", "h1"), vm("db", "h2")]))
    assert (p.level, p.mood) == ("protected", "content")
    assert "all 2 HA VMs run" in p.reason and "survives 1 host failure" in p.reason


def test_ill_names_the_vm_that_is_down() -> None:
    p = assess(view([host("h1"), host("h2")],
                    [vm("web", "h1"), vm("db", "h2", state=VmState.RECOVERING)]))
    assert (p.level, p.mood) == ("down", "ill")
    assert "db (recovering)" in p.reason and "web" not in p.reason


def test_ill_when_an_ha_vm_was_never_placed() -> None:
    p = assess(view([host("h1")], [VmView(spec=VmSpec(name="web"))]))
    assert p.mood == "ill" and "web (not placed)" in p.reason


def test_stopped_or_non_ha_vms_do_not_make_it_ill() -> None:
    p = assess(view([host("h1"), host("h2")],
                    [vm("off", None, state=VmState.STOPPED, desired=DesiredState.STOPPED),
                     vm("scratch", None, priority=0, state=VmState.STOPPED)]))
    assert p.mood == "content" and p.reason == "no HA VMs to protect"


def test_migrating_counts_as_running() -> None:
    p = assess(view([host("h1"), host("h2")], [vm("web", "h1", state=VmState.MIGRATING)]))
    assert p.mood == "content"


def test_worried_when_the_survivors_lack_memory() -> None:
    # h1 carries 3 GiB of HA VMs; h2 has 4 GiB minus 2 GiB used = 2 GiB free.
    p = assess(view([host("h1"), host("h2")],
                    [vm("a", "h1", 1536), vm("b", "h1", 1536), vm("c", "h2", 2048)]))
    assert (p.level, p.mood) == ("degraded", "worried")
    assert "losing h1" in p.reason


def test_memory_reserve_is_kept_free() -> None:
    hosts = [host("h1"), host("h2")]
    vms = [vm("a", "h1", 2048), vm("b", "h2", 1024)]
    assert assess(view(hosts, vms, memory_reserve_mib=0)).mood == "content"
    assert assess(view(hosts, vms, memory_reserve_mib=1536)).mood == "worried"


def test_bin_packing_not_just_the_total() -> None:
    # 2 GiB free in total on h2+h3, but in two 1 GiB holes: a 1.5 GiB VM fits in neither.
    hosts = [host("h1"), host("h2", 2048), host("h3", 2048)]
    vms = [vm("big", "h1", 1536), vm("x", "h2", 1024), vm("y", "h3", 1024)]
    p = assess(view(hosts, vms))
    assert p.mood == "worried" and "losing h1" in p.reason


def test_single_host_cannot_tolerate_a_failure() -> None:
    p = assess(view([host("h1"), host("h2", alive=False, state=HostState.LOST)], [vm("web", "h1")]))
    assert p.mood == "worried" and "only 1 usable host(s) (h1)" in p.reason


def test_hosts_in_maintenance_do_not_count_as_room() -> None:
    hosts = [host("h1"), host("h2", maintenance=True), host("h3", state=HostState.MAINTENANCE)]
    p = assess(view(hosts, [vm("web", "h1")]))
    assert p.mood == "worried"
    assert host_state(hosts[1]) == HostState.MAINTENANCE


def test_two_failures_to_tolerate() -> None:
    hosts = [host("h1"), host("h2"), host("h3")]
    vms = [vm("a", "h1", 2048), vm("b", "h2", 2048), vm("c", "h3", 1024)]
    assert assess(view(hosts, vms, host_failures_to_tolerate=1)).mood == "content"
    p = assess(view(hosts, vms, host_failures_to_tolerate=2))
    assert p.mood == "worried" and "losing h1, h2" in p.reason


def test_zero_failures_to_tolerate_is_always_content_when_running() -> None:
    p = assess(view([host("h1")], [vm("web", "h1", 4096)], host_failures_to_tolerate=0))
    assert p.mood == "content"
    assert can_survive(view([host("h1")], [vm("web", "h1")]), 0) == (True, "")


def test_host_without_lease_is_lost_even_if_record_says_online() -> None:
    assert host_state(host("h1", alive=False)) == HostState.LOST


def test_never_content_when_every_host_is_in_maintenance() -> None:
    # No HA VM sits on a usable host, yet every one of them is lost with its host.
    hosts = [host("h1", maintenance=True), host("h2", state=HostState.MAINTENANCE)]
    p = assess(view(hosts, [vm("web", "h1"), vm("db", "h2")]))
    assert (p.level, p.mood) == ("degraded", "worried")
    ok, why = can_survive(view(hosts, [vm("web", "h1")]), 1)
    assert not ok and "only 0 usable host(s) (none)" in why
    alone = can_survive(view([host("h1", maintenance=True)], [vm("web", "h1")]), 1)
    assert alone == (False, "only 0 usable host(s) (none): cannot survive 1 host failure(s)")


def test_ha_vms_on_a_host_in_maintenance_count_when_the_others_have_room() -> None:
    hosts = [host("h1", maintenance=True), host("h2", memory=4096)]
    assert assess(view(hosts, [vm("web", "h1", 1024)])).mood == "content"
    assert assess(view(hosts, [vm("web", "h1", 1024), vm("big", "h2", 3500)])).mood == "worried"
