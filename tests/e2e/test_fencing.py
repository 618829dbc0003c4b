"""End-to-end power fencing: every lab host has a BMC (OpenIPMI's ipmi_sim speaking IPMI over LAN)
whose chassis power is the host's power, and every node's config names it as a `fence_ipmilan`
device. The manager powers lost hosts off through the real agent, the real IPMI and the BMC.

The grace is long on purpose (GRACE_S): a VM back sooner than that after its host was found lost
came back on a confirmed power-off, not on lease expiry + grace. So is the lease (TTL_S), and the
heartbeats' timeout short (fast fencing): a host switched off before its lease ran out was
switched off because its heartbeats stopped.
Needs root, QEMU, etcd, openipmi, ipmitool and fence-agents (scripts/install.sh installs them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from haven.core.events import EventKind, SubjectKind
from haven.lab.cluster import ADMIN_TOKEN, API_PORT, Lab
from haven.lab.demo import events_since, fences_settled, first
from haven.lab.sampler import QemuSampler
from haven.model.state import HostState, VmState

MISSING = [b for b in ("qemu-system-x86_64", "etcd", "ip", "ipmi_sim", "ipmitool", "fence_ipmilan")
           if shutil.which(b, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, taps)"),
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (run scripts/install.sh)"),
]

GRACE_S = 8.0
TTL_S = 4.0
SETTINGS = {"host_settle_s": 0.0, "fence_grace_s": GRACE_S, "lease_ttl_s": TTL_S, "heartbeat_timeout_s": 0.6}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=3, vms=3, fencing=True, settings=SETTINGS) as running:
        yield running


@pytest.fixture
def healthy(lab: Lab) -> Lab:
    for bmc in lab.bmcs.values():
        if not bmc.running:
            bmc.start()
    lab.restore_hosts(60)
    lab.wait_all_running(120)
    lab.spread_vms(120)
    return lab


def victim(lab: Lab) -> tuple[str, str]:
    """A host running a VM, other than h1 (it serves the API) and the manager's (no one would hear
    its heartbeats stop: its VMs wait for its lease), and that VM."""
    snap = lab.snapshot()
    placements = snap.placements
    for host in [h for h in ("h3", "h2") if h != snap.manager]:
        for vm in sorted(lab.vm_specs):
            if placements[vm].host == host:
                return host, vm
    raise AssertionError(f"no VM on h2 or h3: {placements}")


def moved(lab: Lab, vm: str, away_from: str, timeout: float) -> str:
    snap = lab.wait(lambda s: (p := s.placements[vm]).host not in (None, away_from) and p.state is VmState.RUNNING,
                    timeout, f"{vm} running away from {away_from}")
    host = snap.placements[vm].host
    assert host is not None
    return host


def lost_and_fenced(lab: Lab, host: str, since: float) -> tuple[float, float, str]:
    """When `host` was found lost and then fenced (writers' clocks: the lab's hosts share one), and why."""
    events = events_since(lab, since)
    lost = first(events, EventKind.STATE_CHANGE, (SubjectKind.HOST, host), new="lost")
    fenced = first(events, EventKind.STATE_CHANGE, (SubjectKind.HOST, host), new="fenced")
    assert lost is not None and fenced is not None, [e.message for e in events]
    return lost.t, fenced.t, fenced.reason


def power_fences(lab: Lab, host: str, since: float) -> list[str]:
    return [e.new or "" for e in events_since(lab, since)
            if e.kind is EventKind.POWER_FENCE and (e.subject_kind, e.name) == (SubjectKind.HOST, host)]


def test_a_crashed_host_is_switched_off_through_ipmi_when_its_heartbeats_stop(healthy: Lab) -> None:
    lab = healthy
    host, vm = victim(lab)
    since = time.monotonic()
    lab.crash(host)
    moved(lab, vm, host, 60)
    lost, fenced, reason = lost_and_fenced(lab, host, since)
    assert reason == "power fence confirmed"
    assert lost - since < TTL_S - 1, f"lost {lost - since:.2f} s after the crash: the lease ran out first"
    events = events_since(lab, since)
    first_lost = first(events, EventKind.STATE_CHANGE, (SubjectKind.HOST, host), new="lost")
    assert first_lost is not None and first_lost.reason == "powered off before its lease ran out"
    assert power_fences(lab, host, since) == ["asked", "off"]
    power = [e for e in events if e.kind is EventKind.POWER_FENCE and e.new == "off"][0]
    assert power.detail == "fence_ipmilan", power
    assert "Chassis Power is off" in lab.bmcs[host].ipmitool("chassis", "power", "status").stdout


def test_an_isolated_host_is_powered_off_and_its_vms_never_run_twice(healthy: Lab) -> None:
    lab = healthy
    host, vm = victim(lab)
    since = time.monotonic()
    with QemuSampler(lab.root / "run") as sampler:
        lab.isolate(host)  # alive, but cut from the store and the other hosts
        now_on = moved(lab, vm, host, 60)
        lab.wait(lambda s: not lab.members[host].powered, 10, f"{host} switched off by its BMC")
    assert not sampler.overlaps, sampler.overlaps
    assert sampler.samples > 100
    _, _, reason = lost_and_fenced(lab, host, since)
    assert reason == "power fence confirmed"
    assert lab.qemu_hosts(vm) == [now_on]


def test_a_broken_fence_device_falls_back_to_lease_expiry_and_grace_and_says_so(healthy: Lab) -> None:
    lab = healthy
    host, vm = victim(lab)
    lab.bmcs[host].stop()  # the BMC no longer answers
    since = time.monotonic()
    lab.crash(host)
    moved(lab, vm, host, 60)
    lost, fenced, reason = lost_and_fenced(lab, host, since)
    assert reason == f"grace {GRACE_S:g} s"
    assert fenced - lost >= GRACE_S
    # The agent gives up at its deadline (the lab's device: 10 s), after the VM is back.
    lab.wait(lambda s: fences_settled(lab, host, since), 40, "every power fence's outcome")
    assert "failed" in power_fences(lab, host, since) and "off" not in power_fences(lab, host, since)
    # The periodic check says so too, before the device is needed again.
    lab.wait(lambda s: (c := s.fence_checks.get(host)) is not None and not c.ok, 30, f"{host}'s device failing")


def test_haven_host_power_on_brings_a_powered_off_host_back(healthy: Lab) -> None:
    lab = healthy
    host, vm = victim(lab)
    lab.crash(host)
    lab.wait(lambda s: (r := s.records.get(host)) is not None and r.state in (HostState.FENCED, HostState.OFFLINE),
             60, f"{host} fenced")
    url = f"http://{lab.members['h1'].address}:{API_PORT}"
    power_on = subprocess.run([sys.executable, "-m", "haven.cli.main", "host", "power-on", host, "--output", "json"],
                              env={**os.environ, "HAVEN_API": url, "HAVEN_TOKEN": ADMIN_TOKEN},
                              capture_output=True, text=True, timeout=120)
    assert power_on.returncode == 0, power_on.stderr
    answer = json.loads(power_on.stdout)
    assert answer["host"]["state"] == "online" and answer["host"]["alive"], answer
    assert lab.members[host].powered
    assert "Chassis Power is on" in lab.bmcs[host].ipmitool("chassis", "power", "status").stdout
