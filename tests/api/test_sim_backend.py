"""The API over a running simulation: virtual time follows a (fake) wall clock, faults inject."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from haven.api import create_app
from haven.api.sim_backend import SimBackend
from haven.sim.scenario import cluster_from_scenario

from .conftest import ADMIN, AUTH_ADMIN, AUTH_READ, READ

SCENARIO = Path(__file__).parents[1] / "web" / "dashboard-scenario.yaml"


class Wall:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sim() -> Iterator[tuple[TestClient, Wall, SimBackend]]:
    wall = Wall()
    backend = SimBackend(cluster_from_scenario(SCENARIO), speed=2.0, scenario="test", wall=wall)
    app = create_app(backend.store("api"), backend.cluster.layout, admin_token=ADMIN, read_token=READ,
                     clock=backend.clock, on_write=backend.advance, sim_control=backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, wall, backend


def summary(client: TestClient) -> dict:
    return client.get("/api/v1/summary", headers=AUTH_READ).json()


def test_virtual_time_is_wall_time_times_speed(sim: tuple[TestClient, Wall, SimBackend]) -> None:
    client, wall, _ = sim
    assert summary(client)["time"] == 0.0
    wall.t += 5  # 10 virtual seconds: every VM has booted
    s = summary(client)
    assert s["time"] == 10.0 and s["vms"]["running"] == 4
    assert s["simulation"] == {"scenario": "test", "time": 10.0, "speed": 2.0, "error": None}
    assert s["protection"]["mood"] == "content"


def test_power_off_through_the_api(sim: tuple[TestClient, Wall, SimBackend]) -> None:
    client, wall, _ = sim
    wall.t += 5
    response = client.post("/api/v1/sim/fault", json={"line": "power off h2"}, headers=AUTH_ADMIN)
    assert response.status_code == 202, response.text
    wall.t += 1.5  # 3 virtual seconds: the lease expired, h2's VMs are recovering or starting
    s = summary(client)
    assert s["hosts"]["online"] == 2
    assert s["protection"]["mood"] == "ill" and "not running" in s["protection"]["reason"]
    wall.t += 5
    assert summary(client)["protection"]["mood"] in ("content", "worried")


def test_a_drain_through_the_api_moves_the_vms(sim: tuple[TestClient, Wall, SimBackend]) -> None:
    client, wall, _ = sim
    wall.t += 5
    assert client.post("/api/v1/hosts/h2/drain", headers=AUTH_ADMIN).status_code == 202
    wall.t += 10
    h2 = client.get("/api/v1/hosts/h2", headers=AUTH_READ).json()
    assert h2["state"] == "maintenance" and h2["vms"] == []


def test_fault_validation_and_auth(sim: tuple[TestClient, Wall, SimBackend]) -> None:
    client, _, _ = sim
    bad = client.post("/api/v1/sim/fault", json={"line": "explode h1"}, headers=AUTH_ADMIN)
    assert bad.status_code == 422 and bad.json()["problems"][0].startswith("line: ")
    assert client.post("/api/v1/sim/fault", json={"line": "power off h1"}, headers=AUTH_READ).status_code == 403
    assert client.post("/api/v1/sim/fault", json={}, headers=AUTH_ADMIN).status_code == 422


def test_sim_routes_absent_without_a_simulation() -> None:
    from .conftest import make_cluster

    cluster = make_cluster()
    app = create_app(cluster.store, cluster.layout, admin_token=ADMIN, read_token=READ, clock=cluster.clock)
    with TestClient(app) as client:
        assert client.post("/api/v1/sim/fault", json={"line": "power off h1"}, headers=AUTH_ADMIN).status_code == 404
