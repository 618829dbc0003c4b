"""A host agent's decisions: `reconcile(input) -> AgentDecision`, pure.

Level-triggered: from the placements (the manager's word), what this host's hypervisor reports and
the age of the last good lease renewal, say what to start, stop, kill or migrate, and what to
report. Two rules keep a VM from running twice:
- self-fence: once the last successful renewal was sent more than `ttl - margin` ago, kill every
  local VM and start nothing (the store may expire the lease any moment after `ttl`);
- a VM starts only for its current placement: on this host, at its generation. The runtime adds
  the store-side half of that rule (see `runtime.agent_loop`): the placement must have been read
  after the current lease was granted and still be current when the start is made.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from haven.core.decision import Event
from haven.model.spec import MigrationKind, Settings, VmSpec
from haven.model.state import DEAD_LOCAL_STATES, LocalState, Placement, VmState, VmStatus
from haven.ports.hypervisor import LocalVm

DEAD = DEAD_LOCAL_STATES


@dataclass(frozen=True, slots=True)
class Start:
    vm: str
    generation: int
    restore_from: str | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    vm: str


@dataclass(frozen=True, slots=True)
class Kill:
    vm: str
    reason: str
    # Set for the paused source of a finished live migration: routine clean-up, logged as such
    # (not as a kill, which the timeline and the dashboard treat as a safety event).
    retired_to: str | None = None


@dataclass(frozen=True, slots=True)
class PrepareIncoming:
    vm: str
    generation: int


@dataclass(frozen=True, slots=True)
class PrepareRestore:
    vm: str
    generation: int


@dataclass(frozen=True, slots=True)
class MigrateLive:
    vm: str
    target: str
    address: str
    attempt: str


@dataclass(frozen=True, slots=True)
class CancelMigration:
    vm: str


@dataclass(frozen=True, slots=True)
class Save:
    vm: str
    attempt: str


@dataclass(frozen=True, slots=True)
class Forget:
    vm: str


Action = Start | Stop | Kill | PrepareIncoming | PrepareRestore | MigrateLive | CancelMigration | Save | Forget
# Actions that launch a QEMU on this host (or load a guest into one): each needs the start rule's
# guard (a placement read after the current lease was granted, still current at the store).
LAUNCHES = (Start, PrepareIncoming, PrepareRestore)


@dataclass(frozen=True)
class AgentInput:
    host: str
    now: float  # this host's clock
    last_renewal_sent: float  # send time of the last successful lease renewal (this host's clock)
    settings: Settings
    placements: Mapping[str, Placement]
    specs: Mapping[str, VmSpec]
    local: Mapping[str, LocalVm]
    peer_statuses: Mapping[tuple[str, str], VmStatus]  # (vm, host) -> status, for migrations
    addresses: Mapping[str, str]  # host -> management address


@dataclass
class AgentDecision:
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    self_fenced: bool = False


def lease_valid(now: float, last_renewal_sent: float, settings: Settings) -> bool:
    return now - last_renewal_sent < settings.self_fence_after_s


def self_fence_kills(now: float, last_renewal_sent: float, settings: Settings,
                     local: Mapping[str, LocalVm]) -> list[Kill] | None:
    """None while the lease is valid; past the deadline, a kill for every live local VM. It needs
    nothing from the store, so the runtime can fence on time whatever the store does."""
    if lease_valid(now, last_renewal_sent, settings):
        return None
    age = now - last_renewal_sent
    return [Kill(name, f"self-fence: no lease renewal for {age:.3f} s")
            for name, vm in sorted(local.items()) if vm.state not in DEAD]


def reconcile(inp: AgentInput) -> AgentDecision:
    out = AgentDecision()
    kills = self_fence_kills(inp.now, inp.last_renewal_sent, inp.settings, inp.local)
    if kills is not None:
        out.self_fenced = True
        out.actions.extend(kills)
        return out
    names = set(inp.local) | {n for n, p in inp.placements.items() if concerns(p, inp.host)}
    for name in sorted(names):
        _reconcile_vm(inp, name, inp.placements.get(name), inp.local.get(name), out)
    return out


def status_of(host: str, local: LocalVm) -> VmStatus:
    """What an agent reports for a local VM (only when it changed: this is not free)."""
    return VmStatus(vm=local.name, host=host, generation=local.generation, state=local.state,
                    since=local.since, detail=local.detail, failed_migration=local.failed_migration,
                    downtime_ms=local.downtime_ms)


def concerns(p: Placement, host: str) -> bool:
    """Is this host the VM's place, or the target of its migration?"""
    return p.host == host or (p.migration is not None and p.migration.target == host)


