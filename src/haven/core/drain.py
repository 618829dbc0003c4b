"""Can a drain finish? Checked before the maintenance request is written, so an operator learns
up front which VM would stay behind and why, instead of watching a drain that never ends.

Pure: the VMs the drain moves are placed in the manager's order (highest priority first, then
name) with the scheduler's own `Capacity`, each placement taking its room before the next VM is
tried, as the manager's iterations would. An HA VM that finds no host keeps the drain from
finishing; a priority 0 VM is stopped instead (it is listed, but does not block the drain).
"""
from __future__ import annotations

from dataclasses import dataclass

from haven.core import replica
from haven.core.protection import host_state
from haven.core.scheduler import FILTERS, Capacity, HostLoad, build_loads, filter_memory
from haven.model.spec import DesiredState, VmSpec
from haven.model.state import HOLDING_STATES, HOST_UP, ClusterView, HostState, Placement


@dataclass(frozen=True, slots=True)
class DrainRefusal:
    """Why a drain should not start: one sentence, and one line per VM that cannot move."""

    detail: str
    problems: tuple[str, ...] = ()


def _moves_with_drain(placement: Placement | None, host: str) -> bool:
    """Does this VM end up on `host` (running there, starting there, or migrating to it)?"""
    if placement is None or placement.state not in HOLDING_STATES or placement.host is None:
        return False
    destination = placement.migration.target if placement.migration else placement.host
    return destination == host


def _why_not_there(move: list[VmSpec], load: HostLoad, capacity: Capacity) -> str:
    """The scheduler's reason, with the missing memory spelled out when memory is what is short
    (what an operator must free)."""
    vm, mates = move[0], move[1:]
    settings = capacity.settings
    need = sum(m.memory_mib for m in move if m.name not in load.vms)
    free = max(load.memory_free(settings), 0)
    other_reasons = [f(m, load, settings) for m in move for f in FILTERS if f is not filter_memory]
    if need > free and not any(other_reasons):
        return f"has {free} MiB free ({need - free} MiB missing)"
    return capacity.why_not(vm, load.spec.name, mates) or "cannot take it"


def _stranded_lines(move: list[VmSpec], host: str, capacity: Capacity, candidates: list[str],
                    states: dict[str, HostState]) -> list[str]:
    """One line per VM of a move that finds no host: the first carries the reason."""
    vm = move[0]
    outcome = "cannot move" if vm.ha else "would be stopped (priority 0)"
    together = ""
    if len(move) > 1:
        total = sum(m.memory_mib for m in move)
        together = f" with {', '.join(m.name for m in move[1:])} (group {vm.affinity_group}, {total} MiB together)"
    others = sorted(name for name in capacity.loads if name != host)
    online = [name for name in candidates if capacity.loads[name].usable]
    if not online:
        down = ", ".join(f"{name} is {'in ' if states[name] is HostState.MAINTENANCE else ''}"
                         f"{states[name].value}" for name in others)
        reason = "no other host is online" + (f" ({down})" if down else "")
    elif len(online) == 1:
        only = online[0]
        where = "the only host its group runs on" if len(candidates) < len(others) else "the only other online host"
        reason = f"{only}, {where}, {_why_not_there(move, capacity.loads[only], capacity)}"
    else:
        reason = "; ".join(f"{name} {_why_not_there(move, capacity.loads[name], capacity)}" for name in online)
    lines = [f"VM {vm.name} ({vm.memory_mib} MiB, priority {vm.priority}) {outcome}{together}: {reason}"]
    lines += [f"VM {m.name} ({m.memory_mib} MiB, priority {m.priority}) {outcome}: it moves only with "
              f"{vm.name} (keep-together group {vm.affinity_group})" for m in move[1:]]
    return lines


def _moves(view: ClusterView, host: str) -> list[list[VmSpec]]:
    """The VMs the drain moves, as the manager moves them: a keep-together group's members on the
    host in one move; highest priority first (a group at its highest member's), then name."""
    leaving = [vm.spec for vm in view.vms.values()
               if vm.spec.desired is DesiredState.RUNNING and _moves_with_drain(vm.placement, host)]
    groups: dict[str, list[VmSpec]] = {}
    moves: list[list[VmSpec]] = []
    for spec in sorted(leaving, key=lambda spec: (-spec.priority, spec.name)):
        if spec.affinity_group is None:
            moves.append([spec])
        elif spec.affinity_group in groups:
            groups[spec.affinity_group].append(spec)
        else:
            groups[spec.affinity_group] = [spec]
            moves.append(groups[spec.affinity_group])
    return moves


def _group_hosts(view: ClusterView, move: list[VmSpec], host: str, states: dict[str, HostState]) -> list[str]:
    """Where the rest of the move's keep-together group runs (it must join them there)."""
    group = move[0].affinity_group
    if group is None:
        return []
    moving = {m.name for m in move}
    held = set()
    for name, vm in view.vms.items():
        p = vm.placement
        if name in moving or vm.spec.affinity_group != group or p is None or p.host is None:
            continue
        where = p.migration.target if p.migration else p.host
        if p.state in HOLDING_STATES and where != host and states.get(where) in HOST_UP:
            held.add(where)
    return sorted(held)


def drain_refusal(view: ClusterView, host: str) -> DrainRefusal | None:
    """Why draining `host` now would not finish, or None when it would (or is already asked for).

    A host that is down has nothing to drain: it is refused too, since maintenance on it would only
    matter once it returns (a forced drain keeps it out of service then)."""
    states = {name: host_state(h) for name, h in view.hosts.items()}
    state = states[host]
    if view.hosts[host].admin.maintenance:
        return None  # already draining: asking again changes nothing the check could warn about
    if state in (HostState.LOST, HostState.FENCED, HostState.OFFLINE):
        return DrainRefusal(f"host {host} is {state.value}: it runs no VM to drain; force the drain only "
                            "to keep it in maintenance when it comes back")
    specs = {name: vm.spec for name, vm in view.vms.items()}
    usable = [name for name, s in states.items() if s is HostState.ONLINE and name != host]
    placements = [vm.placement for vm in view.vms.values() if vm.placement is not None]
    capacity = Capacity(build_loads({n: h.spec for n, h in view.hosts.items()}, usable, specs, placements),
                        view.settings, confine=replica.confine(view))
    blocking: list[str] = []
    problems: list[str] = []
    for move in _moves(view, host):
        only = _group_hosts(view, move, host, states)
        choice = capacity.select(move[0], exclude=(host,), only=only or None, mates=move[1:])
        if choice.host is not None:
            for spec in move:
                capacity.add(choice.host, spec)
            continue
        candidates = only or sorted(name for name in capacity.loads if name != host)
        problems += _stranded_lines(move, host, capacity, candidates, states)
        blocking += [spec.name for spec in move if spec.ha]
    if not blocking:
        return None
    n = len(blocking)
    who = f"VM {blocking[0]} has" if n == 1 else f"{n} VMs ({', '.join(blocking)}) have"
    return DrainRefusal(f"the drain of {host} cannot finish: {who} nowhere to go; make room on another "
                        "host, or force the drain to leave them running there", tuple(problems))
