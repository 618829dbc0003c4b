"""`haven node run`: the composition root of one real host. Wiring only: the threads are
`daemon.host_threads`, the handover `daemon.takeover`, the lease file `daemon.lease_file`, what
becomes of the VMs `daemon.shutdown`."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from haven.daemon.config import NodeConfig, ShutdownPolicy
from haven.daemon.events import EventLog
from haven.daemon.host_threads import HostThreads
from haven.daemon.lease_file import LeaseFile
from haven.daemon.shutdown import shut_down
from haven.daemon.takeover import take_over
from haven.daemon.watchdog import FileWatchdog
from haven.drivers.etcd_store import EtcdStore
from haven.drivers.qemu import MonotonicClock, QemuHostConfig, QemuHypervisor
from haven.drivers.qemu_boot import DirectBoot
from haven.drivers.tap import bridge_taps
from haven.model.spec import Settings
from haven.ports.store import StoreError
from haven.runtime.agent_loop import AgentLoop
from haven.runtime.layout import Layout
from haven.runtime.lease import LeaseKeeper
from haven.runtime.manager_loop import ManagerLoop


def cluster_settings(store: EtcdStore, layout: Layout) -> Settings:
    try:
        kv = store.get(layout.config())
    except StoreError:
        kv = None
    return Settings.model_validate_json(kv.value) if kv else Settings()


def run_node(config: NodeConfig) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per store call is noise
    signalled, restarting = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            restarting.set()  # a restart: the VMs stay for the next run
        signalled.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    store, layout, clock = EtcdStore(config.etcd, timeout=config.store_timeout_s), Layout(config.cluster), MonotonicClock()
    settings = cluster_settings(store, layout)
    events = EventLog(store, layout)
    guest = config.guest
    hypervisor = QemuHypervisor(QemuHostConfig(
        host_name=config.host.name, run_dir=config.run_dir / "vms", pools=config.pools, address=config.host.address,
        tap_for=bridge_taps(config.vm_bridge) if config.vm_bridge else None,
        guest=DirectBoot(str(guest.kernel), str(guest.initrd), guest.ready_marker, guest.disk_filesystem)
        if guest else None,
        accel=config.accel, stop_timeout=settings.stop_timeout_s, image_locking=config.image_locking,
        migration_bandwidth_mib=config.migration_bandwidth_mib, downtime_limit_ms=config.downtime_limit_ms),
        clock=clock, on_change=lambda: threads.wake_agent.set())
    watchdog = FileWatchdog(config.watchdog_file) if config.watchdog_file else None
    keeper = LeaseKeeper(config.host, store, hypervisor, clock, layout, settings, events.emit, watchdog)
    manager = ManagerLoop(config.host.name, store, clock, layout, keeper.manager_lease, events.emit)
    lease_file = LeaseFile(config.run_dir / "lease.json")

    def save_lease() -> None:
        state = keeper.state
        if state.lease is not None:
            lease_file.save(state.lease, state.last_renewal_sent)

    threads = HostThreads(keeper, AgentLoop(keeper), manager, settings, clock, layout.root, on_lease=save_lease)
    take_over(config.run_dir / "daemon.pid")
    saved = lease_file.load()
    if saved is not None:
        keeper.take_over(saved.lease, saved.last_renewal_sent)
    if keeper.lease is None:
        keeper.register()  # one try: the renew thread keeps trying
    save_lease()
    cancel_watch = store.watch_prefix(layout.root, threads.on_watch)
    extra = {"events": lambda: events.publish(threads.stopping)}
    if config.api:
        from haven.daemon.api_server import serve_api
        extra["api"] = lambda: serve_api(config, store, layout, manager_wake=threads.wake_manager.set)
    threads.start(extra)
    while not signalled.wait(0.5):  # a short wait: signal handlers run between waits
        pass
    shut_down(ShutdownPolicy.KEEP if restarting.is_set() else config.shutdown, threads, hypervisor, lease_file,
              config.shutdown_timeout_s)
    cancel_watch()
    events.stop()
    hypervisor.close()
    return 0
