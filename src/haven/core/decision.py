"""What a decision returns: records to write and the events that explain them."""
from __future__ import annotations

from dataclasses import dataclass, field

from haven.model.state import HostRecord, Placement


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the cluster's timeline, e.g.
    `t=12.550 manager  vm web: recovering -> starting on h2 (generation 2, priority 3)`."""

    t: float
    source: str  # manager, agent h2, store, fault, ...
    subject: str  # "vm web", "host h1", "cluster"
    message: str

    def line(self) -> str:
        return f"t={self.t:.3f} {self.source:<8} {self.subject}: {self.message}"


@dataclass
class Decision:
    """The manager's output for one iteration. Applied atomically, guarded by leadership."""

    placements: dict[str, Placement] = field(default_factory=dict)
    host_records: dict[str, HostRecord] = field(default_factory=dict)
    done_requests: list[str] = field(default_factory=list)  # VMs whose request was handled
    fence_hosts: list[str] = field(default_factory=list)  # hosts to power-fence now
    events: list[Event] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.placements or self.host_records or self.done_requests or self.fence_hosts)
