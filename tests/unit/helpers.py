"""Build cluster views for pure-core tests."""
from __future__ import annotations

from haven.model.spec import HostSpec, Settings, VmSpec
from haven.model.state import (ClusterView, HostAdmin, HostRecord, HostState, HostView, Placement,
                               VmState, VmStatus, VmView)


def host(name: str, memory: int = 4096, vcpus: int = 8, **extra) -> HostSpec:
    return HostSpec(name=name, address=f"10.0.0.{name[-1]}", vcpus=vcpus, memory_mib=memory, **extra)


def view(hosts: list[HostSpec], vms: list[VmSpec], placements: dict[str, Placement] | None = None,
         alive: set[str] | None = None, records: dict[str, HostState] | None = None,
         statuses: list[VmStatus] = (), settings: Settings | None = None, since: float = 0.0,
         maintenance: set[str] = frozenset(), manager_since: float = 0.0) -> ClusterView:
    alive = {h.name for h in hosts} if alive is None else alive
    records = {h.name: HostState.ONLINE for h in hosts} if records is None else records
    by_vm: dict[str, dict[str, VmStatus]] = {}
    for status in statuses:
        by_vm.setdefault(status.vm, {})[status.host] = status
    return ClusterView(
        settings=settings or Settings(),
        hosts={h.name: HostView(spec=h, alive=h.name in alive,
                                record=HostRecord(host=h.name, state=records[h.name], since=since)
                                if h.name in records else None,
                                admin=HostAdmin(maintenance=h.name in maintenance)) for h in hosts},
        vms={v.name: VmView(spec=v, placement=(placements or {}).get(v.name), statuses=by_vm.get(v.name, {}))
             for v in vms},
        manager_since=manager_since)


def running(vm: str, host: str, generation: int = 1) -> Placement:
    return Placement(vm=vm, state=VmState.RUNNING, host=host, generation=generation)
