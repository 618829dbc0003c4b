"""Power fencing reaching the daemon and the operator: the node config's fence devices (a bad one
is a clear error when `haven node run` starts), and the leading manager's device monitor, which
stores each check and reports a device that starts or stops failing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from haven.cli.main import cli
from haven.core.events import EventKind
from haven.daemon.config import load_node_config
from haven.model.fencing import FenceCheck
from haven.model.load import ConfigError
from haven.model.spec import ClusterConfig, VmSpec
from haven.sim.cluster import SimCluster
from haven.sim.faults import apply_fault
from haven.sim.hypervisor import SimTimings

from .helpers import host

NODE = """\
etcd: [http://127.0.0.1:1]
host: {{name: h1, address: 10.0.0.1, vcpus: 4, memory_mib: 4096}}
pools: {{shared: /tmp}}
fencing:
  monitor_interval_s: 30
  devices:
    h2:
      agent: {agent}
      options: {{ip: 192.0.2.12, username: admin, lanplus: "1"}}
      password_file: {password}
"""


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    path = tmp_path / "fence_test"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def node_file(tmp_path: Path, agent: Path, mode: int) -> tuple[Path, Path]:
    password = tmp_path / "h2.password"
    password.write_text("s3cret\n")
    password.chmod(mode)
    config = tmp_path / "node.yaml"
    config.write_text(NODE.format(agent=agent, password=password))
    return config, password


def test_the_node_config_carries_its_fence_devices(tmp_path: Path, agent: Path) -> None:
    config, password = node_file(tmp_path, agent, 0o600)
    node = load_node_config(config)
    assert node.fencing is not None and node.fencing.monitor_interval_s == 30
    device = node.fencing.devices["h2"]
    assert device.agent == str(agent) and device.password_file == password
    assert device.options["ip"] == "192.0.2.12"


def test_a_world_readable_password_file_is_refused_naming_the_file(tmp_path: Path, agent: Path) -> None:
    config, password = node_file(tmp_path, agent, 0o644)
    with pytest.raises(ConfigError) as error:
        load_node_config(config)
    assert f"password file {password} can be read by others" in error.value.explain()
    # `haven node run` says so and stops with the usage exit code, before touching the store.
    result = CliRunner().invoke(cli, ["node", "run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert str(password) in result.output and "chmod 600" in result.output
    assert "Traceback" not in result.output


def test_a_missing_agent_is_a_clear_error_at_start(tmp_path: Path) -> None:
    config, _ = node_file(tmp_path, Path("/nonexistent/fence_nothing"), 0o600)
    result = CliRunner().invoke(cli, ["node", "run", "--config", str(config)])
    assert result.exit_code == 2 and "fence agent /nonexistent/fence_nothing is not an executable file" in result.output


def monitored_cluster() -> SimCluster:
    config = ClusterConfig(name="fencing", hosts=(host("h1"), host("h2"), host("h3")), vms=(VmSpec(name="web"),))
    return SimCluster(config, SimTimings(fence_monitor_s=1.0), fence_devices=["h1", "h2"])


def stored_check(cluster: SimCluster, name: str) -> FenceCheck | None:
    kv = cluster.operator.get(cluster.layout.fence_check(name))
    return FenceCheck.model_validate_json(kv.value) if kv else None


def test_the_leading_manager_stores_each_device_check_and_reports_changes() -> None:
    cluster = monitored_cluster()
    cluster.advance_to(5.0)
    check = stored_check(cluster, "h1")
    assert check is not None and check.ok and check.detail == "monitor ok" and 4.0 <= check.checked_at <= 5.0
    assert stored_check(cluster, "h3") is None  # no device, nothing checked
    assert not [e for e in cluster.events if e.kind is EventKind.FENCE_DEVICE]  # ok from the start: no news

    apply_fault(cluster, "fence fails h1")
    cluster.advance_to(10.0)
    check = stored_check(cluster, "h1")
    assert check is not None and not check.ok and check.detail == "the device did not answer"
    assert stored_check(cluster, "h2").ok  # type: ignore[union-attr]
    apply_fault(cluster, "fence works h1")
    cluster.advance_to(15.0)
    lines = [e.line() for e in cluster.events if e.kind is EventKind.FENCE_DEVICE]
    # once per change, from the host that leads, not once per check nor once per host
    assert [line.split(": ", 1)[1] for line in lines] == ["fence device failing: the device did not answer",
                                                          "fence device: ok"]
    assert all(" fencing  host h1:" in line for line in lines)


def test_only_the_leader_checks_and_a_write_needs_its_leader_key() -> None:
    cluster = monitored_cluster()
    cluster.advance_to(3.0)
    leader = next(h for h in cluster.hosts.values() if h.manager and h.manager.leading)
    follower = next(h for h in cluster.hosts.values() if h.manager and not h.manager.leading)
    cluster.operator.delete(cluster.layout.fence_check("h1"))
    assert follower.fence_monitor is not None
    follower.fence_monitor.check()  # not leading: no check, no write
    assert stored_check(cluster, "h1") is None
    # A manager that believes it leads but lost its key cannot write: the guard refuses.
    assert leader.manager is not None and leader.fence_monitor is not None
    value = leader.manager.leader_value
    leader.manager.leader_value = json.dumps({"host": leader.name, "since": -1})
    leader.fence_monitor.check()
    assert stored_check(cluster, "h1") is None
    leader.manager.leader_value = value
    leader.fence_monitor.check()
    assert stored_check(cluster, "h1") is not None
