"""The clock port. The core never reads a clock: the runtime passes `now` in."""
from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock local to this host (rate may differ between hosts)."""
