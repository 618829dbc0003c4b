"""The OpenAPI document says what the server does: the error body of every error status, the
methods of every path, and the limits of the inputs it accepts. (`test_fuzz.py` checks the same
by sending requests; these name the cases the issue found.)"""
from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import AUTH_ADMIN


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def test_every_error_answer_is_documented_as_a_problem(document: dict[str, Any]) -> None:
    errors = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    errors += 1
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, status)
    assert errors > 50
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_routes_declare_the_errors_they_answer_with(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert "403" not in paths["/api/v1/summary"]["get"]["responses"]  # any token may read
    assert {"401", "403", "404", "409", "422", "503"} <= set(paths["/api/v1/hosts/{name}/drain"]["post"]["responses"])
    assert "422" in paths["/api/v1/vms/{name}"]["get"]["responses"]  # a path parameter can be invalid


def test_405_names_every_method_served_at_the_path(client: TestClient) -> None:
    """/api/v1/vms is served by the read and the write router: the Allow header names both."""
    for method, path, allowed in (("DELETE", "/api/v1/vms", "GET, HEAD, POST"),
                                  ("PATCH", "/api/v1/vms/web", "DELETE, GET, HEAD, PUT"),
                                  ("GET", "/api/v1/hosts/h1/drain", "POST")):
        response = client.request(method, path, headers=AUTH_ADMIN)
        assert response.status_code == 405
        assert response.headers["allow"] == allowed, (method, path)
        assert response.json()["detail"] == f"{method} is not allowed here: use {allowed}"


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def test_the_schema_refuses_what_the_server_refuses(document: dict[str, Any], client: TestClient) -> None:
    target = _schema(document, "MigrateIn")["properties"]["target"]["anyOf"][0]
    assert target["pattern"].startswith("^[a-z0-9]")  # an empty target is invalid in the schema too
    assert client.post("/api/v1/vms/web/migrate", json={"target": ""}, headers=AUTH_ADMIN).status_code == 422
    fail = next(p for p in document["paths"]["/api/v1/plan/what-if"]["get"]["parameters"] if p["name"] == "fail")
    assert fail["schema"]["minItems"] == 1 and "pattern" in fail["schema"]["items"]
    update = _schema(document, "VmSpecUpdate")
    assert update["properties"]["name"]["readOnly"] is True and "name" not in update.get("required", [])
    body = document["paths"]["/api/v1/vms/{name}"]["put"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/VmSpecUpdate"}
    topology = document["paths"]["/api/v1/plan/topology"]["post"]["requestBody"]["content"]["application/json"]
    assert topology["schema"] == {"$ref": "#/components/schemas/TopologyIn"}
    assert _schema(document, "LicensingIn")["properties"]["price"]["maximum"] == 1e9  # the cost stays finite
    assert "DrainIn" in document["components"]["schemas"]


@pytest.mark.parametrize("path,body,problem", [
    ("/api/v1/plan/topology", {"workloads": {"count": 2}, "hosts": [{"name": "a", "vcpus": 8, "memory_mib": 8192},
                                                                   {"name": "b", "vcpus": 8, "memory_mib": 8192}],
                               "memory_reserve_mib": False}, "memory_reserve_mib: Input should be a valid integer"),
    ("/api/v1/vms", {"name": "typed", "memory_mib": "512"}, "memory_mib: Input should be a valid integer"),
    ("/api/v1/hosts/h1/drain", {"force": 1}, "force: Input should be a valid boolean"),
])
def test_json_types_are_taken_as_the_schema_states_them(client: TestClient, path: str, body: Any,
                                                        problem: str) -> None:
    response = client.post(path, json=body, headers=AUTH_ADMIN)
    assert response.status_code == 422, response.text
    assert any(line.startswith(problem) for line in response.json()["problems"]), response.json()


def test_a_whole_number_is_an_integer(client: TestClient) -> None:
    """JSON Schema counts 1024.0 as an integer, so the server takes it."""
    response = client.post("/api/v1/vms", json={"name": "whole", "memory_mib": 1024.0}, headers=AUTH_ADMIN)
    assert response.status_code == 201, response.text
    assert response.json()["vm"]["spec"]["memory_mib"] == 1024


def test_the_service_routes_are_documented_as_the_vm_routes_are(document: dict[str, Any], client: TestClient) -> None:
    paths = document["paths"]
    assert {"401", "403", "404", "409", "422", "503"} <= set(paths["/api/v1/services/{name}/move"]["post"]["responses"])
    assert "403" not in paths["/api/v1/services"]["get"]["responses"]  # any token may read
    update = _schema(document, "ServiceSpecUpdate")
    assert update["properties"]["name"]["readOnly"] is True and "name" not in update.get("required", [])
    body = document["paths"]["/api/v1/services/{name}"]["put"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ServiceSpecUpdate"}
    move = document["paths"]["/api/v1/services/{name}/move"]["post"]["requestBody"]
    assert move["required"] is False
    assert move["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ServiceMoveIn"}
    assert _schema(document, "ServiceMoveIn")["properties"]["target"]["anyOf"][0]["pattern"].startswith("^[a-z0-9]")
    for method, path, allowed in (("DELETE", "/api/v1/services", "GET, HEAD, POST"),
                                  ("PATCH", "/api/v1/services/db", "DELETE, GET, HEAD, PUT"),
                                  ("GET", "/api/v1/services/db/move", "POST")):
        response = client.request(method, path, headers=AUTH_ADMIN)
        assert response.status_code == 405
        assert response.headers["allow"] == allowed, (method, path)
