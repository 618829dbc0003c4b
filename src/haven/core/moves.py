"""Planned moves of a running VM, with its keep-together group: leaving a host being drained,
going back to it after the maintenance, failing back to a preferred host, and rejoining or making
room for its group (docs/DESIGN.md, placement). Mixed into the manager's per-VM step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from haven.core import affinity
from haven.core.decision import Event, EventKind
from haven.core.round import Round
from haven.model.spec import MigrationKind, VmSpec
from haven.model.state import HostState, Placement, VmState


class PlannedMoves:
    """Mixed into the manager's per-VM step (`manager._VmStep`), whose helpers it uses."""

    p: Placement
    spec: VmSpec
    r: Round

    if TYPE_CHECKING:  # provided by _VmStep and MigrationSteps
        def step_for(self, name: str) -> Self: ...
        def change(self, event: Event | None = None, **fields: object) -> None: ...
        def event(self, event: Event) -> None: ...
        def said(self, kind: EventKind, **facts: Any) -> Event: ...
        def moved(self, old: str, new: str, **facts: Any) -> Event: ...
        def note(self, reason: str) -> None: ...
        def begin_migration(self, kind: MigrationKind, target: str, reason: str) -> None: ...

    def move_together(self, moving: list[VmSpec], target: str, reason: str, kind: MigrationKind | None = None,
                      drained: str | None = None) -> None:
        """Migrate this VM and the group-mates moving with it to `target`: `kind`, or live where
        allowed and quick otherwise. `drained`: the host a drain moves them from (remembered
        so that they return); otherwise they forget where a drain took them from."""
        for spec in moving:
            step = self.step_for(spec.name)
            home = (step.p.drained_from or drained) if drained else None
            step.begin_migration(kind or (MigrationKind.LIVE if spec.migratable else MigrationKind.QUICK),
                                 target, reason)
            if home != step.p.drained_from:
                step.change(drained_from=home)

    def busy(self, host: str, moving: int) -> bool:
        """Would `moving` more migrations from `host` exceed the parallel limit? A group larger
        than the limit still moves, alone."""
        running = self.r.migrations_from(host)
        return running > 0 and running + moving > self.r.settings.max_parallel_migrations

    def leave_draining_host(self, host: str) -> None:
        moving = affinity.movers(self.r, self.spec, host)
        if self.busy(host, len(moving)):
            return
        choice = affinity.move_target(self.r, moving, host)
        if not choice:
            if self.spec.ha:
                self.note(f"cannot leave {host}: {choice.reason}")
            else:
                self.change(self.moved(VmState.RUNNING.value, VmState.STOPPING.value,
                                       reason=f"drain of {host}: {choice.reason}; priority 0"),
                            state=VmState.STOPPING)
            return
        assert choice.host is not None
        self.move_together(moving, choice.host, f"drain {host}", drained=host)

    def relocate_group(self) -> bool:
        """This VM cannot join its group where the group runs: move the group, live, to a host
        where all of it fits, so that it can start there. True if the group moves."""
        found = affinity.relocation(self.r, self.spec)
        if found is None:
            return False
        running, source = found
        if self.busy(source, len(running)):
            return False
        waiting = [m for m in affinity.mates(self.r, self.spec) if affinity.needs_host(self.r, m)]
        choice = self.r.capacity.select(running[0], (source,), mates=[*running[1:], self.spec, *waiting])
        if not choice:
            return False
        assert choice.host is not None
        self.move_together(running, choice.host, f"group {self.spec.affinity_group} makes room for "
                                                 f"{self.spec.name}", MigrationKind.LIVE)
        return True

    def rejoin_group(self, host: str) -> bool:
        """Move to the rest of the group when it runs elsewhere. True if the VM's step is over."""
        home = affinity.home(self.r, self.spec)
        if home is None or home == host:
            return False
        moving = affinity.movers(self.r, self.spec, host)
        if self.busy(host, len(moving)):
            return True
        choice = affinity.move_target(self.r, moving, host, only=[home])
        if not choice:
            self.note(f"apart from group {self.spec.affinity_group}, which runs on {home}: "
                      f"{self.r.capacity.why_not(self.spec, home, moving[1:]) or choice.reason}")
            return True
        self.move_together(moving, home, f"rejoin group {self.spec.affinity_group} on {home}")
        return True

    def return_after_maintenance(self, host: str, home: str) -> bool:
        """Go back to `home`, the host a drain moved this VM from, once it is resumed (as Proxmox
        does). True if the VM's step is over."""
        state = self.r.host_state(home)
        if state is not None and state is not HostState.ONLINE:
            return False  # still in maintenance, or down: remember it for when it is resumed
        moving = affinity.movers(self.r, self.spec, host)
        if state is None or home == host or not self.r.settings.return_after_maintenance:
            self.forget_drain(moving)
            return False
        load = self.r.capacity.loads.get(home)
        if load is None or not load.usable:
            return False  # back from a restart and settling first: it goes back once settled
        if self.busy(host, len(moving)):
            return True
        choice = affinity.move_target(self.r, moving, host, only=[home])
        if not choice:
            self.event(self.said(EventKind.WAITING, new=VmState.RUNNING.value,
                                 reason=f"stays on {host}: {home} cannot take it back after maintenance "
                                        f"({self.r.capacity.why_not(self.spec, home, moving[1:]) or choice.reason})"))
            self.forget_drain(moving)
            return False
        self.move_together(moving, home, f"back to {home} after maintenance")
        return True

    def forget_drain(self, moving: list[VmSpec]) -> None:
        for spec in moving:
            step = self.step_for(spec.name)
            if step.p.drained_from is not None:
                step.change(drained_from=None)

    def fail_back(self, host: str) -> None:
        levels = self.spec.preference_levels
        rank = self.spec.preference_rank(host)
        if rank == 0 or not affinity.leads(self.r, self.spec):
            return  # already on a most preferred host; or a group-mate leads the group's failback
        others = affinity.mates(self.r, self.spec)
        moving = affinity.movers(self.r, self.spec, host)
        if len(moving) <= len(others) or self.busy(host, len(moving)):
            return  # the group is not all here (it moves back once it is), or the host is busy
        better = [name for level in levels[:rank] for name in level]
        choice = self.r.capacity.select(self.spec, (host,), only=better, mates=moving[1:])
        if choice:
            assert choice.host is not None
            self.move_together(moving, choice.host, f"failback to preferred host {choice.host}")