def _reconcile_vm(inp: AgentInput, name: str, p: Placement | None, local: LocalVm | None,
                  out: AgentDecision) -> None:
    acts = out.actions
    here = p is not None and p.host == inp.host and p.state in (
        VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.MIGRATING)
    # The target of a live migration, or of a quick one whose source still saves: get ready.
    incoming = (p is not None and p.state is VmState.MIGRATING and p.migration is not None
                and p.migration.kind is not MigrationKind.COLD and p.migration.target == inp.host
                and p.host != inp.host)
    if incoming:
        assert p is not None and p.migration is not None
        if local is None or (local.state in DEAD and local.generation < p.migration.generation):
            if name in inp.specs:
                prepare = PrepareIncoming if p.migration.kind is MigrationKind.LIVE else PrepareRestore
                acts.append(prepare(name, p.migration.generation))
        elif local.generation != p.migration.generation and local.state not in DEAD:
            acts.append(Kill(name, f"stale generation {local.generation}"))
        return
    if not here:
        if local is None:
            return
        if local.state in DEAD:
            acts.append(Forget(name))
        elif p and p.host and local.state is LocalState.MIGRATED and local.generation < p.generation:
            acts.append(Kill(name, f"retired the source copy after migration to {p.host}", retired_to=p.host))
        else:
            where = f"placed on {p.host} generation {p.generation}" if p and p.host else "not placed here"
            acts.append(Kill(name, f"stale copy ({where})"))
        return
    assert p is not None and p.host is not None
    m = p.migration
    if p.state is VmState.STOPPING or (m and m.kind is MigrationKind.COLD and m.source == inp.host):
        if local and local.state in (LocalState.RUNNING, LocalState.STARTING):
            acts.append(Stop(name))
        return
    if local is not None and local.generation == p.generation and local.state is LocalState.INCOMING:
        if p.state is VmState.MIGRATING and p.restore_from:
            acts.append(Start(name, p.generation, p.restore_from))  # into the standby prepared for it
            return
        # A target prepared for a migration that was abandoned: it never ran; start afresh.
        acts.append(Kill(name, "abandoned incoming migration"))
        local = None
    if local is not None and local.generation > p.generation:
        return  # ahead of the placement (handover in flight): wait for the manager
    if local is None or (local.generation < p.generation and local.state in DEAD):
        startable = p.state in (VmState.STARTING, VmState.RUNNING) or (p.state is VmState.MIGRATING and p.restore_from)
        if startable and name in inp.specs:
            acts.append(Start(name, p.generation, p.restore_from))
        return
    if local.generation < p.generation:
        acts.append(Kill(name, f"stale generation {local.generation} (placement has {p.generation})"))
        return
    if m is None:
        if local.state is LocalState.MIGRATING_OUT:
            acts.append(CancelMigration(name))
        return
    if m.source != inp.host or local.state is not LocalState.RUNNING or local.failed_migration == m.attempt:
        return
    if m.kind is MigrationKind.QUICK:
        acts.append(Save(name, m.attempt))
    elif m.kind is MigrationKind.LIVE:
        peer = inp.peer_statuses.get((name, m.target))
        if peer and peer.generation == m.generation and peer.state is LocalState.INCOMING:
            acts.append(MigrateLive(name, m.target, inp.addresses.get(m.target, m.target), m.attempt))
