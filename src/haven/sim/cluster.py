"""SimCluster: hosts running the real agent and manager loops on virtual time.

Each simulated host has its own clock (rate skew allowed), a FakeHypervisor, a store client that
the network model can cut off, a watchdog process twin, and the very same `AgentLoop` and
`ManagerLoop` the daemon runs. Loops are event-driven as in the daemon: a store watch, a local VM
change or a deadline wakes them, and a slow periodic tick is the safety net.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

from haven.core import failsafe
from haven.core.decision import Decision
from haven.core.departure import resolve
from haven.core.events import Event, EventKind, SubjectKind
from haven.model.replica import ReplicaRecord
from haven.model.spec import ClusterConfig, HostSpec, Settings
from haven.model.state import Departure, Placement, VmState
from haven.ports.store import WatchEvent
from haven.runtime.agent_loop import AgentLoop
from haven.runtime.failsafe import Failsafe
from haven.runtime.fence_monitor import FenceMonitor
from haven.runtime.layout import DecodeCache, Layout
from haven.runtime.lease import RENEW_RETRY_S, LeaseKeeper, Renewal
from haven.runtime.leaving import Leaving
from haven.runtime.manager_loop import ManagerLoop
from haven.runtime.power_fencing import run_inline
from haven.runtime.service_loop import TICK_S as SERVICE_TICK_S
from haven.runtime.wake import GRACE_EPSILON_S, lost_host_rechecks, route
from haven.sim.fencer import SimFencer
from haven.sim.guest import SimGuest, command_table
from haven.sim.hypervisor import FakeHypervisor, SimTimings
from haven.sim.loop import EventLoop, HostClock, Timer
from haven.sim.peers import SimPeerLink
from haven.sim.store import MemoryStore, MemoryStoreClient
from haven.sim.world import World

SHUTDOWN_TIMEOUT_S = 60.0  # a departing host waits this long for its VMs to be moved or stopped
LEAVE_POLL_S = 0.2  # as the daemon's shutdown loop
REBOOT_S = 10.0  # a clean reboot: from the lease given back to the host booted again


class SimWatchdog:
    """The lab's watchdog process: kills the host's VMs if not re-armed before the deadline.

    One timer at a time: re-arming only moves the deadline; a timer that fires early (the
    deadline moved on meanwhile) sets itself again, so renewals cost no timer churn."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.deadline: float | None = None  # host clock
        self.timer: Timer | None = None

    def arm(self, deadline: float) -> None:
        self.deadline = deadline
        if self.timer is None:
            self.timer = self.host.cluster.loop.at(self.host.clock.to_world(deadline), self._fire)

    def disarm(self) -> None:
        self.deadline = None
        if self.timer:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        if self.deadline is None or not self.host.powered:
            return
        loop = self.host.cluster.loop
        at = self.host.clock.to_world(self.deadline)
        if at > loop.now + 1e-9:  # moved on since: wait for the new deadline (world time, no float loop)
            self.timer = loop.at(at, self._fire)
        elif killed := self.host.hv.kill_all():
            self.host.cluster.log(Event(self.host.cluster.now, f"wdog {self.host.name}", EventKind.WATCHDOG_FIRED,
                                        subject_kind=SubjectKind.HOST, name=self.host.name, host=self.host.name,
                                        count=killed))


