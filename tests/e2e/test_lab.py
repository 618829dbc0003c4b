"""End-to-end: a real 3-host haven cluster on real QEMU guests in network namespaces.

Needs root, QEMU, etcd and iproute2 (CI on this machine kind has them: scripts/install.sh). The
lab runs with QEMU's image locking off, so that a fencing bug would show as two running QEMUs
(caught by the samplers below) rather than be hidden by a lock error on this one machine.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from haven.lab.cluster import Lab
from haven.lab.netns import USER_TIMEOUT_S, HttpProbe
from haven.model.spec import MigrationKind
from haven.model.state import RequestAction, VmState
from haven.runtime import intents

MISSING = [b for b in ("qemu-system-x86_64", "etcd", "ip") if shutil.which(b) is None]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, taps)"),
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (run scripts/install.sh)"),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=3, vms=3, settings={"host_settle_s": 0.0}) as running:
        yield running


@pytest.fixture
def healthy(lab: Lab) -> Lab:
    """Every host up and every VM running and answering, whatever the previous test did."""
    lab.restore_hosts(60)
    lab.wait_all_running(120)
    for vm in lab.vm_specs:
        lab.wait_answer(vm, 60)
    return lab


class DoubleRunSampler:
    """Samples every host's process table every 20 ms: a VM's QEMU on two hosts at once (outside a
    live migration, where the target's CPUs do not run) is a safety failure."""

    def __init__(self, lab: Lab, vms: list[str]) -> None:
        self.lab, self.vms = lab, vms
        self.samples = 0
        self.doubles: list[tuple[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for vm in self.vms:
                hosts = self.lab.qemu_hosts(vm)
                if len(hosts) > 1:
                    self.doubles.append((vm, hosts))
            self.samples += 1

    def __enter__(self) -> DoubleRunSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def migrate_elsewhere(lab: Lab, vm: str, kind: MigrationKind) -> str:
    """Ask for a migration of `vm` to another host and wait until it runs there; the target."""
    source = lab.placement(vm).host
    target = next(h for h in sorted(lab.members) if h != source)
    intents.request(lab.store, lab.layout, vm, RequestAction.MIGRATE, kind, target)
    lab.wait(lambda snap: snap.placements[vm].host == target and snap.placements[vm].state is VmState.RUNNING,
             60, f"{kind.value} migration of {vm} to {target}")
    return target


def vm_on(lab: Lab, host: str) -> str:
    return next(vm for vm in sorted(lab.vm_specs) if lab.placement(vm).host == host)


def test_host_crash_restarts_its_vms_elsewhere_with_their_disk(healthy: Lab) -> None:
    lab = healthy
    vm = "vm1"
    host = lab.placement(vm).host
    before = lab.wait_answer(vm, 10)
    lab.crash(host)
    after = lab.wait_answer(vm, 60)
    assert lab.placement(vm).host != host
    assert after["boot_count"] == before["boot_count"] + 1  # a cold boot of the same disk
    # the disk heartbeat went on from where it was: no write acknowledged before the crash is lost
    assert after["heartbeat"] >= before["heartbeat"]


def test_isolated_host_fences_itself_before_its_vm_starts_elsewhere(healthy: Lab) -> None:
    lab = healthy
    vm = "vm2"
    host = lab.placement(vm).host
    with DoubleRunSampler(lab, list(lab.vm_specs)) as sampler:
        lab.isolate(host)
        lab.wait(lambda snap: snap.placements[vm].state is VmState.RUNNING and snap.placements[vm].host != host,
                 60, f"{vm} running elsewhere")
        lab.wait_answer(vm, 30)
        assert host not in lab.qemu_hosts(vm)
    assert sampler.samples > 50
    assert sampler.doubles == []


def test_hung_agent_is_fenced_by_its_watchdog(healthy: Lab) -> None:
    lab = healthy
    vm = "vm3"
    host = lab.placement(vm).host
    with DoubleRunSampler(lab, [vm]) as sampler:
        lab.stop_agent(host)
        try:
            lab.wait(lambda snap: snap.placements[vm].host != host
                     and snap.placements[vm].state is VmState.RUNNING, 60, f"{vm} recovered")
            assert host not in lab.qemu_hosts(vm)  # the watchdog killed it
            lab.wait_answer(vm, 30)
        finally:
            lab.continue_agent(host)
    assert sampler.doubles == []
    fired = (lab.members[host].run_dir / "watchdog.log").read_text()
    assert "deadline passed" in fired


def test_live_migration_keeps_the_guest_running(healthy: Lab) -> None:
    lab = healthy
    vm = "vm1"
    before = lab.wait_answer(vm, 10)
    # A realistic client timeout: 1 s equals TCP's initial retransmission timeout, so one SYN lost
    # in the switch-over would fail a request by chance; users wait longer than that.
    with HttpProbe(lab.client.namespace, lab.vm_address(vm), interval=0.05, timeout=USER_TIMEOUT_S) as probe:
        time.sleep(0.5)
        migrate_elsewhere(lab, vm, MigrationKind.LIVE)
        time.sleep(0.5)
    records = probe.records
    failures = [r for r in records if "error" in r]
    after = lab.wait_answer(vm, 10)
    assert after["boot_count"] == before["boot_count"]
    assert after["ram_counter"] > before["ram_counter"]  # RAM came along
    assert len(records) > 10 and failures == []


def test_quick_migration_keeps_the_guest_memory(healthy: Lab) -> None:
    lab = healthy
    vm = "vm2"
    before = lab.wait_answer(vm, 10)
    migrate_elsewhere(lab, vm, MigrationKind.QUICK)
    after = lab.wait_answer(vm, 20)
    assert after["ram_counter"] > before["ram_counter"] and after["boot_count"] == before["boot_count"]


def test_drain_moves_every_vm_off_the_host(healthy: Lab) -> None:
    lab = healthy
    host = lab.placement("vm3").host
    before = {vm: lab.wait_answer(vm, 10) for vm in lab.vm_specs if lab.placement(vm).host == host}
    intents.set_maintenance(lab.store, lab.layout, host, True)
    try:
        lab.wait(lambda snap: all(p.host != host and p.state is VmState.RUNNING
                                  for p in snap.placements.values()), 90, f"{host} drained")
        for vm, answer in before.items():  # moved live: the same boot, still serving
            assert lab.wait_answer(vm, 10)["boot_count"] == answer["boot_count"]
        assert not any(host in lab.qemu_hosts(vm) for vm in lab.vm_specs)
    finally:
        intents.set_maintenance(lab.store, lab.layout, host, False)


def test_agent_restart_keeps_vms_running(healthy: Lab) -> None:
    lab = healthy
    host = lab.placement("vm1").host
    vm = vm_on(lab, host)
    before = lab.wait_answer(vm, 10)
    lab.restart_agent(host)
    time.sleep(5)
    snap = lab.snapshot()
    assert snap.placements[vm].host == host and snap.placements[vm].state is VmState.RUNNING
    assert host in snap.alive
    after = lab.wait_answer(vm, 10)
    assert after["boot_count"] == before["boot_count"]  # never restarted
    assert after["ram_counter"] > before["ram_counter"]


def test_manager_host_crash_a_new_manager_fails_over(healthy: Lab) -> None:
    lab = healthy
    manager = lab.snapshot().manager
    assert manager in lab.members
    victims = [vm for vm in lab.vm_specs if lab.placement(vm).host == manager]
    lab.crash(manager)
    snap = lab.wait(lambda s: s.manager not in (None, manager), 30, "a new manager")
    assert snap.manager != manager
    for vm in victims:
        lab.wait(lambda s, vm=vm: s.placements[vm].host != manager
                 and s.placements[vm].state is VmState.RUNNING, 60, f"{vm} recovered")
        lab.wait_answer(vm, 30)


def test_one_etcd_member_down_the_cluster_keeps_working(healthy: Lab) -> None:
    lab = healthy
    assert lab.etcd is not None
    leader = lab.etcd.leader()
    follower = next(i for i in range(3) if i != leader)
    lab.etcd.kill_member(follower)
    try:
        migrate_elsewhere(lab, "vm3", MigrationKind.LIVE)
        assert lab.snapshot().alive >= set(lab.members)  # no host lost its lease
    finally:
        lab.etcd.restart_member(follower)


def test_api_cli_and_dashboard_are_served_by_a_host_daemon(healthy: Lab) -> None:
    import json
    import subprocess
    import sys

    import httpx

    from haven.lab.cluster import ADMIN_TOKEN, API_PORT, READ_TOKEN

    lab = healthy
    url = f"http://{lab.members['h1'].address}:{API_PORT}"
    summary = httpx.get(f"{url}/api/v1/summary", headers={"Authorization": f"Bearer {READ_TOKEN}"},
                        timeout=5).json()
    assert summary["hosts"]["online"] == 3 and summary["vms"]["running"] == 3
    assert summary["protection"]["mood"] == "content"
    assert "haven" in httpx.get(url, timeout=5).text  # the dashboard page
    status = subprocess.run([sys.executable, "-m", "haven.cli.main", "status", "--output", "json"],
                            env={**os.environ, "HAVEN_API": url, "HAVEN_TOKEN": ADMIN_TOKEN},
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["summary"]["vms"]["running"] == 3 and len(shown["hosts"]) == 3
