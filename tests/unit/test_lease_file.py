"""The lease file a restarted daemon takes its lease over from."""
from __future__ import annotations

import math
from pathlib import Path

from haven.daemon.lease_file import LeaseFile
from haven.ports.store import Lease
from haven.runtime.lease import LeaseState


def test_the_lease_and_its_last_renewal_come_back_as_saved(tmp_path: Path) -> None:
    file = LeaseFile(tmp_path / "run" / "lease.json")
    assert file.load() is None
    file.save(LeaseState(Lease(7, 2.0), 1234.5, 99))
    saved = file.load()
    assert saved is not None and saved.lease == Lease(7, 2.0) and saved.last_renewal_sent == 1234.5
    file.save(LeaseState(None, -math.inf, 0))  # no lease held: the last one stays on file
    assert file.load() == saved
    file.remove()
    assert file.load() is None


def test_a_damaged_lease_file_means_no_lease(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    for text in ("", "{", '{"id": 1}', '{"id": "x", "ttl": 2, "sent": 1}'):
        path.write_text(text)
        assert LeaseFile(path).load() is None
