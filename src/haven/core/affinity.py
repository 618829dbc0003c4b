"""Keep-together (positive) affinity: the VMs of one `affinity_group` always share a host.

Pure helpers for the manager's VM steps (`core.manager`). The rules (docs/DESIGN.md, placement):
- The members take their turns one after the other, at the priority of the group's highest
  member, so nothing else takes the room between them.
- A member whose group-mates hold a host goes there or nowhere. The first member to be placed
  picks a host where it and every other member waiting for a host fit together; when there is
  none, they all wait with the reason instead of splitting up.
- A move (drain, failback, return after maintenance, an operator's migration) takes every member
  running on the same host to one target, or does not happen. An operator's migration of one
  member moves the group, and is refused when the group cannot move as a whole.
- A member that cannot join its group where it runs (the room went to others meanwhile) moves
  the group, live, to a host where all of it fits.
- A group found apart (a spec changed to join it, a member's move failed while another's went
  through) comes back together on the host of its leading running member.
- Balancing leaves grouped VMs alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from haven.core.migration import migration_precondition
from haven.core.scheduler import Selection
from haven.model.spec import DesiredState, MigrationKind, VmSpec
from haven.model.state import HOST_UP, ClusterView, HostState, Placement, VmState

if TYPE_CHECKING:
    from haven.core.index import ClusterIndex
    from haven.core.round import Round

TurnKey = tuple[int, int, str, int, str]

# The states in which a VM draws its group-mates to its host (not while stopping: it is leaving).
ANCHORS = frozenset({VmState.STARTING, VmState.RUNNING, VmState.MIGRATING})


def turn_key(view: ClusterView, index: ClusterIndex, name: str) -> TurnKey:
    """Turn order: highest priority first, then name; a group's members one after the other at the
    priority of its highest member."""
    spec = view.vms[name].spec
    group = spec.affinity_group
    if not group:
        return (-spec.priority, 0, name, 0, "")
    top = max((view.vms[m].spec.priority for m in index.groups.get(group, ()) if m in view.vms),
              default=spec.priority)
    return (-top, 1, group, -spec.priority, name)


def mates(r: Round, spec: VmSpec) -> list[VmSpec]:
    """The other members of `spec`'s group, highest priority first, then by name."""
    group = spec.affinity_group
    if not group:
        return []
    names = r.index.groups.get(group, set()) - {spec.name}
    found = [r.view.vms[name].spec for name in names if name in r.view.vms]
    return sorted(found, key=lambda m: (-m.priority, m.name))


def leads(r: Round, spec: VmSpec) -> bool:
    """Is `spec` its group's leader (highest priority, then first by name)? Its preferences
    decide where the group fails back to."""
    others = mates(r, spec)
    return not others or (-spec.priority, spec.name) < (-others[0].priority, others[0].name)


def held_host(r: Round, name: str) -> str | None:
    """The host a VM holds now (where it is going, while it migrates); None if it holds none, is
    stopping, or holds only a host that is down (it is about to be recovered too)."""
    p = r.placement(name)
    if p is None or p.state not in ANCHORS or p.host is None:
        return None
    host = p.migration.target if p.migration else p.host
    return host if r.host_state(host) in HOST_UP else None


def needs_host(r: Round, spec: VmSpec) -> bool:
    """Is this VM waiting to be started or restarted somewhere?"""
    p = r.placement(spec.name)
    return spec.desired is DesiredState.RUNNING and (p is None or p.state in (VmState.STOPPED, VmState.RECOVERING))


def select(r: Round, spec: VmSpec, exclude: tuple[str, ...], prefer: str | None) -> Selection:
    """Where a grouped VM that needs a host may start: with its mates, or where all that wait fit."""
    others = mates(r, spec)
    held = sorted({host for m in others if (host := held_host(r, m.name))})
    if held:
        choice = r.capacity.select(spec, exclude, prefer, only=held)
        if choice:
            return choice
        return Selection(None, f"kept with group {spec.affinity_group} on {', '.join(held)}: {choice.reason}")
    return r.capacity.select(spec, exclude, prefer, mates=[m for m in others if needs_host(r, m)])


