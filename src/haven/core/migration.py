"""The migration part of a VM's state machine in the manager: live, quick and cold moves,
their phases, and their aborts when a side fails (docs/DESIGN.md section 5)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from haven.core import failsafe
from haven.core.events import Event, EventKind
from haven.core.replica import copy_refusal
from haven.model.spec import DesiredState, MigrationKind, VmSpec
from haven.model.state import (
    ACTIVE_LOCAL_STATES,
    BROKEN_LOCAL_STATES,
    ENDED_LOCAL_STATES,
    HostState,
    LocalState,
    Migration,
    Placement,
    VmState,
)
from haven.model.state import HOST_UP as UP

if TYPE_CHECKING:
    from haven.core.round import Round
    from haven.core.scheduler import Selection
    from haven.model.state import VmStatus


class Obstacle(StrEnum):
    """Why a migration cannot be carried out, before any capacity is weighed."""

    UNKNOWN_TARGET = "unknown_target"
    NOT_LIVE_MIGRATABLE = "not_live_migratable"
    NOT_RUNNING = "not_running"
    ALREADY_THERE = "already_there"
    TARGET_UNAVAILABLE = "target_unavailable"  # the target is not online
    NOWHERE_TO_GO = "nowhere_to_go"  # no other host is online


@dataclass(frozen=True, slots=True)
class MigrationRefusal:
    obstacle: Obstacle
    reason: str  # one line, as the manager logs it
    state: str = ""  # NOT_RUNNING: the VM's state; TARGET_UNAVAILABLE: the target's


def migration_precondition(spec: VmSpec, placement: Placement | None, kind: MigrationKind, target: str | None,
                           hosts: Mapping[str, HostState]) -> MigrationRefusal | None:
    """Can this VM be moved now, `kind`, to `target` (None: the best host)? `hosts`: every host's
    state as the caller sees it. The one set of rules: the API asks before it writes a request (and
    words the answer for HTTP), the manager asks again when it handles the request, then weighs
    capacity (its scheduler's filters)."""
    if target is not None and target not in hosts:
        return MigrationRefusal(Obstacle.UNKNOWN_TARGET, f"unknown host {target}")
    if kind is MigrationKind.LIVE and not spec.migratable:
        return MigrationRefusal(Obstacle.NOT_LIVE_MIGRATABLE, "VM is not live-migratable (use quick)")
    if placement is None or placement.state is not VmState.RUNNING or placement.host is None:
        state = placement.state.value if placement else "not placed yet"
        return MigrationRefusal(Obstacle.NOT_RUNNING, f"VM is {state}, not running", state)
    if target == placement.host:
        return MigrationRefusal(Obstacle.ALREADY_THERE, f"already on {target}")
    if target is not None:
        if hosts[target] is not HostState.ONLINE:
            state = hosts[target].value
            return MigrationRefusal(Obstacle.TARGET_UNAVAILABLE, f"target {target} is {state}", state)
    elif not any(state is HostState.ONLINE for name, state in hosts.items() if name != placement.host):
        return MigrationRefusal(Obstacle.NOWHERE_TO_GO, "no other host is online")
    return None


class MigrationSteps:
    """Mixed into the manager's per-VM step (`manager._VmStep`), whose helpers it uses."""

    p: Placement
    spec: VmSpec
    r: Round

    if TYPE_CHECKING:  # provided by _VmStep
        def status(self, host: str | None, generation: int | None = None) -> VmStatus | None: ...
        def change(self, event: Event | None = None, **fields: object) -> None: ...
        def event(self, event: Event) -> None: ...
        def said(self, kind: EventKind, **facts: Any) -> Event: ...
        def moved(self, old: str, new: str, **facts: Any) -> Event: ...
        def select(self, exclude: tuple[str, ...] = (), prefer: str | None = None) -> Selection: ...
        def host_trouble(self) -> bool: ...
        def note(self, reason: str) -> None: ...
        def restart(self, why: str, failed_host: str, prefer_same: bool) -> None: ...
        def recover(self, why: str, prefer: str | None = None) -> None: ...
        def start_on(self, host: str, before: str, why: str, restarts: tuple[float, ...] | None = None,
                     kind: EventKind = EventKind.STATE_CHANGE, **facts: Any) -> None: ...

    def migration_refusal(self, kind: MigrationKind, target: str | None) -> str | None:
        hosts = {name: record.state for name, record in self.r.records.items()}
        refusal = migration_precondition(self.spec, self.p, kind, target, hosts)
        if refusal:
            return refusal.reason
        assert self.p.host is not None
        if target is not None:
            reason = self.r.capacity.why_not(self.spec, target)
            return f"{target}: {reason}" if reason else None
        choice = self.select(exclude=(self.p.host,))
        return None if choice else choice.reason

    def begin_migration(self, kind: MigrationKind, target: str, reason: str) -> None:
        assert self.p.host is not None
        record = self.r.records.get(target)
        migration = Migration(kind=kind, source=self.p.host, target=target,
                              generation=self.p.generation + 1, started=self.r.now, reason=reason,
                              target_lease=record.lease if record else 0)
        self.change(self.said(EventKind.MIGRATION_STARTED, old=VmState.RUNNING.value, new=VmState.MIGRATING.value,
                              migration=kind, from_host=self.p.host, to_host=target,
                              generation=migration.generation, reason=reason),
                    state=VmState.MIGRATING, migration=migration, reason="")

    def on_migrating(self) -> None:
        m = self.p.migration
        if m is None:  # cannot happen in records we write; heal it
            self.change(self.moved(VmState.MIGRATING.value, VmState.RUNNING.value, reason="no migration recorded"),
                        state=VmState.RUNNING)
            return
        if m.kind is MigrationKind.LIVE:
            self.live_migration(m)
        elif m.kind is MigrationKind.QUICK:
            self.quick_migration(m)
        else:
            self.cold_migration(m)

    def finish_migration(self, m: Migration) -> None:
        took = self.r.now - m.started
        source = self.status(m.source, self.p.generation) if m.kind is MigrationKind.LIVE else None
        # the hypervisor's own account, e.g. "to h2: 465 ms, downtime 23 ms", and its downtime figure
        handed = source if source and source.state is LocalState.MIGRATED else None
        downtime = handed.downtime_ms / 1000 if handed and handed.downtime_ms is not None else None
        self.change(self.said(EventKind.MIGRATED, old=VmState.MIGRATING.value, new=VmState.RUNNING.value,
                              host=m.target, migration=m.kind, from_host=m.source, to_host=m.target,
                              generation=m.generation, seconds=took, downtime_s=downtime,
                              detail=handed.detail if handed else ""),
                    state=VmState.RUNNING, host=m.target, generation=m.generation, migration=None,
                    restore_from=None, reason="")

    def abort_migration(self, m: Migration, why: str) -> None:
        self.change(self.said(EventKind.MIGRATION_ABORTED, old=VmState.MIGRATING.value, new=VmState.RUNNING.value,
                              host=m.source, migration=m.kind, from_host=m.source, to_host=m.target, reason=why),
                    state=VmState.RUNNING, migration=None, reason="")

    def live_migration(self, m: Migration) -> None:
        source = self.status(m.source, self.p.generation)
        target = self.status(m.target, m.generation)
        target_state = self.r.host_state(m.target)
        if target and target.state is LocalState.RUNNING and target_state in UP:
            self.finish_migration(m)
        elif source and source.state is LocalState.MIGRATED:
            # The source handed over: the VM lives on the target now, whatever became of it.
            self.p = self.p.model_copy(update={"host": m.target, "generation": m.generation})
            if target_state in UP and target and target.state in BROKEN_LOCAL_STATES:
                self.restart(f"crashed on {m.target} after live migration", m.target, False)
            elif target_state not in UP:
                self.change(self.moved(VmState.MIGRATING.value, VmState.RECOVERING.value, from_host=m.target,
                                       reason=f"target {m.target} lost after handover"),
                            state=VmState.RECOVERING, migration=None, host=m.target, generation=m.generation)
            elif self.target_restarted(m):  # up, not running it: its new run never held the guest
                self.restart_on_target(m)
        elif self.host_trouble():
            return
        elif refusal := copy_refusal(self.r.view.replicas.get(self.spec.name), m.target):
            self.abort_migration(m, refusal)  # its agent marked it stale since: the source stays
        elif target_state is HostState.LOST and failsafe.holds(self.r.view.store_regained_at, self.r.now,
                                                               self.r.settings):
            return  # it may have taken the VM over unreported, and still run it: core.failsafe's hold
        elif target_state not in UP:
            self.back_to_source(m, source, f"target {m.target} {target_state.value if target_state else 'gone'}")
        elif target and target.state in BROKEN_LOCAL_STATES:
            self.back_to_source(m, source, f"target failed: {target.detail or target.state.value}")
        elif source and source.state in BROKEN_LOCAL_STATES:
            self.restart(f"{source.state.value} on {m.source} during a live migration", m.source, True)
        elif source is None or source.state is LocalState.STOPPED:
            # Killed (a self-fence, with or without a new lease since): nothing left to move. The
            # move may have finished just before, unreported (the store was out of reach): the target
            # may run it now. The target is the one place a copy can be, so the VM goes on there
            # (its agent keeps a guest that resumed, or boots it afresh); back on the source it
            # could run twice.
            gone = f"the VM is {source.state.value if source else 'gone'} on {m.source}"
            self.start_on(m.target, VmState.MIGRATING.value, f"{gone}; the target takes it")
        elif source and source.failed_migration == m.attempt:
            self.abort_migration(m, source.detail or "failed on the source")
        elif self.r.now - m.started > self.r.settings.migration_timeout_s:
            self.abort_migration(m, f"timeout after {self.r.settings.migration_timeout_s:g} s")

    def target_restarted(self, m: Migration) -> bool:
        """Is the target recorded up under another lease than when the move began? Then the run
        that received the guest is gone: it went down (a self-fence, a power cycle) and came back
        before the manager saw it lost, and nothing its new run set up ever held the guest."""
        record = self.r.records.get(m.target)
        return bool(m.target_lease) and record is not None and record.lease not in (0, m.target_lease)

    def restart_on_target(self, m: Migration) -> None:
        """The source handed the guest over to a target that restarted since (its new run may be
        waiting for a guest that will never come): start it afresh on the target, at the target's
        generation, as for a host that restarted unseen (core.departure). Nowhere else: the target
        is where the guest went, the one copy that holds every write (core.replica's `incoming`),
        and any QEMU of this generation is there, under its agent, which runs one at most."""
        why = f"host {m.target} restarted after the switchover of a live migration from {m.source}"
        if self.spec.desired is not DesiredState.RUNNING or not self.spec.ha:
            self.recover(why)  # stopped, or an error for a priority-0 VM: as for a lost host
            return
        self.change(self.moved(VmState.MIGRATING.value, VmState.STARTING.value, host=m.target,
                               generation=m.generation, priority=self.spec.priority,
                               reason=f"{why}: starting it there again"),
                    state=VmState.STARTING, host=m.target, generation=m.generation, migration=None,
                    restore_from=None, reason="")

    def back_to_source(self, m: Migration, source: VmStatus | None, why: str) -> None:
        """A live migration's target failed or is gone: abort, back to the source, if that loses no
        write. It does not while the guest still runs on the source (no switchover yet: the target
        never wrote alone). A source that runs it no more (killed by a self-fence, say) may have
        switched over unreported, and the target written alone since: then the copy rule
        (core.replica, whose record names the target `incoming`) decides, not this branch. Refused,
        the VM restarts on the target if it is up, or waits for it (an operator may `promote`)."""
        record = self.r.view.replicas.get(self.spec.name)
        if source is not None and source.state in ACTIVE_LOCAL_STATES:
            if record is not None and source.state is LocalState.MIGRATING_OUT:
                # With copies "migrating out" is not proof enough: it may be the last word of a
                # source that switched over while the store was out of reach (a fast fence can act
                # before its "migrated" lands). Its next word says: running (the move failed: back
                # there) or migrated (the copy rule decides).
                self.note(f"{why}; waiting for {m.source} to say whether the guest left")
                return
            self.abort_migration(m, why)
            return
        refusal = copy_refusal(record, m.source)
        if refusal is None:  # not replicated, or the source's copy holds every write
            self.abort_migration(m, why)
            return
        why = f"{why}; not back on {m.source}: {refusal}"
        if self.r.host_state(m.target) in UP:
            # From the target's generation, as after a handover: its old QEMU's status is not a new start's.
            self.change(host=m.target, generation=m.generation)
            self.restart(why, m.target, False)
        else:  # on_recovering waits for its fence, then for a host the copy rule allows
            self.change(self.moved(VmState.MIGRATING.value, VmState.RECOVERING.value, from_host=m.target,
                                   reason=why),
                        state=VmState.RECOVERING, migration=None, host=m.target, generation=m.generation)

    def quick_migration(self, m: Migration) -> None:
        if self.p.host == m.target:  # phase 2: restoring on the target
            if self.host_trouble():
                return
            status = self.status(m.target, m.generation)
            if status and status.state is LocalState.RUNNING:
                self.finish_migration(m)
            elif status and status.state in BROKEN_LOCAL_STATES:
                self.restart(f"restore failed on {m.target}: {status.detail or status.state.value}",
                             m.target, False)
            return
        if self.host_trouble():
            return
        source = self.status(m.source, self.p.generation)
        if source and source.state is LocalState.SAVED:
            target = m.target
            # Its copy may have gone stale while the source saved (the replica lost): not there.
            behind = copy_refusal(self.r.view.replicas.get(self.spec.name), target)
            if behind or self.r.host_state(target) not in UP:
                choice = self.select(exclude=(m.source, target))
                if not choice:
                    self.restart(f"saved on {m.source} but no target: {behind or choice.reason}", m.source, True)
                    return
                assert choice.host is not None
                target = choice.host
            moved = m.model_copy(update={"target": target})
            self.change(self.said(EventKind.MIGRATION_HANDOVER, new=VmState.MIGRATING.value, migration=m.kind,
                                  from_host=m.source, to_host=target, host=target, generation=m.generation),
                        host=target, generation=m.generation, migration=moved, restore_from=source.detail)
        elif source and source.state is LocalState.RUNNING and source.failed_migration == m.attempt:
            self.abort_migration(m, source.detail or "save failed")
        elif source and source.state in BROKEN_LOCAL_STATES:
            self.restart(f"crashed on {m.source} while saving", m.source, True)
        elif source is None or source.state is LocalState.STOPPED:
            self.abort_migration(m, f"the VM is {source.state.value if source else 'gone'} on {m.source}")

    def cold_migration(self, m: Migration) -> None:
        if self.host_trouble():
            return
        source = self.status(m.source, self.p.generation)
        if source is None or source.state in ENDED_LOCAL_STATES:
            behind = copy_refusal(self.r.view.replicas.get(self.spec.name), m.target)
            target = m.target if self.r.host_state(m.target) in UP and not behind else None
            target = target or self.select(exclude=(m.source,)).host or m.source
            self.start_on(target, "migrating", f"cold migration from {m.source}", kind=EventKind.MIGRATED,
                          migration=m.kind, from_host=m.source, to_host=target)
