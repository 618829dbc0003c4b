"""Fencing ports: cutting a host's power from outside, and the watchdog inside it."""
from __future__ import annotations

from typing import Protocol


class Fencer(Protocol):
    def power_off(self, host: str) -> bool:
        """Cut the host's power. True only on a positive confirmation that it is off."""


class Watchdog(Protocol):
    def arm(self, deadline: float) -> None:
        """Kill this host's VMs unless armed again before `deadline` (host clock). Called after
        every successful lease renewal with the self-fence deadline."""

    def disarm(self) -> None:
        """Clean shutdown: stop enforcing."""
