"""This host's lease: take it, renew it, give it up, and say whether it is still valid.

The keeper is the one piece of a host's state that several threads share in the daemon: the renew
thread refreshes it, the fence thread and the agent read its deadline, the manager asks for its id.
Its few fields change under `lock`, held only to read or write them, never across a store call.
The simulator drives the same object from virtual-clock events.

With `Settings.failsafe` (core.failsafe), a `runtime.failsafe.Failsafe` set as `failsafe` asks the
peers on each failed renewal; a complete round of "cannot reach the store" moves the deadline
(`failsafe_round`), and the keeper's record of store round trips (`contact`) gives this host's
answer to its peers and its manager's `store_regained_at`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from haven.core import failsafe
from haven.core.agent import DEAD, lease_valid
from haven.core.events import Event, EventKind, SubjectKind
from haven.model.spec import HostSpec, Settings
from haven.model.state import Alive, Departure
from haven.ports.clock import Clock
from haven.ports.fencer import Watchdog
from haven.ports.hypervisor import Hypervisor
from haven.ports.store import Lease, LeaseLost, Store, StoreError
from haven.runtime.layout import Layout

if TYPE_CHECKING:
    from haven.runtime.failsafe import Failsafe

EventSink = Callable[[Event], None]
RENEW_RETRY_S = 0.1  # after a failed renewal: an etcd leader change lasts ~1 s, the budget is 1.5 s


class Renewal(Enum):
    OK = "ok"
    FAILED = "failed"  # the store did not answer: retry after RENEW_RETRY_S
    LOST = "lost"  # the lease is gone
    REGAINED = "regained"  # valid again after the self-fence deadline (or a new lease): step now


@dataclass(frozen=True, slots=True)
class LeaseState:
    """One consistent reading of the keeper."""

    lease: Lease | None
    last_renewal_sent: float  # host clock: send time of the last successful renewal
    alive_rev: int  # mod revision of our alive key under this lease (0: not known yet)
    # Host clock: the ask time of the failsafe round that set the deadline (core.failsafe), if any
    # since the last renewal; every other change of the state starts without one.
    vouched_at: float = -math.inf


class LeaseKeeper:
    def __init__(self, host: HostSpec, store: Store, hypervisor: Hypervisor, clock: Clock, layout: Layout,
                 settings: Settings, emit: EventSink, watchdog: Watchdog | None = None) -> None:
        self.host = host
        self.store = store
        self.hypervisor = hypervisor
        self.clock = clock
        self.layout = layout
        self.settings = settings
        self.emit = emit
        self.watchdog = watchdog
        self.lock = threading.Lock()
        self._state = LeaseState(None, -math.inf, 0)
        self.fenced = False  # our VMs were killed for want of a lease; take a new one once they are gone
        self.failsafe: Failsafe | None = None  # with Settings.failsafe: asks the peers when a renewal fails
        self._contact = failsafe.StoreContact()  # under `lock`
        self._failsafe_said = ""  # this outage's last failsafe event: "on", "off" or none yet (under `lock`)

    # --- readings (any thread) ---

    @property
    def state(self) -> LeaseState:
        with self.lock:
            return self._state

    @property
    def lease(self) -> Lease | None:
        return self.state.lease

    @property
    def lease_id(self) -> int:
        lease = self.state.lease
        return lease.id if lease else 0

    @property
    def last_renewal_sent(self) -> float:
        return self.state.last_renewal_sent

    def deadline(self) -> float:
        """Host clock: when the self-fence must have killed every local VM (a failsafe round may
        have moved it on)."""
        state = self.state
        return max(state.last_renewal_sent, state.vouched_at) + self.settings.self_fence_after_s

    def fence_base(self) -> float:
        """What `core.agent.self_fence_kills` counts from: the deadline less TTL - margin; -inf
        without a lease (kill now)."""
        state = self.state
        return max(state.last_renewal_sent, state.vouched_at) if state.lease else -math.inf

    # --- failsafe (core.failsafe) ---

    def _contacted(self) -> None:
        """A store round trip ended well (the store answered, whatever it said)."""
        with self.lock:
            self._contact = self._contact.succeeded(self.clock.now(), self.settings)

    def answer(self) -> failsafe.Answer:
        """This host's answer to a peer's "can you reach the store?"."""
        with self.lock:
            contact = self._contact
        return contact.answer(self.clock.now(), self.settings)

    def failsafe_due(self) -> Lease | None:
        """The lease to ask the peers about now: held, and its renewal overdue (no store round
        trip for a renew interval). The daemon asks on its own beat: a failing renewal may take
        the store client's whole deadline (1 s at the defaults) to fail, far too slow to ask on."""
        state = self.state
        with self.lock:
            last_ok = self._contact.last_ok
        overdue = self.clock.now() - last_ok > self.settings.renew_interval
        return state.lease if self.settings.failsafe and state.lease is not None and overdue else None

    def store_regained_at(self) -> float:
        """For this host's manager (`ClusterView.store_regained_at`)."""
        with self.lock:
            contact = self._contact
        return failsafe.regained_for_manager(contact, self.clock.now(), self.settings)

    def failsafe_round(self, lease: Lease, asked_at: float, confirmed: bool, why: str) -> None:
        """A round of questions asked at `asked_at` under `lease` came back: every peer said
        "cannot reach" (`confirmed`), or not (`why`). Moves the deadline on and says when the
        failsafe starts or ends. A refusal leaves the deadline where earlier rounds put it
        (core.failsafe says why that is safe): it never moves back."""
        now = self.clock.now()
        with self.lock:
            state = self._state
            if state.lease is not lease:
                return  # renewed, lost or given up meanwhile: nothing to extend
            if confirmed:
                base = max(state.last_renewal_sent, state.vouched_at)
                after = self.settings.self_fence_after_s
                deadline = failsafe.extended_deadline(base + after, now, asked_at, self.settings)
                if deadline - after <= base:
                    return  # too late (or nothing new): the deadline stands
                self._state = dataclasses.replace(state, vouched_at=deadline - after)
            new = "on" if confirmed else "off"
            said, self._failsafe_said = self._failsafe_said, new
        if confirmed and self.watchdog:  # the watchdog follows the extended deadline
            self.watchdog.arm(self.deadline() + self.settings.self_fence_margin_s / 2)
        if said != new:
            self._failsafe_event(new, why, lease)

    def _failsafe_event(self, new: str, reason: str, lease: Lease) -> None:
        self.emit(Event(self.clock.now(), f"agent {self.host.name}", EventKind.FAILSAFE, subject_kind=SubjectKind.HOST,
                        name=self.host.name, host=self.host.name, lease=lease.id, new=new, reason=reason))

    def _failsafe_over(self, lease: Lease, why: str) -> None:
        """The store answered again: the failsafe (if on) ends, the next outage starts afresh."""
        with self.lock:
            said, self._failsafe_said = self._failsafe_said, ""
        if said == "on":
            self._failsafe_event("off", why, lease)

    def _valid(self, state: LeaseState) -> bool:
        return state.lease is not None and lease_valid(self.clock.now(), state.last_renewal_sent, self.settings)

    def lease_ok(self) -> bool:
        return self._valid(self.state)

    def manager_lease(self) -> int:
        """The lease a manager may bind the leader key to: ours while it is valid, else none."""
        state = self.state  # one reading: the id and its validity belong together
        return state.lease.id if state.lease and self._valid(state) else 0

    # --- changes ---

    def _set(self, state: LeaseState) -> None:
        with self.lock:
            self._state = state
        if state.lease is not None and self.watchdog:
            # A backstop for a hung agent: a little after the agent's own deadline, before the TTL.
            self.watchdog.arm(state.last_renewal_sent + self.settings.self_fence_after_s
                              + self.settings.self_fence_margin_s / 2)

    def _event(self, kind: EventKind, lease: Lease) -> None:
        self.emit(Event(self.clock.now(), f"agent {self.host.name}", kind, subject_kind=SubjectKind.HOST,
                        name=self.host.name, host=self.host.name, lease=lease.id))

    def _put_alive(self, lease: Lease, sent: float, leaving: Departure | None = None) -> int:
        value = Alive(since=sent, leaving=leaving).model_dump_json(exclude_none=True)
        return self.store.put(self.layout.alive(self.host.name), value, lease=lease.id)

    def announce(self, leaving: Departure) -> bool:
        """Say on our alive key that this host is leaving cleanly (core.departure). It is bound to
        the lease, so the word goes with it. False without a lease, or if the store did not take it."""
        state = self.state
        if state.lease is None:
            return False
        try:
            alive_rev = self._put_alive(state.lease, self.clock.now(), leaving)
        except StoreError:
            return False
        with self.lock:  # the start rule's guard compares this revision
            if self._state.lease is state.lease:
                self._state = dataclasses.replace(self._state, alive_rev=alive_rev)
        return True

    def _hold(self, state: LeaseState, kind: EventKind) -> None:
        """Hold `state`'s lease from now on (granted or resumed): no longer fenced."""
        assert state.lease is not None
        self.fenced = False
        with self.lock:
            self._failsafe_said = ""  # a new lease: its first outage starts afresh
        self._set(state)
        self._event(kind, state.lease)

    def register(self) -> bool:
        """Publish the host and take a fresh lease. False if the store is out of reach."""
        sent = self.clock.now()
        try:
            self.store.put(self.layout.host(self.host.name), self.host.model_dump_json())
            lease = self.store.lease_grant(self.settings.lease_ttl_s)
            alive_rev = self._put_alive(lease, sent)
        except StoreError:
            return False
        self._contacted()
        self._hold(LeaseState(lease, sent, alive_rev), EventKind.LEASE_GRANTED)
        return True

    def resume(self, lease: Lease) -> bool:
        """After a restart of this daemon: carry on with the lease the previous run held, if the
        store still has it (its alive key and statuses are then intact)."""
        sent = self.clock.now()
        try:
            self.store.lease_refresh(lease)
            alive_rev = self._put_alive(lease, sent)
        except StoreError:
            return False
        self._contacted()
        self._hold(LeaseState(lease, sent, alive_rev), EventKind.LEASE_RESUMED)
        return True

    def take_over(self, lease: Lease, last_renewal_sent: float) -> None:
        """After a restart of this daemon (its VMs kept running): carry on with the lease the
        previous run held, renewed at `last_renewal_sent`. Resumed now if the store answers;
        otherwise renewals keep trying, and the self-fence deadline stays the previous run's."""
        if not self.resume(lease):
            with self.lock:
                self._state = LeaseState(lease, last_renewal_sent, 0)  # alive key re-read on renewal

    def renew(self) -> Renewal:
        """Refresh the lease (or take a new one once our VMs are gone). On LOST the caller must
        run the self-fence at once; on FAILED it should retry soon."""
        state = self.state
        if state.lease is None:
            if not self.fenced or not self._active_vms():
                return Renewal.REGAINED if self.register() else Renewal.FAILED
            return Renewal.FAILED
        sent = self.clock.now()
        was_valid = lease_valid(sent, state.last_renewal_sent, self.settings)
        alive_rev = state.alive_rev
        try:
            self.store.lease_refresh(state.lease)
            if not alive_rev:  # taken over without the store: learn our alive key's version
                alive_rev = self._put_alive(state.lease, sent)
        except LeaseLost:
            self._contacted()
            with self.lock:  # whatever the clock says, our VMs must die now
                if self._state.lease is state.lease:
                    self._state = LeaseState(None, -math.inf, 0)
            self._failsafe_over(state.lease, "the store answers again")
            self._event(EventKind.LEASE_LOST, state.lease)
            return Renewal.LOST
        except StoreError:
            if self.failsafe is not None:
                self.failsafe.ask(state.lease)
            return Renewal.FAILED
        self._contacted()
        with self.lock:
            if self._state.lease is not state.lease:
                return Renewal.FAILED  # given up meanwhile: nothing to renew any more
        self._set(LeaseState(state.lease, sent, alive_rev))
        self._failsafe_over(state.lease, "the store answers again")
        return Renewal.OK if was_valid else Renewal.REGAINED

    def _active_vms(self) -> bool:
        return any(vm.state not in DEAD for vm in self.hypervisor.list().values())

    def give_up(self) -> None:
        """After a self-fence, once every VM here is dead, hand the lease back: the cluster then
        knows this host ran nothing (its VMs recover at once instead of on expiry), and this host
        rejoins with a fresh lease rather than flapping on a late one. Nothing while a VM lives."""
        if self._active_vms():
            return
        with self.lock:
            lease = self._state.lease
            if lease is None:
                return
            self._state = LeaseState(None, self._state.last_renewal_sent, 0)
        with contextlib.suppress(StoreError):  # it expires on its own
            self.store.lease_revoke(lease)

    def shutdown(self) -> None:
        """Give the lease back (the VMs' fate is the daemon's shutdown policy)."""
        if self.watchdog:
            self.watchdog.disarm()
        with self.lock:
            lease, self._state = self._state.lease, LeaseState(None, -math.inf, 0)
        if lease:
            with contextlib.suppress(StoreError):
                self.store.lease_revoke(lease)
