"""`GET /api/v1/session` tells a client what its token may do."""
from __future__ import annotations

from fastapi.testclient import TestClient

from .conftest import AUTH_ADMIN, AUTH_READ


def test_the_read_only_token_is_told_it_cannot_write(client: TestClient) -> None:
    assert client.get("/api/v1/session", headers=AUTH_READ).json() == {"role": "read", "can_write": False}
    # ... and the answer matches what a write with that token gets.
    assert client.post("/api/v1/vms/web/stop", headers=AUTH_READ).status_code == 403


def test_the_admin_token_is_told_it_can_write(client: TestClient) -> None:
    assert client.get("/api/v1/session", headers=AUTH_ADMIN).json() == {"role": "admin", "can_write": True}


def test_an_unknown_token_learns_nothing(client: TestClient) -> None:
    assert client.get("/api/v1/session").status_code == 401
    answer = client.get("/api/v1/session", headers={"Authorization": "Bearer wrong"})
    assert answer.status_code == 401 and "role" not in answer.json()
