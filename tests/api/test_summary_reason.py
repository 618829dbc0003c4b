"""The summary's protection reason says why a down HA VM is stuck (what the pet and `haven status` show)."""
from __future__ import annotations

from fastapi.testclient import TestClient

from haven.model.state import HostState, VmState

from .conftest import AUTH_READ, Cluster


def test_the_ill_reason_names_the_missing_memory_and_the_host_in_maintenance(
        client: TestClient, cluster: Cluster) -> None:
    cluster.put_vm("broken", "h1")  # the fixture's VM in error runs again: only the new one is down
    cluster.put_host("h3", state=HostState.MAINTENANCE)
    cluster.put_vm("huge", None, VmState.RECOVERING, memory=3584)
    reason = client.get("/api/v1/summary", headers=AUTH_READ).json()["protection"]["reason"]
    # h1: 4096 - 256 reserve - 2048 (web, db, broken) = 1792 free; h2: 4096 - 256 - 512 = 3328 free.
    assert reason == ("HA VM huge (recovering) is not running: no room: needs 3584 MiB, the most free is "
                      "3328 MiB on h2 (256 MiB short); h3 in maintenance")
