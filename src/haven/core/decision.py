"""What a decision returns: records to write and the events that explain them."""
from __future__ import annotations

from dataclasses import dataclass, field

from haven.core.events import Event, EventKind, SubjectKind
from haven.model.replica import ReplicaRecord
from haven.model.state import HostRecord, Placement

__all__ = ["Decision", "Event", "EventKind", "SubjectKind"]  # events live in core.events


@dataclass
class Decision:
    """The manager's output for one iteration. Applied atomically, guarded by leadership."""

    placements: dict[str, Placement] = field(default_factory=dict)
    host_records: dict[str, HostRecord] = field(default_factory=dict)
    done_requests: list[str] = field(default_factory=list)  # VMs whose request was handled
    fence_hosts: list[str] = field(default_factory=list)  # hosts to power-fence now
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)  # VMs whose primary changed
    events: list[Event] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.placements or self.host_records or self.done_requests or self.fence_hosts
                    or self.replicas)
