"""How many more VMs of a given size fit, keeping room to restart every HA VM after
`host_failures_to_tolerate` host failures (the same scheduler and admission control as the manager)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from haven.core.scheduler import Capacity, admission_problem, build_loads
from haven.model.spec import ClusterConfig, VmSpec
from haven.model.state import Placement, VmState

LIMIT = 10_000  # stop counting here: "at least this many"


@dataclass(frozen=True)
class CapacityReport:
    fits: int
    per_host: dict[str, int]
    limited_by: str  # why one more does not fit


def capacity(config: ClusterConfig, running: Mapping[str, str], size: VmSpec,
             usable: set[str] | None = None) -> CapacityReport:
    """`running`: VM -> host now. `usable`: hosts that may take VMs (default: all)."""
    hosts = {h.name: h for h in config.hosts}
    specs = {v.name: v for v in config.vms}
    placements = [Placement(vm=vm, state=VmState.RUNNING, host=host, generation=1) for vm, host in running.items()]
    loads = build_loads(hosts, usable if usable is not None else hosts, specs, placements)
    room = Capacity(loads, config.settings)
    per_host: dict[str, int] = {}
    reason = f"stopped counting at {LIMIT}"
    for i in range(LIMIT):
        vm = size.model_copy(update={"name": f"{size.name}-{i}"})
        choice = room.select(vm)
        if not choice.host:
            reason = choice.reason
            break
        specs[vm.name] = vm
        problem = admission_problem(vm, choice.host, room.loads, specs, config.settings)
        if problem:
            reason = problem
            break
        room.add(choice.host, vm)
        per_host[choice.host] = per_host.get(choice.host, 0) + 1
    return CapacityReport(sum(per_host.values()), dict(sorted(per_host.items())), reason)
