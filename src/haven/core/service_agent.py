"""A member's host agent's decision for one service: `plan_member(input) -> MemberPlan`, pure.

Level-triggered, like `core.agent`: from the service state (the manager's word), what this host
sees of its member (QEMU, guest agent, disk, mount, IP, application) and what the store holds of
the other members, say which steps to run now, in order. The runtime runs them one after the
other and stops at the first that fails; then it reports and asks again.

- Killed first: a kill the manager ordered for this very QEMU (`boot`) comes before anything.
- A member that is not the active one gives everything up, in the reverse order of taking it:
  stop the application, drop the IP, unmount, detach the disk (`device_del`, confirmed). A hung
  guest cannot do that; it waits for the manager's kill order.
- The active member takes everything, in order: attach the disk, mount it, raise the IP (with a
  gratuitous ARP), start the application; but only while every other member is known to hold
  nothing at this generation (`core.service.why_not_released`, whose docstring is the proof).
- A member's QEMU that is not running is booted again as a standby, with no data disk. Not the
  active member's: its QEMU gone is a failure for the manager to act on, and a new boot would
  hide it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from haven.core.service import Hosts, why_not_released
from haven.model.service import Argv, GuestHealth, MemberFacts, ServiceSpec, ServiceState


@dataclass(frozen=True, slots=True)
class Kill:
    member: str
    reason: str


@dataclass(frozen=True, slots=True)
class Boot:
    """Start the member's QEMU as a standby: no data disk, no IP."""

    member: str


@dataclass(frozen=True, slots=True)
class RunStop:
    member: str
    argv: Argv


@dataclass(frozen=True, slots=True)
class DropIp:
    member: str
    address: str


@dataclass(frozen=True, slots=True)
class Unmount:
    member: str
    path: str


@dataclass(frozen=True, slots=True)
class Detach:
    """`device_del` + `blockdev-del`, done only once QEMU confirms the device is gone."""

    member: str
    pool: str
    file: str


@dataclass(frozen=True, slots=True)
class Attach:
    """`blockdev-add` + `device_add`. `generation` is the state it is for: the runtime attaches
    only if the service state is still at that generation in the store."""

    member: str
    pool: str
    file: str
    generation: int


@dataclass(frozen=True, slots=True)
class Mount:
    member: str
    path: str


@dataclass(frozen=True, slots=True)
class RaiseIp:
    """Bring the address up in the guest, then send a gratuitous ARP so switches and peers learn
    the new MAC at once."""

    member: str
    address: str


@dataclass(frozen=True, slots=True)
class RunStart:
    member: str
    argv: Argv


Step = Kill | Boot | RunStop | DropIp | Unmount | Detach | Attach | Mount | RaiseIp | RunStart


@dataclass(frozen=True)
class MemberInput:
    spec: ServiceSpec
    state: ServiceState | None  # as read from the store under this host's current lease
    member: str
    local: MemberFacts  # what this host sees of its member now (its next report)
    facts: Mapping[str, MemberFacts]  # the store's reports of every member
    hosts: Hosts
    host_of: Mapping[str, str]  # member -> host
    lease_valid: bool  # this host's lease (core.agent.lease_valid)


@dataclass(frozen=True)
class MemberPlan:
    steps: tuple[Step, ...] = ()
    waiting: str = ""  # why nothing (more) can be done now, for the agent's log


def plan_member(inp: MemberInput) -> MemberPlan:
    spec, member, local = inp.spec, inp.member, inp.local
    if not inp.lease_valid:
        # Nothing without a lease: the host's self-fence kills every QEMU, members included.
        return MemberPlan(waiting="no valid lease")
    state = inp.state or ServiceState(service=spec.name)
    order = next((o for o in state.fence if o.member == member and local.qemu and o.boot == local.boot), None)
    active = state.active == member
    if order is not None:
        kill = Kill(member, f"fenced: {order.reason}")
        return MemberPlan((kill,) if active else (kill, Boot(member)))
    if not local.qemu:
        if active:
            return MemberPlan(waiting="QEMU not running: the manager moves the service")
        return MemberPlan((Boot(member),))
    if not active:
        return _release(spec, local)
    return _acquire(inp, state)


def _release(spec: ServiceSpec, local: MemberFacts) -> MemberPlan:
    if not local.holds:
        return MemberPlan()
    if local.guest is not GuestHealth.ANSWERING:
        return MemberPlan(waiting=f"cannot release {', '.join(local.holds)}: guest agent {local.guest.value}; "
                          "waiting for a kill order")
    member, steps = local.member, list[Step]()
    if local.started:
        steps.append(RunStop(member, spec.stop))
    if local.ip:
        steps.append(DropIp(member, spec.floating_ip))
    if local.mounted:
        steps.append(Unmount(member, spec.mount_point))
    if local.disk and spec.data_disk is not None and spec.data_file is not None:
        steps.append(Detach(member, spec.data_disk.pool, spec.data_file))
    return MemberPlan(tuple(steps))


def _acquire(inp: MemberInput, state: ServiceState) -> MemberPlan:
    spec, member, local = inp.spec, inp.member, inp.local
    steps = list[Step]()
    if spec.data_disk is not None and spec.data_file is not None:
        if not local.disk:
            steps.append(Attach(member, spec.data_disk.pool, spec.data_file, state.generation))
        if not local.mounted:
            steps.append(Mount(member, spec.mount_point))
    if not local.ip:
        steps.append(RaiseIp(member, spec.floating_ip))
    if not local.started:
        steps.append(RunStart(member, spec.start))
    if not steps:
        return MemberPlan()
    if local.guest is not GuestHealth.ANSWERING:
        return MemberPlan(waiting=f"guest agent {local.guest.value}")
    ahead = sorted(m for m, f in inp.facts.items() if f.generation > state.generation)
    if ahead:
        return MemberPlan(waiting=f"state read is older than the reports of {', '.join(ahead)}: reading again")
    for other in spec.members:
        if other != member:
            why = why_not_released(other, state.generation, inp.facts, inp.hosts, inp.host_of)
            if why is not None:
                return MemberPlan(waiting=f"waiting for {why}")
    return MemberPlan(tuple(steps))
