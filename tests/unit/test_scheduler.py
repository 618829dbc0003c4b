from haven.core.scheduler import Capacity, Shortfall, admission_problem, build_loads, failure_shortfall, plan_balance
from haven.model.spec import PlacementPolicy, Settings, VmSpec

from .helpers import host, running

SETTINGS = Settings(memory_reserve_mib=0)


def select_host(vm, loads, settings):
    return Capacity(loads, settings).select(vm)


def loads(hosts, vms, placements, usable=None):
    return build_loads({h.name: h for h in hosts}, usable or [h.name for h in hosts],
                       {v.name: v for v in vms}, placements)


def test_filters_say_why_a_host_cannot_take_a_vm():
    hosts = [host("h1", memory=1024), host("h2", cpu_models=("x86-64-v3",)), host("h3", pools=("local",))]
    vm = VmSpec(name="big", memory_mib=2048, disks=({"pool": "shared"},))
    choice = select_host(vm, loads(hosts, [vm], []), SETTINGS)
    assert choice.host is None
    assert "needs 2048 MiB" in choice.reason
    assert "cannot present CPU model x86-64-v2" in choice.reason
    assert "cannot reach pool shared" in choice.reason


def test_preferred_host_first_then_spread_or_pack():
    hosts = [host("h1"), host("h2"), host("h3")]
    filler = VmSpec(name="filler", memory_mib=1024)
    vm = VmSpec(name="web", memory_mib=512, preferred_hosts=("h3",))
    current = loads(hosts, [filler, vm], [running("filler", "h1")])
    assert select_host(vm, current, SETTINGS).host == "h3"
    plain = vm.model_copy(update={"preferred_hosts": ()})
    assert select_host(plain, current, SETTINGS).host == "h2"  # spread: emptiest, then name
    pack = SETTINGS.model_copy(update={"placement_policy": PlacementPolicy.PACK})
    assert select_host(plain, current, pack).host == "h1"


def test_capacity_keeps_rank_order_as_vms_are_placed():
    hosts = [host("h1"), host("h2")]
    vms = [VmSpec(name=f"v{i}", memory_mib=1024) for i in range(3)]
    capacity = Capacity(loads(hosts, vms, []), SETTINGS)
    chosen = []
    for vm in vms:
        target = capacity.select(vm).host
        capacity.add(target, vm)
        chosen.append(target)
    assert chosen == ["h1", "h2", "h1"]
    capacity.remove("h1", vms[0])
    capacity.remove("h1", vms[2])
    assert capacity.select(VmSpec(name="next")).host == "h1"
    assert capacity.select(VmSpec(name="next"), exclude=("h1",)).host == "h2"
    assert capacity.select(VmSpec(name="next"), prefer="h2").host == "h2"


def test_anti_affinity_and_vcpu_overcommit_are_hard():
    hosts = [host("h1", vcpus=2), host("h2", vcpus=2)]
    a = VmSpec(name="a", anti_affinity_group="g")
    b = VmSpec(name="b", anti_affinity_group="g")
    c = VmSpec(name="c", anti_affinity_group="g")
    current = loads(hosts, [a, b, c], [running("a", "h1"), running("b", "h2")])
    choice = select_host(c, current, SETTINGS)
    assert choice.host is None and "anti-affinity group g" in choice.reason
    wide = VmSpec(name="wide", vcpus=9)
    assert "overcommit" in select_host(wide, loads(hosts, [wide], []), SETTINGS).reason


def test_admission_control_keeps_room_for_a_host_failure():
    hosts = [host("h1", memory=2048), host("h2", memory=2048)]
    vms = [VmSpec(name=f"v{i}", memory_mib=1024, priority=2) for i in range(3)]
    current = loads(hosts, vms, [running("v0", "h1"), running("v1", "h2")])
    specs = {v.name: v for v in vms}
    problem = admission_problem(vms[2], "h1", current, specs, SETTINGS)
    assert problem and "could not restart" in problem and "host_failures_to_tolerate" in problem
    relaxed = SETTINGS.model_copy(update={"host_failures_to_tolerate": 0})
    assert admission_problem(vms[2], "h1", current, specs, relaxed) is None
    fine = [VmSpec(name="v0", memory_mib=512, priority=2), VmSpec(name="v1", memory_mib=512, priority=2)]
    small = loads(hosts, fine, [running("v0", "h1")])
    assert admission_problem(fine[1], "h2", small, {v.name: v for v in fine}, SETTINGS) is None