class SimHost:
    def __init__(self, cluster: SimCluster, spec: HostSpec, index: int) -> None:
        self.cluster = cluster
        self.spec = spec
        self.name = spec.name
        self.index = index
        self.clock = HostClock(cluster.loop)
        self.powered = False
        self.hung = False
        self.renew_delay = 0.0
        world = cluster.world
        self.hv = FakeHypervisor(self.name, cluster.loop, self.clock, world, cluster.timings,
                                 on_change=lambda: self.wake_agent())
        world.hypervisors[self.name] = self.hv
        self.guest = SimGuest(self.hv, command_table(cluster.config.services))
        world.memory[self.name] = spec.memory_mib
        self.reaches_store = lambda: world.network.host_reaches_store(self.name)
        self.watch_broken = False
        self.watch_resumes_at = 0.0
        self.client = cluster.store.client(self.name, self.reaches_store)
        self.watchdog = SimWatchdog(self)
        self.periodic: dict[str, Timer] = {}  # the next tick of each periodic task
        self.deadline_timer: Timer | None = None
        self.pending: dict[str, Timer] = {}
        self.unwatch: list[Callable[[], None]] = []
        self.root_length = len(cluster.layout.root)
        self.keeper: LeaseKeeper | None = None
        self.agent: AgentLoop | None = None
        self.manager: ManagerLoop | None = None
        self.fence_monitor: FenceMonitor | None = None
        self.leaving: Leaving | None = None  # a clean shutdown or reboot under way
        self.reported_silent: set[str] = set()  # peers whose heartbeats the last tick found stopped

    @property
    def settings(self) -> Settings:
        return self.cluster.settings

    # --- power ---

    def power_on(self) -> None:
        if self.powered:
            return
        self.powered, self.hung, self.renew_delay = True, False, 0.0
        self.leaving = None
        c = self.cluster
        self._start_daemon()
        assert self.keeper is not None
        if self.keeper.register() and self.keeper.lease:
            c.lease_hosts[self.keeper.lease.id] = self.name
        offset = 0.001 * self.index  # hosts do not tick in lock step
        self._every(lambda: self.settings.renew_interval + self.renew_delay, self._renew, offset)
        self._every(lambda: self.settings.agent_tick_s, self.wake_agent, offset)
        self._every(lambda: self.settings.manager_tick_s, self.wake_manager, offset + 0.0005)
        if self.settings.heartbeat_timeout_s is not None:  # the daemon's heartbeat thread
            self._every(lambda: self.settings.heartbeat_interval_s, self._heartbeat, offset)
        if c.fencer.devices:  # the daemon's monitor thread, on every host: only a leader checks
            self._every(lambda: c.timings.fence_monitor_s, self._check_fence_devices, offset)
        if self.cluster.config.services:  # pings and checks fall due with time (none without services)
            self._every(lambda: SERVICE_TICK_S, self._service_tick, offset + 0.0002)
        self.wake_agent()
        self.wake_manager()

    def _start_daemon(self) -> None:
        """A fresh `haven node run`: new loops with empty caches, and a new store watch."""
        c = self.cluster
        self.keeper = LeaseKeeper(self.spec, self.client, self.hv, self.clock, c.layout, self.settings, c.log,
                                  self.watchdog)
        self.agent = AgentLoop(self.keeper, c.decoded, guest=self.guest, replication=self.hv.replication)
        self.manager = ManagerLoop(self.name, self.client, self.clock, c.layout, self.keeper.manager_lease, c.log,
                                   fencer=c.fencer, decoded=c.decoded, store_regained_at=self.keeper.store_regained_at,
                                   spawn=self._spawn_fence if c.timings.fence_delay_s > 0 else run_inline)
        if self.settings.failsafe:
            agent = self.agent
            self.keeper.failsafe = Failsafe(self.keeper, SimPeerLink(self), lambda: agent.addresses.keys(),
                                            self._deadline_moved)
        manager = self.manager
        manager.fencing.on_result = self.wake_manager
        if self.settings.heartbeat_timeout_s is not None:
            manager.fencing.silent_hosts = lambda: c.silent_for(self.name)
        # A new run's peer link (drivers.peer_udp) has heard no one yet: a peer is silent only
        # once this run heard it, not for what an earlier run (before a power cut) heard.
        c.heard = {pair: heard for pair, heard in c.heard.items() if pair[0] != self.name}
        self.reported_silent = set()
        self.fence_monitor = FenceMonitor(c.fencer, c.fencer.devices, self.client, c.layout,
                                          lambda: manager.leader_value, c.log, self.clock, lambda: c.loop.now)
        for cancel in self.unwatch:
            cancel()
        # One watch serves both loops (the daemon's loops watch alike): a quarter of the watchers
        # for the store to step through on every event, in the same order as one watch per prefix.
        self.watch_broken = False
        self.unwatch = [c.store.watch_stream(c.layout.root, self._on_watch_event, self._watch_connected)]

    def _spawn_fence(self, job: Callable[[], None]) -> None:
        """The daemon's power-fence thread: the device answers `fence_delay_s` later, whatever
        became of the manager that asked meanwhile (its answer then wakes no one)."""
        self.cluster.loop.after(self.cluster.timings.fence_delay_s, job)

    def restart_daemon(self) -> None:
        """The daemon restarts (a crash and a restart, or an upgrade) while its VMs keep running:
        the new run re-attaches to them and takes the lease over from the lease file; every cache
        starts empty."""
        if not self.powered:
            return
        assert self.keeper is not None
        lease, sent = self.keeper.lease, self.keeper.last_renewal_sent  # the daemon's lease file
        self.leaving = None  # the new run withdraws a departure (its alive key says nothing of it)
        self._start_daemon()
        assert self.keeper is not None
        if lease is not None:
            self.keeper.take_over(lease, sent)
        self.wake_agent()
        self.wake_manager()

    def _watch_connected(self) -> bool:
        """Whether the host's watch delivers now: not while the daemon is hung, not while the store
        is out of reach, and not until `watch_reconnect_s` after it is reachable again."""
        now = self.cluster.loop.now
        if self.hung:  # a stopped process reads nothing; the stream waits for it, unbroken
            return False
        if not self.reaches_store():
            self.watch_broken = True
            return False
        if self.watch_broken:
            self.watch_broken = False
            self.watch_resumes_at = now + self.cluster.timings.watch_reconnect_s
            self.cluster.loop.at(self.watch_resumes_at, lambda: None)  # the store delivers after each event
        return now >= self.watch_resumes_at

    def leave(self, reboot: bool, down_s: float = REBOOT_S) -> None:
        """A clean shutdown, or a reboot that boots the host again `down_s` after it went: the
        daemon's departure (`runtime.leaving`) under the cluster's shutdown policy."""
        if not self.powered or self.leaving is not None:
            return
        assert self.agent is not None
        departure = Departure(policy=resolve(self.settings.shutdown_policy, reboot), reboot=reboot)
        leaving = self.leaving = Leaving(self.agent, departure, SHUTDOWN_TIMEOUT_S)

        def step() -> None:
            if not self.powered or self.leaving is not leaving:
                return  # powered off, or restarted, meanwhile
            if self.hung or not leaving.step():
                self.cluster.loop.after(self.clock.world_delay(LEAVE_POLL_S), step)
                return
            leaving.finish()
            assert self.keeper is not None
            self.keeper.shutdown()
            self.power_off()
            if reboot:
                self.cluster.loop.after(down_s, self.power_on)

        step()

    def power_off(self) -> None:
        if not self.powered:
            return
        self.powered = False
        self.leaving = None
        for timer in list(self.periodic.values()) + list(self.pending.values()) + [self.deadline_timer]:
            if timer:
                timer.cancel()
        self.periodic, self.pending, self.deadline_timer = {}, {}, None
        for cancel in self.unwatch:
            cancel()
        self.watchdog.disarm()
        self.hv.power_off()

    # --- scheduling ---

    def _every(self, interval: Callable[[], float], fn: Callable[[], None], offset: float) -> None:
        loop = self.cluster.loop
        name = fn.__name__

        def tick() -> None:
            if not self.powered:
                return
            if not self.hung:
                fn()
            self.periodic[name] = loop.after(self.clock.world_delay(interval()), tick)

        self.periodic[name] = loop.after(self.clock.world_delay(interval()) + offset, tick)

    def _soon(self, what: str, fn: Callable[[], None], delay: float = 0.0) -> None:
        """Run `fn` after `delay` host seconds, once, however often asked meanwhile (the earliest
        request wins)."""
        if not self.powered or self.hung:
            return
        loop = self.cluster.loop
        at = loop.now + self.clock.world_delay(delay)
        pending = self.pending.get(what)
        if pending and not pending.cancelled and pending.at <= at:
            return

        def run() -> None:
            self.pending.pop(what, None)
            if self.powered and not self.hung:
                fn()

        if pending:
            pending.cancel()
        self.pending[what] = loop.at(at, run)

    def _service_tick(self) -> None:
        self.wake_agent()

    def wake_agent(self) -> None:
        self._soon("agent", self._agent_step)

    def wake_manager(self) -> None:
        self._soon("manager", self._manager_step)

    def _renew(self) -> None:
        assert self.keeper is not None
        result = self.keeper.renew()
        if self.keeper.lease:
            self.cluster.lease_hosts[self.keeper.lease.id] = self.name
        if result is Renewal.LOST:
            self._agent_step()
        elif result is Renewal.REGAINED:
            self.wake_agent()
        elif result is Renewal.FAILED:
            self._soon("renew retry", self._renew, RENEW_RETRY_S)
        if self.deadline_timer is None or self.deadline_timer.cancelled:
            self._at_deadline()

    def _at_deadline(self) -> None:
        """Step the agent right when its self-fence deadline passes. One timer: when it fires
        early (renewals moved the deadline on), it sets itself for the new deadline."""
        self.deadline_timer = None
        if not self.powered or self.keeper is None:
            return
        at = self.clock.to_world(self.keeper.deadline()) + 1e-6
        if at > self.cluster.loop.now + 1e-9:
            self.deadline_timer = self.cluster.loop.at(at, self._at_deadline)
        elif not self.hung:
            self._agent_step()

    def _deadline_moved(self) -> None:
        """A failsafe round moved the deadline (on or back): one timer for the deadline in force."""
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
        self._at_deadline()

    def _heartbeat(self) -> None:
        """`drivers.peer_udp` heartbeats on virtual time: a datagram to every peer the network lets through
        (a powered-off peer hears nothing), then a wake-up for the manager if a peer fell silent."""
        c = self.cluster
        for peer in c.hosts.values():
            if peer is not self and peer.powered and c.world.network.hosts_connected(self.name, peer.name):
                c.heard[(peer.name, self.name)] = (peer.clock.now(), self.keeper.lease_id if self.keeper else 0)
        silent = set(c.silent_for(self.name))
        if silent - self.reported_silent:
            self.wake_manager()
        self.reported_silent = silent

    def _agent_step(self) -> None:
        assert self.agent is not None
        self.agent.step()

    def _check_fence_devices(self) -> None:
        assert self.fence_monitor is not None
        self.fence_monitor.check()

    def _manager_step(self) -> None:
        assert self.manager is not None
        decision = self.manager.step()
        # one wake per lost host: each has its own grace deadline (none after a confirmed power fence)
        for name, wait in lost_host_rechecks(decision, self.manager.fence_confirmed,
                                             self.settings.fence_grace_s).items():
            self._soon(f"fence {name}", self._manager_step, wait)
        if self.settings.failsafe and decision is not None:
            self._after_failsafe_hold(decision)

    def _after_failsafe_hold(self, decision: Decision) -> None:
        """Decide again right when core.failsafe's hold on a lost host ends (the daemon: on its tick)."""
        assert self.keeper is not None
        held = any(event.kind is EventKind.WAITING and event.subject_kind is SubjectKind.HOST
                   for event in decision.events)
        regained = self.keeper.store_regained_at()
        if held and math.isfinite(regained):
            wait = failsafe.hold_until(regained, self.settings) - self.clock.now() + GRACE_EPSILON_S
            self._soon("failsafe hold", self._manager_step, max(0.0, wait))

    def _on_watch_event(self, event: WatchEvent) -> None:
        """The daemon's wake policy (`runtime.wake.route`), on virtual time."""
        assert self.agent is not None and self.manager is not None
        to = route(event.key[self.root_length:], self.manager.leading)
        if to.feed_agent and self.agent.on_store_event(event):
            self.wake_agent()
        if to.leader_key:
            self.manager.observe_leader_key(event)
        if to.manager_stale:
            self.manager.mark_stale()
        if to.leader_key or to.manager_stale:
            self.wake_manager()


