"""The daemon's real threads (renew, fence, agent, manager, event shipping) against the in-memory
store and a thread-safe fake hypervisor: the self-fence is on time whatever the store does, and no
schedule of threads and faults launches a VM where the store does not place it."""
from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from haven.daemon.events import EventLog
from haven.daemon.host_threads import HostThreads
from haven.daemon.node import start_thread
from haven.drivers.qemu_process import MonotonicClock
from haven.model.spec import HostSpec, MigrationKind, Settings, VmSpec
from haven.model.state import RequestAction
from haven.ports.fencer import FenceOutcome, Fencer
from haven.runtime import intents
from haven.runtime.agent_loop import AgentLoop
from haven.runtime.layout import Layout
from haven.runtime.lease import LeaseKeeper
from haven.runtime.manager_loop import ManagerLoop

from .daemon_fakes import FakeNetwork, ThreadedFakeHypervisor, stale_launches, wait_for

# Fast timings: renew every 0.25 s, self-fence 0.7 s after the last good renewal, TTL 1 s.
SETTINGS = Settings(lease_ttl_s=1.0, self_fence_margin_s=0.3, fence_grace_s=0.2, host_settle_s=0.5,
                    agent_tick_s=0.2, manager_tick_s=0.2, host_failures_to_tolerate=0)
LAYOUT = Layout("t")


class Host:
    def __init__(self, name: str, net: FakeNetwork, settings: Settings = SETTINGS,
                 fencer: Fencer | None = None) -> None:
        self.name = name
        self.store = net.client(name)
        self.clock = MonotonicClock()
        self.log = EventLog(self.store, LAYOUT, out=io.StringIO())
        self.hv = ThreadedFakeHypervisor(name, net, LAYOUT)
        spec = HostSpec(name=name, address=f"10.0.0.{name[-1]}", vcpus=8, memory_mib=8192)
        self.keeper = LeaseKeeper(spec, self.store, self.hv, self.clock, LAYOUT, settings, self.log.emit)
        self.agent = AgentLoop(self.keeper)
        manager = ManagerLoop(name, self.store, self.clock, LAYOUT, self.keeper.manager_lease, self.log.emit,
                              fencer=fencer, spawn=start_thread)
        self.threads = HostThreads(self.keeper, self.agent, manager, settings, self.clock, LAYOUT.root)
        manager.fencing.on_result = self.threads.wake_manager.set  # as the daemon wires it
        self.hv.on_change = self.threads.wake_agent.set

    def start(self) -> None:
        assert self.keeper.register()
        self.cancel_watch = self.store.watch_prefix(LAYOUT.root, self.threads.on_watch)
        self.threads.start({"events": lambda: self.log.publish(self.threads.stopping)})

    def stop(self) -> None:
        self.threads.stop(timeout=3.0)
        self.log.stop()
        self.cancel_watch()

    def lines(self) -> str:
        out = self.log.out
        assert isinstance(out, io.StringIO)
        return out.getvalue()


@contextmanager
def cluster(net: FakeNetwork, names: list[str], vms: list[VmSpec]) -> Iterator[dict[str, Host]]:
    operator = net.client("operator")
    operator.put(LAYOUT.config(), SETTINGS.model_dump_json())
    for vm in vms:
        operator.put(LAYOUT.vm_spec(vm.name), vm.model_dump_json())
    hosts = {name: Host(name, net) for name in names}
    try:
        for host in hosts.values():
            host.start()
        yield hosts
    finally:
        net.hang_s, net.cut = 0.0, set()
        for host in hosts.values():
            host.stop()


def running(hosts: dict[str, Host]) -> dict[str, list[str]]:
    return {name: host.hv.active() for name, host in hosts.items()}


