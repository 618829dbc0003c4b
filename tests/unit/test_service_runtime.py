"""Services through the loops the daemon runs, on the simulator: the declaration, the store keys,
the manager's turn, the agent's runner (with its start rule before an attach), the fake guest, the
data-disk and floating-IP invariants, the fault language and the swarm's service stream."""
from __future__ import annotations

import re

import pytest

from haven.model.load import ConfigError, validate
from haven.model.service import FenceOrder, MemberFacts, ServicePhase, ServiceState
from haven.model.spec import ClusterConfig
from haven.model.state import Placement, VmState
from haven.ports.store import KeyValue
from haven.runtime.layout import KeyKind, Layout, decode
from haven.sim.cluster import SimCluster
from haven.sim.faults import FaultError, apply_fault
from haven.sim.swarm import run_seed

HOSTS = [{"name": f"h{i}", "address": f"10.0.0.{i}", "vcpus": 8, "memory_mib": 4096, "pools": ["san"]}
         for i in (1, 2, 3)]
VMS = [{"name": "db1", "memory_mib": 512, "preferred_hosts": ["h1"], "restricted": True},
       {"name": "db2", "memory_mib": 512, "preferred_hosts": ["h2"], "restricted": True}]
SERVICE = {"name": "db", "members": ["db1", "db2"], "start": ["db", "start"], "stop": ["db", "stop"],
           "check": ["db", "check"], "floating_ip": "10.0.9.10/24", "data_disk": {"pool": "san"},
           "check_interval_s": 1}


def config(**service: object) -> ClusterConfig:
    return validate(ClusterConfig, {"name": "t", "hosts": HOSTS, "vms": VMS, "services": [{**SERVICE, **service}]})


def state(cluster: SimCluster) -> ServiceState:
    kv = cluster.operator.get(cluster.layout.service_state("db"))
    assert kv is not None
    return ServiceState.model_validate_json(kv.value)


def holders(cluster: SimCluster) -> list[str]:
    """The running VMs the data disk is plugged into, as the world sees it."""
    return sorted(name for hv in cluster.world.hypervisors.values() for name, vm in hv.vms.items()
                  if vm.state.value == "running" and vm.guest.disks)


def test_a_service_whose_member_is_not_pinned_is_refused_with_the_reason():
    vms = [VMS[0], {**VMS[1], "preferred_hosts": ["h2", "h3"]}]
    with pytest.raises(ConfigError) as caught:
        validate(ClusterConfig, {"hosts": HOSTS, "vms": vms, "services": [SERVICE]}, "cluster.yaml")
    assert "service db: member db2 must be pinned to one host" in str(caught.value)


def test_service_keys_are_parsed_and_decoded_into_the_snapshot():
    layout = Layout("c")
    assert layout.parse(layout.service_state("db")) == layout.parse(layout.service_state("db"))
    assert layout.parse(layout.service_state("db")).kind is KeyKind.SERVICE_STATE  # type: ignore[union-attr]
    key = layout.parse(layout.member_facts("h1", "db1"))
    assert key is not None and (key.kind, key.host, key.vm) == (KeyKind.MEMBER_FACTS, "h1", "db1")
    facts = MemberFacts(service="db", member="db1", host="h1", lease=7, generation=2)
    snap = decode(layout, [KeyValue(layout.service_state("db"), ServiceState(service="db").model_dump_json(), 3),
                           KeyValue(layout.member_facts("h1", "db1"), facts.model_dump_json(), 4, lease=7)])
    assert snap.service_states["db"].phase is ServicePhase.STOPPED and snap.member_facts["db1"] == facts


def test_the_managers_view_carries_every_kill_order_pending_or_done():
    layout = Layout("c")
    orders = ServiceState(service="db", fence=(FenceOrder(member="db1", boot=3, reason="hung"),),
                          killed=(FenceOrder(member="db2", boot=1, reason="check failing"),))
    snap = decode(layout, [KeyValue(layout.service_state("db"), orders.model_dump_json(), 3)])
    assert snap.view().ordered_kills == {("db1", 3), ("db2", 1)}
    assert decode(layout, []).view().ordered_kills == frozenset()


def test_a_service_starts_on_its_preferred_member_and_holds_disk_and_ip_there():
    cluster = SimCluster(config())
    cluster.advance_to(5)
    st = state(cluster)
    assert (st.phase, st.active) == (ServicePhase.RUNNING, "db1")
    assert holders(cluster) == ["db1"]
    guest = cluster.world.hypervisors["h1"].vms["db1"].guest
    assert guest.ips == {"10.0.9.10/24"} and guest.started == {"db"} and guest.mounted == {"/srv/data": "svc-db"}
    assert not cluster.world.monitor.violations


def test_a_cluster_without_services_gets_no_service_tick_and_writes_no_service_key():
    cluster = SimCluster(validate(ClusterConfig, {"hosts": HOSTS, "vms": VMS}))
    cluster.advance_to(5)
    assert "_service_tick" not in cluster.hosts["h1"].periodic
    assert not cluster.operator.get_prefix(cluster.layout.services())
    assert not cluster.operator.get_prefix(cluster.layout.members())


