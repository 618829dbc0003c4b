"""The lease a daemon holds, kept in its run directory so the next run (a restart, an upgrade)
takes it over instead of taking a new one: the host's VMs keep running across the restart.

The file lives where RAM lives on a real host (`/run`): a power cut forgets it, as it should.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from haven.ports.store import Lease
from haven.runtime.lease import LeaseState


@dataclass(frozen=True, slots=True)
class SavedLease:
    lease: Lease
    last_renewal_sent: float  # CLOCK_MONOTONIC of the previous run: the same clock within one boot


class LeaseFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> SavedLease | None:
        try:
            saved = json.loads(self.path.read_text())
            return SavedLease(Lease(int(saved["id"]), float(saved["ttl"])), float(saved["sent"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, state: LeaseState) -> None:
        """Keep the lease held now (nothing if none is)."""
        if state.lease is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"id": state.lease.id, "ttl": state.lease.ttl, "sent": state.last_renewal_sent}))
        os.replace(tmp, self.path)  # a crash mid-write leaves the old file, never half a new one

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
