"""The cluster's timeline as data: one typed record per event, one function that renders its sentence.

An event is written once, as fields: what happened (`kind`), to whom (a host, a VM, the cluster),
from which state to which, why, where, at which generation, with which durations. The line a person
reads, e.g. `t=12.550 manager  vm web: recovering -> starting on h2 (generation 2, priority 3, ...)`,
is rendered from those fields by `render` and nothing parses it back: metrics, the API, the
dashboard and the lab's measurements read the fields (docs/DESIGN.md sections 5 and 9).

Pure: no I/O, no clock. `to_dict` / `from_dict` are the JSON-ready form the store and the daemon's
stdout carry; `from_dict` also reads the 4-field form older versions wrote (t, source, subject,
message) as a TEXT event, so an upgraded reader shows an old log as it was written.
"""
from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum
from typing import Any

from haven.model.spec import MigrationKind


class EventKind(StrEnum):
    # The manager's decisions (core.manager, core.migration).
    STATE_CHANGE = "state_change"  # a host or VM went from `old` to `new`
    WAITING = "waiting"  # a VM stays `new`, for a new `reason` (logged once per reason)
    MIGRATION_STARTED = "migration_started"  # running -> migrating, `from_host` -> `to_host`
    MIGRATION_HANDOVER = "migration_handover"  # quick: saved on `from_host`, restoring on `host`
    MIGRATED = "migrated"  # the move succeeded: running on `host` (cold: starting there)
    MIGRATION_ABORTED = "migration_aborted"  # back to running on the source (`host`)
    MIGRATION_REFUSED = "migration_refused"  # an operator's request the manager turned down
    # The manager loop.
    MANAGER_ELECTED = "manager_elected"  # won the leader key
    MANAGER_RESUMED = "manager_resumed"  # kept its own leader key across a daemon restart
    MANAGER_DEPOSED = "manager_deposed"
    POWER_FENCE = "power_fence"  # a host's device was asked to power it off: `new` off | failed, or asked
    # (a host whose heartbeats stopped, before its lease ran out)
    FENCE_DEVICE = "fence_device"  # a device's periodic check changed: `new` ok | failing
    # A host's agent.
    LOCAL_STATE = "local_state"  # this host's hypervisor reports a VM in a new state
    LEASE_GRANTED = "lease_granted"
    LEASE_RESUMED = "lease_resumed"  # a restarted daemon carries on with its predecessor's lease
    LEASE_LOST = "lease_lost"  # the store said the lease is gone
    SELF_FENCE = "self_fence"  # the lease was not renewed in time: every local VM is killed
    FAILSAFE = "failsafe"  # core.failsafe: `new` on (every peer is cut off from the store too) | off, `reason`
    KILLED = "killed"  # one VM killed (self-fence, stale copy, stale generation, ...)
    RETIRED = "retired"  # the paused source copy of a finished live migration ended: routine
    START_HELD_BACK = "start_held_back"  # the start rule's guard refused a launch
    REPLICA = "replica"  # a copy of a VM's disk (`count` = disk index) on `to_host` is now `new`
    ACTION_FAILED = "action_failed"  # the hypervisor refused or failed an action
    SHUTTING_DOWN = "shutting_down"
    # Elsewhere.
    LEASE_EXPIRED = "lease_expired"  # the store expired a lease (reported by the simulator's store)
    WATCHDOG_FIRED = "watchdog_fired"  # the watchdog killed the VMs of a hung agent
    FAULT = "fault"  # simulator: an injected fault
    OPERATOR = "operator"  # simulator: an operator command
    COMMAND_FAILED = "command_failed"  # simulator: an operator command the store refused
    TEXT = "text"  # only a sentence is known: an event written by an older version


class SubjectKind(StrEnum):
    HOST = "host"
    VM = "vm"
    CLUSTER = "cluster"
    LEASE = "lease"  # a lease whose host is unknown


