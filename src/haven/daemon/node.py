"""`haven node run`: the composition root of one real host. Wiring only: the threads are
`daemon.host_threads`, the handover and signals `daemon.takeover`, the lease file
`daemon.lease_file`, what becomes of the VMs `daemon.shutdown`, the watchdog `daemon.watchdog` (the
lab's process) or `drivers.hw_watchdog` (a Linux watchdog device)."""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable

from haven.core.agent import DEAD
from haven.daemon.config import NodeConfig, ShutdownPolicy, qemu_host_config
from haven.daemon.events import EventLog
from haven.daemon.host_threads import HostThreads
from haven.daemon.lease_file import LeaseFile
from haven.daemon.shutdown import shut_down
from haven.daemon.takeover import TAKEOVER_TIMEOUT_S, StopSignals, take_over
from haven.daemon.watchdog import FileWatchdog
from haven.drivers.etcd_store import EtcdStore
from haven.drivers.fence_agent import FenceAgentFencer
from haven.drivers.hw_watchdog import DeviceWatchdog, WatchdogDeviceError
from haven.drivers.peer_udp import UdpPeerLink
from haven.drivers.qemu import MonotonicClock, QemuHypervisor
from haven.drivers.qemu_guest import QemuGuest
from haven.drivers.qemu_replication import QemuReplication
from haven.model.spec import Settings
from haven.ports.fencer import Watchdog
from haven.ports.hypervisor import Hypervisor, HypervisorError
from haven.runtime.agent_loop import AgentLoop
from haven.runtime.failsafe import Failsafe
from haven.runtime.fence_monitor import FenceMonitor
from haven.runtime.layout import Layout, read_settings
from haven.runtime.lease import LeaseKeeper
from haven.runtime.manager_loop import ManagerLoop

log = logging.getLogger("haven.node")
# A restart's handover (the new run is loaded before it asks the old one to go) takes well under
# this; fast fencing does not count the host silent meanwhile.
RESTART_AWAY_S = TAKEOVER_TIMEOUT_S + 5.0


def start_thread(job: Callable[[], None]) -> None:
    """A power fence runs on a thread of its own: the device may take its whole timeout."""
    threading.Thread(target=job, name="power-fence", daemon=True).start()


def start_peer_link(config: NodeConfig, settings: Settings, agent: AgentLoop,
                    threads: HostThreads) -> UdpPeerLink | None:
    """The daemons' own link on this host's management address (heartbeats, the failsafe's
    question), when the cluster uses either. After `take_over`: a daemon this one replaces held the
    port until it went. None if it cannot listen: fast fencing is off and this host's failsafe asks
    no one (so it self-fences as without it), which costs availability, not safety."""
    if settings.heartbeat_timeout_s is None and not settings.failsafe:
        return None
    port = settings.peer_port
    keeper = agent.keeper
    try:
        key = config.peer_key_file.read_bytes().strip() if config.peer_key_file else None
        return UdpPeerLink(config.host.name, config.cluster, (config.host.address, port),
                           lambda: {host: (address, port) for host, address in dict(agent.addresses).items()},
                           keeper.answer, lease=lambda: keeper.lease_id, key=key)
    except OSError as error:
        log.error("peer link off: cannot listen on %s:%d or read its key (%s): check peer_port, this host's "
                  "address and peer_key_file", config.host.address, port, error.strerror)
        return None


def make_watchdog(config: NodeConfig, settings: Settings) -> Watchdog | None:
    """The watchdog the config names (the config allows one at most). Opens no device: a
    DeviceWatchdog is opened once the previous daemon, which held it, is gone."""
    if config.watchdog_device is not None:
        return DeviceWatchdog(config.watchdog_device, settings)
    if config.watchdog_file is not None:
        return FileWatchdog(config.watchdog_file)
    return None


def refuse_without_watchdog(error: WatchdogDeviceError, hypervisor: Hypervisor) -> None:
    """The device cannot be had: stop here. VMs taken over from a previous run die first: with no
    daemon renewing its lease they would be restarted elsewhere while still running here."""
    log.error("%s", error)
    live = [name for name, vm in hypervisor.list().items() if vm.state not in DEAD]
    for name in live:
        with contextlib.suppress(HypervisorError):  # one that fails must not spare the others
            hypervisor.kill(name)
    if live:
        log.error("killed %d VM(s) this daemon cannot protect without its watchdog: %s", len(live), ", ".join(live))


