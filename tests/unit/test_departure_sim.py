"""The simulator's clean departures (`shutdown HOST`, `reboot HOST [S]`) and fast power cycles run the
daemon's departure code (`runtime.leaving`) on virtual time; bad fault lines get a clear error."""
from __future__ import annotations

import pytest

from haven.model.spec import ClusterConfig, HostShutdownPolicy, Settings, VmSpec
from haven.model.state import VmState
from haven.runtime.layout import read_snapshot
from haven.sim.cluster import SimCluster
from haven.sim.faults import FaultError, apply_fault

from .helpers import host


def cluster(policy: HostShutdownPolicy) -> SimCluster:
    config = ClusterConfig(name="t", settings=Settings(shutdown_policy=policy),
                           hosts=(host("h1"), host("h2")), vms=(VmSpec(name="web", preferred_hosts=("h1",)),))
    sim = SimCluster(config)
    sim.advance_to(5.0)
    return sim


def where(sim: SimCluster) -> tuple[VmState, str | None]:
    p = read_snapshot(sim.operator, sim.layout, with_events=False).placements["web"]
    return p.state, p.host


@pytest.mark.parametrize("line", ["shutdown", "shutdown h9", "reboot", "reboot h1 soon", "reboot h1 -1",
                                  "reboot h1 2 3"])
def test_bad_departure_lines_say_what_is_allowed(line: str) -> None:
    with pytest.raises(FaultError, match=r"usage|unknown host|not a number|negative"):
        apply_fault(cluster(HostShutdownPolicy.FREEZE), line)


def test_a_reboot_under_freeze_brings_the_vm_back_on_its_host_and_nowhere_else_meanwhile() -> None:
    sim = cluster(HostShutdownPolicy.FREEZE)
    assert where(sim) == (VmState.RUNNING, "h1")
    apply_fault(sim, "reboot h1 6")
    sim.advance_to(8.0)
    assert not sim.hosts["h1"].powered and where(sim) == (VmState.STOPPED, "h1")
    assert sim.world.monitor.active_copies() == {}
    sim.advance_to(16.0)
    assert sim.hosts["h1"].powered and where(sim) == (VmState.RUNNING, "h1")
    assert not sim.world.monitor.violations


def test_a_shutdown_under_failover_moves_the_vm_before_the_host_is_off() -> None:
    sim = cluster(HostShutdownPolicy.FAILOVER)
    apply_fault(sim, "shutdown h1")
    sim.advance_to(9.0)
    assert not sim.hosts["h1"].powered and where(sim) == (VmState.RUNNING, "h2")
    assert not any("lease" in line and "expired" in line for line in sim.log_lines())  # given back, not expired
    assert not sim.world.monitor.violations


def test_a_power_cycle_inside_the_lease_is_reported_as_a_host_failure() -> None:
    sim = cluster(HostShutdownPolicy.MIGRATE)
    apply_fault(sim, "power off h1")
    sim.advance_to(5.3)
    apply_fault(sim, "power on h1")
    sim.advance_to(6.0)
    lines = sim.log_lines()
    assert any("host h1: online -> online (restarted" in line for line in lines)
    assert any("vm web: running -> recovering (host h1 restarted)" in line for line in lines)
    sim.advance_to(10.0)
    assert where(sim) == (VmState.RUNNING, "h1") and not sim.world.monitor.violations
