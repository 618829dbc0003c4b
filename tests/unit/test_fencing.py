"""Power fencing: the core's "fence confirmed" branch, and the port wired through the manager loop
in the simulator (`SimFencer`)."""
from __future__ import annotations

from dataclasses import replace

from haven.core.manager import decide
from haven.model.spec import ClusterConfig, VmSpec
from haven.model.state import HostState, VmState
from haven.sim.cluster import SimCluster
from haven.sim.faults import apply_fault

from .helpers import host, running, view

HOSTS = [host("h1"), host("h2"), host("h3")]
LOST = {"h1": HostState.LOST, "h2": HostState.ONLINE, "h3": HostState.ONLINE}


def test_a_host_that_loses_its_lease_is_to_be_power_fenced():
    decision = decide(view(HOSTS, [VmSpec(name="web")], {"web": running("web", "h1")}, alive={"h2", "h3"}),
                      now=10.0)
    assert decision.fence_hosts == ["h1"]
    assert decision.host_records["h1"].state is HostState.LOST


def test_a_confirmed_power_fence_ends_the_grace_at_once():
    recovering = running("web", "h1").model_copy(update={"state": VmState.RECOVERING})
    lost = view(HOSTS, [VmSpec(name="web", priority=3)], {"web": recovering}, alive={"h2", "h3"}, records=LOST,
                since=10.0)
    assert not decide(lost, now=10.0).host_records  # no confirmation: wait for the grace
    confirmed = replace(lost, hosts={**lost.hosts, "h1": replace(lost.hosts["h1"], fence_confirmed=True)})
    decision = decide(confirmed, now=10.0)  # the same instant: no grace waited
    assert any(e.message == "lost -> fenced (power fence confirmed)" for e in decision.events)
    moved = decision.placements["web"]
    assert (moved.state, moved.generation) == (VmState.STARTING, 2) and moved.host in ("h2", "h3")
    assert decision.host_records["h1"].state is HostState.OFFLINE  # fenced, then nothing left on it


def test_a_confirmation_does_not_outlive_the_loss_it_was_for():
    """Fenced by power, back, lost again with the device broken: no stale confirmation may skip
    the grace the second time."""
    config = ClusterConfig(name="fencing", hosts=tuple(HOSTS), vms=(VmSpec(name="web", preferred_hosts=("h1",)),))
    cluster = SimCluster(config, fence_devices=["h1"])
    for at, fault in ((5.0, "power off h1"), (15.0, "power on h1"), (16.0, "fence fails h1"),
                      (25.0, "power off h1")):
        cluster.advance_to(at)
        apply_fault(cluster, fault)
    cluster.advance_to(35.0)
    fenced = [line for line in cluster.log_lines() if "host h1: lost -> fenced" in line]
    assert [line.split("(")[-1] for line in fenced] == ["power fence confirmed)", "grace 0.3 s)"]
    assert not cluster.world.monitor.violations


def test_a_fence_device_powers_off_a_host_that_still_runs():
    """Cut from the store, with a slow clock, the host's VMs would run past its lease's expiry until
    its own self-fence; the device kills them the moment the lease expires."""
    config = ClusterConfig(name="fencing", hosts=tuple(HOSTS), vms=(VmSpec(name="web", preferred_hosts=("h1",)),))
    cluster = SimCluster(config, fence_devices=["h1", "h2", "h3"])
    apply_fault(cluster, "skew h1 0.7")
    cluster.advance_to(5.0)
    apply_fault(cluster, "cut h1 from store")
    cluster.advance_to(20.0)
    h1 = cluster.hosts["h1"]
    assert not h1.powered and not h1.hv.vms  # powered off: nothing runs there
    assert not any("self-fence" in line for line in cluster.log_lines())  # the device came first
    assert not cluster.world.monitor.violations


def test_a_power_fence_answering_late_confirms_only_the_loss_it_was_asked_for():
    """The daemon runs a power fence on a thread: its answer may come after the host was back and
    lost again. That answer must not end the second loss's grace; the second one's answer does."""
    from collections.abc import Callable

    from haven.ports.fencer import FenceOutcome
    from haven.runtime.layout import Layout
    from haven.runtime.manager_loop import ManagerLoop
    from haven.sim.store import MemoryStore

    class Device:
        def has_device(self, host: str) -> bool:
            return True

        def power_off(self, host: str) -> bool:
            return True

        def last_outcome(self, host: str) -> FenceOutcome | None:
            return FenceOutcome(True, "off, confirmed", 0.1, "test")

        def monitor(self, host: str) -> tuple[bool, str]:
            return True, "ok"

    class Clock:
        def now(self) -> float:
            return 1.0

    jobs: list[Callable[[], None]] = []
    store = MemoryStore(now=lambda: 1.0)
    loop = ManagerLoop("h2", store.client("h2"), clock=Clock(), layout=Layout("t"), lease_id=lambda: 0,
                       emit=lambda event: None, fencer=Device(), spawn=jobs.append)
    fencing = loop.fencing
    fencing.fence(["h1"], None)  # the first loss: its answer is late
    fencing.fence(["h1"], None)  # back and lost again before it came
    first, second = jobs
    first()
    assert not fencing.collect() and "h1" not in loop.fence_confirmed
    second()
    assert fencing.collect() and "h1" in loop.fence_confirmed