def test_failure_check_tries_every_host_not_only_the_heaviest():
    # Losing h1 (the most HA memory) is fine: h2 has room. Losing h2 is not: its VM needs 2.5 GiB
    # and h2 took its own free room with it. A check of the heaviest host alone misses that.
    free = {"h1": 0, "h2": 4096, "h3": 2048}
    ha = {"h1": [("a", 3072)], "h2": [("b", 2560)], "h3": []}
    assert failure_shortfall(free, ha, 1) == Shortfall(("h2",), 2560, 2048, ("b", 2560))
    assert failure_shortfall(free, ha, 0) is None
    assert failure_shortfall(free, {"h1": [], "h2": [], "h3": []}, 1) is None  # nothing to restart
    assert failure_shortfall({"h1": 4096}, {"h1": [("a", 512)]}, 1) == Shortfall(("h1",), 512, 0)  # too few hosts
    hosts = [host("h1", memory=3072), host("h2", memory=6656), host("h3", memory=2048)]
    vms = [VmSpec(name="a", memory_mib=3072), VmSpec(name="b", memory_mib=2560), VmSpec(name="new", memory_mib=128)]
    current = loads(hosts, vms, [running("a", "h1"), running("b", "h2")])
    problem = admission_problem(vms[2], "h3", current, {v.name: v for v in vms}, SETTINGS)
    assert problem and "after losing h2 the cluster could not restart b (2560 MiB)" in problem


def test_balancing_moves_load_from_the_hottest_host_and_stops_when_even():
    hosts = [host("h1"), host("h2")]
    vms = [VmSpec(name=f"v{i}", memory_mib=1024) for i in range(3)]
    current = loads(hosts, vms, [running(v.name, "h1") for v in vms])
    settings = SETTINGS.model_copy(update={"balance_threshold": 0.1, "balance_max_moves": 5})
    moves = plan_balance(current, {v.name: v for v in vms}, [v.name for v in vms], settings)
    assert [(m.source, m.target) for m in moves] == [("h1", "h2")]
    assert plan_balance(current, {v.name: v for v in vms}, [v.name for v in vms], settings) == []


def test_equal_load_tie_goes_to_the_host_with_most_free_memory_not_by_name():
    # Both empty (load 0.0): the bigger host keeps more headroom after taking the VM.
    hosts = [host("h1", memory=4096), host("h2", memory=16384), host("h3", memory=8192)]
    vm = VmSpec(name="web", memory_mib=1024)
    assert select_host(vm, loads(hosts, [vm], []), SETTINGS).host == "h2"
    pack = SETTINGS.model_copy(update={"placement_policy": PlacementPolicy.PACK})
    assert select_host(vm, loads(hosts, [vm], []), pack).host == "h2"
    # Same load fraction (a quarter), different sizes: still the most free MiB.
    a, b = VmSpec(name="a", memory_mib=1024), VmSpec(name="b", memory_mib=2048)
    half = [host("h1", memory=4096), host("h2", memory=8192)]
    assert select_host(vm, loads(half, [a, b, vm], [running("a", "h1"), running("b", "h2")]), SETTINGS).host == "h2"
    # Same size: name still breaks the tie.
    assert select_host(vm, loads([host("h2"), host("h1")], [vm], []), SETTINGS).host == "h1"


# --- placement policies (issue 9) ---

def test_a_restricted_vm_stays_down_with_each_allowed_hosts_reason():
    hosts = [host("h1"), host("h2", memory=1024), host("h3")]
    vm = VmSpec(name="db", memory_mib=1024, preferred_hosts=("h1", "h2"), restricted=True)
    current = loads(hosts, [vm], [], usable=["h2", "h3"])
    choice = select_host(vm, current, SETTINGS.model_copy(update={"memory_reserve_mib": 512}))
    assert choice.host is None  # h3 has room but is not allowed
    assert choice.reason == ("allowed only on h1, h2: h1 not accepting VMs (down, draining or settling); "
                             "h2 needs 1024 MiB, 512 MiB free")
    free = vm.model_copy(update={"restricted": False})
    assert select_host(free, current, SETTINGS.model_copy(update={"memory_reserve_mib": 512})).host == "h3"
    # An operator's target outside the allowed hosts is refused with the same words.
    assert Capacity(current, SETTINGS).why_not(vm, "h3") == "allowed only on h1, h2"
    assert Capacity(current, SETTINGS).select(vm, prefer="h3").host == "h2"  # a last host outside is not used


