"""Schemathesis against /openapi.json of the app `haven sim serve` runs, in process, with the
admin and the read-only token: no request may produce a server error, and every answer must be
the one the document promises (a declared status code, its content type, a body matching its
schema). Valid inputs must be accepted and invalid ones refused, so the schema and the server
agree on what a request may hold.

Deterministic (Hypothesis derandomised, the simulation's clock stepped per store call, not read
from the wall) so a CI failure replays; a bounded number of examples per operation keeps the file
well under a minute. The event stream is left out (it only ends when the client leaves);
`test_stream.py` covers it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from haven.api import create_app
from haven.api.sim_backend import SimBackend
from haven.sim.scenario import cluster_from_scenario

from .conftest import ADMIN, READ

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "drain-live-and-quick"
STEP_S = 0.05  # virtual seconds the simulation moves on per store call


def stepping_wall() -> Callable[[], float]:
    """A wall clock that moves on by STEP_S each time it is read: the simulation advances as
    requests come, the same way on every run."""
    now = [0.0]

    def wall() -> float:
        now[0] += STEP_S
        return now[0]
    return wall


def sim_app() -> object:
    """The app `haven sim serve` builds (cli/sim_serve.py), minus the background thread."""
    cluster = cluster_from_scenario(SCENARIO)
    backend = SimBackend(cluster, 1.0, scenario=SCENARIO.name, wall=stepping_wall())
    return create_app(backend.store("api"), cluster.layout, admin_token=ADMIN, read_token=READ,
                      clock=backend.clock, on_write=backend.advance, sim_control=backend)


schema = schemathesis.openapi.from_asgi("/openapi.json", sim_app()).exclude(path="/api/v1/events/stream")
# Valid and invalid inputs alike; deterministic so a CI failure replays. The token is the test's
# (a generated Authorization header would be replaced by it, making an invalid request valid).
schema.config.generation.update(modes=list(schemathesis.GenerationMode), deterministic=True,
                                with_security_parameters=False)

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance,
          checks.positive_data_acceptance, checks.negative_data_rejection,
          checks.unsupported_method]  # 405 with an Allow header naming the path's methods
# Where a schema-valid request may still be refused with 422: what it names must exist in the
# cluster (a host, free MACs, a pool, a CPU model some host offers, a VM's copy) or follow rules across fields
# or a grammar (a fault line), which no JSON schema states. Elsewhere a valid request is accepted.
CLUSTER_CHECKED = {("POST", "/api/v1/vms"), ("PUT", "/api/v1/vms/{name}"), ("POST", "/api/v1/vms/{name}/migrate"),
                   ("POST", "/api/v1/services"), ("PUT", "/api/v1/services/{name}"),
                   ("POST", "/api/v1/services/{name}/move"),
                   ("PUT", "/api/v1/pools/{name}"), ("POST", "/api/v1/vms/{name}/promote"),
                   ("GET", "/api/v1/plan/what-if"), ("POST", "/api/v1/sim/fault")}


@pytest.fixture
def app() -> object:
    """A fresh simulated cluster for each operation and token: one failing test replays alone."""
    return sim_app()


@pytest.mark.parametrize("token", [ADMIN, READ], ids=["admin", "read-only"])
@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
def test_answers_match_the_document(case: schemathesis.Case, token: str, app: object) -> None:
    excluded = [checks.positive_data_acceptance] if (case.method, case.path) in CLUSTER_CHECKED else []
    response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS,
                                      excluded_checks=excluded, app=app)
    if response.status_code >= 400:
        assert response.json()["detail"], "every error answer says what was wrong"