def run_node(config: NodeConfig) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per store call is noise
    signals = StopSignals()
    store = EtcdStore(config.etcd, timeout=config.store_timeout_s)
    layout, clock = Layout(config.cluster), MonotonicClock()
    settings = read_settings(store, layout)
    events = EventLog(store, layout)
    hypervisor = QemuHypervisor(qemu_host_config(config, settings), clock=clock,
                                on_change=lambda: threads.wake_agent.set())
    watchdog = make_watchdog(config, settings)
    keeper = LeaseKeeper(config.host, store, hypervisor, clock, layout, settings, events.emit, watchdog)
    fencer = FenceAgentFencer(config.fencing.devices) if config.fencing else None
    # The failsafe's hold (core.failsafe) holds whenever the cluster sets failsafe, link or not.
    manager = ManagerLoop(config.host.name, store, clock, layout, keeper.manager_lease, events.emit, fencer=fencer,
                          spawn=start_thread, store_regained_at=keeper.store_regained_at)
    lease_file = LeaseFile(config.run_dir / "lease.json")
    agent = AgentLoop(keeper, guest=QemuGuest(hypervisor), replication=QemuReplication(hypervisor))
    threads = HostThreads(keeper, agent, manager, settings, clock, layout.root,
                          on_lease=lambda: lease_file.save(keeper.state))
    manager.fencing.on_result = threads.wake_manager.set
    take_over(config.run_dir / "daemon.pid")
    if isinstance(watchdog, DeviceWatchdog):
        try:
            watchdog.open()  # before the first renewal pets it
        except WatchdogDeviceError as error:
            refuse_without_watchdog(error, hypervisor)
            hypervisor.close()
            return 1
    saved = lease_file.load()
    if saved is not None:
        keeper.take_over(saved.lease, saved.last_renewal_sent)
    if keeper.lease is None:
        keeper.register()  # one try: the renew thread keeps trying
    lease_file.save(keeper.state)
    cancel_watch = store.watch_prefix(layout.root, threads.on_watch)
    extra = {"events": lambda: events.publish(threads.stopping)}
    if fencer is not None and config.fencing is not None:
        # its own thread: a device check can take the device's whole timeout
        monitor = FenceMonitor(fencer, fencer.devices, store, layout, lambda: manager.leader_value, events.emit,
                               clock, time.time)
        interval = config.fencing.monitor_interval_s
        extra["fence-monitor"] = lambda: monitor.run(threads.stopping, interval)
    link = start_peer_link(config, settings, agent, threads)
    if link is not None and settings.heartbeat_timeout_s is not None:  # sent by every host, acted on by a manager
        timeout = settings.heartbeat_timeout_s
        manager.fencing.silent_hosts = lambda: link.silent(timeout)
        extra["heartbeats"] = lambda: link.run_heartbeats(threads.stopping, settings.heartbeat_interval_s, timeout,
                                                          threads.wake_manager.set)
    if link is not None and settings.failsafe:
        failsafe = keeper.failsafe = Failsafe(keeper, link, lambda: dict(agent.addresses).keys(),
                                              threads.wake_fence.set)
        extra["failsafe"] = lambda: failsafe.run(threads.stopping)
    if config.api:
        from haven.daemon.api_server import serve_api
        extra["api"] = lambda: serve_api(config, store, layout, manager_wake=threads.wake_manager.set,
                                          power=fencer)
    threads.start(extra)
    signals.wait()
    if link is not None and signals.restart.is_set():  # the next run takes over: not dead, only away
        link.announce_away(RESTART_AWAY_S)
    shut_down(ShutdownPolicy.KEEP if signals.restart.is_set() else config.shutdown, threads, hypervisor, lease_file,
              config.shutdown_timeout_s)
    cancel_watch()
    events.stop()
    if link is not None:
        link.close()
    hypervisor.close()
    return 0
