"""Planning routes over the live cluster (h1 runs web and db, h2 cache, h3 empty)."""
from __future__ import annotations

from fastapi.testclient import TestClient

from .conftest import AUTH_READ, Cluster


def test_what_if_a_host_dies(client: TestClient, cluster: Cluster) -> None:
    response = client.get("/api/v1/plan/what-if", params={"fail": "h1"}, headers=AUTH_READ)
    assert response.status_code == 200, response.text
    report = response.json()
    moved = {vm["vm"]: vm for vm in report["vms"]}
    assert set(moved) == {"web", "db"}
    assert all(vm["before"] == "h1" and vm["after"] in ("h2", "h3") for vm in moved.values())
    assert report["lost"] == [] and report["worst_recovery_s"] > 2


def test_what_if_an_unknown_host_is_a_clear_422(client: TestClient, cluster: Cluster) -> None:
    before = cluster.dump()
    response = client.get("/api/v1/plan/what-if", params={"fail": "h9"}, headers=AUTH_READ)
    assert response.status_code == 422
    assert "no host named 'h9'" in response.text
    assert cluster.dump() == before  # planning never writes


def test_capacity_and_topology(client: TestClient) -> None:
    response = client.get("/api/v1/plan/capacity", params={"vcpus": 1, "memory_mib": 512}, headers=AUTH_READ)
    assert response.status_code == 200, response.text
    assert response.json()["fits"] >= 1
    body = {"workloads": {"count": 6}, "hosts": [{"name": "a", "vcpus": 8, "memory_mib": 65536},
                                                 {"name": "b", "vcpus": 8, "memory_mib": 65536}]}
    response = client.post("/api/v1/plan/topology", json=body, headers=AUTH_READ)
    assert [(t["os_instances"], t["clusters"]) for t in response.json()] == [(8, 1), (14, 6)]
    assert client.post("/api/v1/plan/topology", json=body).status_code == 401
