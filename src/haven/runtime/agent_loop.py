"""The host agent loop: hold the lease, reconcile local VMs with placements, report.

Shared by the real daemon (threads call `renew` and `step` on timers) and the simulator (virtual
clock events call them). One `step` = read placements -> `core.agent.reconcile` -> execute -> report.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from enum import Enum

from haven.core.agent import (DEAD, Action, AgentInput, CancelMigration, Forget, Kill, MigrateLive,
                              PrepareIncoming, PrepareRestore, Save, Start, Stop, concerns, lease_valid, reconcile,
                              status_of)
from haven.core.decision import Event
from haven.model.spec import HostSpec, Settings, VmSpec
from haven.model.state import Placement, VmStatus
from haven.ports.clock import Clock
from haven.ports.fencer import Watchdog
from haven.ports.hypervisor import Hypervisor, HypervisorError, LocalVm
from haven.ports.store import EventType, KeyValue, Lease, LeaseLost, Store, StoreError, WatchEvent
from haven.runtime.layout import DecodeCache, Layout

EventSink = Callable[[Event], None]
RENEW_RETRY_S = 0.1  # after a failed renewal: an etcd leader change lasts ~1 s, the budget is 1.5 s
FULL_REFRESH_S = 30.0  # re-read everything this often even without a watch event: a safety net


class Renewal(Enum):
    OK = "ok"
    FAILED = "failed"  # the store did not answer: retry after RENEW_RETRY_S
    LOST = "lost"  # the lease is gone
    REGAINED = "regained"  # valid again after the self-fence deadline (or a new lease): step now


class AgentLoop:
    def __init__(self, host: HostSpec, store: Store, hypervisor: Hypervisor, clock: Clock, layout: Layout,
                 settings: Settings, emit: EventSink, watchdog: Watchdog | None = None,
                 decoded: DecodeCache | None = None) -> None:
        self.host = host
        self.store = store
        self.hypervisor = hypervisor
        self.clock = clock
        self.layout = layout
        self.settings = settings
        self.emit = emit
        self.watchdog = watchdog
        self.lease: Lease | None = None
        self.last_renewal_sent = -math.inf
        self.fenced = False  # killed its VMs for want of a lease; re-registers once they are gone
        self.placements: dict[str, Placement] = {}
        self.specs: dict[str, VmSpec] = {}
        self.peers: dict[tuple[str, str], VmStatus] = {}
        self.addresses: dict[str, str] = {}
        self.published: dict[str, LocalVm | None] | None = {}  # None: unknown, re-read
        self.known: dict[str, LocalVm] = {}
        self.decoded = decoded if decoded is not None else DecodeCache()  # loops reading one store may share one
        self.stale = True
        self.refreshed_at = -math.inf
        self.changed = True  # inputs changed since the last reconcile
        self.was_lease_ok = False

    @property
    def lease_id(self) -> int:
        return self.lease.id if self.lease else 0

    def event(self, subject: str, message: str) -> None:
        self.emit(Event(self.clock.now(), f"agent {self.host.name}", subject, message))

    # --- lease ---

    def register(self) -> bool:
        """Publish the host and take a fresh lease. False if the store is out of reach."""
        sent = self.clock.now()
        try:
            self.store.put(self.layout.host(self.host.name), self.host.model_dump_json())
            lease = self.store.lease_grant(self.settings.lease_ttl_s)
            self.store.put(self.layout.alive(self.host.name), json.dumps({"since": sent}), lease=lease.id)
        except StoreError:
            return False
        self.lease, self.last_renewal_sent, self.published = lease, sent, {}
        self.fenced, self.changed = False, True
        self._arm_watchdog()
        self.event(f"host {self.host.name}", f"lease {lease.id} granted")
        return True

    def resume(self, lease: Lease) -> bool:
        """After a restart of this agent: carry on with the lease the previous run held, if the
        store still has it (its alive key and statuses are then intact)."""
        sent = self.clock.now()
        try:
            self.store.lease_refresh(lease)
            self.store.put(self.layout.alive(self.host.name), json.dumps({"since": sent}), lease=lease.id)
        except StoreError:
            return False
        self.lease, self.last_renewal_sent, self.fenced, self.changed = lease, sent, False, True
        self.published = None  # the previous run's reports are in the store: re-read them
        self._arm_watchdog()
        self.event(f"host {self.host.name}", f"lease {lease.id} resumed")
        return True

    def renew(self) -> Renewal:
        """Refresh the lease (or take a new one once our VMs are gone). On LOST the caller must
        run `step` at once, which kills every local VM; on FAILED it should retry soon."""
        if self.lease is None:
            if not self.fenced or not self._active_vms():
                return Renewal.REGAINED if self.register() else Renewal.FAILED
            return Renewal.FAILED
        sent = self.clock.now()
        was_valid = lease_valid(sent, self.last_renewal_sent, self.settings)
        try:
            self.store.lease_refresh(self.lease)
        except LeaseLost:
            self.lease = None
            self.last_renewal_sent = -math.inf  # whatever the clock says, our VMs must die now
            self.event(f"host {self.host.name}", "lease lost")
            return Renewal.LOST
        except StoreError:
            return Renewal.FAILED
        self.last_renewal_sent = sent
        self._arm_watchdog()
        return Renewal.OK if was_valid else Renewal.REGAINED

    def _arm_watchdog(self) -> None:
        # A backstop for a hung agent: a little after the agent's own deadline, still before the TTL.
        if self.watchdog:
            self.watchdog.arm(self.last_renewal_sent + self.settings.self_fence_after_s
                              + self.settings.self_fence_margin_s / 2)

    def _active_vms(self) -> bool:
        return any(vm.state not in DEAD for vm in self.hypervisor.list().values())

    # --- one iteration ---

    def refresh_view(self) -> None:
        """Read placements, specs, hosts and peers' statuses afresh; keep the last good copy if
        the store fails. Between reads, `on_store_event` keeps them current from the watch."""
        root = self.layout.root
        try:
            items = [kv for prefix in ("vms/", "status/", "hosts/") for kv in self.store.get_prefix(root + prefix)]
        except StoreError:
            self.stale = True
            return
        self.placements, self.specs, self.peers, self.addresses = {}, {}, {}, {}
        for kv in items:
            self._apply(kv.key, kv)
        self.changed = True

    def on_store_event(self, event: WatchEvent) -> bool:
        """Apply a watched change to what we know; True if it may concern this host."""
        kv = None if event.type is EventType.DELETE else KeyValue(event.key, event.value, event.mod_revision)
        return self._apply(event.key, kv)

    def _apply(self, key: str, kv: KeyValue | None) -> bool:
        self.changed = True
        parts = key[len(self.layout.root):].split("/")
        decoded = self.decoded
        if parts[0] == "vms" and len(parts) == 3:
            name, what = parts[1], parts[2]
            if what == "placement":
                old, new = self.placements.pop(name, None), None
                if kv is not None:
                    new = self.placements[name] = decoded(Placement, kv)
                host = self.host.name
                return (name in self.known or (old is not None and concerns(old, host))
                        or (new is not None and concerns(new, host)))
            if what == "spec":
                self.specs.pop(name, None)
                if kv is not None:
                    self.specs[name] = decoded(VmSpec, kv)
        elif parts[0] == "status" and len(parts) == 3:
            self.peers.pop((parts[2], parts[1]), None)
            if kv is not None:
                self.peers[(parts[2], parts[1])] = decoded(VmStatus, kv)
            p = self.placements.get(parts[2])
            return bool(p and p.migration and p.migration.source == self.host.name)
        elif parts[0] == "hosts" and len(parts) == 2:
            self.addresses.pop(parts[1], None)
            if kv is not None:
                self.addresses[parts[1]] = decoded(HostSpec, kv).address
        return False

    def step(self) -> None:
        now = self.clock.now()
        if self.stale or now - self.refreshed_at >= FULL_REFRESH_S:  # a safety net for missed events
            self.stale = False
            self.refreshed_at = now
            self.refresh_view()
        local = self.hypervisor.list()
        lease_ok = self.lease_ok()
        if not self.changed and local == self.known and lease_ok == self.was_lease_ok:
            return  # same inputs as last time, which asked for nothing: the answer is the same
        self.changed, self.was_lease_ok = False, lease_ok
        self._note_local_changes(local)
        decision = reconcile(AgentInput(
            host=self.host.name, now=now, last_renewal_sent=self.last_renewal_sent,
            settings=self.settings, placements=self.placements, specs=self.specs, local=local,
            peer_statuses=self.peers, addresses=self.addresses))
        self.changed = bool(decision.actions)  # retry next time until they are done
        if decision.self_fenced and not self.fenced:
            self.fenced = True
            self.event(f"host {self.host.name}", f"self-fence: lease not renewed in time; killing "
                                                 f"{len(decision.actions)} VM(s), giving the lease up")
        for action in decision.actions:
            self._execute(action)
        if decision.actions:
            local = self.hypervisor.list()
            self._note_local_changes(local)
        if decision.self_fenced:
            self._give_up_lease(local)
        elif self.lease:
            self._publish(local)

    def _give_up_lease(self, local: dict[str, LocalVm]) -> None:
        """After a self-fence, once every VM here is dead, hand the lease back: the cluster then
        knows this host ran nothing (its VMs recover at once instead of on expiry), and this host
        rejoins with a fresh lease rather than flapping on a late one."""
        if self.lease is None or any(vm.state not in DEAD for vm in local.values()):
            return
        lease, self.lease = self.lease, None
        try:
            self.store.lease_revoke(lease)
        except StoreError:
            pass  # it expires on its own

    def _note_local_changes(self, local: dict[str, LocalVm]) -> None:
        for name in sorted(set(local) | set(self.known)):
            old, new = self.known.get(name), local.get(name)
            if new and (old is None or (old.state, old.generation) != (new.state, new.generation)):
                detail = f" ({new.detail})" if new.detail and new.state.value in ("failed", "crashed") else ""
                self.event(f"vm {name}", f"{new.state.value} (generation {new.generation}){detail}")
        self.known = dict(local)

    def _execute(self, action: Action) -> None:
        hv = self.hypervisor
        try:
            match action:
                case Start(vm, generation, restore_from):
                    hv.start(self.specs[vm], generation, restore_from)
                case Stop(vm):
                    hv.stop(vm)
                case Kill(vm, reason):
                    self.event(f"vm {vm}", f"killed: {reason}")
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
            self.event(f"vm {action.vm}", f"{type(action).__name__.lower()} failed: {error}")

    def _publish(self, local: dict[str, LocalVm]) -> None:
        """Report local VMs that changed since the last report, bound to our lease."""
        try:
            if self.published is None:  # after a failed write: learn what the store holds
                self.published = {}
                for kv in self.store.get_prefix(self.layout.status_prefix(self.host.name)):
                    self.published[kv.key.rsplit("/", 1)[-1]] = None
            for name, vm in sorted(local.items()):
                if self.published.get(name) != vm:
                    status = status_of(self.host.name, vm)
                    self.store.put(self.layout.status(self.host.name, name), status.model_dump_json(),
                                   lease=self.lease_id)
                    self.published[name] = vm
            for name in sorted(set(self.published) - set(local)):
                self.store.delete(self.layout.status(self.host.name, name))
                del self.published[name]
        except StoreError:
            self.published = None  # unknown what landed: re-read and write again next time
            self.changed = True

    def shutdown(self) -> None:
        """Give the lease back (the VMs' fate is the daemon's shutdown policy)."""
        if self.watchdog:
            self.watchdog.disarm()
        if self.lease:
            try:
                self.store.lease_revoke(self.lease)
            except StoreError:
                pass
            self.lease = None

    def lease_ok(self) -> bool:
        return self.lease is not None and lease_valid(self.clock.now(), self.last_renewal_sent, self.settings)
