"""The cluster as it is now, for the planners: from a live store snapshot, or from a declaration
file (its VMs placed as haven would place them)."""
from __future__ import annotations

from haven.model.spec import ClusterConfig
from haven.model.state import VmState
from haven.runtime.layout import Snapshot, read_snapshot
from haven.sim.cluster import SimCluster

SETTLE_S = 20.0  # virtual seconds for a declared cluster to start its VMs


def from_snapshot(snapshot: Snapshot, cluster: str = "live") -> tuple[ClusterConfig, dict[str, str]]:
    config = ClusterConfig.model_construct(name=cluster, settings=snapshot.settings,
                                           hosts=tuple(snapshot.hosts[h] for h in sorted(snapshot.hosts)),
                                           vms=tuple(snapshot.specs[v] for v in sorted(snapshot.specs)))
    return config, running_of(snapshot)


def running_of(snapshot: Snapshot) -> dict[str, str]:
    return {vm: p.host for vm, p in sorted(snapshot.placements.items())
            if p.host and p.state in (VmState.RUNNING, VmState.STARTING, VmState.MIGRATING)}


def from_config(config: ClusterConfig) -> dict[str, str]:
    cluster = SimCluster(config)
    cluster.advance_to(SETTLE_S)
    return running_of(read_snapshot(cluster.operator, cluster.layout, with_events=False))
