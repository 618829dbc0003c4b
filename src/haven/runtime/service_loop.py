"""The agent's service runner: for every service member on this host, `core.service_agent.plan_member`
-> run its steps through the guest port -> report `MemberFacts` under this host's lease.

Called from `AgentLoop.step` (so from the daemon and the simulator alike), after the lease check.

Who owns a member's QEMU: the VM agent boots it, the service runner may only kill it. A member is
an ordinary VM restricted to its one host, so the VM manager places it, restarts it there when it
dies (with the VM restart policy, a new generation each time) and counts its memory; the start
rule (`AgentLoop._claim`) guards its launches as any other. The runner kills a member when the
service manager orders it (`FenceOrder`: that QEMU, by its boot = the VM generation): killing is
safe from anyone, and it is the member's fencing. So `plan_member`'s `Boot` steps are the VM
layer's, and skipped here.

The start rule, for services: the runner reads what it decides on afresh each round under the
current lease, and right before an `Attach` a write-free transaction confirms that the service
state is still the revision read and this host's alive key still the one written under this lease.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from haven.core.events import Event
from haven.core.service import HostLiveness
from haven.core.service_agent import (
    Attach,
    Detach,
    DropIp,
    Kill,
    MemberInput,
    Mount,
    RaiseIp,
    RunStart,
    RunStop,
    Step,
    Unmount,
    plan_member,
)
from haven.drivers import guest_steps
from haven.model.service import GuestHealth, MemberFacts, ServiceSpec, ServiceState, pinned_host
from haven.model.state import ACTIVE_LOCAL_STATES, HostRecord, LocalState
from haven.ports.guest import Guest, GuestError
from haven.ports.hypervisor import HypervisorError, LocalVm
from haven.ports.store import Compare, StoreError
from haven.runtime.layout import KeyKind
from haven.runtime.service_round import liveness

if TYPE_CHECKING:
    from haven.runtime.agent_loop import AgentLoop

TICK_S = 0.2  # how often the runner looks even when nothing woke it: pings and checks are due
INTERFACE = "eth0"  # the member's NIC in the guest, where the floating IP goes
SPEC_REFRESH_S = 30.0


def device_id(service: str) -> str:
    """The data disk's QEMU device id and virtio serial (the guest finds it by this)."""
    return f"svc-{service}"[:20]  # virtio serials hold 20 bytes


@dataclass
class _Member:
    """What the runner knows of one boot of a member beyond what QEMU says."""

    boot: int = 0
    answered: bool = False
    last_answer: float = -math.inf
    check_generation: int = -1
    failures: int = 0
    next_check: float = -math.inf
    mounted: bool = False
    ip: bool = False
    started: bool = False
    detail: str = ""
    since: float = 0.0
    plugging: str = ""  # a hot-plug asked for and not yet confirmed: what to say once it is


@dataclass(frozen=True)
class _GuestStep:
    """A step run inside the guest: its command, time limit, name, what to say when done, and
    what it changes of what the member holds (None: not that)."""

    argv: tuple[str, ...]
    timeout: float
    what: str
    said: str
    mounted: bool | None = None
    ip: bool | None = None
    started: bool | None = None


@dataclass
class _Read:
    """One fresh read of what the plans decide on."""

    lease: int
    states: dict[str, tuple[ServiceState, int]]  # service -> (state, mod revision)
    facts: dict[str, MemberFacts]
    hosts: dict[str, HostLiveness]


