"""Core and simulator speed (issue 2): failover planning at scale, an idle iteration, sim speed.

    python3 bench/core_bench.py [--hosts 1000] [--vms 50000]

Prints each figure beside its goal. Times vary on a shared machine: compare ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from haven.core.index import ClusterIndex
from haven.core.manager import decide
from haven.model.spec import ClusterConfig, HostSpec, Settings, VmSpec
from haven.model.state import (ClusterView, HostAdmin, HostRecord, HostState, HostView, LocalState,
                               Placement, VmState, VmStatus, VmView)
from haven.sim.cluster import SimCluster
from haven.sim.faults import apply_fault


def big_view(hosts: int, vms: int, lost: str | None) -> ClusterView:
    settings = Settings(host_failures_to_tolerate=1)
    host_specs = [HostSpec(name=f"h{i}", address=f"10.{i // 250}.{i % 250}.1", vcpus=64,
                           memory_mib=262144) for i in range(hosts)]
    host_views = {}
    for spec in host_specs:
        dead = spec.name == lost
        record = HostRecord(host=spec.name, state=HostState.FENCED if dead else HostState.ONLINE)
        host_views[spec.name] = HostView(spec=spec, alive=not dead, record=record,
                                                         admin=HostAdmin(), fence_confirmed=False)
    vm_views = {}
    for i in range(vms):
        spec = VmSpec.model_construct(**{**VmSpec(name=f"vm{i}").__dict__, "memory_mib": 2048,
                                         "priority": 1 + i % 3})
        host = host_specs[i % hosts].name
        placement = Placement.model_construct(vm=spec.name, state=VmState.RUNNING, host=host, generation=1,
                                              since=0.0, migration=None, restore_from=None, restarts=(),
                                              reason="", request_id="")
        status = VmStatus.model_construct(vm=spec.name, host=host, generation=1, state=LocalState.RUNNING,
                                          since=0.0, detail="", failed_migration="")
        vm_views[spec.name] = VmView(spec=spec, placement=placement,
                                                     statuses={host: status}, request=None)
    return ClusterView(settings=settings, hosts=host_views, vms=vm_views, manager_since=0.0)


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def sim_speed(virtual_s: float = 300.0) -> float:
    hosts = tuple(HostSpec(name=f"h{i + 1}", address=f"10.0.0.{i + 1}", vcpus=32, memory_mib=32768)
                  for i in range(5))
    vms = tuple(VmSpec(name=f"vm{i}", memory_mib=512, priority=1 + i % 3) for i in range(50))
    cluster = SimCluster(ClusterConfig(name="bench", settings=Settings(), hosts=hosts, vms=vms))
    faults = [(30, "power off h1"), (60, "power on h1"), (90, "cut h2 from store"), (100, "heal h2"),
              (130, "drain h3"), (170, "resume h3"), (200, "hang h4"), (210, "unhang h4"),
              (240, "crash vm7"), (250, "store down"), (253, "store up")]
    started = time.process_time()  # CPU time: other load on a shared machine does not count
    for at, line in faults:
        cluster.advance_to(at)
        apply_fault(cluster, line)
    cluster.advance_to(virtual_s)
    cpu = time.process_time() - started
    assert not cluster.world.monitor.violations, cluster.world.monitor.violations
    return virtual_s / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"cluster: {args.hosts} hosts, {args.vms} VMs")
    failover = big_view(args.hosts, args.vms, lost="h0")
    index = ClusterIndex.build(failover)  # the manager keeps this up to date between iterations
    decision = decide(failover, 100.0, index)
    moved = sum(1 for p in decision.placements.values() if p.state is VmState.STARTING)
    assert moved == args.vms // args.hosts, moved
    assert decide(failover, 100.0).placements == decision.placements  # same plan as from scratch
    plan = statistics.median(timed(lambda: decide(failover, 100.0, index), args.repeat))
    idle_view = big_view(args.hosts, args.vms, lost=None)
    idle_index = ClusterIndex.build(idle_view)
    assert decide(idle_view, 100.0, idle_index).empty
    idle = statistics.median(timed(lambda: decide(idle_view, 100.0, idle_index), args.repeat))
    scratch = statistics.median(timed(lambda: decide(idle_view, 100.0), 3))
    changed = [f"vm{i}" for i in range(0, args.vms, args.vms // 100)]
    update = statistics.median(timed(lambda: idle_index.update(idle_view, changed), args.repeat))
    speed = sim_speed()
    rows = [
        ("failover plan, one host lost", f"{plan * 1000:.1f} ms median ({moved} VMs placed)", "<= 50 ms"),
        ("decide(), nothing changed", f"{idle * 1000:.1f} ms median", "report; near the failover plan"),
        ("decide() building its index", f"{scratch * 1000:.1f} ms median", "report (first iteration)"),
        ("index update, 100 VMs changed", f"{update * 1000:.2f} ms median", "report"),
        ("simulator, 5 hosts / 50 VMs, faults", f"{speed:,.0f}x real time (per CPU second)", ">= 1,000x"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<36} goal {goal}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
