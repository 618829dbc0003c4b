"""The threads of one host daemon, each with one job so that none can delay another's deadline.

- renew:   refresh the lease every TTL/4 (retry sooner after a failure) and re-arm the watchdog;
- fence:   sleep until the self-fence deadline; past it, kill every local VM (no store call first);
- agent:   apply watched changes, reconcile local QEMUs with placements (wakes on a change that
           concerns this host, a QEMU change, a new lease, or its tick);
- manager: stand for election, decide when leading (wakes on a watched change, a grace timer, a tick);
- events:  ship events to the store's log (see `daemon.events`);
- fence-monitor: with fence devices configured, the leading manager's device checks
  (`runtime.fence_monitor`), apart from the manager so that a hung agent delays no decision;
- the store's watch thread calls `on_watch`, which only routes (`runtime.wake.route`) and queues.

The concurrency rule: the agent loop's state is changed on the agent thread only and the manager
loop's on the manager thread only; other threads hand them changes through a queue and a wake.
The lease keeper is the one shared object and guards its fields with its own lock. The fence
thread touches local QEMUs only through `AgentLoop.fence_if_due`, under the agent's `local_lock`.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from haven.model.spec import Settings
from haven.ports.clock import Clock
from haven.ports.store import WatchEvent
from haven.runtime.agent_loop import AgentLoop
from haven.runtime.lease import RENEW_RETRY_S, LeaseKeeper, Renewal
from haven.runtime.manager_loop import ManagerLoop
from haven.runtime.service_loop import TICK_S as SERVICE_TICK_S
from haven.runtime.wake import lost_host_rechecks, route

log = logging.getLogger("haven.node")
FENCED_POLL_S = 0.1  # while fenced: how often to look for a lease again


class HostThreads:
    def __init__(self, keeper: LeaseKeeper, agent: AgentLoop, manager: ManagerLoop, settings: Settings,
                 clock: Clock, root: str, on_lease: Callable[[], None] = lambda: None) -> None:
        self.keeper = keeper
        self.agent = agent
        self.manager = manager
        self.settings = settings
        self.clock = clock
        self.root_length = len(root)
        self.on_lease = on_lease  # called on the renew thread after the lease changed (the lease file)
        self.stopping = threading.Event()
        self.wake_agent = threading.Event()
        self.wake_manager = threading.Event()
        self.wake_fence = threading.Event()
        self.agent_inbox: queue.SimpleQueue[WatchEvent] = queue.SimpleQueue()
        self.manager_inbox: queue.SimpleQueue[WatchEvent] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []

    def start(self, extra: dict[str, Callable[[], None]] | None = None) -> None:
        """Start the loops, and `extra` jobs (event shipping, the API) on daemon threads of their
        own that end with the process."""
        jobs = {"fence": self.fence_loop, "renew": self.renew_loop, "agent": self.agent_loop,
                "manager": self.manager_loop}
        self.threads = [threading.Thread(target=fn, name=name, daemon=True) for name, fn in jobs.items()]
        for name, fn in (extra or {}).items():
            threading.Thread(target=fn, name=name, daemon=True).start()
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loops and wait for them (a loop in a store call ends when the call does)."""
        self.stopping.set()
        for event in (self.wake_agent, self.wake_manager, self.wake_fence):
            event.set()
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # --- the store's watch thread ---

    def on_watch(self, event: WatchEvent) -> None:
        to = route(event.key[self.root_length:], self.manager.leading)
        if to.feed_agent:
            self.agent_inbox.put(event)
            self.wake_agent.set()
        if to.leader_key or to.manager_stale:
            self.manager_inbox.put(event)
            self.wake_manager.set()

    # --- threads ---

    def renew_loop(self) -> None:
        while not self.stopping.is_set():
            started = self.clock.now()
            had = self.keeper.lease
            result = self.keeper.renew()
            if result in (Renewal.LOST, Renewal.REGAINED):
                self.wake_fence.set()
                self.wake_agent.set()
            if self.keeper.lease is not had:
                self.on_lease()
            interval = RENEW_RETRY_S if result is Renewal.FAILED else self.settings.renew_interval
            self.stopping.wait(max(0.0, interval - (self.clock.now() - started)))

    def fence_loop(self) -> None:
        """Wake at the deadline (a renewal only moves it later, so waking at an old one and
        looking again is right); past it, fence, then look again until a lease is back."""
        while not self.stopping.is_set():
            remaining = self.keeper.deadline() - self.clock.now()
            if remaining > 0:
                self.wake_fence.wait(remaining + 0.001)
                self.wake_fence.clear()
                continue
            try:
                if self.agent.fence_if_due():
                    self.wake_agent.set()  # the agent notes the kills and hands the lease back
            except Exception:  # the fence must outlive a bug in one attempt (logged)
                log.exception("self-fence failed")
            self.wake_fence.wait(FENCED_POLL_S)
            self.wake_fence.clear()

    def agent_loop(self) -> None:
        while not self.stopping.is_set():
            deadline = self.keeper.deadline() - self.clock.now()
            # Service members' pings and checks fall due with time, more often than the VMs' tick;
            # so does a lost replica, which holds its primary's guest writes until it is noticed.
            fast = self.agent.services.has_members or self.agent.replicas.active
            tick = min(self.settings.agent_tick_s, SERVICE_TICK_S) if fast else self.settings.agent_tick_s
            self.wake_agent.wait(max(0.001, min(tick, deadline + 0.001)))
            self.wake_agent.clear()
            try:
                while not self.agent_inbox.empty():
                    self.agent.on_store_event(self.agent_inbox.get())
                self.agent.step()
            except Exception:  # the loop must outlive a bug in one iteration (logged)
                log.exception("agent step failed")

    def manager_loop(self) -> None:
        recheck_at: dict[str, float] = {}  # lost host -> when the manager must decide again for it
        wait = self.settings.manager_tick_s
        while not self.stopping.is_set():
            self.wake_manager.wait(wait)
            self.wake_manager.clear()
            try:
                while not self.manager_inbox.empty():
                    event = self.manager_inbox.get()
                    if route(event.key[self.root_length:], self.manager.leading).leader_key:
                        self.manager.observe_leader_key(event)
                    self.manager.mark_stale()
                decision = self.manager.step()
            except Exception:  # logged: the loop goes on
                log.exception("manager step failed")
                decision = None
            # Look again when a lost host may be recovered: at once after a confirmed power
            # fence, else right when its grace ends (the simulator follows the same rule).
            now = self.clock.now()
            rechecks = lost_host_rechecks(decision, self.manager.fence_confirmed, self.settings.fence_grace_s)
            recheck_at.update({host: now + after for host, after in rechecks.items()})
            recheck_at = {host: at for host, at in recheck_at.items() if at > now or host in rechecks}
            wait = min([self.settings.manager_tick_s, *(at - now for at in recheck_at.values())])
            wait = max(0.0, wait)