def movers(r: Round, spec: VmSpec, host: str) -> list[VmSpec]:
    """`spec` and the mates running on `host` with it: what one move takes along."""
    return [spec] + [m for m in mates(r, spec) if _running_on(r, m.name, host)]


def move_target(r: Round, moving: list[VmSpec], source: str, only: list[str] | None = None) -> Selection:
    """The best host for `moving` (the first one's preferences) away from `source`: where the rest
    of the group is, when part of it already left."""
    staying = sorted({host for m in mates(r, moving[0]) if m not in moving
                      if (host := held_host(r, m.name)) and host != source})
    if staying:
        only = [h for h in only if h in staying] if only is not None else staying
    return r.capacity.select(moving[0], (source,), only=only, mates=moving[1:])


def move_refusal(r: Round, spec: VmSpec, placement: Placement, kind: MigrationKind,
                 target: str | None) -> str | None:
    """Why an operator's migration of a grouped VM (with its group) cannot be done; None if it can."""
    hosts = {name: record.state for name, record in r.records.items()}
    refused = migration_precondition(spec, placement, kind, target, hosts)
    if refused:
        return refused.reason
    group, source = spec.affinity_group, placement.host
    assert source is not None
    for mate in mates(r, spec):
        p = r.placement(mate.name)
        if held_host(r, mate.name) is not None and not _running_on(r, mate.name, source):
            state = p.state.value if p else "stopped"
            return f"keep-together group {group} moves as one and {mate.name} is {state} on {p.host if p else '?'}"
    moving = movers(r, spec, source)
    if kind is MigrationKind.LIVE:
        for mate in moving:
            if not mate.migratable:
                return f"keep-together group {group} moves as one and {mate.name} is not live-migratable (use quick)"
    if target is not None:
        reason = r.capacity.why_not(spec, target, moving[1:])
        return f"{target}: {reason}" if reason else None
    choice = move_target(r, moving, source)
    return None if choice else choice.reason


def relocation(r: Round, spec: VmSpec) -> tuple[list[VmSpec], str] | None:
    """The running mates of `spec` and their host, when the whole group may be moved live to
    make room for `spec`: every mate that holds a host runs on the same online host and is
    live-migratable (a quick move would interrupt them to start another member)."""
    holding = [m for m in mates(r, spec) if held_host(r, m.name) is not None]
    hosts = {held_host(r, m.name) for m in holding}
    if len(hosts) != 1:
        return None
    source = hosts.pop()
    assert source is not None
    if r.host_state(source) is not HostState.ONLINE:
        return None
    if not all(m.migratable and _running_on(r, m.name, source) for m in holding):
        return None
    return holding, source


def split_groups(view: ClusterView, index: ClusterIndex) -> set[str]:
    """The members of every group whose running members are on more than one host (a spec
    changed to join a group, or one member's migration failed while another's went through): they
    need a turn to come back together."""
    names: set[str] = set()
    for members in index.groups.values():
        hosts = set()
        for name in members:
            p = view.vms[name].placement if name in view.vms else None
            if p is not None and p.state is VmState.RUNNING and p.migration is None:
                hosts.add(p.host)
        if len(hosts) > 1:
            names |= members
    return names


def home(r: Round, spec: VmSpec) -> str | None:
    """Where a split group comes back together: the host of its leading running member."""
    members = sorted([spec, *mates(r, spec)], key=lambda m: (-m.priority, m.name))
    for member in members:
        p = r.placement(member.name)
        if p is not None and p.state is VmState.RUNNING and p.migration is None and p.host:
            return p.host if r.host_state(p.host) is HostState.ONLINE else None
    return None


def _running_on(r: Round, name: str, host: str) -> bool:
    p = r.placement(name)
    return p is not None and p.state is VmState.RUNNING and p.host == host and p.migration is None
