"""The host daemon (`haven node run`): the composition root of one real host.

Threads, each with one job, so none can delay another's deadline:
- renew:   refresh the host's lease every TTL/4 and re-arm the watchdog;
- agent:   reconcile local QEMUs with placements (wakes on watch events, QEMU changes, the
           self-fence deadline, or its tick);
- manager: stand for election, decide when leading (wakes on watch events, grace timers, tick);
- watch:   the store's watch thread feeds both loops;
- api:     the REST API and dashboard, when configured.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

from haven.core.decision import Event
from haven.daemon.config import NodeConfig, ShutdownPolicy
from haven.daemon.watchdog import FileWatchdog
from haven.drivers.etcd_store import EtcdStore
from haven.drivers.qemu import MonotonicClock, QemuHypervisor
from haven.lab.guest import GuestImage
from haven.drivers.tap import bridge_taps
from haven.model.spec import Settings
from haven.model.state import HostState
from haven.ports.store import EventType, Lease, StoreError, WatchEvent
from haven.runtime import intents
from haven.runtime.agent_loop import RENEW_RETRY_S, AgentLoop, Renewal
from haven.runtime.layout import Layout, encode_event
from haven.runtime.manager_loop import ManagerLoop

log = logging.getLogger("haven.node")
LEASE_FILE = "lease.json"
TAKEOVER_TIMEOUT_S = 5.0


class NodeDaemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.host.name
        self.layout = Layout(config.cluster)
        self.clock = MonotonicClock()
        self.store = EtcdStore(config.etcd, timeout=config.store_timeout_s)
        self.stopping = threading.Event()
        self.wake_agent = threading.Event()
        self.wake_manager = threading.Event()
        self.watched: queue.SimpleQueue[WatchEvent] = queue.SimpleQueue()
        self.event_seq = 0
        self.restarting = False  # SIGHUP: stop for a restart, leaving the VMs running
        self.settings = self._settings()
        guest = GuestImage(str(config.guest.kernel), str(config.guest.initrd)) if config.guest else None
        tap_for = bridge_taps(config.vm_bridge) if config.vm_bridge else None
        self.hypervisor = QemuHypervisor(
            self.name, config.run_dir / "vms", config.pools, None, tap_for, guest, config.accel,
            config.host.address, self.clock, on_change=self.wake_agent.set,
            stop_timeout=self.settings.stop_timeout_s,
            migration_bandwidth_mib=config.migration_bandwidth_mib, downtime_limit_ms=config.downtime_limit_ms,
            image_locking=config.image_locking)
        watchdog = FileWatchdog(config.watchdog_file) if config.watchdog_file else None
        self.agent = AgentLoop(config.host, self.store, self.hypervisor, self.clock, self.layout,
                               self.settings, self.emit, watchdog)
        self.manager = ManagerLoop(self.name, self.store, self.clock, self.layout, self._manager_lease, self.emit)

    def _settings(self) -> Settings:
        try:
            kv = self.store.get(self.layout.config())
        except StoreError:
            kv = None
        return Settings.model_validate_json(kv.value) if kv else Settings()

    def _manager_lease(self) -> int:
        return self.agent.lease_id if self.agent.lease_ok() else 0

    # --- events: one log line each, and into the store's bounded event log ---

    def emit(self, event: Event) -> None:
        print(json.dumps({"t": round(event.t, 3), "source": event.source, "subject": event.subject,
                          "message": event.message}), flush=True)
        if event.source != "manager":  # the manager writes its own events in its transaction
            self.event_seq += 1
            try:
                self.store.put(self.layout.event(event, self.event_seq), encode_event(event))
            except StoreError:
                pass

    # --- lease across restarts ---

    @property
    def lease_file(self) -> Path:
        return self.config.run_dir / LEASE_FILE

    def _start_lease(self) -> None:
        try:
            saved = json.loads(self.lease_file.read_text())
            if self.agent.resume(Lease(int(saved["id"]), float(saved["ttl"]))):
                return
        except (OSError, ValueError, KeyError):
            pass
        while not self.stopping.is_set() and not self.agent.register():
            self.stopping.wait(0.5)
        self._save_lease()

    def _save_lease(self) -> None:
        if self.agent.lease:
            self.lease_file.parent.mkdir(parents=True, exist_ok=True)
            self.lease_file.write_text(json.dumps({"id": self.agent.lease.id, "ttl": self.agent.lease.ttl}))

    # --- threads ---

    def _renew_loop(self) -> None:
        while not self.stopping.is_set():
            started = self.clock.now()
            had = self.agent.lease
            result = self.agent.renew()
            if result in (Renewal.LOST, Renewal.REGAINED):
                self.wake_agent.set()
            if self.agent.lease is not had:
                self._save_lease()
            interval = RENEW_RETRY_S if result is Renewal.FAILED else self.settings.renew_interval
            self.stopping.wait(max(0.0, interval - (self.clock.now() - started)))

    def _agent_loop(self) -> None:
        while not self.stopping.is_set():
            deadline = self.agent.last_renewal_sent + self.settings.self_fence_after_s - self.clock.now()
            self.wake_agent.wait(max(0.001, min(self.settings.agent_tick_s, deadline + 0.001)))
            self.wake_agent.clear()
            while not self.watched.empty():
                self.agent.on_store_event(self.watched.get())
            try:
                self.agent.step()
            except Exception:  # noqa: BLE001 - the loop must outlive a bug in one iteration
                log.exception("agent step failed")

    def _manager_loop(self) -> None:
        wait = self.settings.manager_tick_s
        while not self.stopping.is_set():
            self.wake_manager.wait(wait)
            self.wake_manager.clear()
            wait = self.settings.manager_tick_s
            try:
                decision = self.manager.step()
            except Exception:  # noqa: BLE001
                log.exception("manager step failed")
                continue
            if decision and any(r.state is HostState.LOST for r in decision.host_records.values()):
                wait = self.settings.fence_grace_s + 0.001  # look again right when the grace ends

    def _on_watch(self, event: WatchEvent) -> None:
        key = event.key[len(self.layout.root):]
        if key.startswith(("vms/", "status/", "hosts/")):
            self.watched.put(event)
            self.wake_agent.set()
        if key == "manager":
            self.manager.observe_leader_key(event.type is EventType.PUT)
        if not key.startswith(("events/", "hoststate/")) and not key.endswith("/placement"):
            self.manager.mark_stale()
            self.wake_manager.set()

    def _serve_api(self) -> None:
        import uvicorn

        from haven.api import create_app

        api = self.config.api
        assert api is not None
        app = create_app(self.store, self.layout, admin_token=api.admin_token, read_token=api.read_token,
                         clock=time.time, on_write=self.wake_manager.set)
        server = uvicorn.Server(uvicorn.Config(app, host=api.listen, port=api.port, log_level="warning"))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # main thread owns them
        self.api_server = server
        server.run()

    def _take_over(self) -> None:
        """A restart is a handover: the new daemon, loaded and attached to the QEMUs, asks the old
        one to go (SIGHUP: it renews the lease one last time and leaves the VMs running), then
        resumes the lease at once, well inside the self-fence interval."""
        pidfile = self.config.run_dir / "daemon.pid"
        try:
            old = int(pidfile.read_text())
            alive = old != os.getpid() and b"haven" in Path(f"/proc/{old}/cmdline").read_bytes()
        except (OSError, ValueError):
            alive = False
        if alive:
            os.kill(old, signal.SIGHUP)
            deadline = time.monotonic() + TAKEOVER_TIMEOUT_S
            while Path(f"/proc/{old}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            if Path(f"/proc/{old}").exists():  # hung: it cannot protect anything any more
                os.kill(old, signal.SIGKILL)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(str(os.getpid()))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: (setattr(self, "restarting", True), self.stopping.set()))
        self._take_over()
        self._start_lease()
        cancel_watch = self.store.watch_prefix(self.layout.root, self._on_watch)
        self.agent.refresh_view()
        threads = [threading.Thread(target=fn, name=name, daemon=True) for name, fn in
                   (("renew", self._renew_loop), ("agent", self._agent_loop), ("manager", self._manager_loop))]
        if self.config.api:
            threads.append(threading.Thread(target=self._serve_api, name="api", daemon=True))
        for thread in threads:
            thread.start()
        self.emit(Event(self.clock.now(), f"agent {self.name}", f"host {self.name}", "daemon running"))
        while not self.stopping.wait(0.5):
            pass
        self.shutdown()
        cancel_watch()
        return 0

    def shutdown(self) -> None:
        policy = ShutdownPolicy.KEEP if self.restarting else self.config.shutdown
        self.emit(Event(self.clock.now(), f"agent {self.name}", f"host {self.name}", f"shutting down ({policy.value})"))
        if policy is ShutdownPolicy.KEEP:
            self.agent.renew()  # the next run has a full self-fence interval to take over
            self.hypervisor.close()
            return
        if policy is ShutdownPolicy.MIGRATE:
            try:
                intents.set_maintenance(self.store, self.layout, self.name, True)
            except (StoreError, intents.IntentConflict):
                pass  # the VMs stay: the shutdown timeout below still bounds the wait
        else:
            for name in list(self.hypervisor.list()):
                self.hypervisor.stop(name)
        self.stopping.clear()  # keep the loops running while the VMs leave
        ends = self.clock.now() + self.config.shutdown_timeout_s
        while self.clock.now() < ends and any(vm.state.value in ("running", "starting", "migrating_out", "saving")
                                               for vm in self.hypervisor.list().values()):
            time.sleep(0.2)
        self.stopping.set()
        self.agent.shutdown()
        self.lease_file.unlink(missing_ok=True)
        self.hypervisor.close()


def run_node(config: NodeConfig) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per store call is noise
    return NodeDaemon(config).run()