def test_the_attach_is_held_back_when_the_service_state_changed_since_it_was_read():
    cluster = SimCluster(config())
    cluster.advance_to(5)
    runner = cluster.hosts["h2"].agent.services  # type: ignore[union-attr]
    kv = cluster.operator.get(cluster.layout.service_state("db"))
    assert kv is not None
    lease = cluster.hosts["h2"].keeper.lease_id  # type: ignore[union-attr]
    assert runner._claim("db", kv.mod_revision, lease)
    assert not runner._claim("db", kv.mod_revision - 1, lease)  # a state that changed since the read
    assert not runner._claim("db", kv.mod_revision, lease + 100)  # read under another lease
    assert any("attach held back" in line for line in cluster.log_lines())


def test_a_hung_guest_is_killed_before_the_standby_takes_the_disk():
    cluster = SimCluster(config())
    cluster.advance_to(5)
    apply_fault(cluster, "hang guest db1")
    cluster.advance_to(5.9)
    assert state(cluster).active == "db1"  # silent less than ping_timeout_s: not yet hung
    cluster.advance_to(8)
    st = state(cluster)
    assert (st.phase, st.active, st.generation) == (ServicePhase.RUNNING, "db2", 2)
    assert holders(cluster) == ["db2"]
    lines = cluster.log_lines()
    killed = next(i for i, line in enumerate(lines) if "killed member db1" in line)
    attached = next(i for i, line in enumerate(lines) if "vm db2: service db: attached" in line)
    assert killed < attached
    assert cluster.world.monitor.disk_double_attach == 0


def test_the_invariant_counts_a_disk_plugged_into_two_running_vms():
    cluster = SimCluster(config())
    cluster.advance_to(5)
    cluster.world.hypervisors["h2"].vms["db2"].guest.disks["svc-db"] = "san/db-data.qcow2"
    cluster.world.hypervisors["h2"].vms["db2"].guest.ips.add("10.0.9.10/24")
    cluster.world.monitor.dirty = True
    cluster.world.monitor.check()
    assert cluster.world.monitor.disk_double_attach == 1 and cluster.world.monitor.ip_double_raise == 1
    assert any("data disk san/db-data.qcow2 attached to db1 on h1 and db2 on h2" in v
               for v in cluster.world.monitor.violations)


def test_a_check_failing_below_the_threshold_does_not_move_the_service():
    cluster = SimCluster(config(failure_threshold=3))
    cluster.advance_to(5)
    apply_fault(cluster, "fail check db on db1")
    cluster.advance_to(6.5)
    apply_fault(cluster, "pass check db on db1")
    cluster.advance_to(12)
    assert state(cluster).active == "db1"
    apply_fault(cluster, "fail check db on db1")
    cluster.advance_to(16)
    assert state(cluster).active == "db2"


def placement(cluster: SimCluster, vm: str) -> Placement:
    kv = cluster.operator.get(cluster.layout.placement(vm))
    assert kv is not None
    return Placement.model_validate_json(kv.value)


def one_restart_allowed() -> ClusterConfig:
    vms = [{**vm, "restart": {"max_restarts": 1, "window_s": 600}} for vm in VMS]
    return validate(ClusterConfig, {"name": "t", "hosts": HOSTS, "vms": vms,
                                    "services": [{**SERVICE, "failed_hold_s": 0}]})


def test_members_fenced_on_the_services_order_again_and_again_keep_their_restart_budget():
    """Every failover kills the member it leaves (its fencing); that is not a crash of the member's
    VM, so four failovers with a budget of one restart leave both members standing."""
    cluster = SimCluster(one_restart_allowed())
    cluster.advance_to(5)
    t = 5.0
    for _ in range(4):
        active = state(cluster).active
        apply_fault(cluster, f"hang guest {active}")
        cluster.advance_to(t := t + 5)
        apply_fault(cluster, f"unhang guest {active}")
        cluster.advance_to(t := t + 10)
        assert state(cluster).phase is ServicePhase.RUNNING and state(cluster).active != active
    assert {(p.state, p.generation, p.restarts) for p in (placement(cluster, "db1"), placement(cluster, "db2"))} \
        == {(VmState.RUNNING, 3, ())}
    assert sum("killed on its service's order: restart not counted" in line for line in cluster.log_lines()) == 4
    assert not cluster.world.monitor.violations


def test_a_members_own_crashes_still_count_against_its_restart_budget():
    cluster = SimCluster(one_restart_allowed())
    cluster.advance_to(5)
    apply_fault(cluster, "crash vm db2")  # the standby: no failover, no kill order
    cluster.advance_to(15)
    assert (placement(cluster, "db2").state, placement(cluster, "db2").restarts) == (VmState.RUNNING, (5.0,))
    apply_fault(cluster, "crash vm db2")
    cluster.advance_to(20)
    assert placement(cluster, "db2").state is VmState.ERROR


@pytest.mark.parametrize(("line", "message"), [
    ("fail check db on db9", "unknown vm 'db9'"),
    ("fail check nope on db1", "unknown service 'nope'"),
    ("hang guest", "usage: hang|unhang guest VM"),
    ("move service", "usage: move service SERVICE [to VM]"),
])
def test_service_faults_are_checked(line: str, message: str):
    cluster = SimCluster(config())
    with pytest.raises(FaultError, match=re.escape(message)):
        apply_fault(cluster, line)


def test_the_service_stream_leaves_a_seeds_other_faults_as_they_were():
    plain, with_services = run_seed(11), run_seed(11, services=True)
    assert [step for step in with_services.timeline if "svc" not in step[1]] == plain.timeline
    assert with_services.disk_double_attach == 0 and not with_services.safety and not with_services.liveness
