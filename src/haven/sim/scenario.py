"""Scenario files: a cluster, a timeline of faults and commands, and the log it produces.

    settings: {fence_grace_s: 0.3}          # optional overrides of Settings
    sim: {boot_s: 3.0}                      # optional SimTimings overrides
    hosts:
      - {name: h1, vcpus: 8, memory_mib: 4096}
    fence_devices: [h1]                     # optional: hosts with a power-fencing device (SimFencer)
    vms:
      - {name: web, memory_mib: 512, priority: 3}
    timeline:
      - {at: 10, do: power off h1}
    until: 30
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from haven.model.load import ConfigError, load_yaml_file, validate
from haven.model.spec import ClusterConfig
from haven.model.state import VmState
from haven.runtime.layout import read_snapshot
from haven.sim.cluster import SimCluster
from haven.sim.faults import FaultError, apply_fault
from haven.sim.hypervisor import SimTimings

SCENARIO_FILE = "scenario.yaml"
EXPECTED_FILE = "expected.log"


class Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    at: float = Field(ge=0)
    do: str = Field(min_length=1)


class SimOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    boot_s: float = Field(default=3.0, gt=0)
    fail_s: float = Field(default=0.5, gt=0)
    stop_s: float = Field(default=1.0, gt=0)
    launch_s: float = Field(default=0.1, gt=0)
    load_s: float = Field(default=0.2, gt=0)
    bandwidth_mib_s: float = Field(default=1000.0, gt=0)
    hotplug_s: float = Field(default=0.2, gt=0)
    fence_monitor_s: float = Field(default=60.0, gt=0)
    sync_mib_s: float = Field(default=200.0, gt=0)
    write_interval_s: float = Field(default=0.1, gt=0)


class Scenario(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "scenario"
    settings: dict[str, Any] = {}
    sim: SimOptions = SimOptions()
    hosts: list[dict[str, Any]]
    fence_devices: list[str] = []  # hosts the manager can power off (and so recover without the grace)
    vms: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []  # guest clusters over member VMs (model.service)
    pools: list[dict[str, Any]] = []  # the replicated pools (model.replica)
    timeline: list[Step] = []
    until: float = Field(default=30.0, gt=0)

    def cluster_config(self) -> ClusterConfig:
        hosts = [{"address": f"10.0.0.{i + 1}", **host} for i, host in enumerate(self.hosts)]
        return validate(ClusterConfig, {"name": "sim", "settings": self.settings, "hosts": hosts,
                                        "vms": self.vms, "services": self.services, "pools": self.pools},
                        f"scenario {self.name}")


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    file = path / SCENARIO_FILE if path.is_dir() else path
    data = load_yaml_file(file)
    if not isinstance(data, dict):
        raise ConfigError(str(file), ["a scenario is a mapping with hosts, vms, timeline and until"])
    name = file.parent.name if file.name == SCENARIO_FILE else file.stem
    scenario = validate(Scenario, {"name": name, **data}, str(file))
    config = scenario.cluster_config()  # report declaration problems now
    hosts = {host.name for host in config.hosts}
    unknown = [name for name in scenario.fence_devices if name not in hosts]
    if unknown:
        raise ConfigError(str(file), [f"fence_devices: no host named {name!r}" for name in unknown])
    for step in scenario.timeline:
        if step.at > scenario.until:
            raise ConfigError(str(file), [f"timeline step at {step.at:g} is after until {scenario.until:g}"])
    return scenario


@dataclass
class RunResult:
    cluster: SimCluster
    lines: list[str]
    violations: list[str]

    @property
    def safe(self) -> bool:
        return not self.violations


def timings_of(scenario: Scenario) -> SimTimings:
    return SimTimings(**scenario.sim.model_dump())


def cluster_from_scenario(path: str | Path) -> SimCluster:
    """A cluster built from a scenario file whose timeline plays as virtual time advances
    (for `haven sim serve`)."""
    scenario = load_scenario(path)
    cluster = SimCluster(scenario.cluster_config(), timings_of(scenario), fence_devices=scenario.fence_devices)
    for step in sorted(scenario.timeline, key=lambda s: s.at):
        cluster.loop.at(step.at, functools.partial(apply_fault, cluster, step.do))
    return cluster


def run_scenario(scenario: Scenario) -> RunResult:
    cluster = SimCluster(scenario.cluster_config(), timings_of(scenario), fence_devices=scenario.fence_devices)
    for step in sorted(scenario.timeline, key=lambda s: s.at):
        cluster.advance_to(step.at)
        try:
            apply_fault(cluster, step.do)
        except FaultError as error:
            raise ConfigError(f"scenario {scenario.name}", [f"timeline at {step.at:g}: {error}"]) from None
    cluster.advance_to(scenario.until)
    lines = cluster.log_lines() + cluster.world.monitor.violations
    lines.append(final_state_line(cluster))
    return RunResult(cluster, lines, list(cluster.world.monitor.violations))


def final_state_line(cluster: SimCluster) -> str:
    """One closing line: where every VM is, so a golden log also pins the end state."""
    snapshot = read_snapshot(cluster.operator, cluster.layout, with_events=False)
    parts = []
    for name in sorted(snapshot.specs):
        p = snapshot.placements.get(name)
        if p is None:
            parts.append(f"{name}=unplaced")
        elif p.state is VmState.RUNNING:
            parts.append(f"{name}@{p.host}")
        else:
            parts.append(f"{name}:{p.state.value}" + (f"@{p.host}" if p.host else ""))
    for name in sorted(snapshot.services):  # a cluster without services ends as it always did
        state = snapshot.service_states.get(name)
        parts.append(f"service {name}:{state.phase.value}" + (f"@{state.active}" if state and state.active else "")
                     if state else f"service {name}:unknown")
    return f"t={cluster.now:.3f} end      cluster: {' '.join(parts)}"
