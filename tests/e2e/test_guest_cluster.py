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
from collections.abc import Iterator
from typing import Any

import pytest

from haven.drivers.guest_agent import GuestAgent
from haven.lab.cluster import Lab, LabError
from haven.lab.sampler import QemuSampler
from haven.model.service import GuestHealth, ServicePhase, ServiceRequest
from haven.model.state import HostState

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


def service_ready(lab: Lab) -> bool:
    """Running, nothing left to kill, and every member's guest answering: a warm standby is there."""
    snap = lab.snapshot()
    state = snap.service_states.get(SERVICE)
    facts = [snap.member_facts.get(m) for m in lab.service_specs[SERVICE].members]
    return (state is not None and state.phase is ServicePhase.RUNNING and not state.fence
            and all(f is not None and f.guest is GuestHealth.ANSWERING for f in facts))


@pytest.fixture
def healthy(lab: Lab) -> Lab:
    """Every host up and the service running with a healthy standby, whatever the last test did."""
    for name, member in lab.members.items():
        lab.heal(name)
        if member.daemon is None or member.daemon.poll() is not None:
            lab.power_on(name)
    lab.wait(lambda snap: snap.alive >= set(lab.members)
             and all(r.state is HostState.ONLINE for r in snap.records.values()), 90, "every host online")
    for vm in lab.service_specs[SERVICE].members:
        if lab.qemu_hosts(vm):
            with contextlib.suppress(Exception):  # a QEMU on its way out: nothing to resume
                lab.resume_guest(vm)  # a guest hung by a test that failed midway
    deadline = time.monotonic() + 120
    while not service_ready(lab):
        if time.monotonic() > deadline:
            raise LabError(f"{SERVICE} not running with a healthy standby after 120 s")
        time.sleep(0.2)
    return lab


def answer(lab: Lab, timeout: float = 30.0, not_from: str | None = None,
           seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The service's next answer (from a member other than `not_from`, if given; the answers
    still coming from `not_from` meanwhile are appended to `seen`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = lab.http_get(lab.service_url(SERVICE), 0.5)
        if got and got.get("vm") != not_from:
            return got
        if got and seen is not None:
            seen.append(got)
        time.sleep(0.05)
    raise LabError(f"{SERVICE} did not answer{f' from a member other than {not_from}' if not_from else ''} "
                   f"within {timeout:g} s")


def active(lab: Lab) -> str:
    state = lab.snapshot().service_states[SERVICE]
    assert state.active is not None
    return state.active


def member_host(lab: Lab, member: str) -> str:
    hosts = lab.qemu_hosts(member)
    assert len(hosts) == 1, f"{member} runs on {hosts}"
    return hosts[0]


def kill_qemu(lab: Lab, member: str) -> None:
    pidfile = lab.members[member_host(lab, member)].run_dir / "vms" / member / "qemu.pid"
    os.kill(int(pidfile.read_text().strip()), 9)


def fail_over(lab: Lab, fault: Any, timeout: float = 60.0) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Answer, inject `fault(active member)`, answer again from the other member; the data disk is
    never open in two QEMUs meanwhile and the floating address answers from one MAC afterwards.
    Returns the old member's last answer (an isolated member serves on until it fences itself),
    the new member's first, and the old member's name."""
    before = answer(lab)
    old = before["vm"]
    assert old == active(lab)
    with QemuSampler(lab.root / "run", images=frozenset({str(lab.data_image(SERVICE))})) as sampler:
        fault(old)
        still: list[dict[str, Any]] = []
        after = answer(lab, timeout, not_from=old, seen=still)
    before = still[-1] if still else before
    assert sampler.samples > 10 and not sampler.double_opens, sampler.double_opens[:5]
    assert not sampler.overlaps, sampler.overlaps
    floating = lab.service_specs[SERVICE].floating_ip.split("/")[0]
    macs = lab.arp_answers(floating)
    new_mac = lab.vm_specs[after["vm"]].nics[0].mac
    assert macs == {new_mac}, f"{floating} answered from {macs}, expected only {after['vm']} ({new_mac})"
    return before, after, old


def continues(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Every answered request counted on the data disk (synced before the answer): the new member
    carries on from the old one's last answer. The RAM counter starts over: another VM answers."""
    assert after["disk_counter"] == before["disk_counter"] + 1, (before, after)
    assert after["ram_counter"] == 1, after


def test_member_qemu_killed(healthy: Lab) -> None:
    before, after, old = fail_over(healthy, lambda member: kill_qemu(healthy, member))
    continues(before, after)
    assert after["vm"] != old


def test_guest_hung(healthy: Lab) -> None:
    hung: list[str] = []

    def hang(member: str) -> None:
        healthy.hang_guest(member)
        hung.append(member)

    before, after, old = fail_over(healthy, hang)
    continues(before, after)
    # The hung member was killed (its fencing) and its host's agent booted it again as a standby.
    healthy.wait(lambda snap: (f := snap.member_facts.get(old)) is not None and f.guest is GuestHealth.ANSWERING
                 and f.boot > 0, 90, f"{old} back as a standby")
    assert hung == [old]


def test_check_failing(healthy: Lab) -> None:
    def break_app(member: str) -> None:
        agent = GuestAgent(healthy.members[member_host(healthy, member)].run_dir / "vms" / member / "qga.sock")
        assert agent.exec(["haven-demo-service", "stop"], timeout=10).ok

    before, after, _ = fail_over(healthy, break_app)
    continues(before, after)


def test_member_host_crashed(healthy: Lab) -> None:
    crashed: list[str] = []

    def crash(member: str) -> None:
        host = member_host(healthy, member)
        healthy.crash(host)
        crashed.append(host)

    before, after, _ = fail_over(healthy, crash, timeout=90)
    continues(before, after)
    healthy.power_on(crashed[0])


def test_member_host_isolated(healthy: Lab) -> None:
    """Alive but cut from the store: the service moves only once that host fenced itself (its
    lease expired and the grace passed), so the disk is never open on both sides."""
    isolated: list[str] = []

    def isolate(member: str) -> None:
        host = member_host(healthy, member)
        healthy.isolate(host)
        isolated.append(host)

    before, after, _ = fail_over(healthy, isolate, timeout=90)
    continues(before, after)
    healthy.heal(isolated[0])


def test_clean_move_keeps_every_write(healthy: Lab) -> None:
    assert healthy.store is not None
    members = healthy.service_specs[SERVICE].members

    def move(member: str) -> None:
        target = next(m for m in members if m != member)
        request = ServiceRequest(id=f"move-{time.monotonic_ns()}", target=target)
        healthy.store.put(healthy.layout.service_request(SERVICE), request.model_dump_json())  # type: ignore[union-attr]

    before, after, old = fail_over(healthy, move)
    continues(before, after)
    # A clean move: the old member stopped the application and let go; nothing was killed.
    assert healthy.qemu_hosts(old), f"{old} was killed by a clean move"
