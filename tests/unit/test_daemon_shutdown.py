"""A daemon stopped with SIGTERM leaves the cluster cleanly under the cluster's shutdown policy: its
real threads (renew, fence, agent, manager) run against the in-memory store and a thread-safe fake
hypervisor while `daemon.shutdown.shut_down` waits for the manager's decisions to be carried out."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from haven.daemon.config import ShutdownPolicy
from haven.daemon.lease_file import LeaseFile
from haven.daemon.shutdown import departure_for, host_is_rebooting, shut_down
from haven.model.spec import HostShutdownPolicy, Settings, VmSpec
from haven.model.state import HostRecord, HostState, Placement, VmState
from haven.runtime.layout import read_snapshot

from .daemon_fakes import FakeNetwork, stale_launches, wait_for
from .test_daemon_threads import LAYOUT, SETTINGS, Host, cluster, running


def placement(net: FakeNetwork, vm: str) -> Placement:
    kv = net.server.peek(LAYOUT.placement(vm))
    assert kv is not None
    return Placement.model_validate_json(kv.value)


def record(net: FakeNetwork, host: str) -> HostRecord | None:
    kv = net.server.peek(LAYOUT.host_state(host))
    return HostRecord.model_validate_json(kv.value) if kv else None


def leave(net: FakeNetwork, hosts: dict[str, Host], policy: HostShutdownPolicy, tmp_path: Path,
          reboot: bool = False, timeout_s: float = 10.0) -> None:
    """Set the cluster's policy, wait until `web` runs on h1, then stop h1's daemon as SIGTERM does."""
    net.client("operator").put(LAYOUT.config(), SETTINGS.model_copy(update={"shutdown_policy": policy})
                               .model_dump_json())
    h1 = hosts["h1"]
    wait_for(lambda: h1.hv.active() == ["web"], 10.0, "web running on h1")
    lease_file = LeaseFile(tmp_path / "lease.json")
    lease_file.save(h1.keeper.state)
    shut_down(ShutdownPolicy.CLUSTER, h1.threads, h1.hv, lease_file, timeout_s, rebooting=lambda: reboot)
    assert not lease_file.path.exists()
    assert h1.keeper.lease is None
    assert net.server.peek(LAYOUT.alive("h1")) is None  # the lease was given back, not left to expire


WEB = [VmSpec(name="web", preferred_hosts=("h1",))]


def test_failover_starts_the_vms_on_a_survivor_before_the_host_goes(tmp_path: Path) -> None:
    net = FakeNetwork()
    with cluster(net, ["h1", "h2"], WEB) as hosts:
        leave(net, hosts, HostShutdownPolicy.FAILOVER, tmp_path)
        p = placement(net, "web")
        assert p.host == "h2" and p.state in (VmState.STARTING, VmState.RUNNING)
        wait_for(lambda: running(hosts) == {"h1": [], "h2": ["web"]}, 5.0, "web running on h2")
        wait_for(lambda: (record(net, "h1") or HostRecord(host="h1", state=HostState.ONLINE)).state
                 is HostState.OFFLINE, 5.0, "h1 recorded offline")
        assert record(net, "h1").reason == "left cleanly, policy failover"  # type: ignore[union-attr]
        assert "shutting down (shutdown: failover)" in hosts["h1"].lines()
    assert not stale_launches([h.hv for h in hosts.values()])


def test_a_reboot_under_conditional_freezes_the_vms_on_the_host(tmp_path: Path) -> None:
    net = FakeNetwork()
    with cluster(net, ["h1", "h2"], WEB) as hosts:
        leave(net, hosts, HostShutdownPolicy.CONDITIONAL, tmp_path, reboot=True)
        p = placement(net, "web")
        assert (p.state, p.host) == (VmState.STOPPED, "h1")  # frozen: kept on h1, not started elsewhere
        wait_for(lambda: (record(net, "h1") or HostRecord(host="h1", state=HostState.ONLINE)).state
                 is HostState.OFFLINE, 5.0, "h1 recorded offline")
        assert running(hosts) == {"h1": [], "h2": []}
        assert "shutting down (reboot: freeze)" in hosts["h1"].lines()


def test_a_departure_that_runs_out_of_time_kills_before_it_gives_the_lease_back(tmp_path: Path) -> None:
    """migrate, but this fake hypervisor cannot live-migrate: the VM stays until the timeout, is
    killed, and only then does the lease go; the survivor recovers it once h1 is fenced."""
    net = FakeNetwork()
    with cluster(net, ["h1", "h2"], WEB) as hosts:
        leave(net, hosts, HostShutdownPolicy.MIGRATE, tmp_path, timeout_s=1.5)
        assert hosts["h1"].hv.active() == []
        assert "killed: the host left before its VMs could (shutdown timeout)" in hosts["h1"].lines()
        wait_for(lambda: running(hosts) == {"h1": [], "h2": ["web"]}, 10.0, "web recovered on h2")
    assert not stale_launches([h.hv for h in hosts.values()])


def test_a_node_that_names_its_own_policy_overrides_the_cluster() -> None:
    conditional = Settings(shutdown_policy=HostShutdownPolicy.CONDITIONAL)
    assert departure_for(ShutdownPolicy.STOP, conditional, True).policy is HostShutdownPolicy.FAILOVER
    assert departure_for(ShutdownPolicy.MIGRATE, conditional, False).policy is HostShutdownPolicy.MIGRATE
    assert departure_for(ShutdownPolicy.CLUSTER, conditional, True).policy is HostShutdownPolicy.FREEZE
    assert departure_for(ShutdownPolicy.CLUSTER, conditional, False).policy is HostShutdownPolicy.FAILOVER


@pytest.mark.parametrize(("jobs", "rebooting"), [
    ("1 reboot.target start waiting\n2 systemd-reboot.service start waiting\n", True),
    ("1 poweroff.target start waiting\n", False),
    ("", False)])
def test_systemd_tells_a_reboot_from_a_shutdown(jobs: str, rebooting: bool) -> None:
    def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert args[:2] == ["systemctl", "list-jobs"]
        return subprocess.CompletedProcess(args, 0, jobs, "")
    assert host_is_rebooting(run) is rebooting


def test_without_systemd_a_stop_counts_as_a_shutdown() -> None:
    def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("systemctl")
    assert host_is_rebooting(run) is False


def test_the_shutdown_is_recorded_in_the_store_log(tmp_path: Path) -> None:
    net = FakeNetwork()
    with cluster(net, ["h1", "h2"], WEB) as hosts:
        leave(net, hosts, HostShutdownPolicy.FAILOVER, tmp_path)
        wait_for(lambda: any(e.kind.value == "shutting_down"
                             for e in read_snapshot(net.client("reader"), LAYOUT).events), 5.0, "the event shipped")
