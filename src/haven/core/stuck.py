"""Why an HA VM that should run does not: the words after "is not running" in the pet's reason.

An operator reading "HA VM db (recovering) is not running" needs the next step: free memory (and
how much), resume a host in maintenance, wait for a fence, widen a strict host restriction. The
explanation is worked out from the same view and the same scheduler filters the manager uses, host
by host, so it names hosts and numbers rather than repeating a counted summary.

Pure: no I/O, no clock. Host states are passed in (`protection.host_state`) to keep the import
one-way.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from haven.core.scheduler import build_loads, filter_memory, why_not
from haven.model.spec import VmSpec
from haven.model.state import ClusterView, HostState, VmState, VmView


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))


def _host_words(state: HostState) -> str:
    return "in maintenance" if state is HostState.MAINTENANCE else state.value


def no_room(view: ClusterView, spec: VmSpec, states: Mapping[str, HostState]) -> str | None:
    """Why no host can take `spec` now, clause by clause; None when some host could."""
    settings = view.settings
    usable = [name for name, state in states.items() if state is HostState.ONLINE]
    placements = [vm.placement for vm in view.vms.values() if vm.placement is not None]
    loads = build_loads({name: h.spec for name, h in view.hosts.items()}, usable,
                        {name: vm.spec for name, vm in view.vms.items()}, placements)
    allowed = [name for name in sorted(view.hosts) if spec.allows(name)]
    short: list[tuple[int, str]] = []  # (MiB free, host) of online hosts that lack only memory
    refused: dict[str, list[str]] = defaultdict(list)  # another filter's reason -> hosts
    down: dict[HostState, list[str]] = defaultdict(list)
    for name in allowed:
        if states[name] is not HostState.ONLINE:
            down[states[name]].append(name)
            continue
        load = loads[name]
        reason = why_not(spec, load, settings)
        if reason is None:
            return None
        if reason == filter_memory(spec, load, settings):
            short.append((max(load.memory_free(settings), 0), name))
        else:
            refused[reason].append(name)
    clauses = [f"restricted to {_names(spec.preferred_set)}"] if spec.restricted else []
    if not allowed:
        clauses.append("none of these hosts is declared")
    if short:
        free, best = min(short, key=lambda item: (-item[0], item[1]))
        clauses.append(f"no room: needs {spec.memory_mib} MiB, the most free is {free} MiB on {best} "
                       f"({spec.memory_mib - free} MiB short)")
    clauses += [f"{_names(hosts)}: {reason}" for reason, hosts in sorted(refused.items())]
    clauses += [f"{_names(hosts)} {_host_words(state)}"
                for state, hosts in sorted(down.items(), key=lambda item: item[1])]
    return "; ".join(clauses)


def why_down(view: ClusterView, vm: VmView, states: Mapping[str, HostState]) -> str:
    """Why this desired-running HA VM is not running ("" when there is nothing to add)."""
    p = vm.placement
    if p is not None and p.state is VmState.ERROR:
        return f"{p.reason}; acknowledge it to try again" if p.reason else ""
    if p is not None and p.host is not None and p.state in (VmState.STARTING, VmState.STOPPING):
        return f"being {'started' if p.state is VmState.STARTING else 'stopped'} on {p.host}"
    if p is not None and p.host is not None and states.get(p.host) is HostState.LOST:
        return f"waiting for {p.host} ({states[p.host].value}) to be fenced"
    room = no_room(view, vm.spec, states)
    if room:
        return room
    if p is not None and p.reason:
        return p.reason
    return "waiting for the manager to place it"


def explain(view: ClusterView, vms: Sequence[VmView], states: Mapping[str, HostState]) -> str:
    """The tail of the "not running" sentence for `vms`: ": why" for one VM, ". a, b: why" (VMs
    with the same reason together) for several, "" when there is nothing to add."""
    whys = {vm.spec.name: why_down(view, vm, states) for vm in vms}
    if len(vms) == 1:
        why = whys[vms[0].spec.name]
        return f": {why}" if why else ""
    grouped: dict[str, list[str]] = defaultdict(list)
    for name, why in whys.items():
        if why:
            grouped[why].append(name)
    return "".join(f". {', '.join(names)}: {why}" for why, names in grouped.items())
