"""An unreachable store gives 503 with a clear message, never a 500, and is counted."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from .conftest import AUTH_ADMIN, AUTH_READ, Cluster


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/api/v1/summary", None), ("GET", "/api/v1/hosts", None), ("GET", "/api/v1/vms/web", None),
    ("GET", "/api/v1/events", None), ("GET", "/api/v1/vms/web/history", None),
    ("POST", "/api/v1/vms", {"name": "x"}), ("POST", "/api/v1/vms/web/migrate", {"target": "h2"}),
    ("POST", "/api/v1/hosts/h1/drain", None), ("DELETE", "/api/v1/vms/batch", None),
])
def test_store_unreachable_is_503(client: TestClient, cluster: Cluster, method: str, path: str,
                                  body: dict | None) -> None:
    cluster.reachable[0] = False
    response = client.request(method, path, json=body, headers=AUTH_ADMIN)
    assert response.status_code == 503
    assert response.json()["detail"].startswith("the coordination store cannot be used: store unreachable")


def test_health_and_metrics_when_the_store_is_down(client: TestClient, cluster: Cluster) -> None:
    cluster.reachable[0] = False
    assert client.get("/healthz").status_code == 503
    text = client.get("/metrics", headers=AUTH_READ).text
    assert "haven_store_up 0.0" in text
    assert 'haven_store_errors_total{source="api"} 2.0' in text  # healthz + this scrape


def test_a_corrupt_record_is_503_not_500(client: TestClient, cluster: Cluster) -> None:
    cluster.store.put(cluster.layout.vm_spec("web"), "{not json")
    response = client.get("/api/v1/summary", headers=AUTH_READ)
    assert response.status_code == 503 and "haven cannot read" in response.json()["detail"]
