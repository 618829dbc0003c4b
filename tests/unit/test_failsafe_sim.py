"""The failsafe's runtime (runtime.failsafe, LeaseKeeper, SimPeerLink) on the simulator."""
from __future__ import annotations

from haven.core.events import EventKind
from haven.model.spec import ClusterConfig, HostSpec, Settings, VmSpec
from haven.sim.cluster import SimCluster
from haven.sim.faults import apply_fault


def _cluster(failsafe: bool = True) -> SimCluster:
    hosts = tuple(HostSpec(name=f"h{i}", address=f"10.0.0.{i}", vcpus=8, memory_mib=4096) for i in (1, 2, 3))
    vms = tuple(VmSpec(name=f"vm{i}", memory_mib=512, preferred_hosts=(f"h{i}",)) for i in (1, 2, 3))
    config = ClusterConfig(name="t", settings=Settings(failsafe=failsafe), hosts=hosts, vms=vms)
    cluster = SimCluster(config)
    cluster.advance_to(5.0)
    return cluster


def _kills(cluster: SimCluster) -> list[str]:
    return [e.line() for e in cluster.events if e.kind in (EventKind.KILLED, EventKind.WATCHDOG_FIRED)]


def test_the_deadline_and_the_watchdog_follow_the_rounds_while_the_store_is_down():
    cluster = _cluster()
    apply_fault(cluster, "store down")
    cluster.advance_to(20.0)
    assert not _kills(cluster)
    for host in cluster.hosts.values():
        assert host.keeper is not None and host.watchdog.deadline is not None
        now = host.clock.now()
        assert now < host.keeper.deadline() <= now + cluster.settings.self_fence_after_s
        assert host.keeper.deadline() < host.watchdog.deadline  # the backstop follows, a little later
        assert host.keeper.last_renewal_sent < 10.0 and not host.keeper.lease_ok()  # no lease use meanwhile


def test_a_hung_peer_ends_the_failsafe_for_everyone():
    cluster = _cluster()
    apply_fault(cluster, "store down")
    cluster.advance_to(8.0)
    apply_fault(cluster, "hang h3")
    cluster.advance_to(12.0)
    killed = _kills(cluster)
    assert {line.split()[2] for line in killed if "agent" in line} == {"h1", "h2"}  # h3's agent is hung
    assert any("wdog h3" in line for line in killed)  # its watchdog is not re-armed by a hung daemon


def test_without_failsafe_nobody_asks():
    cluster = _cluster(failsafe=False)
    assert all(host.keeper is not None and host.keeper.failsafe is None for host in cluster.hosts.values())
    apply_fault(cluster, "store down")
    cluster.advance_to(8.0)
    assert len([line for line in _kills(cluster) if "killed" in line]) == 3


def test_a_renewal_overdue_is_due_for_asking_whatever_the_renewal_itself_is_doing():
    """The daemon's failsafe thread asks on this, not on a failed renewal: a real store client
    takes its whole deadline to fail (1 s at the defaults), longer than the failsafe can wait."""
    cluster = _cluster()
    keeper = cluster.hosts["h1"].keeper
    assert keeper is not None and keeper.failsafe_due() is None  # renewing fine
    apply_fault(cluster, "store down")
    cluster.advance_to(5.0 + cluster.settings.renew_interval + 0.01)
    assert keeper.failsafe_due() is keeper.lease
    apply_fault(cluster, "store up")
    cluster.advance_to(8.0)
    assert keeper.failsafe_due() is None
