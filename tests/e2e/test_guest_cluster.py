"""End-to-end: a guest-cluster service (issue 10) on real QEMU guests in a 3-host lab.

The service is the lab guest's demo application on two members pinned to two hosts, with a
floating address and a data disk on the shared pool. Each failure ends with the service
answering again on the other member, its data-disk counter continuing; all along, a sampler reads
every lab QEMU's open files (/proc/PID/fd) and must never see the data disk open in two QEMUs,
and after each failover broadcast ARP probes must find the floating address on one MAC only.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator

import pytest

from haven.drivers.guest_agent import GuestAgent
from haven.lab.cluster import Lab
from haven.lab.services import Failover, host_of, kill_qemu, service_answer, wait_service_ready
from haven.lab.services import fail_over as fail_over_as_seen
from haven.model.service import GuestHealth, ServiceRequest

MISSING = [b for b in ("qemu-system-x86_64", "etcd", "ip", "arping") if shutil.which(b) is None]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, taps)"),
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (run scripts/install.sh)"),
]

SERVICE = "svc1"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=3, vms=0, services=1, settings={"host_settle_s": 0.0}) as running:
        yield running


@pytest.fixture
def healthy(lab: Lab) -> Lab:
    """Every host up and the service running with a healthy standby, whatever the last test did."""
    lab.restore_hosts(90)
    for vm in lab.service_specs[SERVICE].members:
        if lab.qemu_hosts(vm):
            with contextlib.suppress(Exception):  # a QEMU on its way out: nothing to resume
                lab.resume_guest(vm)  # a guest hung by a test that failed midway
    wait_service_ready(lab, SERVICE)
    return lab


def fail_over(lab: Lab, fault: Callable[[str], object], timeout: float = 90.0) -> Failover:
    """The failover, checked: the data disk never open in two QEMUs, the floating address on the
    new member's MAC only, every answered request counted on the data disk, the RAM counter anew."""
    assert service_answer(lab, SERVICE)["vm"] == lab.snapshot().service_states[SERVICE].active
    done = fail_over_as_seen(lab, SERVICE, fault, timeout)
    assert done.samples > 10 and done.double_opens == 0, done
    assert done.arp_macs == {lab.vm_specs[done.new].nics[0].mac}, done
    assert done.new != done.old and done.kept_acknowledged_writes, done
    assert done.first_new["ram_counter"] == 1, done  # another VM answers: its memory starts over
    return done


def test_member_qemu_killed(healthy: Lab) -> None:
    fail_over(healthy, lambda member: kill_qemu(healthy, member))


def test_guest_hung(healthy: Lab) -> None:
    hung: list[str] = []

    def hang(member: str) -> None:
        healthy.hang_guest(member)
        hung.append(member)

    old = fail_over(healthy, hang).old
    # The hung member was killed (its fencing) and its host's agent booted it again as a standby.
    healthy.wait(lambda snap: (f := snap.member_facts.get(old)) is not None and f.guest is GuestHealth.ANSWERING
                 and f.boot > 0, 90, f"{old} back as a standby")
    assert hung == [old]


def test_check_failing(healthy: Lab) -> None:
    def break_app(member: str) -> None:
        agent = GuestAgent(healthy.members[host_of(healthy, member)].run_dir / "vms" / member / "qga.sock")
        assert agent.exec(["haven-demo-service", "stop"], timeout=10).ok

    fail_over(healthy, break_app)


def test_member_host_crashed(healthy: Lab) -> None:
    fail_over(healthy, lambda member: healthy.crash(host_of(healthy, member)))  # the next `healthy` powers it on


def test_member_host_isolated(healthy: Lab) -> None:
    """Alive but cut from the store: the service moves only once that host fenced itself (its
    lease expired and the grace passed), so the disk is never open on both sides."""
    fail_over(healthy, lambda member: healthy.isolate(host_of(healthy, member)))  # the next `healthy` heals it


def test_clean_move_keeps_every_write(healthy: Lab) -> None:
    assert healthy.store is not None
    members = healthy.service_specs[SERVICE].members

    def move(member: str) -> None:
        target = next(m for m in members if m != member)
        request = ServiceRequest(id=f"move-{time.monotonic_ns()}", target=target)
        healthy.store.put(healthy.layout.service_request(SERVICE), request.model_dump_json())  # type: ignore[union-attr]

    old = fail_over(healthy, move).old
    # A clean move: the old member stopped the application and let go; nothing was killed.
    assert healthy.qemu_hosts(old), f"{old} was killed by a clean move"
