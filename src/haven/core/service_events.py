"""A service's timeline as data, in the style of `core.events`: typed fields, one sentence rendered
from them. Kept apart until the timeline learns a `service` subject; then these kinds join
`EventKind` and `ServiceEvent` becomes an `Event` with `subject_kind=service`.

    t=12.550 manager  service db: running -> moving to db2 (generation 4, from db1: guest agent silent)
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from enum import StrEnum


class ServiceEventKind(StrEnum):
    STATE_CHANGE = "state_change"  # phase `old` -> `new`, or a new active member (`member`)
    WAITING = "waiting"  # stays `new` for a new `reason` (logged once per reason)
    FENCE_ORDERED = "fence_ordered"  # `member`'s QEMU is to be killed by its host's agent
    MOVE_REFUSED = "move_refused"  # an operator's move the manager turned down


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    t: float  # the writer's clock
    source: str  # manager
    kind: ServiceEventKind
    service: str
    _: KW_ONLY
    old: str | None = None
    new: str | None = None
    member: str | None = None  # the active member after the change; the fenced member
    from_member: str | None = None  # the member the service left
    generation: int | None = None
    reason: str = ""

    @property
    def message(self) -> str:
        return render(self)

    def line(self) -> str:
        return f"t={self.t:.3f} {self.source:<8} service {self.service}: {self.message}"


def render(e: ServiceEvent) -> str:
    why = f": {e.reason}" if e.reason else ""
    match e.kind:
        case ServiceEventKind.STATE_CHANGE:
            # "starting to db1", "moving to db2", then "running on db2"
            to = f" {'to' if e.new in ('starting', 'moving') else 'on'} {e.member}" if e.member else ""
            frm = f"from {e.from_member}" if e.from_member else ""
            detail = ", ".join(part for part in (f"generation {e.generation}" if e.generation is not None else "",
                                                 f"{frm}{why}" if frm else e.reason) if part)
            return f"{e.old} -> {e.new}{to}" + (f" ({detail})" if detail else "")
        case ServiceEventKind.WAITING:
            return f"{e.new}{why}"
        case ServiceEventKind.FENCE_ORDERED:
            return f"kill member {e.member}{why}"
        case ServiceEventKind.MOVE_REFUSED:
            return f"move refused{why}"
    return e.reason  # pragma: no cover - every kind is matched above
