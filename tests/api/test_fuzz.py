"""Schemathesis against /openapi.json, in process: no request may produce a server error.

A bounded number of examples per operation keeps it well under a minute. The event stream is left
out (it only ends when the client leaves); `test_stream.py` covers it.
"""
from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from haven.api import create_app

from .conftest import ADMIN, AUTH_ADMIN, READ, make_cluster

cluster = make_cluster()
app = create_app(cluster.store, cluster.layout, admin_token=ADMIN, read_token=READ, clock=cluster.clock)
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/api/v1/events/stream")
# Valid and invalid inputs alike; deterministic so a CI failure replays.
schema.config.generation.update(modes=list(schemathesis.GenerationMode), deterministic=True)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call(headers=AUTH_ADMIN)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        assert response.json()["detail"], "every error answer says what was wrong"
