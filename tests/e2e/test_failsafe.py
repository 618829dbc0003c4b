"""End-to-end failsafe: the whole etcd cluster goes away and the VMs keep running, because every
host confirms to every other, over the daemons' own link, that none of them reaches the store.

The lease is 3 s here (the default 2 s leaves a 0.25 s window for the first confirmed round,
tight on a loaded machine; docs/DESIGN.md "Failsafe").
Needs root, QEMU, etcd and iproute2 (scripts/install.sh).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from haven.core.events import EventKind, SubjectKind
from haven.lab.cluster import Lab
from haven.lab.demo import events_since
from haven.lab.sampler import QemuSampler, lab_qemus
from haven.model.state import VmState

MISSING = [b for b in ("qemu-system-x86_64", "etcd", "ip") if shutil.which(b) is None]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, taps)"),
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (run scripts/install.sh)"),
]

OUTAGE_S = 10.0
SETTINGS = {"failsafe": True, "lease_ttl_s": 3.0, "host_settle_s": 0.0}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=3, vms=3, settings=SETTINGS) as running:
        yield running


@pytest.fixture
def healthy(lab: Lab) -> Lab:
    assert lab.etcd is not None
    lab.etcd.wait_healthy(30)
    lab.restore_hosts(60)
    lab.wait_all_running(120)
    return lab


def qemu_pids(lab: Lab) -> dict[str, tuple[int, str]]:
    """VM -> (pid, host) of its QEMU, from the process table."""
    return {vm: (pid, host) for pid, host, vm in lab_qemus(lab.root / "run")}


def store_down(lab: Lab) -> None:
    assert lab.etcd is not None
    for i in range(3):
        lab.etcd.kill_member(i)


def store_up(lab: Lab) -> None:
    assert lab.etcd is not None
    for i in range(3):
        lab.etcd.restart_member(i, wait=False)
    lab.etcd.wait_healthy(30)


def test_a_full_store_outage_stops_no_vm(healthy: Lab) -> None:
    lab = healthy
    before = qemu_pids(lab)
    assert len(before) == 3
    since = time.monotonic()
    store_down(lab)
    try:
        time.sleep(OUTAGE_S)
        during = qemu_pids(lab)
    finally:
        store_up(lab)
    time.sleep(5)  # renewals resume; nothing may have been killed meanwhile either
    assert during == before, "a VM stopped while only the store was down"
    assert qemu_pids(lab) == before
    snap = lab.wait(lambda s: all(p.state is VmState.RUNNING for p in s.placements.values()), 30, "all running")
    assert {vm: p.host for vm, p in snap.placements.items()} == {vm: host for vm, (_, host) in before.items()}
    kinds = [(e.kind, e.subject_kind) for e in events_since(lab, since)]
    assert (EventKind.FAILSAFE, SubjectKind.HOST) in kinds  # it was the failsafe that kept them
    assert not [e for e in events_since(lab, since) if e.kind is EventKind.LEASE_LOST]


def test_a_host_isolated_during_the_outage_self_fences_and_its_vms_never_run_twice(healthy: Lab) -> None:
    lab = healthy
    host = lab.placed_host("vm1")
    assert host is not None
    with QemuSampler(lab.root / "run") as sampler:
        store_down(lab)
        try:
            time.sleep(1.0)
            lab.isolate(host)  # its peers no longer hear it: no round confirms, for anyone
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(h == host for _, h in qemu_pids(lab).values()):
                time.sleep(0.1)
            assert not any(h == host for _, h in qemu_pids(lab).values()), f"{host} did not self-fence"
        finally:
            store_up(lab)
        snap = lab.wait(lambda s: (p := s.placements["vm1"]).state is VmState.RUNNING and p.host != host, 120,
                        "vm1 running elsewhere")
        lab.wait_all_running(120)
    assert not sampler.overlaps, sampler.overlaps
    assert snap.placements["vm1"].host != host
