"""What if these hosts died now? Replays the cluster's present in the simulator with the same
core, powers the hosts off, and reports what restarts where, what cannot, and how long it takes."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from haven.model.spec import ClusterConfig
from haven.model.state import VmState
from haven.runtime.layout import read_snapshot
from haven.sim.cluster import SimCluster
from haven.sim.faults import apply_fault
from haven.sim.hypervisor import SimTimings

FAIL_AT = 1.0
HORIZON_S = 60.0


@dataclass(frozen=True)
class VmOutcome:
    vm: str
    priority: int
    before: str
    after: str | None  # the host it runs on in the end, None if it does not
    recovery_s: float | None  # failure -> running again
    reason: str = ""  # why it does not run


@dataclass(frozen=True)
class WhatIfReport:
    failed: tuple[str, ...]
    outcomes: tuple[VmOutcome, ...]  # only the VMs the failure touches, highest priority first

    @property
    def worst_recovery_s(self) -> float | None:
        times = [o.recovery_s for o in self.outcomes if o.recovery_s is not None]
        return max(times) if times else None

    @property
    def lost(self) -> list[str]:
        return [o.vm for o in self.outcomes if o.after is None]


def what_if(config: ClusterConfig, running: Mapping[str, str], fail: Sequence[str],
            timings: SimTimings | None = None) -> WhatIfReport:
    unknown = sorted(set(fail) - {h.name for h in config.hosts})
    if unknown:
        raise ValueError(f"unknown host(s): {', '.join(unknown)}")
    cluster = SimCluster(config, timings, running)
    cluster.advance_to(FAIL_AT)
    for host in fail:
        apply_fault(cluster, f"power off {host}")
    touched = sorted((vm for vm, host in running.items() if host in fail),
                     key=lambda vm: (-_priority(config, vm), vm))
    back: dict[str, float] = {}
    t = FAIL_AT
    while t < HORIZON_S and len(back) < len(touched):
        t += 0.1
        cluster.advance_to(t)
        snapshot = read_snapshot(cluster.operator, cluster.layout, with_events=False)
        for vm in touched:
            p = snapshot.placements.get(vm)
            if vm not in back and p and p.state is VmState.RUNNING and p.host not in fail:
                back[vm] = round(t - FAIL_AT, 1)
    snapshot = read_snapshot(cluster.operator, cluster.layout, with_events=False)
    outcomes = []
    for vm in touched:
        p = snapshot.placements.get(vm)
        running_now = p is not None and p.state is VmState.RUNNING and p.host not in fail
        outcomes.append(VmOutcome(vm, _priority(config, vm), running[vm], p.host if running_now and p else None,
                                  back.get(vm), "" if running_now or p is None else f"{p.state.value}: {p.reason}"))
    return WhatIfReport(tuple(fail), tuple(outcomes))


def _priority(config: ClusterConfig, vm: str) -> int:
    return next(v.priority for v in config.vms if v.name == vm)
