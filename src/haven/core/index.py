"""Aggregates of a cluster view that one decision needs: what occupies each host, which VMs sit on
(or migrate to) each host, and which VMs need a manager turn whatever their host does.

Building it looks at every VM; a manager that keeps it between iterations updates only the VMs
whose records changed, so an iteration in a 50,000-VM cluster costs what changed, not the cluster.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from haven.core.scheduler import HostLoad, occupied_hosts
from haven.model.spec import DesiredState, VmSpec
from haven.model.state import ENDED_LOCAL_STATES, ClusterView, LocalState, VmState, VmView


def needs_turn(vm: VmView, failback: bool) -> bool:
    """Does this VM need the manager whatever its host's state? (A VM on a host that is not
    online always gets a turn; see `ClusterIndex.turns`.)"""
    p = vm.placement
    if p is None or (vm.request is not None and vm.request.id != p.request_id):
        return True
    if p.state is VmState.RUNNING:
        status = vm.statuses.get(p.host) if p.host else None
        return (vm.spec.desired is not DesiredState.RUNNING
                or (status is not None and status.generation == p.generation
                    and (status.state in ENDED_LOCAL_STATES or status.state is LocalState.MIGRATED))
                or (vm.spec.fails_back(failback) and bool(vm.spec.preferred_hosts)
                    and vm.spec.preference_rank(p.host) > 0)
                or p.drained_from is not None)  # it may go back to a resumed host
    if p.state is VmState.STOPPED:
        return vm.spec.desired is DesiredState.RUNNING
    return p.state is not VmState.ERROR


@dataclass
class ClusterIndex:
    failback: bool
    loads: dict[str, HostLoad] = field(default_factory=dict)  # usable=False here: set per round
    by_host: dict[str, set[str]] = field(default_factory=dict)
    unsettled: set[str] = field(default_factory=set)
    counted: dict[str, tuple[VmSpec, tuple[str, ...]]] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)  # keep-together group -> its VMs
    group_of: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, view: ClusterView) -> ClusterIndex:
        index = cls(view.settings.failback)
        index.update(view, view.vms)
        return index

    def update(self, view: ClusterView, names: Iterable[str]) -> None:
        """Re-derive the entries of these VMs (and the host list) from `view`."""
        for host, host_view in view.hosts.items():
            if host not in self.loads:
                self.loads[host] = HostLoad(host_view.spec, False)
                self.by_host.setdefault(host, set())
        for name in names:
            self._forget(name)
            vm = view.vms.get(name)
            if vm is not None:
                self._count(vm)

    def _forget(self, name: str) -> None:
        self.unsettled.discard(name)
        group = self.group_of.pop(name, None)
        if group is not None:
            self.groups[group].discard(name)
            if not self.groups[group]:
                del self.groups[group]
        spec, hosts = self.counted.pop(name, (None, ()))
        for host in hosts:
            self.by_host.get(host, set()).discard(name)
            if spec is not None and host in self.loads:
                self.loads[host].remove(spec)

    def _count(self, vm: VmView) -> None:
        name = vm.spec.name
        if needs_turn(vm, self.failback):
            self.unsettled.add(name)
        if vm.spec.affinity_group:
            self.group_of[name] = vm.spec.affinity_group
            self.groups.setdefault(vm.spec.affinity_group, set()).add(name)
        p = vm.placement
        if p is None:
            return
        hosts = tuple(h for h in (p.host, p.migration.target if p.migration else None) if h)
        occupied = occupied_hosts(p)
        for host in hosts:
            self.by_host.setdefault(host, set()).add(name)
        for host in occupied:
            if host in self.loads:
                self.loads[host].add(vm.spec)
        self.counted[name] = (vm.spec, hosts)

    def turns(self, unsettled_hosts: Iterable[str]) -> set[str]:
        """The VMs that need a turn this round, given the hosts that are not simply online."""
        names = set(self.unsettled)
        for host in unsettled_hosts:
            names |= self.by_host.get(host, set())
        return names


def changed_vms(before: ClusterView, after: ClusterView) -> list[str]:
    """VMs whose records differ between two snapshots. Decoded records are shared between
    snapshots while unchanged, so identity says it: this is cheap even for large clusters."""
    changed = []
    for name, vm in after.vms.items():
        old = before.vms.get(name)
        if (old is None or old.spec is not vm.spec or old.placement is not vm.placement
                or old.request is not vm.request or old.statuses.keys() != vm.statuses.keys()
                or any(old.statuses[h] is not s for h, s in vm.statuses.items())):
            changed.append(name)
    changed += [name for name in before.vms if name not in after.vms]
    return changed
