"""Fencing ports: cutting a host's power from outside, and the watchdog inside it."""
from __future__ import annotations

from typing import Protocol


class Fencer(Protocol):
    """Power fencing from outside the host (IPMI, Redfish, a switched PDU; the simulator's
    `SimFencer`). The leading manager calls it once each time a host becomes lost, after writing
    that, and from its own loop: a call may block for the device's round trip. A confirmed "off"
    lets the manager restart the host's VMs at once instead of waiting out `fence_grace_s`
    (docs/DESIGN.md section 3); anything short of a confirmation means waiting, as without a device."""

    def power_off(self, host: str) -> bool:
        """Cut the host's power. True only on a positive confirmation that it is off (False for a
        host without a device, a device that failed or did not answer)."""


class Watchdog(Protocol):
    def arm(self, deadline: float) -> None:
        """Kill this host's VMs unless armed again before `deadline` (host clock). Called after
        every successful lease renewal with the self-fence deadline."""

    def disarm(self) -> None:
        """Clean shutdown: stop enforcing."""