class SimCluster:
    def __init__(self, config: ClusterConfig, timings: SimTimings | None = None,
                 running: Mapping[str, str] | None = None, fence_devices: Iterable[str] = ()) -> None:
        """`running` (VM -> host) starts the cluster with those VMs already running there, as
        the planners need to replay a real cluster's present. `fence_devices`: the hosts with a
        power-fencing device (`SimFencer`)."""
        self.config = config
        self.settings = config.settings
        self.timings = timings or SimTimings()
        self.loop = EventLoop()
        self.store = MemoryStore(lambda: self.loop.now)
        self.layout = Layout(config.name)
        self.decoded = DecodeCache()  # one for every host's loops: each record is parsed once
        self.world = World(lambda: self.loop.now)
        self.world.monitor.placement_of = self._placement_in_store
        self.world.monitor.replica_of = self._replica_in_store
        self.world.pools = {pool.name: pool for pool in config.pools}
        self.events: list[Event] = []
        self._requests = 0
        self.fencer = SimFencer(self, fence_devices)
        # (receiver, sender) -> the receiver's clock at the last heartbeat, and the lease it named
        self.heard: dict[tuple[str, str], tuple[float, int]] = {}
        self.lease_hosts: dict[int, str] = {}  # every lease a host held, for the log
        self.operator = self.store.client("operator", lambda: not self.world.network.store_down)
        self.operator.put(self.layout.config(), self.settings.model_dump_json())
        for spec in config.vms:
            self.operator.put(self.layout.vm_spec(spec.name), spec.model_dump_json())
        for service in config.services:
            self.operator.put(self.layout.service_spec(service.name), service.model_dump_json())
        for pool in config.pools:
            self.operator.put(self.layout.pool(pool.name), pool.model_dump_json())
        self.hosts = {spec.name: SimHost(self, spec, i) for i, spec in enumerate(config.hosts)}
        specs = {vm.name: vm for vm in config.vms}
        for vm, host in sorted((running or {}).items()):
            placement = Placement(vm=vm, state=VmState.RUNNING, host=host, generation=1)
            self.operator.put(self.layout.placement(vm), placement.model_dump_json())
            self.hosts[host].hv.adopt_running(specs[vm], 1)
        for sim_host in self.hosts.values():
            sim_host.power_on()

    def silent_for(self, receiver: str) -> dict[str, int]:
        """Peers `receiver` heard before whose heartbeats stopped `heartbeat_timeout_s` ago (by its
        clock) -> the lease their last heartbeat named."""
        timeout = self.settings.heartbeat_timeout_s
        if timeout is None:
            return {}
        now = self.hosts[receiver].clock.now()
        return {sender: lease for (to, sender), (at, lease) in self.heard.items()
                if to == receiver and now - at >= timeout}

    @property
    def now(self) -> float:
        return self.loop.now

    def _placement_in_store(self, vm: str) -> Placement | None:
        kv = self.store.peek(self.layout.placement(vm))
        return self.decoded(Placement, kv) if kv else None

    def _replica_in_store(self, vm: str) -> ReplicaRecord | None:
        kv = self.store.peek(self.layout.replica(vm))
        return self.decoded(ReplicaRecord, kv) if kv else None

    def next_request_id(self) -> str:
        self._requests += 1
        return f"op{self._requests}"

    def log(self, event: Event) -> None:
        # Loops stamp events with their host's clock, which may be skewed; the timeline is in
        # virtual (true) time so that it reads in order.
        self.events.append(dataclasses.replace(event, t=self.loop.now))

    def log_lines(self) -> list[str]:
        return [event.line() for event in self.events]

    def client(self, name: str = "operator") -> MemoryStoreClient:
        return self.operator if name == "operator" else self.store.client(name)

    def _lease_expired(self, lease_id: int) -> Event:
        """The store's event for an expired lease, about the host that holds (or held) it."""
        for host in self.hosts.values():
            if host.keeper and host.keeper.lease and host.keeper.lease.id == lease_id:
                return Event(self.loop.now, "store", EventKind.LEASE_EXPIRED, subject_kind=SubjectKind.HOST,
                             name=host.name, host=host.name, lease=lease_id)
        owner = self.lease_hosts.get(lease_id)
        if owner:
            return Event(self.loop.now, "store", EventKind.LEASE_EXPIRED, subject_kind=SubjectKind.HOST, name=owner,
                         host=owner, lease=lease_id, reason="an earlier lease")
        return Event(self.loop.now, "store", EventKind.LEASE_EXPIRED, subject_kind=SubjectKind.LEASE,
                     name=str(lease_id), lease=lease_id)

    def advance_to(self, until: float) -> None:
        """Run every event up to virtual time `until`, checking safety after each."""
        loop, store, network, monitor = self.loop, self.store, self.world.network, self.world.monitor
        while True:
            next_timer = loop.next_time()
            # A store without quorum expires nothing; on its return it restarts every lease (etcd does).
            expiry = None if network.store_down else store.next_expiry()
            if expiry is not None and expiry <= until and (next_timer is None or expiry <= next_timer):
                loop.now = max(loop.now, expiry)
                for lease_id in store.expire(loop.now):
                    self.log(self._lease_expired(lease_id))
            elif next_timer is not None and next_timer <= until:
                loop.pop().fn()
            else:
                break
            store.deliver()
            monitor.check()
        self.loop.now = max(self.loop.now, until)
