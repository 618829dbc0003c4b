"""Fencing ports: cutting a host's power from outside, and the watchdog inside it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class FenceOutcome:
    """What the last power-off (or monitor) of a host came to, for an event or `haven status`."""
    ok: bool
    detail: str  # why it failed, or how it was confirmed
    elapsed_s: float
    device: str = ""  # the device's kind (fence_ipmilan, "simulated"), as the event names it


class Fencer(Protocol):
    """Power fencing from outside the host (IPMI, Redfish, a switched PDU; the simulator's
    `SimFencer`). The leading manager calls it once each time a host becomes lost, after writing
    that, and from its own loop: a call may block for the device's round trip. A confirmed "off"
    lets the manager restart the host's VMs at once instead of waiting out `fence_grace_s`
    (docs/DESIGN.md section 3); anything short of a confirmation means waiting, as without a device."""

    def power_off(self, host: str) -> bool:
        """Cut the host's power. True only on a positive confirmation that it is off (False for a
        host without a device, a device that failed or did not answer)."""

    def has_device(self, host: str) -> bool:
        """Is a fence device configured for `host`? (Without one there is nothing to try or say.)"""

    def last_outcome(self, host: str) -> FenceOutcome | None:
        """The last `power_off` of `host`: confirmed how, or why not, for the manager's event."""

    def monitor(self, host: str) -> tuple[bool, str]:
        """Does `host`'s device answer? A periodic check, so that a broken device shows before it
        is needed. May block for the device's timeout: run it off the manager's thread."""

    def power_on(self, host: str) -> tuple[bool, str]:
        """Switch `host` on (an operator's `haven host power-on`): done or not, and the device's words."""


class Watchdog(Protocol):
    def arm(self, deadline: float) -> None:
        """Kill this host's VMs unless armed again before `deadline` (host clock). Called after
        every successful lease renewal with the self-fence deadline."""

    def disarm(self) -> None:
        """Clean shutdown: stop enforcing."""
