"""The host agent loop: reconcile local VMs with placements, report, and fence on time.

Shared by the real daemon and the simulator. One `step` = read placements ->
`core.agent.reconcile` -> execute -> report. The lease itself is the `LeaseKeeper`'s
(`runtime.lease`); this loop reads its deadline.

Two rules keep a VM from running twice, and neither may wait on the store:
- The self-fence is local. Past the deadline (`ttl - margin` after the send time of the last
  successful renewal) `fence_if_due` kills every local VM with no store call before the kill; the
  daemon calls it from a thread of its own, so a store call blocked elsewhere cannot delay it.
- The start rule. A QEMU is launched (start, restore, incoming migration) only on a placement read
  from the store after the current lease was granted (`view_lease`), and only after a guarded
  transaction confirmed, at the store, that the placement's mod revision is still the one read and
  that this host's alive key is still the one written under this lease (`_claim`). A host back
  from an isolation therefore never acts on placements cached before its watch broke.

Threads (daemon): `step` and `on_store_event` run on the agent thread only; `fence_if_due` may run
on another; both touch local QEMUs only under `local_lock`, which is never held across a store call.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from haven.core.agent import (
    LAUNCHES,
    Action,
    AgentInput,
    CancelMigration,
    Forget,
    Kill,
    MigrateLive,
    PrepareIncoming,
    PrepareRestore,
    Save,
    Start,
    Stop,
    concerns,
    reconcile,
    self_fence_kills,
    status_of,
)
from haven.core.events import Event, EventKind, SubjectKind
from haven.model.spec import HostSpec, VmSpec
from haven.model.state import BROKEN_LOCAL_STATES, DEAD_LOCAL_STATES, Placement, VmStatus
from haven.ports.guest import Guest
from haven.ports.hypervisor import HypervisorError, LocalVm
from haven.ports.replication import Replication
from haven.ports.store import Compare, EventType, KeyValue, Lease, StoreError, WatchEvent
from haven.runtime.layout import DecodeCache, KeyKind
from haven.runtime.lease import LeaseKeeper
from haven.runtime.replica_loop import ReplicaRunner
from haven.runtime.service_loop import ServiceRunner

EventSink = Callable[[Event], None]
# Service keys the runner reads: a change may let a member take over or make it release now.
SERVICE_KINDS = frozenset({KeyKind.SERVICE_SPEC, KeyKind.SERVICE_STATE, KeyKind.MEMBER_FACTS})
FULL_REFRESH_S = 30.0  # re-read everything this often even without a watch event: a safety net


class AgentLoop:
    def __init__(self, keeper: LeaseKeeper, decoded: DecodeCache | None = None, guest: Guest | None = None,
                 replication: Replication | None = None) -> None:
        self.keeper = keeper
        self.host: HostSpec = keeper.host
        self.store = keeper.store
        self.hypervisor = keeper.hypervisor
        self.clock = keeper.clock
        self.layout = keeper.layout
        self.settings = keeper.settings
        self.emit = keeper.emit
        self.local_lock = threading.Lock()
        self.placements: dict[str, Placement] = {}
        self.placement_revs: dict[str, int] = {}  # mod revision of each cached placement
        self.specs: dict[str, VmSpec] = {}
        self.peers: dict[tuple[str, str], VmStatus] = {}
        self.addresses: dict[str, str] = {}
        self.view_lease = 0  # the lease under which the cached view was last read in full
        self.lease_seen: Lease | None = None  # the keeper's lease at the last step
        self.published: dict[str, LocalVm | None] | None = {}  # None: unknown, re-read
        self.known: dict[str, LocalVm] = {}
        self.decoded = decoded if decoded is not None else DecodeCache()  # loops reading one store may share one
        self.stale = True
        self.refreshed_at = -math.inf
        self.changed = True  # inputs changed since the last reconcile
        self.was_lease_ok = False
        self.closed = False  # the host is leaving for good: launch nothing any more
        self.services = ServiceRunner(self, guest)  # guest-cluster members on this host (none without a guest port)
        self.replicas = ReplicaRunner(self, replication)  # replicated disks: copies served and mirrored here

    def event(self, kind: EventKind, vm: str | None = None, **facts: Any) -> None:
        """An event from this agent, about `vm` or else about this host."""
        subject = (SubjectKind.VM, vm) if vm else (SubjectKind.HOST, self.host.name)
        self.emit(Event(self.clock.now(), f"agent {self.host.name}", kind, subject_kind=subject[0], name=subject[1],
                        host=self.host.name, **facts))

    # --- what we know of the store ---

    def refresh_view(self) -> None:
        """Read placements, specs, hosts and peers' statuses afresh; keep the last good copy if
        the store fails. Between reads, `on_store_event` keeps them current from the watch."""
        root = self.layout.root
        lease = self.keeper.lease_id  # the read counts for this lease only: it began after the grant
        try:
            items = [kv for prefix in ("vms/", "status/", "hosts/", "replicas/")
                     for kv in self.store.get_prefix(root + prefix)]
        except StoreError:
            self.stale = True
            return
        self.placements, self.placement_revs, self.specs, self.peers, self.addresses = {}, {}, {}, {}, {}
        self.replicas.forget_all()
        for kv in items:
            self._apply(kv.key, kv)
        self.view_lease = lease
        self.changed = True

    def on_store_event(self, event: WatchEvent) -> bool:
        """Apply a watched change to what we know; True if it may concern this host (only then
        does the next step reconcile again)."""
        kv = None if event.type is EventType.DELETE else KeyValue(event.key, event.value, event.mod_revision)
        concerned = self._apply(event.key, kv, event.mod_revision)
        self.changed |= concerned
        return concerned

    def _apply(self, key: str, kv: KeyValue | None, revision: int = 0) -> bool:
        parsed = self.layout.parse(key)
        if parsed is None:
            return False
        decoded = self.decoded
        host = self.host.name
        if parsed.kind in (KeyKind.PLACEMENT, KeyKind.VM_SPEC):
            name = parsed.vm
            if parsed.kind is KeyKind.PLACEMENT:
                if revision and revision < self.placement_revs.get(name, 0):
                    return False  # a resumed watch replaying what a fresh read already has
                old, new = self.placements.pop(name, None), None
                self.placement_revs.pop(name, None)
                if kv is not None:
                    new = self.placements[name] = decoded(Placement, kv)
                    self.placement_revs[name] = kv.mod_revision
                return (name in self.known or (old is not None and concerns(old, host))
                        or (new is not None and concerns(new, host)))
            if parsed.kind is KeyKind.VM_SPEC:
                self.specs.pop(name, None)
                if kv is not None:
                    self.specs[name] = decoded(VmSpec, kv)
                placement = self.placements.get(name)
                return name in self.known or (placement is not None and concerns(placement, host))
        elif parsed.kind is KeyKind.STATUS:
            self.peers.pop((parsed.vm, parsed.host), None)
            if kv is not None:
                self.peers[(parsed.vm, parsed.host)] = decoded(VmStatus, kv)
            p = self.placements.get(parsed.vm)
            return bool(p and p.migration and p.migration.source == host)
        elif parsed.kind is KeyKind.HOST:
            self.addresses.pop(parsed.host, None)
            if kv is not None:
                self.addresses[parsed.host] = decoded(HostSpec, kv).address
        elif parsed.kind is KeyKind.REPLICA:
            return self.replicas.apply_record(parsed.vm, kv)
        elif parsed.kind in SERVICE_KINDS:
            return self.services.on_store_change(parsed.kind)
        elif parsed.kind is KeyKind.HOST_STATE:  # a host fenced may free a data disk for our member
            return self.services.has_members
        return False

    # --- one iteration ---

    def fence_if_due(self) -> bool:
        """The self-fence: past the deadline, kill every live local VM now. No store call comes
        before the kills (the sink must not block either), so a store that hangs cannot delay them.
        Safe to call from another thread than `step`'s. True if the lease is no longer valid."""
        with self.local_lock:
            state = self.keeper.state
            last_sent = state.last_renewal_sent if state.lease else -math.inf
            now = self.clock.now()
            # The deadline less TTL - margin: the last renewal's send time, or a failsafe round's ask
            kills = self_fence_kills(now, self.keeper.fence_base(), self.settings, self.hypervisor.list())
            if kills is None:
                return False
            if not self.keeper.fenced:
                self.keeper.fenced = True
                self.event(EventKind.SELF_FENCE, count=len(kills), seconds=now - last_sent)
            for kill in kills:
                self._act(kill)
            return True

    def close(self, reason: str) -> int:
        """The host leaves for good: launch nothing from now on, and kill what still runs here (a
        clean departure that ran out of time). Returns how many VMs were killed. Any thread."""
        with self.local_lock:
            self.closed = True
            kills = [Kill(name, reason) for name, vm in sorted(self.hypervisor.list().items())
                     if vm.state not in DEAD_LOCAL_STATES]
            for kill in kills:
                self._act(kill)
            return len(kills)

    def step(self) -> None:
        if not self.keeper.lease_ok():  # first, before anything that may wait on the store
            self._note_local_changes(self.hypervisor.list())
            self.fence_if_due()
            self.changed, self.was_lease_ok = True, False
            local = self.hypervisor.list()
            self._note_local_changes(local)
            self.keeper.give_up()
            return
        lease = self.keeper.lease
        if lease is not self.lease_seen:  # a new lease (or one taken over): nothing cached counts
            self.lease_seen, self.published, self.stale, self.changed = lease, None, True, True
        now = self.clock.now()
        if self.stale or now - self.refreshed_at >= FULL_REFRESH_S:  # a safety net for missed events
            self.stale = False
            self.refreshed_at = now
            self.refresh_view()
        local = self.hypervisor.list()
        if not self.view_lease:  # nothing read yet (restarted while cut off): an empty view is no
            self._note_local_changes(local)  # reason to stop anything; the self-fence still holds
            return
        lease_ok = self.keeper.lease_ok()
        # Level-triggered: pings and checks fall due with time. A round may have killed a member.
        if lease_ok and self.services.step(local):
            local = self.hypervisor.list()
        if lease_ok:
            self.replicas.step()  # before reconcile: a copy served here is released before its VM starts here
        if not self.changed and local == self.known and lease_ok == self.was_lease_ok:
            return  # same inputs as last time, which asked for nothing: the answer is the same
        self.changed, self.was_lease_ok = False, lease_ok
        self._note_local_changes(local)
        decision = reconcile(AgentInput(
            host=self.host.name, now=now, last_renewal_sent=self.keeper.last_renewal_sent,
            settings=self.settings, placements=self.placements, specs=self.specs, local=local,
            peer_statuses=self.peers, addresses=self.addresses))
        self.changed = bool(decision.actions)  # retry next time until they are done
        for action in decision.actions:
            self._execute(action)
        if decision.actions:
            local = self.hypervisor.list()
            self._note_local_changes(local)
        if self.keeper.lease:
            self._publish(local)

    def _note_local_changes(self, local: dict[str, LocalVm]) -> None:
        for name in sorted(set(local) | set(self.known)):
            old, new = self.known.get(name), local.get(name)
            if new and (old is None or (old.state, old.generation) != (new.state, new.generation)):
                detail = new.detail if new.state in BROKEN_LOCAL_STATES else ""  # why it died
                self.event(EventKind.LOCAL_STATE, name, old=old.state.value if old else None, new=new.state.value,
                           generation=new.generation, detail=detail)
        self.known = dict(local)

    def _claim(self, vm: str) -> bool:
        """The start rule's guard: True only if our view was read under the current lease and the
        store confirms, in one transaction, that the VM's placement is still the version we read
        and our alive key still the one written under this lease. A write-free transaction: it
        costs one round trip and changes nothing."""
        state = self.keeper.state
        fresh = (state.lease is not None and state.alive_rev > 0 and self.view_lease == state.lease.id
                 and vm in self.placement_revs)
        try:
            current = fresh and self.store.txn(
                [Compare(self.layout.placement(vm), mod_revision=self.placement_revs[vm]),
                 Compare(self.layout.alive(self.host.name), mod_revision=state.alive_rev)], []).succeeded
            if fresh and not current:
                self.event(EventKind.START_HELD_BACK, vm, generation=self.placements[vm].generation)
        except StoreError:
            current = False
        if not current:
            self.stale = self.changed = True  # re-read before deciding again
        return current

    def _execute(self, action: Action) -> None:
        if isinstance(action, LAUNCHES) and not (self._claim(action.vm) and self.replicas.before_launch(action.vm)):
            return
        if isinstance(action, MigrateLive) and not self.replicas.may_send(action.vm, action.target):
            self.changed = True  # the manager aborts it once it reads the stale copy; until then, ask again
            return
        with self.local_lock:
            if isinstance(action, LAUNCHES) and (self.closed or not self.keeper.lease_ok()):
                return  # the deadline passed since the claim (the self-fence owns this host now), or it leaves
            self._act(action)

    def _act(self, action: Action) -> None:
        hv = self.hypervisor
        try:
            match action:
                case Start(vm, generation, restore_from):
                    hv.start(self.specs[vm], generation, restore_from)
                case Stop(vm):
                    hv.stop(vm)
                case Kill(vm, reason, retired_to):
                    known = self.known.get(vm)
                    was = known.generation if known else None
                    if retired_to:
                        self.event(EventKind.RETIRED, vm, to_host=retired_to, generation=was)
                    else:
                        self.event(EventKind.KILLED, vm, reason=reason, generation=was)
                    hv.kill(vm)
                    hv.forget(vm)
                case PrepareIncoming(vm, generation):
                    hv.prepare_incoming(self.specs[vm], generation)
                case PrepareRestore(vm, generation):
                    hv.prepare_restore(self.specs[vm], generation)
                case MigrateLive(vm, target, address, attempt):
                    hv.migrate_live(vm, target, address, attempt)
                case CancelMigration(vm):
                    hv.cancel_migration(vm)
                case Save(vm, attempt):
                    placement = self.placements[vm]
                    hv.save(vm, hv.state_path(self.specs[vm], placement.generation), attempt)
                case Forget(vm):
                    hv.forget(vm)
        except HypervisorError as error:
            self.event(EventKind.ACTION_FAILED, action.vm, action=type(action).__name__.lower(), reason=str(error))

    def _publish(self, local: dict[str, LocalVm]) -> None:
        """Report local VMs that changed since the last report, bound to our lease."""
        lease_id = self.keeper.lease_id
        try:
            if self.published is None:  # after a failed write or a new lease: learn what the store holds
                self.published = {}
                for kv in self.store.get_prefix(self.layout.status_prefix(self.host.name)):
                    self.published[kv.key.rsplit("/", 1)[-1]] = None
            for name, vm in sorted(local.items()):
                if self.published.get(name) != vm:
                    status = status_of(self.host.name, vm)
                    # exclude_none: a status without a downtime figure reads as before the field existed
                    self.store.put(self.layout.status(self.host.name, name), status.model_dump_json(exclude_none=True),
                                   lease=lease_id)
                    self.published[name] = vm
            for name in sorted(set(self.published) - set(local)):
                self.store.delete(self.layout.status(self.host.name, name))
                del self.published[name]
        except StoreError:
            self.published = None  # unknown what landed: re-read and write again next time
            self.changed = True