def test_hosts_of_one_preference_level_are_ranked_the_usual_way():
    hosts = [host("h1"), host("h2"), host("h3"), host("h4")]
    filler = VmSpec(name="filler", memory_mib=2048)
    vm = VmSpec.model_validate({"name": "web", "memory_mib": 1024, "preferred_hosts": [["h1", "h2"], "h3"]})
    assert vm.preference_levels == (("h1", "h2"), ("h3",))
    current = loads(hosts, [filler, vm], [running("filler", "h1")])
    assert select_host(vm, current, SETTINGS).host == "h2"  # the less loaded of the first level
    pack = SETTINGS.model_copy(update={"placement_policy": PlacementPolicy.PACK})
    assert select_host(vm, current, pack).host == "h1"
    only_h3 = loads(hosts, [filler, vm], [running("filler", "h1")], usable=["h3", "h4"])
    assert select_host(vm, only_h3, SETTINGS).host == "h3"  # the next level before the rest
    # A flat list keeps meaning "in this order", even when the first is the more loaded.
    flat = VmSpec(name="web", memory_mib=1024, preferred_hosts=("h1", "h2"))
    assert select_host(flat, current, SETTINGS).host == "h1"
    assert flat.preference_rank("h2") == 1 and flat.preference_rank("h4") == 2


def test_preference_levels_are_validated_with_clear_errors():
    import pytest
    from pydantic import ValidationError

    from haven.model.spec import ClusterConfig
    for bad, words in (({"preferred_hosts": ["h1", ["h2", "h1"]]}, "preferred_hosts\n.*host 'h1' is named twice"),
                       ({"preferred_hosts": [[]]}, "preferred_hosts\n.*item 0 is an empty list"),
                       ({"restricted": True}, "restricted needs preferred_hosts"),
                       ({"affinity_group": "app", "anti_affinity_group": "app"}, "kept with and apart")):
        with pytest.raises(ValidationError, match=words):
            VmSpec.model_validate({"name": "web", **bad})
    with pytest.raises(ValidationError, match="preferred host 'h9' is not a declared host"):
        ClusterConfig(hosts=(host("h1"),), vms=(VmSpec.model_validate(
            {"name": "web", "preferred_hosts": [["h1", "h9"]]}),))


def test_keep_together_groups_that_can_never_be_placed_are_refused():
    import pytest
    from pydantic import ValidationError

    from haven.model.spec import ClusterConfig
    hosts = (host("h1"), host("h2"))
    apart = (VmSpec(name="a", affinity_group="app", anti_affinity_group="x"),
             VmSpec(name="b", affinity_group="app", anti_affinity_group="x"))
    with pytest.raises(ValidationError, match="vm b: keep-together group 'app' also holds vm a of its "
                                              "anti-affinity group 'x'"):
        ClusterConfig(hosts=hosts, vms=apart)
    split = (VmSpec(name="a", affinity_group="app", preferred_hosts=("h1",), restricted=True),
             VmSpec(name="b", affinity_group="app", preferred_hosts=("h2",), restricted=True))
    with pytest.raises(ValidationError, match="vms a, b are restricted to hosts they do not share"):
        ClusterConfig(hosts=hosts, vms=split)
    ClusterConfig(hosts=hosts, vms=(split[0], split[1].model_copy(update={"preferred_hosts": ("h2", "h1")})))
    cramped = tuple(VmSpec(name=name, anti_affinity_group="x", preferred_hosts=("h1",), restricted=True)
                    for name in ("a", "b"))
    with pytest.raises(ValidationError, match=r"anti-affinity group 'x': vms a, b are restricted to 1 host\(s\)"):
        ClusterConfig(hosts=hosts, vms=cramped)


def test_a_vm_with_mates_goes_only_where_they_all_fit():
    hosts = [host("h1", memory=4096), host("h2", memory=2048)]
    filler = VmSpec(name="filler", memory_mib=1024)
    app, cache = VmSpec(name="app", memory_mib=1024), VmSpec(name="cache", memory_mib=1536)
    capacity = Capacity(loads(hosts, [filler, app, cache], [running("filler", "h1")]), SETTINGS)
    assert capacity.select(app).host == "h2"  # spread: alone it goes to the empty host
    assert capacity.select(app, mates=[cache]).host == "h1"
    assert capacity.why_not(app, "h2", [cache]) == "together with cache: needs 1536 MiB, 1024 MiB free"
    big = VmSpec(name="big", memory_mib=3072)
    assert "together with big" in capacity.select(app, mates=[big]).reason
