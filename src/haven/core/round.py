"""One manager iteration as it goes: the view it decides on, the host records it settled, the
placements it changed so far, and the capacity those changes leave. The VM state machine
(`core.manager`) and its migration part (`core.migration`) both read and update it."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from haven.core import replica
from haven.core.decision import Decision
from haven.core.index import ClusterIndex
from haven.core.scheduler import Capacity, occupied_hosts
from haven.model.spec import Settings, VmSpec
from haven.model.state import ClusterView, HostRecord, HostState, Placement


def settle_s(record: HostRecord, settings: Settings) -> float:
    """How long (seconds) a host must stay up before VMs are placed on it again."""
    return settings.host_settle_s if record.reason == "rejoined" else 0.0


@dataclass
class Round:
    view: ClusterView
    now: float
    settings: Settings
    records: dict[str, HostRecord]
    decision: Decision
    index: ClusterIndex
    current: dict[str, Placement] = field(default_factory=dict)  # placements changed this round
    _capacity: Capacity | None = None

    def placement(self, vm: str) -> Placement | None:
        """A VM's placement as it stands now in this round."""
        view = self.view.vms.get(vm)
        return self.current.get(vm, view.placement if view else None)

    def placements(self) -> Iterator[Placement]:
        """Every placement as it stands now in this round."""
        for name in self.view.vms:
            p = self.placement(name)
            if p is not None:
                yield p

    @property
    def specs(self) -> dict[str, VmSpec]:
        return {name: vm.spec for name, vm in self.view.vms.items()}

    @property
    def capacity(self) -> Capacity:
        """Built on first use: an iteration that places nothing never sums the cluster up."""
        if self._capacity is None:
            usable = [name for name, record in self.records.items() if record.state is HostState.ONLINE
                      and self.now >= record.since + settle_s(record, self.settings)]
            self._capacity = Capacity(self.index.loads, self.settings, usable, replica.confine(self.view))
            for name, new in self.current.items():  # changes made before it was needed
                old = self.view.vms[name].placement
                spec = self.view.vms[name].spec
                for host in occupied_hosts(old) if old else ():
                    self._capacity.remove(host, spec)
                for host in occupied_hosts(new):
                    self._capacity.add(host, spec)
        return self._capacity

    def host_state(self, host: str | None) -> HostState | None:
        record = self.records.get(host) if host else None
        return record.state if record else None

    def migrations_from(self, host: str) -> int:
        placements = (self.placement(vm) for vm in self.index.by_host.get(host, ()))
        return sum(1 for p in placements if p and p.migration and p.migration.source == host)

    def replaced(self, old: Placement, new: Placement, spec: VmSpec) -> None:
        """Keep the capacity and migration counts in step with a placement change."""
        self.current[spec.name] = new
        if self._capacity is not None:
            for host in occupied_hosts(old):
                self._capacity.remove(host, spec)
            for host in occupied_hosts(new):
                self._capacity.add(host, spec)