@dataclass(frozen=True, slots=True)
class Event:
    """One event. Only the fields its kind needs are set; `render` says which it shows."""

    t: float  # the writer's clock (the simulator re-stamps with true time)
    source: str  # who wrote it: manager, agent h2, store, wdog h1, fault, operator
    kind: EventKind
    _: KW_ONLY
    subject_kind: SubjectKind = SubjectKind.CLUSTER
    name: str = ""  # the host's or VM's name (a lease's id); for TEXT, the subject as written
    old: str | None = None  # the state before, when the event changes it
    new: str | None = None  # the state after (or, for WAITING, the state it stays in)
    host: str | None = None  # VM: where it starts, runs or stopped; agent: the agent's host
    generation: int | None = None
    reason: str = ""  # why, in words ("host h2 lost", "operator request", "grace 0.3 s")
    priority: int | None = None
    migration: MigrationKind | None = None
    from_host: str | None = None  # the host a VM leaves (migration source, the lost host)
    to_host: str | None = None  # a migration's target
    seconds: float | None = None  # a duration: the migration's; the lease's age at a self-fence
    grace_s: float | None = None  # the fence grace waited before a lost host counts as fenced
    downtime_s: float | None = None  # the guest's pause in a live migration, as the hypervisor measured it
    detail: str = ""  # the hypervisor's own words, shown as they are
    lease: int | None = None
    count: int | None = None  # VMs killed
    action: str = ""  # ACTION_FAILED: which action
    text: str = ""  # FAULT / OPERATOR: the command as given; TEXT: the sentence as written

    @property
    def subject(self) -> str:
        """`vm web`, `host h1`, `cluster`, ..., as the timeline shows it."""
        if self.subject_kind is SubjectKind.CLUSTER:
            return self.name or "cluster"  # a named "cluster" subject is an old event's own text
        subject = f"{self.subject_kind.value} {self.name}"
        return subject

    @property
    def message(self) -> str:
        return render(self)

    def line(self) -> str:
        return f"t={self.t:.3f} {self.source:<8} {self.subject}: {self.message}"

    @property
    def changes_state(self) -> bool:
        """The subject went from `old` to `new` (possibly the same state: a restart)."""
        return self.old is not None and self.new is not None

    @classmethod
    def from_text(cls, t: float, source: str, subject: str, message: str) -> Event:
        """An event known only by its sentence (the form older versions wrote)."""
        kind, _, name = subject.partition(" ")
        if kind in (SubjectKind.HOST, SubjectKind.VM, SubjectKind.LEASE) and name:
            return cls(t, source, EventKind.TEXT, subject_kind=SubjectKind(kind), name=name, text=message)
        return cls(t, source, EventKind.TEXT, name="" if subject == "cluster" else subject, text=message)


def _starting(e: Event) -> str:
    return (f"{e.old} -> {e.new} on {e.host} (generation {e.generation}, priority {e.priority}, "
            f"{e.reason})")


def _migrated(e: Event) -> str:
    detail = f"; {e.detail}" if e.detail else ""
    migration = e.migration.value if e.migration else "?"
    return f"{e.old} -> {e.new} on {e.host} ({migration} from {e.from_host}, {e.seconds or 0.0:.3f} s{detail})"


def _changed(e: Event) -> str:
    """The plain transition: `old -> new[ on host][ (reason)]`."""
    where = f" on {e.host}" if e.host and e.subject_kind is SubjectKind.VM else ""
    why = f" ({e.reason})" if e.reason else ""
    return f"{e.old} -> {e.new}{where}{why}"