def test_the_self_fence_kills_on_time_while_every_store_call_hangs(caplog: pytest.LogCaptureFixture) -> None:
    net = FakeNetwork()
    with cluster(net, ["h1"], [VmSpec(name="web"), VmSpec(name="db")]) as hosts:
        h1 = hosts["h1"]
        wait_for(lambda: h1.hv.active() == ["db", "web"], 5.0, "both VMs running on h1")
        net.hang_s = 3.0  # every call now blocks longer than the whole self-fence interval
        hung_at = time.monotonic()
        h1.agent.stale = True  # and the agent thread is inside a store read when the deadline passes
        h1.threads.wake_agent.set()
        wait_for(lambda: not h1.hv.active(), 5.0, "the self-fence")
        last_sent = h1.keeper.last_renewal_sent
        killed_at = max(at for _, at in h1.hv.kills)
        assert last_sent <= hung_at + 0.3, "a renewal was recorded after the store hung"
        # Every local VM dead by ttl - margin after the last renewal sent (plus the kill itself).
        assert killed_at - last_sent <= SETTINGS.self_fence_after_s + 0.1, (killed_at - last_sent)
        assert "self-fence: lease not renewed in time; killing 2 VM(s)" in h1.lines()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_events_are_printed_at_once_and_shipped_when_the_store_answers_again() -> None:
    net = FakeNetwork()
    store = net.client("h1")
    log = EventLog(store, LAYOUT, out=io.StringIO())
    from haven.core.decision import Event
    net.hang_s = 0.5
    started = time.monotonic()
    for i in range(3):
        log.emit(Event.from_text(float(i), "agent h1", "vm web", f"event {i}"))
    assert time.monotonic() - started < 0.1, "emit waited on the store"
    assert log.out.getvalue().count("\n") == 3  # type: ignore[attr-defined]
    import threading
    stopping = threading.Event()
    shipper = threading.Thread(target=log.publish, args=(stopping,))
    shipper.start()
    try:
        time.sleep(0.2)
        net.hang_s = 0.0
        wait_for(lambda: len(net.server.client("reader").get_prefix(LAYOUT.events())) == 3, 5.0, "shipped events")
    finally:
        stopping.set()
        log.stop()
        shipper.join(5.0)
    messages = [kv.value for kv in net.server.client("reader").get_prefix(LAYOUT.events())]
    assert [m.split('"message": ')[1] for m in messages] == ['"event 0"}', '"event 1"}', '"event 2"}']


