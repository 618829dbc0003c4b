"""SimCluster: hosts running the real agent and manager loops on virtual time.

Each simulated host has its own clock (rate skew allowed), a FakeHypervisor, a store client that
the network model can cut off, a watchdog process twin, and the very same `AgentLoop` and
`ManagerLoop` the daemon runs. Loops are event-driven as in the daemon: a store watch, a local VM
change or a deadline wakes them, and a slow periodic tick is the safety net.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path

from haven.core.decision import Event
from haven.model.spec import ClusterConfig, HostSpec, Settings
from haven.model.state import HostState, Placement, VmState
from haven.ports.store import EventType, WatchEvent
from haven.runtime.agent_loop import RENEW_RETRY_S, AgentLoop, Renewal
from haven.runtime.layout import DecodeCache, Layout
from haven.runtime.manager_loop import ManagerLoop
from haven.sim.hypervisor import FakeHypervisor, SimTimings
from haven.sim.loop import EventLoop, HostClock, Timer
from haven.sim.store import MemoryStore
from haven.sim.world import World


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
        elif self.host.hv.kill_all():
            self.host.cluster.log(Event(self.host.cluster.now, f"wdog {self.host.name}",
                                        f"host {self.host.name}", "deadline passed: killed every VM"))


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
        world.memory[self.name] = spec.memory_mib
        self.reaches_store = lambda: world.network.host_reaches_store(self.name)
        self.client = cluster.store.client(self.name, self.reaches_store)
        self.watchdog = SimWatchdog(self)
        self.periodic: dict[str, Timer] = {}  # the next tick of each periodic task
        self.deadline_timer: Timer | None = None
        self.pending: dict[str, Timer] = {}
        self.unwatch: list[Callable[[], None]] = []
        root = cluster.layout.root
        self.agent_prefixes = (root + "vms/", root + "status/", root + "hosts/")  # what the agent watches
        self.manager_key = cluster.layout.manager()
        self.agent: AgentLoop | None = None
        self.manager: ManagerLoop | None = None

    @property
    def settings(self) -> Settings:
        return self.cluster.settings

    # --- power ---

    def power_on(self) -> None:
        if self.powered:
            return
        self.powered, self.hung, self.renew_delay = True, False, 0.0
        c = self.cluster
        self.agent = AgentLoop(self.spec, self.client, self.hv, self.clock, c.layout, self.settings, c.log,
                               self.watchdog, c.decoded)
        self.manager = ManagerLoop(self.name, self.client, self.clock, c.layout, self._manager_lease, c.log,
                                   decoded=c.decoded)
        if self.agent.register() and self.agent.lease:
            c.lease_hosts[self.agent.lease.id] = self.name
        # One watch serves both loops (the daemon's loops watch alike): a quarter of the watchers
        # for the store to step through on every event, in the same order as one watch per prefix.
        self.unwatch = [c.store.watch_stream(c.layout.root, self._on_watch_event, self.reaches_store)]
        offset = 0.001 * self.index  # hosts do not tick in lock step
        self._every(lambda: self.settings.renew_interval + self.renew_delay, self._renew, offset)
        self._every(lambda: self.settings.agent_tick_s, self.wake_agent, offset)
        self._every(lambda: self.settings.manager_tick_s, self.wake_manager, offset + 0.0005)
        self.wake_agent()
        self.wake_manager()

    def power_off(self) -> None:
        if not self.powered:
            return
        self.powered = False
        for timer in list(self.periodic.values()) + list(self.pending.values()) + [self.deadline_timer]:
            if timer:
                timer.cancel()
        self.periodic, self.pending, self.deadline_timer = {}, {}, None
        for cancel in self.unwatch:
            cancel()
        self.watchdog.disarm()
        self.hv.power_off()

    def _manager_lease(self) -> int:
        return self.agent.lease_id if self.agent and self.agent.lease_ok() else 0

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

    def wake_agent(self) -> None:
        self._soon("agent", self._agent_step)

    def wake_manager(self) -> None:
        self._soon("manager", self._manager_step)

    def _renew(self) -> None:
        assert self.agent is not None
        result = self.agent.renew()
        if self.agent.lease:
            self.cluster.lease_hosts[self.agent.lease.id] = self.name
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
        if not self.powered or self.agent is None:
            return
        at = self.clock.to_world(self.agent.last_renewal_sent + self.settings.self_fence_after_s) + 1e-6
        if at > self.cluster.loop.now + 1e-9:
            self.deadline_timer = self.cluster.loop.at(at, self._at_deadline)
        elif not self.hung:
            self._agent_step()

    def _agent_step(self) -> None:
        assert self.agent is not None
        self.agent.step()

    def _manager_step(self) -> None:
        assert self.manager is not None
        decision = self.manager.step()
        for name, record in sorted(decision.host_records.items()) if decision else ():
            if record.state is HostState.LOST:  # one wake per host: each has its own grace deadline
                self._soon(f"fence {name}", self._manager_step, self.settings.fence_grace_s + 1e-6)

    def _on_watch_event(self, event: WatchEvent) -> None:
        if event.key.startswith(self.agent_prefixes):
            self._on_store_event(event)
        self._on_cluster_change(event)

    def _on_store_event(self, event: WatchEvent) -> None:
        if self.agent and self.agent.on_store_event(event):
            self.wake_agent()

    def _on_cluster_change(self, event: WatchEvent) -> None:
        key = event.key
        if self.manager and self.manager.leading:
            # Its own writes (placements, host records, events) need no second look.
            if "/events/" not in key and "/hoststate/" not in key and not key.endswith("/placement"):
                self.manager.mark_stale()
                self.wake_manager()
        elif key == self.manager_key and self.manager:
            self.manager.observe_leader_key(event.type is EventType.PUT)
            self.wake_manager()


class SimCluster:
    def __init__(self, config: ClusterConfig, timings: SimTimings | None = None,
                 running: Mapping[str, str] | None = None) -> None:
        """`running` (VM -> host) starts the cluster with those VMs already running there, as
        the planners need to replay a real cluster's present."""
        self.config = config
        self.settings = config.settings
        self.timings = timings or SimTimings()
        self.loop = EventLoop()
        self.store = MemoryStore(lambda: self.loop.now)
        self.layout = Layout(config.name)
        self.decoded = DecodeCache()  # one for every host's loops: each record is parsed once
        self.world = World(lambda: self.loop.now)
        self.events: list[Event] = []
        self._requests = 0
        self.lease_hosts: dict[int, str] = {}  # every lease a host held, for the log
        self.operator = self.store.client("operator", lambda: not self.world.network.store_down)
        self.operator.put(self.layout.config(), self.settings.model_dump_json())
        for vm in config.vms:
            self.operator.put(self.layout.vm_spec(vm.name), vm.model_dump_json())
        self.hosts = {spec.name: SimHost(self, spec, i) for i, spec in enumerate(config.hosts)}
        specs = {vm.name: vm for vm in config.vms}
        for vm, host in sorted((running or {}).items()):
            placement = Placement(vm=vm, state=VmState.RUNNING, host=host, generation=1)
            self.operator.put(self.layout.placement(vm), placement.model_dump_json())
            self.hosts[host].hv.adopt_running(specs[vm], 1)
        for host in self.hosts.values():
            host.power_on()

    @classmethod
    def from_scenario(cls, path: str | Path) -> SimCluster:
        """A cluster built from a scenario file whose timeline plays as virtual time advances
        (for `haven sim serve`)."""
        from haven.sim.faults import apply_fault
        from haven.sim.scenario import load_scenario, timings_of

        scenario = load_scenario(path)
        cluster = cls(scenario.cluster_config(), timings_of(scenario))
        for step in sorted(scenario.timeline, key=lambda s: s.at):
            cluster.loop.at(step.at, functools.partial(apply_fault, cluster, step.do))
        return cluster

    def inject(self, line: str) -> None:
        """Apply a fault or operator line now (FaultError if it is not understood)."""
        from haven.sim.faults import apply_fault

        apply_fault(self, line)

    @property
    def now(self) -> float:
        return self.loop.now

    def next_request_id(self) -> str:
        self._requests += 1
        return f"op{self._requests}"

    def log(self, event: Event) -> None:
        # Loops stamp events with their host's clock, which may be skewed; the timeline is in
        # virtual (true) time so that it reads in order.
        self.events.append(Event(self.loop.now, event.source, event.subject, event.message))

    def log_lines(self) -> list[str]:
        return [event.line() for event in self.events]

    def client(self, name: str = "operator"):  # noqa: ANN201 - a Store
        return self.operator if name == "operator" else self.store.client(name)

    def _lease_owner(self, lease_id: int) -> str:
        for host in self.hosts.values():
            if host.agent and host.agent.lease and host.agent.lease.id == lease_id:
                return f"host {host.name}"
        owner = self.lease_hosts.get(lease_id)
        return f"host {owner} (an earlier lease)" if owner else f"lease {lease_id}"

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
                    self.log(Event(loop.now, "store", self._lease_owner(lease_id), "lease expired"))
            elif next_timer is not None and next_timer <= until:
                loop.pop().fn()
            else:
                break
            store.deliver()
            monitor.check()
        self.loop.now = max(self.loop.now, until)
