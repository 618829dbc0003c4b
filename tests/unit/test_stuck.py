"""Why a down HA VM does not run: the pet's reason names hosts, numbers and the next step."""
from __future__ import annotations

from haven.core.protection import assess
from haven.model.spec import HostSpec, VmSpec
from haven.model.state import ClusterView, HostState, HostView, Placement, VmState, VmView

from .test_protection import host, view, vm


def stuck(name: str, memory: int = 2048, state: VmState = VmState.RECOVERING, on: str | None = None,
          reason: str = "", **spec: object) -> VmView:
    return VmView(spec=VmSpec(name=name, memory_mib=memory, **spec),  # type: ignore[arg-type]
                  placement=Placement(vm=name, state=state, host=on, generation=2, reason=reason))


def reason(cluster: ClusterView) -> str:
    p = assess(cluster)
    assert p.mood == "ill"
    return p.reason


def test_no_room_says_how_much_memory_is_missing_and_which_host_is_in_maintenance() -> None:
    cluster = view([host("h1"), host("h2", memory=2048), host("h3", maintenance=True)],
                   [vm("big", "h1", memory=3072), vm("web", "h2", memory=512), stuck("db", memory=2048)],
                   memory_reserve_mib=256)
    # h1: 4096 - 256 - 3072 = 768 free; h2: 2048 - 256 - 512 = 1280 free: 768 MiB short at best.
    assert reason(cluster) == ("HA VM db (recovering) is not running: no room: needs 2048 MiB, the most "
                               "free is 1280 MiB on h2 (768 MiB short); h3 in maintenance")


def test_a_strict_host_restriction_is_named_with_the_state_of_its_hosts() -> None:
    # h1 has room, but db may run only on h2 (in maintenance) and h3 (lost).
    cluster = view([host("h1"), host("h2", maintenance=True), host("h3", alive=False)],
                   [stuck("db", preferred_hosts=("h2", "h3"), restricted=True)])
    assert reason(cluster).endswith("not running: restricted to h2, h3; h2 in maintenance; h3 lost")


def test_other_filters_are_named_per_host() -> None:
    odd = HostView(spec=HostSpec(name="h2", address="10.0.0.2", vcpus=8, memory_mib=8192, cpu_models=("qemu64",)),
                   alive=True)
    cluster = view([host("h1", memory=1024), odd], [stuck("db")])
    assert reason(cluster).endswith(": no room: needs 2048 MiB, the most free is 1024 MiB on h1 "
                                    "(1024 MiB short); h2: cannot present CPU model x86-64-v2")


def test_a_vm_whose_host_is_lost_waits_for_the_fence() -> None:
    cluster = view([host("h1", alive=False), host("h2")], [stuck("db", on="h1")])
    assert reason(cluster).endswith("not running: waiting for h1 (lost) to be fenced")


def test_an_error_says_what_happened_and_what_to_do() -> None:
    cluster = view([host("h1")], [stuck("db", state=VmState.ERROR, reason="restart limit reached: crashed")])
    assert reason(cluster).endswith("db (error) is not running: restart limit reached: crashed; "
                                    "acknowledge it to try again")
    bare = view([host("h1")], [stuck("db", state=VmState.ERROR)])
    assert reason(bare) == "HA VM db (error) is not running"


def test_starting_names_the_host_and_room_left_falls_back_to_the_managers_reason() -> None:
    starting = view([host("h1"), host("h2")], [stuck("db", state=VmState.STARTING, on="h2")])
    assert reason(starting).endswith("db (starting) is not running: being started on h2")
    # A host could take it: the manager's own note (here admission control) is the reason.
    held = view([host("h1")], [stuck("db", state=VmState.STOPPED, reason="would break N+1")])
    assert reason(held).endswith("db (stopped) is not running: would break N+1")
    unplaced = view([host("h1")], [VmView(spec=VmSpec(name="db"))])
    assert reason(unplaced).endswith("db (not placed) is not running: waiting for the manager to place it")


def test_several_vms_with_the_same_reason_are_grouped() -> None:
    cluster = view([host("h1", memory=1024), host("h2", state=HostState.FENCED, alive=False)],
                   [stuck("a"), stuck("b"), stuck("c", memory=512, on="h2", state=VmState.STARTING)])
    assert reason(cluster) == (
        "HA VMs a (recovering), b (recovering), c (starting) are not running. a, b: no room: needs 2048 MiB, "
        "the most free is 1024 MiB on h1 (1024 MiB short); h2 fenced. c: being started on h2")