class ServiceRunner:
    def __init__(self, agent: AgentLoop, guest: Guest | None) -> None:
        self.agent = agent
        self.guest = guest
        self.host = agent.host.name
        self.specs: dict[str, ServiceSpec] = {}
        self.specs_stale = True
        self.specs_read_at = -math.inf
        self.members: dict[str, _Member] = {}
        self.published: dict[str, MemberFacts] = {}  # what the store holds from us (under this lease)
        self.published_lease = 0

    @property
    def has_members(self) -> bool:
        return self.guest is not None and bool(self._mine())

    def on_store_change(self, kind: KeyKind) -> bool:
        """A service key changed (the watch said so): True if the agent should look again now."""
        if kind is KeyKind.SERVICE_SPEC:
            self.specs_stale = True
        return self.guest is not None and (kind is KeyKind.SERVICE_SPEC or bool(self._mine()))

    def _mine(self) -> dict[str, ServiceSpec]:
        """Member VM on this host -> its service."""
        vms = self.agent.specs
        return {m: spec for spec in self.specs.values() for m in spec.members
                if m in vms and pinned_host(vms[m]) == self.host}

    def _refresh_specs(self, now: float) -> None:
        if not self.specs_stale and now - self.specs_read_at < SPEC_REFRESH_S:
            return
        layout = self.agent.layout
        try:
            items = self.agent.store.get_prefix(layout.services())
        except StoreError:
            return
        self.specs_stale, self.specs_read_at = False, now
        self.specs = {}
        for kv in items:
            key = layout.parse(kv.key)
            if key is not None and key.kind is KeyKind.SERVICE_SPEC:
                self.specs[key.service] = self.agent.decoded(ServiceSpec, kv)

    def _read(self) -> _Read | None:
        agent, layout = self.agent, self.agent.layout
        lease = agent.keeper.lease_id
        try:
            items = [kv for prefix in (layout.services(), layout.members(), layout.root + "hoststate/",
                                       layout.root + "alive/") for kv in agent.store.get_prefix(prefix)]
        except StoreError:
            return None
        states: dict[str, tuple[ServiceState, int]] = {}
        facts: dict[str, MemberFacts] = {}
        records: dict[str, HostRecord | None] = {}
        leases: dict[str, int | None] = {}
        for kv in items:
            key = layout.parse(kv.key)
            if key is None:
                continue
            if key.kind is KeyKind.SERVICE_STATE:
                states[key.service] = (agent.decoded(ServiceState, kv), kv.mod_revision)
            elif key.kind is KeyKind.MEMBER_FACTS:
                facts[key.vm] = agent.decoded(MemberFacts, kv)
            elif key.kind is KeyKind.HOST_STATE:
                records[key.host] = agent.decoded(HostRecord, kv)
            elif key.kind is KeyKind.ALIVE:
                leases[key.host] = kv.lease or None
                records.setdefault(key.host, None)
        return _Read(lease, states, facts, liveness(records, leases))

    # --- one round ---

    def step(self, local: Mapping[str, LocalVm]) -> bool:
        """One round for the members on this host; True if it ran (and may have killed one)."""
        if self.guest is None or self.agent.closed:
            return False
        now = self.agent.clock.now()
        self._refresh_specs(now)
        mine = self._mine()
        if not mine:
            return False
        read = self._read()
        if read is None:
            return False
        if read.lease != self.published_lease:  # a new lease: nothing we wrote before counts
            self.published, self.published_lease = {}, read.lease
        host_of = {m: h for spec in self.specs.values() for m in spec.members
                   if m in self.agent.specs and (h := pinned_host(self.agent.specs[m])) is not None}
        for member, spec in sorted(mine.items()):
            self._member(member, spec, local.get(member), read, host_of, now)
        return True

    def _member(self, member: str, spec: ServiceSpec, vm: LocalVm | None, read: _Read,
                host_of: dict[str, str], now: float) -> None:
        guest = self.guest
        assert guest is not None
        state, state_rev = read.states.get(spec.name, (None, 0))
        generation = state.generation if state else 0
        qemu = vm is not None and vm.state in ACTIVE_LOCAL_STATES
        boot = vm.generation if vm is not None and qemu else 0
        me = self.members.get(member)
        if me is None or me.boot != boot:  # a new boot (or none): its guest holds nothing yet
            me = self.members[member] = _Member(boot=boot, since=now)
        doomed = state is not None and any(o.member == member and o.boot == boot for o in state.fence)
        # A member ordered killed is not pinged: a hung one would hold this round a whole ping
        # timeout before its kill, and no answer would save it.
        health = (GuestHealth.SILENT if me.answered else GuestHealth.BOOTING) if doomed \
            else self._health(member, spec, vm, me, now)
        if me.check_generation != generation:
            me.check_generation, me.failures, me.next_check = generation, 0, -math.inf
        if (state is not None and state.active == member and me.started and health is GuestHealth.ANSWERING
                and now >= me.next_check):
            me.next_check = now + spec.check_interval_s
            try:
                result = guest.exec(member, spec.check, spec.check_timeout_s, spec.ping_timeout_s)
                why = "" if result.ok else f"exit {result.exit_code}: {(result.stderr or result.stdout).strip()[:200]}"
            except GuestError as error:
                why = str(error)
            me.failures = 0 if not why else me.failures + 1
            if why:
                self._say(member, f"service {spec.name}: check failed ({me.failures} of {spec.failure_threshold}): "
                          f"{why}")
        local = self._facts(spec, member, me, qemu, boot, health, generation, read.lease, now)
        confirmed = self._confirmed(spec, member, me, local)
        facts = {m: f for m, f in read.facts.items() if f.service == spec.name}  # this service's members only
        plan = plan_member(MemberInput(spec, state, member, local, facts, read.hosts, host_of,
                                       self.agent.keeper.lease_ok()))
        steps = plan.steps
        if me.plugging:  # a hot-plug still in flight: the disk is neither here nor gone; only a kill goes ahead
            steps = tuple(step for step in steps if isinstance(step, Kill))
        done, failed = self._run(spec, member, me, steps, state_rev, read)
        done = confirmed + done
        me.detail = failed or plan.waiting
        if done:
            self._say(member, f"service {spec.name}: {', '.join(done)}")
            vm = self.agent.hypervisor.list().get(member)  # a kill among them: report the QEMU gone
            qemu = vm is not None and vm.state in ACTIVE_LOCAL_STATES
        self._publish(self._facts(spec, member, me, qemu, boot if qemu else 0, health, generation, read.lease, now))

    def _confirmed(self, spec: ServiceSpec, member: str, me: _Member, local: MemberFacts) -> list[str]:
        """A hot-plug asked for in an earlier round that QEMU has confirmed since."""
        if not me.plugging or local.disk != me.plugging.startswith("attached"):
            return []
        said, me.plugging = me.plugging, ""
        return [said]

    def _health(self, member: str, spec: ServiceSpec, vm: LocalVm | None, me: _Member, now: float) -> GuestHealth:
        assert self.guest is not None
        if vm is not None and vm.state is LocalState.RUNNING and self.guest.ping(member, spec.ping_timeout_s):
            me.answered, me.last_answer = True, now
            return GuestHealth.ANSWERING
        if not me.answered:
            return GuestHealth.BOOTING
        # Silent for a whole ping timeout, counted to now: a real ping that got no answer waited
        # that long itself (one is proof enough); an instant "no" (QEMU gone, a simulated guest)
        # adds up over rounds.
        silent_for = self.agent.clock.now() - me.last_answer
        return GuestHealth.SILENT if silent_for >= spec.ping_timeout_s else GuestHealth.ANSWERING

    def _facts(self, spec: ServiceSpec, member: str, me: _Member, qemu: bool, boot: int, health: GuestHealth,
               generation: int, lease: int, now: float) -> MemberFacts:
        assert self.guest is not None
        if not qemu:
            me.mounted = me.ip = me.started = False
            return MemberFacts(service=spec.name, member=member, host=self.host, lease=lease,
                               generation=generation, since=me.since, detail=me.detail)
        try:
            disk = spec.data_disk is not None and device_id(spec.name) in self.guest.attached_disks(member)
        except HypervisorError as error:  # unknown counts as attached: nobody else may take it on our word
            disk, me.detail = spec.data_disk is not None, f"cannot list the disks: {error}"
        me.mounted = me.mounted and disk
        return MemberFacts(service=spec.name, member=member, host=self.host, lease=lease, generation=generation,
                           boot=boot, qemu=True, guest=health, check_failures=me.failures, disk=disk,
                           mounted=me.mounted, ip=me.ip, started=me.started, since=me.since, detail=me.detail)

    def _run(self, spec: ServiceSpec, member: str, me: _Member, steps: tuple[Step, ...], state_rev: int,
             read: _Read) -> tuple[list[str], str]:
        """Run the steps in order, up to the first that fails or must wait: what was done, and why
        it stopped if a step failed. Consecutive steps inside the guest go in one guest-agent call
        (each call costs a round trip and a fork in the guest: a third of a failover under TCG)."""
        done: list[str] = []
        pending: list[_GuestStep] = []
        try:
            for step in (*steps, None):
                inside = self._inside(spec, step) if step is not None else None
                if inside is not None:
                    pending.append(inside)
                    continue
                if pending:
                    self._exec_steps(member, me, pending, done)
                    pending = []
                if step is None:
                    break
                what = self._do(spec, member, me, step, state_rev, read)
                if what is None:
                    break
                if what:
                    done.append(what)
        except (GuestError, HypervisorError) as error:
            return done, str(error)
        return done, ""

    def _inside(self, spec: ServiceSpec, step: Step) -> _GuestStep | None:
        """A step run inside the guest, as its command, time limit and what it changes; None for
        the others (kills, hot-plugs)."""
        match step:
            case RunStop(_, argv):
                return _GuestStep(tuple(argv), spec.stop_timeout_s, "stop", "stopped the application", started=False)
            case DropIp(_, address):
                return _GuestStep(tuple(guest_steps.drop_ip(address, INTERFACE)), spec.ping_timeout_s, "drop the IP",
                                  f"dropped {address}", ip=False)
            case Unmount(_, path):
                return _GuestStep(tuple(guest_steps.unmount_data(path)), spec.stop_timeout_s, "unmount",
                                  f"unmounted {path}", mounted=False)
            case Mount(_, path):
                return _GuestStep(tuple(guest_steps.mount_data(device_id(spec.name), path)), spec.start_timeout_s,
                                  "mount", f"mounted {path}", mounted=True)
            case RaiseIp(_, address):
                return _GuestStep(tuple(guest_steps.raise_ip(address, INTERFACE)), spec.ping_timeout_s,
                                  "raise the IP", f"raised {address}", ip=True)
            case RunStart(_, argv):
                return _GuestStep(tuple(argv), spec.start_timeout_s, "start", "started the application", started=True)
        return None

    def _exec_steps(self, member: str, me: _Member, steps: list[_GuestStep], done: list[str]) -> None:
        """Run them in one call, in order, up to the first that fails (GuestError, after noting
        what the ones before it did)."""
        assert self.guest is not None
        ran, result = self.guest.exec_steps(member, [s.argv for s in steps], sum(s.timeout for s in steps))
        for step in steps[:ran]:
            for field in ("mounted", "ip", "started"):
                if (value := getattr(step, field)) is not None:
                    setattr(me, field, value)
            done.append(step.said)
        if ran < len(steps):
            failed = steps[ran]
            raise GuestError(f"{failed.what} failed in {member} (exit {result.exit_code}): {result.stderr.strip()}")

    def _do(self, spec: ServiceSpec, member: str, me: _Member, step: Step, state_rev: int,
            read: _Read) -> str | None:
        """One step outside the guest: what it did ("" for nothing to say), or None to stop here
        for this round."""
        guest = self.guest
        assert guest is not None
        match step:
            case Kill(_, reason):
                with self.agent.local_lock:
                    self.agent.hypervisor.kill(member)
                return f"killed member {member} ({reason})"
            case Detach(_, _, file):
                guest.detach_disk(member, device_id(spec.name))
                return self._plugged(member, me, spec, f"detached {file}", False)
            case Attach(_, pool, file, generation):
                assert spec.data_disk is not None  # an Attach is planned for a data disk only
                if not self._claim(spec.name, state_rev, read.lease):
                    return None
                with self.agent.local_lock:
                    if not self.agent.keeper.lease_ok():
                        return None
                    guest.attach_disk(member, device_id(spec.name), f"{pool}/{file}", spec.data_disk.size_mib)
                return self._plugged(member, me, spec, f"attached {file} (generation {generation})", True)
        return None  # Boot: the VM agent boots members (the module docstring says why)

    def _plugged(self, member: str, me: _Member, spec: ServiceSpec, said: str, attached: bool) -> str | None:
        """What a hot-plug did: done now, or (None) to be confirmed in a later round."""
        assert self.guest is not None
        if (device_id(spec.name) in self.guest.attached_disks(member)) == attached:
            me.plugging = ""
            return said
        me.plugging = said
        return None

    def _claim(self, service: str, state_rev: int, read_lease: int) -> bool:
        """The start rule for a data disk: the service state is still the revision the plan read,
        read under the lease we hold, and our alive key still the one written under it."""
        agent = self.agent
        st = agent.keeper.state
        fresh = st.lease is not None and st.alive_rev > 0 and read_lease == st.lease.id and state_rev > 0
        try:
            ok = fresh and agent.store.txn([Compare(agent.layout.service_state(service), mod_revision=state_rev),
                                            Compare(agent.layout.alive(self.host), mod_revision=st.alive_rev)],
                                           []).succeeded
        except StoreError:
            ok = False
        if fresh and not ok:
            self._say(service, "attach held back: the service state changed since it was read", kind="service")
        return ok

    def _publish(self, facts: MemberFacts) -> None:
        old = self.published.get(facts.member)
        if old is not None and old.model_copy(update={"since": facts.since}) == facts:
            return
        agent = self.agent
        try:
            agent.store.put(agent.layout.member_facts(self.host, facts.member), facts.model_dump_json(),
                            lease=facts.lease)
        except StoreError:
            self.published.pop(facts.member, None)
            return
        self.published[facts.member] = facts

    def _say(self, name: str, message: str, kind: str = "vm") -> None:
        self.agent.emit(Event.from_text(self.agent.clock.now(), f"agent {self.host}", f"{kind} {name}", message))

