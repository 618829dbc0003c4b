"""Guest-cluster services in the lab: waiting for one, reading its answers, failing its active
member, and timing the failover from outside (the end-to-end tests and the lab bench share these).

A failover is measured as a client sees it: from the fault to the first answer on the floating
address from another member. Meanwhile a `QemuSampler` reads every lab QEMU's open files, so a
data disk open in two QEMUs at once is seen whatever haven says; afterwards broadcast ARP probes
must find the floating address on the new member's MAC only.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from haven.lab.cluster import Lab, LabError
from haven.lab.guest import SERVICE_PORT
from haven.lab.probe import FAILOVER_PROBES, ServiceProbe, mono
from haven.lab.sampler import QemuSampler
from haven.model.service import GuestHealth, ServicePhase


def service_ready(lab: Lab, service: str) -> bool:
    """Running, nothing left to kill, and every member's guest answering: a warm standby is there."""
    snap = lab.snapshot()
    state = snap.service_states.get(service)
    facts = [snap.member_facts.get(m) for m in lab.service_specs[service].members]
    return (state is not None and state.phase is ServicePhase.RUNNING and not state.fence
            and all(f is not None and f.guest is GuestHealth.ANSWERING for f in facts))


def wait_service_ready(lab: Lab, service: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not service_ready(lab, service):
        if time.monotonic() > deadline:
            raise LabError(f"{service} not running with a healthy standby after {timeout:g} s")
        time.sleep(0.2)


def service_answer(lab: Lab, service: str, timeout: float = 30.0, not_from: str | None = None,
                   seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The service's next answer (from a member other than `not_from`, if given; the answers
    still coming from `not_from` meanwhile are appended to `seen`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = lab.http_get(lab.service_url(service), 0.5)
        if got and got.get("vm") != not_from:
            return got
        if got and seen is not None:
            seen.append(got)
        time.sleep(0.05)
    other = f" from a member other than {not_from}" if not_from else ""
    raise LabError(f"{service} did not answer{other} within {timeout:g} s")


def host_of(lab: Lab, vm: str) -> str:
    hosts = lab.qemu_hosts(vm)
    if len(hosts) != 1:
        raise LabError(f"{vm} runs on {hosts or 'no host'}")
    return hosts[0]


def kill_qemu(lab: Lab, vm: str) -> None:
    """SIGKILL the VM's QEMU: the process dies, its host and daemon stay."""
    pidfile = lab.members[host_of(lab, vm)].run_dir / "vms" / vm / "qemu.pid"
    os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)




@dataclass
class Failover:
    old: str
    new: str
    seconds: float  # fault -> the first answer from the new member
    last_old: dict[str, Any]  # the old member's last answer (an isolated one serves until it fences itself)
    first_new: dict[str, Any]
    double_opens: int  # samples with the data disk open in two QEMUs
    samples: int
    arp_macs: set[str]  # who answered broadcast ARP for the floating address afterwards

    @property
    def kept_acknowledged_writes(self) -> bool:
        """Every answered request was counted on the data disk (synced before the answer): the new
        member carries on from at least the old one's last answer. It may be further on: a
        request in flight when the old member died can be on the disk yet never answered."""
        return self.first_new["disk_counter"] > self.last_old["disk_counter"]

    @property
    def ip_double(self) -> bool:
        return len(self.arp_macs) > 1


def fail_over(lab: Lab, service: str, fault: Callable[[str], object], timeout: float = 90.0) -> Failover:
    """Answer, inject `fault(active member)`, and time the next answer from another member, as a
    client polling every 50 ms sees it (`ServiceProbe`)."""
    assert lab.net is not None
    before = service_answer(lab, service)
    old = str(before["vm"])
    spec = lab.service_specs[service]
    floating = spec.floating_ip.split("/")[0]
    image = str(lab.data_image(service)) if spec.data_disk else ""
    probe = ServiceProbe(lab.client.namespace, f"{floating}:{SERVICE_PORT}", concurrency=FAILOVER_PROBES)
    try:
        with QemuSampler(lab.root / "run", images=frozenset({image} - {""})) as sampler:
            time.sleep(0.3)  # the probe is up and answered
            t0 = time.monotonic()
            fault(old)
            last_old, first_new = before, None
            while first_new is None:
                if time.monotonic() - t0 > timeout:
                    raise LabError(f"{service} did not answer from a member other than {old} within {timeout:g} s")
                time.sleep(0.05)
                for record in list(probe.records):
                    body = record.get("body")
                    if not body:
                        continue
                    if body.get("vm") == old:
                        last_old = body
                    elif mono(record["t"]) > t0:
                        first_new, answered = body, mono(record["t"] + record["dt"])
                        break
    finally:
        probe.stop()
    return Failover(old=old, new=str(first_new["vm"]), seconds=answered - t0, last_old=last_old,
                    first_new=first_new, double_opens=len(sampler.double_opens), samples=sampler.samples,
                    arp_macs=lab.arp_answers(floating))
