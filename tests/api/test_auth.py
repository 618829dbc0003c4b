"""Tokens: reads need the read or admin token, writes the admin token; refusals change nothing."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from .conftest import ADMIN, AUTH_ADMIN, AUTH_READ, Cluster

WRITES = [
    ("POST", "/api/v1/vms", {"name": "new"}),
    ("PUT", "/api/v1/vms/web", {"name": "web", "memory_mib": 256}),
    ("DELETE", "/api/v1/vms/batch", None),
    ("POST", "/api/v1/vms/web/stop", None),
    ("POST", "/api/v1/vms/batch/start", None),
    ("POST", "/api/v1/vms/web/migrate", {"kind": "live", "target": "h2"}),
    ("POST", "/api/v1/vms/broken/acknowledge", None),
    ("POST", "/api/v1/hosts/h1/drain", None),
    ("POST", "/api/v1/hosts/h1/resume", None),
]
READS = ["/api/v1/summary", "/api/v1/hosts", "/api/v1/hosts/h1", "/api/v1/vms", "/api/v1/vms/web",
         "/api/v1/vms/web/history", "/api/v1/events", "/metrics"]


@pytest.mark.parametrize("method,path,body", WRITES)
@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    (AUTH_READ, 403),
])
def test_refused_writes_change_nothing(client: TestClient, cluster: Cluster, method: str, path: str,
                                       body: dict | None, headers: dict, status: int) -> None:
    before = cluster.dump()
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert cluster.dump() == before


def test_read_token_cannot_write_and_is_told_why(client: TestClient) -> None:
    response = client.post("/api/v1/hosts/h1/drain", headers=AUTH_READ)
    assert response.json()["detail"] == "this token may only read: changes need the admin token"


def test_openapi_documents_401_for_a_wrong_token_and_403_for_read_only(client: TestClient) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/api/v1/hosts/{name}/drain"]["post"]["responses"]
    assert "wrong token" in responses["401"]["description"]
    assert "read-only" in responses["403"]["description"]


def test_auth_comes_before_body_parsing(client: TestClient) -> None:
    response = client.post("/api/v1/vms", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 401


@pytest.mark.parametrize("path", READS)
def test_reads_accept_both_tokens_and_refuse_others(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    wrong = client.get(path, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid token"
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert client.get(path, headers=AUTH_READ).status_code == 200
    assert client.get(path, headers={"Authorization": f"bearer {ADMIN}"}).status_code == 200


def test_admin_token_writes(client: TestClient, cluster: Cluster) -> None:
    response = client.post("/api/v1/hosts/h1/drain", headers=AUTH_ADMIN)
    assert response.status_code == 202
    assert '"maintenance":true' in cluster.dump()[cluster.layout.host_admin("h1")]