def render(e: Event) -> str:
    """The sentence the timeline shows for `e` (the golden scenario logs pin every form)."""
    k, migration = EventKind, e.migration.value if e.migration else "?"
    if (e.kind in (k.STATE_CHANGE, k.MIGRATED) and e.new == "starting" and e.generation is not None
            and e.priority is not None):
        return _starting(e)  # a start, a restart, a recovery, the second half of a cold move
    match e.kind:
        case k.STATE_CHANGE:
            return _changed(e)
        case k.WAITING:
            return f"{e.new}: {e.reason}"
        case k.MIGRATION_STARTED:
            return f"{e.old} -> {e.new} ({migration} {e.from_host} -> {e.to_host}, {e.reason})"
        case k.MIGRATION_HANDOVER:
            return f"{e.new}: saved on {e.from_host}, restoring on {e.host} (generation {e.generation})"
        case k.MIGRATED:
            return _migrated(e)
        case k.MIGRATION_ABORTED:
            return f"{e.old} -> {e.new} on {e.host} ({migration} migration to {e.to_host} aborted: {e.reason})"
        case k.MIGRATION_REFUSED:
            return f"{migration} migration refused: {e.reason}"
        case k.MANAGER_ELECTED:
            return "became the active manager"
        case k.MANAGER_RESUMED:
            return "still the active manager (after a restart)"
        case k.MANAGER_DEPOSED:
            return "no longer the active manager"
        case k.POWER_FENCE:
            if e.new == "off":  # "power fence: off confirmed in 0.18 s (fence_ipmilan)"
                return f"power fence: off confirmed in {e.seconds or 0.0:.2f} s ({e.detail})"
            if e.new == "asked":  # before its lease ran out: "power fence: switching it off (heartbeats ...)"
                return f"power fence: switching it off ({e.reason})"
            return f"power fence failed: {e.reason}; falling back to lease expiry + grace"
        case k.FENCE_DEVICE:
            return "fence device: ok" if e.new == "ok" else f"fence device failing: {e.reason}"
        case k.LOCAL_STATE:
            return f"{e.new} (generation {e.generation})" + (f" ({e.detail})" if e.detail else "")
        case k.LEASE_GRANTED:
            return f"lease {e.lease} granted"
        case k.LEASE_RESUMED:
            return f"lease {e.lease} resumed"
        case k.LEASE_LOST:
            return "lease lost"
        case k.LEASE_EXPIRED:
            if e.reason and e.lease is not None:  # not the host's current lease: say which one
                return f"lease {e.lease} expired ({e.reason})"  # "host h2: lease 7 expired (an earlier lease)"
            return "lease expired"
        case k.FAILSAFE:
            if e.new == "on":
                return f"failsafe on: {e.reason}; keeping the VMs past the self-fence deadline while they say so"
            return f"failsafe off: {e.reason}"
        case k.SELF_FENCE:
            return f"self-fence: lease not renewed in time; killing {e.count} VM(s), giving the lease up"
        case k.KILLED:
            return f"killed: {e.reason}"
        case k.RETIRED:
            return f"retired the source copy after migration to {e.to_host}"
        case k.REPLICA:  # "disk 0 copy on h2: stale (its host does not answer)"
            return f"disk {e.count or 0} copy on {e.to_host}: {e.new}" + (f" ({e.reason})" if e.reason else "")
        case k.START_HELD_BACK:
            return "start held back: its placement or this host's lease changed since they were read; reading again"
        case k.ACTION_FAILED:
            return f"{e.action} failed: {e.reason}"
        case k.SHUTTING_DOWN:
            return f"shutting down ({e.reason})"
        case k.WATCHDOG_FIRED:
            return "deadline passed: killed every VM"
        case k.COMMAND_FAILED:
            return f"command failed: {e.reason}"
        case _:  # FAULT, OPERATOR, TEXT
            return e.text


# --- the JSON-ready form ---

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Event) if f.default is not dataclasses.MISSING}
_LEGACY_KEYS = ("t", "source", "subject", "message")


def to_dict(e: Event) -> dict[str, Any]:
    """The fields that are set, plus the rendered `subject` and `message` (last) so that a reader
    of an older version still shows the event. A TEXT event keeps the old 4-field form."""
    if e.kind is EventKind.TEXT:
        return {"t": e.t, "source": e.source, "subject": e.subject, "message": e.text}
    out: dict[str, Any] = {"t": e.t, "source": e.source, "subject": e.subject, "kind": e.kind.value}
    for name, default in _DEFAULTS.items():
        value = getattr(e, name)
        if value != default or name == "subject_kind":
            out[name] = value.value if isinstance(value, StrEnum) else value
    out["message"] = render(e)
    return out


def from_dict(data: dict[str, Any]) -> Event:
    """Read `to_dict`'s form, or the old 4-field one. Fields this version does not know are
    ignored; an unknown kind (a newer writer) falls back to the sentence. Raises KeyError,
    TypeError or ValueError for what is not an event at all."""
    t, source = float(data["t"]), str(data["source"])
    try:
        kind = EventKind(data["kind"])
    except (KeyError, ValueError):
        return Event.from_text(t, source, str(data["subject"]), str(data["message"]))
    facts: dict[str, Any] = {name: value for name, value in data.items()
                             if name in _DEFAULTS and value is not None}
    if "subject_kind" in facts:
        facts["subject_kind"] = SubjectKind(facts["subject_kind"])
    if "migration" in facts:
        facts["migration"] = MigrationKind(facts["migration"])
    return Event(t, source, kind, **facts)