@pytest.mark.parametrize("seed", range(3))
def test_random_schedules_of_threads_and_faults_never_launch_a_stale_copy(
        seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """Three hosts, four VMs; a slow store with random delays; hosts cut off from the store and
    healed, daemons' VMs moved by operator migrations meanwhile. After every fault the launches
    are checked against the store's placement at the moment of the launch."""
    rng = random.Random(seed)
    net = FakeNetwork(seed)
    net.max_delay_s = 0.01
    vms = [VmSpec(name=f"vm{i}", memory_mib=512) for i in range(4)]
    with cluster(net, ["h1", "h2", "h3"], vms) as hosts:
        operator = net.client("operator")
        wait_for(lambda: sum(len(v) for v in running(hosts).values()) == 4, 10.0, "every VM running")
        for _ in range(4):
            victim = rng.choice(sorted(hosts))
            net.cut_off(victim)
            time.sleep(rng.uniform(0.2, 1.6))  # sometimes shorter than the self-fence, sometimes longer
            if rng.random() < 0.7:
                try:
                    intents.request(operator, LAYOUT, rng.choice(vms).name, RequestAction.MIGRATE,
                                    MigrationKind.COLD, None, request_id=f"op{rng.random()}")
                except Exception:  # noqa: BLE001 - a refused request is a fine outcome here
                    pass
            time.sleep(rng.uniform(0.0, 0.5))
            net.heal()
            time.sleep(rng.uniform(0.3, 1.0))
            assert not stale_launches([h.hv for h in hosts.values()])
            copies = [vm.name for vm in vms if sum(vm.name in a for a in running(hosts).values()) > 1]
            assert not copies, f"running on two hosts: {copies}"
        wait_for(lambda: sum(len(v) for v in running(hosts).values()) == 4, 15.0, "every VM running again")
    assert not stale_launches([h.hv for h in hosts.values()])
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


class FakeFencer:
    """A fence device for every host that confirms "off" (cutting the fake host's VMs) or fails."""

    def __init__(self, hosts: dict[str, Host], works: bool, hang_s: float = 0.0) -> None:
        self.hosts, self.works, self.hang_s = hosts, works, hang_s
        self.calls: list[str] = []

    def has_device(self, host: str) -> bool:
        return True

    def power_off(self, host: str) -> bool:
        self.calls.append(host)
        time.sleep(self.hang_s)  # a device that takes its time (up to its timeout) to answer
        if self.works:
            for vm in self.hosts[host].hv.active():
                self.hosts[host].hv.kill(vm)
        return self.works

    def last_outcome(self, host: str) -> FenceOutcome | None:
        return FenceOutcome(self.works, "off, confirmed" if self.works else "timed out after 20 s", 0.05, "fake")

    def monitor(self, host: str) -> tuple[bool, str]:
        return self.works, "ok"


GRACE_S, TICK_S = 3.0, 10.0


def lost_to_recovery_s(works: bool, hang_s: float = 0.0) -> tuple[float, str]:
    """h1 manages, the VM runs on h2, h2 crashes (threads stopped, cut off from the store): the
    time from h1's manager marking h2 lost to the VM running on h1, and h1's log. With `hang_s`,
    the device answers only after that long, and a VM declared meanwhile must start all the same."""
    # A manager tick far longer than the grace: only the wake after a loss can explain a recovery
    # before it. Margins are wide (a busy CI machine): the grace is what they are measured against.
    settings = SETTINGS.model_copy(update={"fence_grace_s": GRACE_S, "manager_tick_s": TICK_S})
    net = FakeNetwork()
    operator = net.client("operator")
    operator.put(LAYOUT.config(), settings.model_dump_json())
    hosts: dict[str, Host] = {}
    fencer = FakeFencer(hosts, works, hang_s)
    hosts["h1"] = Host("h1", net, settings, fencer)
    hosts["h2"] = Host("h2", net, settings, fencer)
    h1, h2 = hosts["h1"], hosts["h2"]
    try:
        h1.start()
        wait_for(lambda: h1.threads.manager.leading, TICK_S + 5, "h1 leading")
        h2.start()
        wait_for(lambda: '"name": "h2", "old": "unknown", "new": "online"' in h1.lines(), TICK_S + 5, "h2 online")
        web = VmSpec(name="web", memory_mib=512, preferred_hosts=("h2",))
        operator.put(LAYOUT.vm_spec("web"), web.model_dump_json())
        wait_for(lambda: h2.hv.active() == ["web"], 10.0, "web running on h2")
        h2.threads.stop(timeout=3.0)  # the crash: h2's daemon is gone and cannot renew
        net.cut_off("h2")
        wait_for(lambda: '"new": "lost"' in h1.lines(), 5.0, "h2 lost")
        lost = next(e["t"] for e in map(json.loads, h1.lines().splitlines()) if e.get("new") == "lost")
        if hang_s:  # the manager decides on while the device is busy
            operator.put(LAYOUT.vm_spec("db"), VmSpec(name="db", memory_mib=256).model_dump_json())
            wait_for(lambda: "db" in h1.hv.active(), hang_s / 2, "db started while the power fence hangs")
        wait_for(lambda: "web" in h1.hv.active(), 40.0, "web running on h1")
        elapsed = time.monotonic() - lost
        assert fencer.calls == ["h2"]
        return elapsed, h1.lines()
    finally:
        net.cut = set()
        for host in hosts.values():
            host.stop()


def test_a_confirmed_power_fence_recovers_without_waiting_for_the_grace() -> None:
    elapsed, lines = lost_to_recovery_s(works=True)
    print(f"[figures] loss -> recovery {elapsed:.2f} s")
    assert elapsed < GRACE_S / 2, f"recovery took {elapsed:.2f} s: the manager waited for the grace or its tick"
    assert "power fence: off confirmed in 0.05 s (fake)" in lines
    assert "power fence confirmed" in lines  # h2 lost -> fenced, by the confirmation


def test_a_failed_power_fence_waits_for_the_grace() -> None:
    elapsed, lines = lost_to_recovery_s(works=False)
    print(f"[figures] loss -> recovery {elapsed:.2f} s")
    assert elapsed >= GRACE_S, f"recovered {elapsed:.2f} s after the loss, before the {GRACE_S:g} s grace ended"
    assert elapsed < (GRACE_S + TICK_S) / 2, f"recovered {elapsed:.2f} s after the loss: the manager slept until its tick"
    assert "power fence failed: timed out after 20 s; falling back to lease expiry + grace" in lines
    assert f"grace {GRACE_S:g} s" in lines


def test_a_power_fence_that_hangs_holds_no_decision() -> None:
    """The device takes 8 s to fail: a VM declared meanwhile starts at once, and the lost host's
    VM comes back after the grace, as without a device, not after the device gave up."""
    elapsed, lines = lost_to_recovery_s(works=False, hang_s=8.0)
    assert GRACE_S <= elapsed < 8.0, f"recovered {elapsed:.2f} s after the loss"
    assert "power fence failed" not in lines  # the device was still busy when the VM came back
